"""Full-size models with random weights, built from their published configurations: the rehearsal's models.

A model spec ``random:<hub id>`` (``clip.model``, ``captions.model``, ``asr.model``) asks for the architecture of
that hub model, built here from the configuration published with it (held below; nothing is downloaded) with
random weights, and saved as a ``save_pretrained`` folder inside the run. Every later step loads that folder like a
downloaded model, so a rehearsal exercises the real profiles' code at the real sizes: 224 px CLIP inputs and
77-token texts, BLIP base's 384 px processor and ``generate``, Whisper small's feature extractor and decoder. Its
results mean nothing, and the run says so wherever it shows (``run.json``'s ``random_weights``, the tables, the
dashboard).

What cannot be had offline is a stand-in, and :data:`STAND_INS` says which: the published tokenizers' vocabularies
(CLIP's BPE, BERT's WordPiece, GPT-2's byte-level BPE for Whisper) are replaced by tokenizers of the same kind
trained on the run's training reports. The models keep their published vocabulary sizes (so their memory and
time are the real ones); the special-token ids in the config are the stand-in tokenizer's, and generation never
picks an id the stand-in tokenizer lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medxpert_utils.core.config import RANDOM_PREFIX
from medxpert_utils.core.errors import UserError
from medxpert_utils.models.pretrained import TINY

# The openai/CLIP image normalisation, published with both CLIP and BLIP's image processors.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, as the published processors store it


@dataclass(frozen=True)
class Published:
    """One hub model's published configuration: its family, model config and processor settings."""

    family: str  # "clip", "blip" or "whisper"
    config: dict[str, Any]
    processor: dict[str, Any] = field(default_factory=dict)


PUBLISHED: dict[str, Published] = {
    "openai/clip-vit-base-patch32": Published(
        "clip",
        config={
            "projection_dim": 512, "logit_scale_init_value": 2.6592,
            "text_config": {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
                            "num_attention_heads": 8, "num_hidden_layers": 12, "max_position_embeddings": 77,
                            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
            "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                              "num_hidden_layers": 12, "image_size": 224, "patch_size": 32, "num_channels": 3,
                              "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
        },
        processor={"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224},
                   "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD), "resample": BICUBIC},
    ),
    "Salesforce/blip-image-captioning-base": Published(
        "blip",
        config={
            "projection_dim": 512, "image_text_hidden_size": 256,
            "text_config": {"vocab_size": 30524, "hidden_size": 768, "encoder_hidden_size": 768,
                            "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
                            "max_position_embeddings": 512, "hidden_act": "gelu", "layer_norm_eps": 1e-12},
            "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                              "num_hidden_layers": 12, "image_size": 384, "patch_size": 16, "hidden_act": "gelu",
                              "layer_norm_eps": 1e-5, "initializer_range": 0.02},
        },
        processor={"size": {"height": 384, "width": 384}, "image_mean": list(OPENAI_CLIP_MEAN),
                   "image_std": list(OPENAI_CLIP_STD), "resample": BICUBIC},
    ),
    "openai/whisper-small.en": Published(
        "whisper",
        config={"vocab_size": 51864, "num_mel_bins": 80, "d_model": 768, "encoder_layers": 12, "decoder_layers": 12,
                "encoder_attention_heads": 12, "decoder_attention_heads": 12, "encoder_ffn_dim": 3072,
                "decoder_ffn_dim": 3072, "max_source_positions": 1500, "max_target_positions": 448,
                "activation_function": "gelu", "scale_embedding": False},
        processor={"feature_size": 80, "sampling_rate": 16000, "chunk_length": 30},
    ),
}

STAND_INS = {
    "clip": "tokenizer: a CLIP byte-level BPE trained on the run's training reports (not openai's 49,408 tokens)",
    "blip": "tokenizer: a BERT WordPiece built from the run's training reports (not bert-base-uncased's vocabulary)",
    "whisper": "tokenizer: a GPT-2-style byte-level BPE trained on the run's training reports (not Whisper's)",
}


def is_random(spec: object) -> bool:
    """True for a ``random:<hub id>`` spec."""
    return isinstance(spec, str) and spec.strip().startswith(RANDOM_PREFIX)


def builds_in_run(spec: str) -> bool:
    """True when a spec names a model built inside the run (``tiny``, or ``random:<hub id>``) rather than loaded."""
    return spec.strip() == TINY or is_random(spec)


def hub_id(spec: str, family: str, param: str) -> str:
    """The hub id a ``random:`` spec names, when its published configuration is held; one line naming the choices
    otherwise."""
    name = spec.strip()[len(RANDOM_PREFIX):].strip()
    entry = PUBLISHED.get(name)
    if entry is None or entry.family != family:
        known = ", ".join(f"{RANDOM_PREFIX}{k}" for k, v in PUBLISHED.items() if v.family == family)
        raise UserError(f"{param} '{spec}': no published {family.upper()} configuration is held for '{name}' - "
                        f"use {known}")
    return name


def describe(spec: str) -> str:
    """How tables and pages name a random-weights model: ``random weights, built from the published config of X``."""
    return f"random weights, built from the published config of {spec.strip()[len(RANDOM_PREFIX):].strip()}"


def config_kwargs(entry: Published, **text_ids: int) -> dict[str, Any]:
    """The published configuration as keyword arguments of its config class, with the stand-in tokenizer's special
    token ids (``bos_token_id=...``) put into the text tower's."""
    kwargs = {k: dict(v) if isinstance(v, dict) else v for k, v in entry.config.items()}
    kwargs["text_config"].update(text_ids)
    return kwargs


def seeded_model(model_cls: Any, config: Any, seed: int) -> Any:
    """``model_cls(config)`` with its random weights drawn from a private RNG seeded with ``seed`` (same seed, same
    weights; the caller's RNG is left as it was)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(config)


def suppressed_ids(vocab_size: int, tokenizer_size: int) -> list[int]:
    """Ids of the model's vocabulary that the stand-in tokenizer lacks: generation must never pick them."""
    return list(range(tokenizer_size, vocab_size))


def untrained_note(spec: str, name: str) -> str:
    """What a table adds after a base model's spec: the tiny model's or a random-weights model's label, else ""."""
    text = spec.strip()
    if text == TINY:
        return f" (untrained tiny {name} built from config)"
    if is_random(text):
        return f" ({describe(text)})"
    return ""
