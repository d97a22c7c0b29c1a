"""BLIP models: the tiny offline BLIP built from config, and loading hub or local BLIP models.

Real profiles load ``Salesforce/blip-image-captioning-base`` (hub id or local folder) through
``from_pretrained``; missing weights raise a one-line :class:`MissingModelError`, never random
weights. The offline profiles build a tiny BLIP from ``BlipConfig`` with a BERT-style WordPiece
tokenizer built from the training reports and save it into ``models/blip_base/``, after which it
loads like any hub model.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medxpert_utils.core.errors import UserError
from medxpert_utils.models import published
from medxpert_utils.models.pretrained import TINY, ModelKind, load_pretrained, reuse_or_build, save_pretrained

if TYPE_CHECKING:
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from medxpert_utils.core.config import Config, TinyBlipParams

BASE_KEY_NAME = "blip_base.key.json"  # beside models/blip_base/: what the tiny base was built from
BLIP_KIND = ModelKind(name="BLIP", param="captions.model", example="Salesforce/blip-image-captioning-base",
                      stage="04", builder="captions.prepare_base_model(cfg) into models/blip_base/",
                      offline_tiny="offline tiny BLIP")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4; [CLS] doubles as BLIP's [DEC] start token
TINY_IMAGE_MEAN = (0.5, 0.5, 0.5)  # grey films as three equal channels: zero-centred, unit-scale input
TINY_IMAGE_STD = (0.25, 0.25, 0.25)
TINY_MAX_POSITIONS = 256
TINY_BUILDER_VERSION = 2  # bump when build_tiny_blip changes, so runs rebuild their tiny base
SMALL_MODEL_PARAMS = 20_000_000  # below this, CPU work runs on one thread (see small_model_threads)


# --- building ------------------------------------------------------------------------------------

def train_wordpiece(reports: Iterable[str], vocab_size: int, max_length: int):
    """A BERT-style WordPiece tokenizer (``BertTokenizerFast``, what BLIP uses) trained on ``reports``.

    The vocabulary is the specials, every character seen (alone and as a ``##`` continuation, so
    any word made of known characters tokenises without [UNK]) and then the most frequent whole
    words after BERT's normaliser and pre-tokeniser, ties broken alphabetically. Built this way
    rather than with ``tokenizers``' WordPiece trainer, whose choice among equally frequent merges
    changes from run to run; report vocabularies are small enough that whole words cover them.
    """
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers
    from transformers import BertTokenizerFast

    texts = [str(r) for r in reports if isinstance(r, str) and r.strip()]
    if not texts:
        raise UserError("no training reports to build the tiny BLIP tokenizer from - check the manifest's train split")
    normaliser, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in splitter.pre_tokenize_str(normaliser.normalize_str(text)))
    alphabet = sorted({ch for word in counts for ch in word})
    base = [*SPECIALS, *alphabet, *(f"##{ch}" for ch in alphabet)]
    taken = set(base)
    budget = max(0, vocab_size - len(base))
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if w not in taken][:budget]
    vocab = {token: i for i, token in enumerate([*base, *words])}
    return BertTokenizerFast(vocab=vocab, model_max_length=max_length)


def tiny_image_processor(image_size: int):
    """BLIP's image processor (PIL backend: no torchvision needed) resizing to ``image_size``."""
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    return BlipImageProcessorPil(size={"height": image_size, "width": image_size},
                                 image_mean=list(TINY_IMAGE_MEAN), image_std=list(TINY_IMAGE_STD))


def build_tiny_blip(params: "TinyBlipParams", reports: Iterable[str], out_dir: str | os.PathLike, seed: int,
                    max_length: int = 64) -> Path:
    """Build an untrained tiny BLIP sized by ``params`` with a WordPiece tokenizer trained on ``reports``; save it.

    Generation starts from ``bos_token_id`` ([CLS]) and stops at ``sep_token_id`` ([SEP]), as in the
    hub model where the start token is [DEC].
    """
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

    if params.hidden_size % params.heads:
        raise UserError(f"captions.tiny.hidden_size {params.hidden_size} is not divisible by captions.tiny.heads "
                        f"{params.heads}")
    if params.image_size % params.patch_size:
        raise UserError(f"captions.tiny.image_size {params.image_size} is not a multiple of captions.tiny.patch_size "
                        f"{params.patch_size}")
    tokenizer = train_wordpiece(reports, params.vocab_size, max_length)
    common = dict(hidden_size=params.hidden_size, intermediate_size=4 * params.hidden_size,
                  num_attention_heads=params.heads)
    config = BlipConfig(
        text_config=dict(common, vocab_size=len(tokenizer), encoder_hidden_size=params.hidden_size,
                         num_hidden_layers=params.text_layers, max_position_embeddings=TINY_MAX_POSITIONS,
                         bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                         sep_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(common, num_hidden_layers=params.vision_layers, image_size=params.image_size,
                           patch_size=params.patch_size, initializer_range=0.02),
        projection_dim=params.hidden_size,
    )
    with torch.random.fork_rng(devices=[]):  # private RNG: same seed, same weights; the caller's RNG untouched
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config)
    processor = BlipProcessor(image_processor=tiny_image_processor(params.image_size), tokenizer=tokenizer)
    return save_pretrained(model, processor, out_dir)  # generic atomic save_pretrained of model + processor


def build_random_blip(hub_id: str, reports: Iterable[str], out_dir: str | os.PathLike, seed: int,
                      max_length: int = 64) -> Path:
    """Build ``hub_id``'s architecture from its published configuration with random weights; save it.

    The WordPiece tokenizer is a stand-in built from ``reports``; the text decoder keeps the published vocabulary
    size (the captioner never generates an id the tokenizer lacks: :func:`undecodable_ids`); generation starts at
    [CLS] (the hub model's [DEC]) and stops at [SEP].
    """
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    entry = published.PUBLISHED[hub_id]
    tokenizer = train_wordpiece(reports, entry.config["text_config"]["vocab_size"], max_length)
    config = BlipConfig(**published.config_kwargs(entry, bos_token_id=tokenizer.cls_token_id,
                                                  eos_token_id=tokenizer.sep_token_id,
                                                  sep_token_id=tokenizer.sep_token_id,
                                                  pad_token_id=tokenizer.pad_token_id))
    model = published.seeded_model(BlipForConditionalGeneration, config, seed)
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(**entry.processor), tokenizer=tokenizer)
    return save_pretrained(model, processor, out_dir)


def undecodable_ids(model: Any, tokenizer: Any) -> list[int]:
    """Ids of the decoder's vocabulary beyond the tokenizer's (none for a hub BLIP or the tiny one; a stand-in
    tokenizer of a published architecture has fewer): generation must never pick them, since they decode to
    nothing. BLIP's ``generate`` reads its text decoder's generation config, not a saved one, so the captioner
    passes them."""
    return published.suppressed_ids(int(model.config.text_config.vocab_size), len(tokenizer))


def base_note(spec: str) -> str:
    """What follows a base captioner's spec in tables: the tiny or random-weights label, or ""."""
    return published.untrained_note(spec, "BLIP")


def text_max_length(cfg: "Config") -> int:
    """Tokens a caption target keeps: the longest caption generated, plus the start and end tokens (16 at least)."""
    return max(16, cfg.captions.max_new_tokens + 2)


def _split_reports(cfg: "Config", split: str = "train") -> list[str]:
    from medxpert_utils.data import manifest

    frame = manifest.read(cfg.run_dir)
    return frame.loc[frame["split"] == split, "report"].fillna("").astype(str).tolist()


def prepare_base_model(cfg: "Config") -> str:
    """The base captioner's spec: the hub id / folder from params, or the folder of the model built here
    (``tiny``, or ``random:<hub id>``: that model's published architecture with random weights) in
    ``models/blip_base/``, rebuilt only when the training reports, its sizes or the seed change.
    """
    import transformers

    spec = cfg.captions.model
    if not published.builds_in_run(spec):
        return spec
    hub_id = published.hub_id(spec, "blip", "captions.model") if spec != TINY else ""
    out = cfg.paths.blip_base
    reports = _split_reports(cfg)
    built = {"tiny": cfg.captions.tiny.model_dump(mode="json")} if spec == TINY else {"random": spec}
    key = {"train_reports_sha256": hashlib.sha256("\n\x00".join(reports).encode()).hexdigest(), **built,
           "max_length": text_max_length(cfg),
           "seed": cfg.seed, "transformers": transformers.__version__, "builder": TINY_BUILDER_VERSION}
    return reuse_or_build(out, out.with_name(BASE_KEY_NAME), key,
                          lambda: build_tiny_blip(cfg.captions.tiny, reports, out, cfg.seed, text_max_length(cfg))
                          if spec == TINY else build_random_blip(hub_id, reports, out, cfg.seed, text_max_length(cfg)))


def load_blip(spec: str | os.PathLike, device: Any = None) -> tuple["BlipForConditionalGeneration", "BlipProcessor"]:
    """Load BLIP and its processor (eval mode, float32, on ``device``) from a hub id or a ``save_pretrained`` folder."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    return load_pretrained(spec, BlipForConditionalGeneration, BlipProcessor, BLIP_KIND, device)


def model_specs(cfg: "Config") -> dict[str, str]:
    """The captioners a run can have: ``base`` (hub id or tiny folder) and ``fine_tuned`` (``models/blip/``)."""
    base = str(cfg.paths.blip_base) if published.builds_in_run(cfg.captions.model) else cfg.captions.model
    return {"base": base, "fine_tuned": str(cfg.paths.blip)}


def rgb_image(image) -> "Any":
    """A PIL RGB image from a PIL image, path or bytes (ImageLoadError names a bad file)."""
    from PIL import Image

    from medxpert_utils.data.images import load_image, to_rgb

    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else to_rgb(image.convert("L"))
    return to_rgb(load_image(image))


@contextlib.contextmanager
def small_model_threads(model, device) -> Iterator[None]:
    """One intra-op thread while a small model runs on CPU, restored afterwards.

    Matrices this small gain nothing from splitting across threads, and on a busy few-core
    machine the extra threads made a tiny-BLIP step ~10x slower (measured: 1.1 s vs 10.9 s).
    """
    import torch

    small = device.type == "cpu" and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
    before = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(before)
