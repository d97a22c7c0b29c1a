"""Stage 04, BLIP captions (notebook ``04_blip_captions``): the base captioner, its fine-tuning when
``captions.finetune`` is on, captions of the test split by every captioner the run has, and their scores."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medxpert_utils.captions.finetune import finetune
from medxpert_utils.captions.model import caption_split
from medxpert_utils.captions.scores import score_run
from medxpert_utils.core.config import Config
from medxpert_utils.models.blip import prepare_base_model
from medxpert_utils.viz import plots


@dataclass(frozen=True)
class CaptionStageResult:
    """What :func:`run` did, for notebook 04 to show."""

    base_model: str  # the base captioner's spec (models/blip_base/ for captions.model: tiny)
    training: dict[str, Any] | None  # the fine-tuning's history, None when captions.finetune is off
    captions: pd.DataFrame  # captions.parquet: study_id, image_path, caption, reference, model
    scores: dict[str, Any]  # metrics/captions.json
    figures: dict[str, Path]  # name -> PNG under figures/


def run(cfg: Config) -> CaptionStageResult:
    """Build (tiny) or name the base captioner, fine-tune it when ``captions.finetune`` (``models/blip/``),
    caption the test split (``captions.parquet``), score the captions (``metrics/captions.json``) and draw
    the training curve and per-observation label F1 under ``figures/``."""
    import matplotlib.pyplot as plt

    base = prepare_base_model(cfg)
    figures: dict[str, Path] = {}
    training = finetune(cfg) if cfg.captions.finetune else None
    if training is not None:
        figures["blip_training"] = cfg.paths.figures / "blip_training.png"
        plt.close(plots.caption_training_curve(training, figures["blip_training"]))
    started = time.perf_counter()
    frame = caption_split(cfg)
    scores = score_run(cfg, frame, training, seconds=time.perf_counter() - started)
    per_label = {name: model["label_f1_per_label"] for name, model in scores["models"].items()}
    figures["caption_label_f1"] = cfg.paths.figures / "caption_label_f1.png"
    plt.close(plots.label_f1_bars(per_label, figures["caption_label_f1"],
                                  "Caption CheXpert-label F1 per observation"))
    return CaptionStageResult(base, training, frame, scores, figures)
