"""CLIP models: load a hub model or a local folder, build the offline tiny CLIP, freeze layers.

Every model the project uses loads through :func:`load_clip` (``from_pretrained`` from a hub id
or a ``save_pretrained`` folder). The demo and smoke profiles have no network, so
:func:`prepare_base_model` builds a tiny CLIP from config with a byte-level BPE tokenizer trained
on the run's training reports and saves it like a hub model; afterwards nothing distinguishes
it from a downloaded one. Nothing here ever substitutes random weights for a model that was
asked for by name: a missing model raises :class:`MissingModelError` with what to do.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medxpert_utils.core.errors import UserError
from medxpert_utils.models import published
from medxpert_utils.models.pretrained import TINY, ModelKind, load_pretrained, reuse_or_build, save_pretrained

if TYPE_CHECKING:  # heavy imports stay lazy: the CLI and dashboard import this module cheaply
    import pandas as pd
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from medxpert_utils.core.config import Config, TinyClipParams

BASE_KEY_NAME = "clip_base.key.json"  # written beside models/clip_base/
RANDOM_VOCAB_TARGET = 8000  # BPE training target of a random-weights CLIP's stand-in tokenizer (the model keeps 49,408)
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
_END_OF_WORD = "</w>"
# Grey radiographs are fed to the RGB tower as three equal channels, so one mean/std serves all
# three; for a tower trained from scratch a roughly zero-centred, unit-scale input is what matters.
TINY_IMAGE_MEAN = (0.5, 0.5, 0.5)
TINY_IMAGE_STD = (0.25, 0.25, 0.25)
CLIP_KIND = ModelKind(name="CLIP", param="clip.model", example="openai/clip-vit-base-patch32", stage="01",
                      builder="clip.prepare_base_model(cfg) into models/clip_base/", offline_tiny="offline tiny CLIP")


def load_clip(spec: str | os.PathLike, device: Any = None) -> tuple["CLIPModel", "CLIPProcessor"]:
    """Load a CLIP model and its processor (eval mode, float32, on ``device``) from a hub id or a folder.

    Offline and not cached, or a missing folder, raises a one-line :class:`MissingModelError`;
    random weights are never substituted (see :func:`medxpert_utils.models.pretrained.load_pretrained`).
    """
    from transformers import CLIPModel, CLIPProcessor

    return load_pretrained(spec, CLIPModel, CLIPProcessor, CLIP_KIND, device)


def train_tokenizer(reports: Iterable[str], vocab_size: int, max_length: int):
    """A CLIP-format byte-level BPE tokenizer trained on ``reports`` (deterministic ids).

    The vocabulary holds all 256 byte symbols with and without CLIP's end-of-word marker, so
    no text is ever unknown: CLIP's unknown token is its EOS, and an EOS inside a report would
    end the text at that point for EOS pooling. ``vocab_size`` is the BPE training target; the
    final size adds those byte symbols.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    texts = [str(r) for r in reports if isinstance(r, str) and r.strip()]
    if not texts:
        raise UserError("no training reports to build the tiny CLIP tokenizer from - check the manifest's train split")
    trained = CLIPTokenizer().train_new_from_iterator(texts, vocab_size=vocab_size, show_progress=False)
    bpe = json.loads(trained.backend_tokenizer.to_str())["model"]
    merges = [tuple(p) if isinstance(p, (list, tuple)) else tuple(p.split(" ")) for p in bpe["merges"]]
    # The trainer numbers its alphabet in hash order, which changes between processes: renumber
    # as specials, sorted byte symbols, then merge products in merge order.
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    order = [_BOS, _EOS, *byte_symbols, *(b + _END_OF_WORD for b in byte_symbols), *("".join(m) for m in merges)]
    order += sorted(set(bpe["vocab"]) - set(order))
    vocab = {token: i for i, token in enumerate(dict.fromkeys(order))}
    return CLIPTokenizer(vocab=vocab, merges=merges, bos_token=_BOS, eos_token=_EOS, pad_token=_EOS,
                         unk_token=_EOS, model_max_length=max_length)


def tiny_image_processor(image_size: int):
    """CLIP's image processor (PIL backend) for the tiny model: resize + centre crop to ``image_size``."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size},
                                 image_mean=list(TINY_IMAGE_MEAN), image_std=list(TINY_IMAGE_STD))


def build_tiny_clip(params: "TinyClipParams", reports: Iterable[str], out_dir: str | os.PathLike, seed: int) -> Path:
    """Build an untrained tiny CLIP sized by ``params`` with a tokenizer trained on ``reports``; save it.

    The folder (model, tokenizer, image processor) loads exactly like a hub model via
    :func:`load_clip`. Same reports, params and seed give the same weights and vocabulary.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    tokenizer = train_tokenizer(reports, params.vocab_size, params.max_length)
    if tokenizer.eos_token_id == 2:  # CLIPTextModel treats eos id 2 as a legacy config and pools by argmax
        raise RuntimeError("tiny CLIP tokenizer: EOS id 2 would select CLIP's legacy pooling")
    if params.hidden_size % params.heads:
        raise UserError(f"clip.tiny.hidden_size {params.hidden_size} is not divisible by clip.tiny.heads "
                        f"{params.heads}")
    if params.image_size % params.patch_size:
        raise UserError(f"clip.tiny.image_size {params.image_size} is not a multiple of clip.tiny.patch_size "
                        f"{params.patch_size}")
    common = dict(hidden_size=params.hidden_size, intermediate_size=4 * params.hidden_size,
                  num_attention_heads=params.heads, projection_dim=params.projection_dim)
    config = CLIPConfig(
        text_config=dict(common, vocab_size=len(tokenizer), num_hidden_layers=params.text_layers,
                         max_position_embeddings=params.max_length, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(common, num_hidden_layers=params.vision_layers, image_size=params.image_size,
                           patch_size=params.patch_size, num_channels=3),
        projection_dim=params.projection_dim,
        logit_scale_init_value=math.log(params.logit_scale_init),
    )
    with torch.random.fork_rng(devices=[]):  # seed a private copy of the CPU RNG; the caller's stays as it was
        torch.manual_seed(seed)
        model = CLIPModel(config)
    processor = CLIPProcessor(image_processor=tiny_image_processor(params.image_size), tokenizer=tokenizer)
    return save_pretrained(model, processor, out_dir)


def build_random_clip(hub_id: str, reports: Iterable[str], out_dir: str | os.PathLike, seed: int,
                      max_length: int) -> Path:
    """Build ``hub_id``'s architecture from its published configuration with random weights; save it.

    The tokenizer is a stand-in trained on ``reports`` (:data:`medxpert_utils.models.published.STAND_INS`); the
    text tower keeps the published vocabulary size and pools at the stand-in's EOS.
    """
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    entry = published.PUBLISHED[hub_id]
    text = entry.config["text_config"]
    tokenizer = train_tokenizer(reports, RANDOM_VOCAB_TARGET, min(max_length, text["max_position_embeddings"]))
    if len(tokenizer) > text["vocab_size"]:
        raise RuntimeError(f"stand-in tokenizer of {len(tokenizer)} tokens exceeds {hub_id}'s vocabulary")
    config = CLIPConfig(**published.config_kwargs(entry, bos_token_id=tokenizer.bos_token_id,
                                                  eos_token_id=tokenizer.eos_token_id,
                                                  pad_token_id=tokenizer.pad_token_id))
    model = published.seeded_model(CLIPModel, config, seed)
    processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(**entry.processor), tokenizer=tokenizer)
    return save_pretrained(model, processor, out_dir)


def _train_reports(cfg: "Config") -> list[str]:
    from medxpert_utils.data import manifest

    frame = manifest.read(cfg.run_dir)
    return frame.loc[frame["split"] == "train", "report"].fillna("").astype(str).tolist()


def _base_key(cfg: "Config", reports: list[str]) -> dict[str, Any]:
    import transformers

    digest = hashlib.sha256("\n\x00".join(reports).encode("utf-8")).hexdigest()
    built: dict[str, Any] = {"tiny": cfg.clip.tiny.model_dump(mode="json")} if cfg.clip.model == TINY else {
        "random": cfg.clip.model, "max_length": cfg.clip.max_length, "vocab_target": RANDOM_VOCAB_TARGET}
    return {"train_reports_sha256": digest, "n_reports": len(reports), **built,
            "seed": cfg.seed, "transformers": transformers.__version__}


def prepare_base_model(cfg: "Config") -> str:
    """The zero-shot base model's spec: the hub id / folder from params, or the folder of the model built here.

    For ``clip.model: tiny`` (the untrained tiny CLIP) or ``random:<hub id>`` (that model's published architecture
    with random weights) the model is built from the run's training reports into ``models/clip_base/`` and reused
    while the reports, sizes and seed stay the same (a key file beside the folder records them).
    """
    spec = cfg.clip.model
    if not published.builds_in_run(spec):
        return spec
    hub_id = published.hub_id(spec, "clip", "clip.model") if spec != TINY else ""
    out = cfg.paths.clip_base
    reports = _train_reports(cfg)
    return reuse_or_build(out, out.with_name(BASE_KEY_NAME), _base_key(cfg, reports),
                          lambda: build_tiny_clip(cfg.clip.tiny, reports, out, cfg.seed) if spec == TINY else
                          build_random_clip(hub_id, reports, out, cfg.seed, cfg.clip.max_length))


def model_specs(cfg: "Config") -> dict[str, str]:
    """Specs of the two models stages compare: the zero-shot base and the fine-tuned folder (no side effects)."""
    base = str(cfg.paths.clip_base) if published.builds_in_run(cfg.clip.model) else cfg.clip.model
    return {"zero_shot": base, "fine_tuned": str(cfg.paths.clip_finetuned)}


def is_untrained_base(cfg: "Config") -> bool:
    """True when the zero-shot model has random weights (the tiny CLIP, or ``random:<hub id>``): tables say so."""
    return published.builds_in_run(cfg.clip.model)


def count_parameters(model: "torch.nn.Module") -> dict[str, int]:
    """Numbers of trainable and frozen parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable": int(trainable), "frozen": int(frozen)}


def parameter_table(model: "CLIPModel") -> "pd.DataFrame":
    """Trainable and frozen parameters per part of the model (vision tower, text tower, projections, scale)."""
    import pandas as pd

    parts = {"vision tower": "vision_model.", "text tower": "text_model.", "projections": ("visual_projection",
             "text_projection"), "logit scale": "logit_scale"}
    rows = []
    for part, prefix in parts.items():
        params = [p for n, p in model.named_parameters() if n.startswith(prefix)]
        trainable = sum(p.numel() for p in params if p.requires_grad)
        rows.append({"part": part, "trainable": trainable, "frozen": sum(p.numel() for p in params) - trainable})
    table = pd.DataFrame(rows)
    total = {"part": "total", "trainable": int(table["trainable"].sum()), "frozen": int(table["frozen"].sum())}
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True).set_index("part")


def freeze_vision_layers(model: "CLIPModel", n: int) -> None:
    """Freeze the vision embeddings, the pre-encoder layer norm and the first ``n`` vision blocks.

    Early blocks learn generic edges and textures; freezing them saves memory and guards a
    pretrained tower against small-dataset overfitting. ``n = 0`` leaves everything trainable.
    """
    if n < 0:
        raise UserError(f"train.freeze_vision_layers must be >= 0, got {n}")
    if n == 0:
        return
    vision = model.vision_model
    depth = len(vision.encoder.layers)
    if n > depth:
        raise UserError(f"train.freeze_vision_layers={n} but the vision tower has only {depth} blocks - "
                        f"set it to at most {depth}")
    pre_norm = getattr(vision, "pre_layrnorm", None) or vision.pre_layernorm  # HF spells it pre_layrnorm
    for module in (vision.embeddings, pre_norm, *vision.encoder.layers[:n]):
        for param in module.parameters():
            param.requires_grad_(False)


def image_features(model: "CLIPModel", pixel_values: "torch.Tensor") -> "torch.Tensor":
    """Projected (not normalised) image embeddings; transformers 5 returns them as ``pooler_output``."""
    out = model.get_image_features(pixel_values=pixel_values)
    return out if _is_tensor(out) else out.pooler_output


def text_features(model: "CLIPModel", input_ids: "torch.Tensor",
                  attention_mask: "torch.Tensor | None" = None) -> "torch.Tensor":
    """Projected (not normalised) text embeddings pooled at the EOS position."""
    out = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    return out if _is_tensor(out) else out.pooler_output


def _is_tensor(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.Tensor)
