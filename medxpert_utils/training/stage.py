"""Stage 01, contrastive CLIP fine-tuning (notebook ``01_clip_finetune``): :func:`trainer.fit` and, with
``train.compare_losses_minutes``, the InfoNCE / label-aware comparison.

It lives beside :mod:`.trainer` rather than in it because :mod:`.compare` imports the trainer (the package
forbids import cycles between sibling modules).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medxpert_utils.core.config import Config
from medxpert_utils.training import trainer
from medxpert_utils.training.compare import compare_losses


@dataclass(frozen=True)
class TrainingStageResult:
    """What :func:`run` did: the base model it started from, the training result and the loss comparison."""

    base_model: pd.DataFrame  # one column: the base model's spec and architecture
    parameters: pd.DataFrame  # trainable / frozen parameters per part once train.freeze_vision_layers applies
    splits: pd.DataFrame  # image-report pairs, patients and distinct reports per split
    training: dict[str, Any]  # the metrics/train.json payload of trainer.fit
    comparison: pd.DataFrame | None  # compare_losses' table, None without train.compare_losses_minutes
    figures: dict[str, Path]


def describe_base(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The base model (built first for ``clip.model: tiny``) as a table, and its parameters once the first
    ``train.freeze_vision_layers`` vision blocks are frozen."""
    from medxpert_utils.models import clip, published

    spec = clip.prepare_base_model(cfg)
    model, _ = clip.load_clip(spec, "cpu")
    vision, text = model.config.vision_config, model.config.text_config
    base = pd.DataFrame([{
        "base model": cfg.clip.model + published.untrained_note(cfg.clip.model, "CLIP"),
        "image size": vision.image_size, "patch": vision.patch_size,
        "vision blocks x width": f"{vision.num_hidden_layers} x {vision.hidden_size}",
        "text blocks x width": f"{text.num_hidden_layers} x {text.hidden_size}",
        "vocabulary": text.vocab_size, "max tokens": min(cfg.clip.max_length, text.max_position_embeddings),
        "start temperature scale": round(model.logit_scale.exp().item(), 2),
    }]).T.rename(columns={0: ""})
    clip.freeze_vision_layers(model, cfg.train.freeze_vision_layers)
    return base, clip.parameter_table(model)


def run(cfg: Config) -> TrainingStageResult:
    """Fine-tune the run's CLIP (``models/clip/``, ``metrics/train.json``, ``figures/training_curves.png``) and,
    when ``train.compare_losses_minutes`` is set, compare the two losses under ``compare_losses/``."""
    from medxpert_utils.data import manifest

    frame = manifest.read(cfg.run_dir)
    splits = frame.groupby("split").agg(pairs=("study_id", "size"), patients=("patient_id", "nunique"),
                                        distinct_reports=("report", "nunique")).reindex(["train", "val", "test"])
    base, parameters = describe_base(cfg)
    outputs = trainer.TrainOutputs.of_run(cfg)
    training = trainer.fit(cfg, outputs=outputs)
    minutes = cfg.train.compare_losses_minutes
    comparison = compare_losses(cfg, minutes) if minutes else None
    figures = {"training_curves": outputs.figure} if outputs.figure is not None else {}
    return TrainingStageResult(base, parameters, splits, training, comparison, figures)
