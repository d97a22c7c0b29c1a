"""BLIP models for captioning: the tiny offline BLIP, loading hub/local models, the Captioner.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from medxpert_utils import io
from medxpert_utils.errors import ImageLoadError, MissingModelError, UserError
from medxpert_utils.pretrained import TINY, ModelKind, load_pretrained, reuse_or_build, save_pretrained

if TYPE_CHECKING:
    import pandas as pd
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from medxpert_utils.config import Config, TinyBlipParams

BASE_KEY_NAME = "blip_base.key.json"  # beside models/blip_base/: what the tiny base was built from
BLIP_KIND = ModelKind(name="BLIP", param="captions.model", example="Salesforce/blip-image-captioning-base",
                      notebook="notebook 04", builder="captions.prepare_base_model(cfg) into models/blip_base/",
                      offline_tiny="offline tiny BLIP")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4; [CLS] doubles as BLIP's [DEC] start token
TINY_IMAGE_MEAN = (0.5, 0.5, 0.5)  # grey films as three equal channels: zero-centred, unit-scale input
TINY_IMAGE_STD = (0.25, 0.25, 0.25)
TINY_MAX_POSITIONS = 256
TINY_BUILDER_VERSION = 2  # bump when build_tiny_blip changes, so runs rebuild their tiny base
SMALL_MODEL_PARAMS = 20_000_000  # below this, CPU work runs on one thread (see small_model_threads)
MAX_KEPT_SIDE = 768  # caption_split keeps decoded images at most this large (BLIP itself looks at 384 px)


# --- models ------------------------------------------------------------------------------------

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
        raise UserError(f"captions.tiny.hidden_size {params.hidden_size} is not divisible by captions.tiny.heads {params.heads}")
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


def _text_max_length(cfg: "Config") -> int:
    return max(16, cfg.captions.max_new_tokens + 2)


def _split_reports(cfg: "Config", split: str = "train") -> list[str]:
    from medxpert_utils.data import manifest

    frame = manifest.read(cfg.run_dir)
    return frame.loc[frame["split"] == split, "report"].fillna("").astype(str).tolist()


def prepare_base_model(cfg: "Config") -> str:
    """The base captioner's spec: the hub id / folder from params, or the tiny model built into ``models/blip_base/``.

    The tiny model is rebuilt only when the training reports, its sizes or the seed change.
    """
    import transformers

    if cfg.captions.model != TINY:
        return cfg.captions.model
    out = cfg.paths.blip_base
    reports = _split_reports(cfg)
    key = {"train_reports_sha256": hashlib.sha256("\n\x00".join(reports).encode()).hexdigest(),
           "tiny": cfg.captions.tiny.model_dump(mode="json"), "max_length": _text_max_length(cfg),
           "seed": cfg.seed, "transformers": transformers.__version__, "builder": TINY_BUILDER_VERSION}
    return reuse_or_build(out, out.with_name(BASE_KEY_NAME), key,
                          lambda: build_tiny_blip(cfg.captions.tiny, reports, out, cfg.seed, _text_max_length(cfg)))


def load_blip(spec: str | os.PathLike, device: Any = None) -> tuple["BlipForConditionalGeneration", "BlipProcessor"]:
    """Load BLIP and its processor (eval mode, float32, on ``device``) from a hub id or a ``save_pretrained`` folder."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    return load_pretrained(spec, BlipForConditionalGeneration, BlipProcessor, BLIP_KIND, device)


def model_specs(cfg: "Config") -> dict[str, str]:
    """The captioners a run can have: ``base`` (hub id or tiny folder) and ``fine_tuned`` (``models/blip/``)."""
    base = str(cfg.paths.blip_base) if cfg.captions.model == TINY else cfg.captions.model
    return {"base": base, "fine_tuned": str(cfg.paths.blip)}


def _rgb(image) -> "Any":
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


# --- captioning --------------------------------------------------------------------------------

class Captioner:
    """Caption images with a BLIP model (beam or greedy per params), in batches."""

    def __init__(self, model, processor, name: str = "blip", num_beams: int = 1, max_new_tokens: int = 40,
                 prompt: str | None = None, batch_size: int = 16):
        self.model, self.processor, self.name = model, processor, name
        self.num_beams, self.max_new_tokens, self.prompt, self.batch_size = num_beams, max_new_tokens, prompt, batch_size

    @classmethod
    def from_run(cls, run: "str | os.PathLike | Config", which: str = "auto", device: Any = None) -> "Captioner":
        """The run's fine-tuned captioner when ``models/blip/`` exists (``which='auto'``), else the base one."""
        from medxpert_utils import config as config_mod

        cfg = run if hasattr(run, "captions") else config_mod.from_run(run)
        specs = model_specs(cfg)
        if which == "auto":
            which = "fine_tuned" if (Path(specs["fine_tuned"]) / "config.json").is_file() else "base"
        if which not in specs:
            raise UserError(f"unknown captioner {which!r} - choose auto, base or fine_tuned")
        if which == "fine_tuned" and not (Path(specs["fine_tuned"]) / "config.json").is_file():
            raise MissingModelError(f"no fine-tuned BLIP in {specs['fine_tuned']} - run notebook 04 with captions.finetune: true")
        model, processor = load_blip(specs[which], device or cfg.device)
        p = cfg.captions
        return cls(model, processor, which, p.num_beams, p.max_new_tokens, p.prompt, p.batch_size)

    def caption(self, images: Sequence[Any], batch_size: int | None = None, progress: bool = False) -> list[str]:
        """One caption per image (PIL image, path or bytes); an unreadable file raises ImageLoadError."""
        size = batch_size or self.batch_size
        device = next(self.model.parameters()).device
        self.model.eval()
        with small_model_threads(self.model, device):
            return self._caption(images, size, device, progress)

    def _caption(self, images: Sequence[Any], size: int, device, progress: bool) -> list[str]:
        import torch
        from medxpert_utils.progress import tqdm

        out: list[str] = []
        for start in tqdm(range(0, len(images), size), desc=f"captions ({self.name})", disable=not progress, leave=False):
            pil = [_rgb(im) for im in images[start:start + size]]
            kwargs = {"images": pil, "return_tensors": "pt"}
            if self.prompt:
                kwargs["text"] = [self.prompt] * len(pil)
            inputs = self.processor(**kwargs)
            with torch.no_grad():
                ids = self.model.generate(pixel_values=inputs["pixel_values"].to(device),
                                          input_ids=inputs["input_ids"].to(device) if self.prompt else None,
                                          max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                                          do_sample=False)
            out.extend(" ".join(t.split()) for t in self.processor.batch_decode(ids, skip_special_tokens=True))
        return out


def available_models(cfg: "Config") -> list[str]:
    """Captioners to compare: the base, and the fine-tuned one when it exists."""
    names = ["base"]
    if (cfg.paths.blip / "config.json").is_file():
        names.append("fine_tuned")
    return names


def caption_split(cfg: "Config", split: str = "test", models: Sequence[str] | None = None,
                  progress: bool = True) -> "pd.DataFrame":
    """Caption ``split`` (at most ``captions.max_images`` images) with each captioner; write ``captions.parquet``.

    Columns: study_id, image_path, caption, reference (the report), model. Unreadable images are
    skipped and counted in ``frame.attrs['n_skipped']``.
    """
    import pandas as pd

    from medxpert_utils.data import manifest

    frame = manifest.read(cfg.run_dir)
    rows = frame[frame["split"] == split].sort_values(["study_id", "image_path"])
    if cfg.captions.max_images:
        rows = rows.head(cfg.captions.max_images)
    from medxpert_utils.data.images import load_image

    images, keep, skipped = [], [], 0
    for row in rows.itertuples(index=False):
        try:
            image = load_image(row.image_path)
        except ImageLoadError:
            skipped += 1
            continue
        image.thumbnail((MAX_KEPT_SIDE, MAX_KEPT_SIDE))  # grey and at most this size in memory
        images.append(image)
        keep.append(row)
    if not keep:
        raise UserError(f"no readable images in the {split} split to caption - check the manifest")
    if cfg.captions.model == TINY:
        prepare_base_model(cfg)
    out = []
    for name in models or available_models(cfg):
        captioner = Captioner.from_run(cfg, which=name)
        captions = captioner.caption(images, progress=progress)
        out.append(pd.DataFrame({"study_id": [r.study_id for r in keep], "image_path": [r.image_path for r in keep],
                                 "caption": captions, "reference": [r.report for r in keep], "model": name}))
    result = pd.concat(out, ignore_index=True)
    io.write_parquet(cfg.paths.captions, result)
    result.attrs["n_skipped"] = skipped
    return result
