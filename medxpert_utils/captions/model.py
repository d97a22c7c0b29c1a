"""Captioning with BLIP (notebook 04): the :class:`Captioner` and :func:`caption_split` (``captions.parquet``).

The models themselves (the tiny offline BLIP, hub or local BLIP) load through :mod:`medxpert_utils.models.blip`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medxpert_utils.core import io, stages
from medxpert_utils.core.errors import MissingModelError, UserError
from medxpert_utils.models import published
from medxpert_utils.models.blip import (
    load_blip,
    model_specs,
    prepare_base_model,
    rgb_image,
    small_model_threads,
    undecodable_ids,
)

if TYPE_CHECKING:
    import pandas as pd

    from medxpert_utils.core.config import Config

MAX_KEPT_SIDE = 768  # caption_split keeps decoded images at most this large (BLIP itself looks at 384 px)


# --- captioning --------------------------------------------------------------------------------

class Captioner:
    """Caption images with a BLIP model (beam or greedy per params), in batches."""

    def __init__(self, model, processor, name: str = "blip", num_beams: int = 1, max_new_tokens: int = 40,
                 prompt: str | None = None, batch_size: int = 16):
        self.model, self.processor, self.name = model, processor, name
        self.num_beams, self.max_new_tokens, self.prompt, self.batch_size = (num_beams, max_new_tokens, prompt,
                                                                             batch_size)
        unknown = undecodable_ids(model, processor.tokenizer)
        self.generate_kwargs: dict[str, Any] = {"suppress_tokens": unknown} if unknown else {}

    @classmethod
    def from_run(cls, run: "str | os.PathLike | Config", which: str = "auto", device: Any = None) -> "Captioner":
        """The run's fine-tuned captioner when ``models/blip/`` exists (``which='auto'``), else the base one."""
        from medxpert_utils.core import config as config_mod

        cfg = run if hasattr(run, "captions") else config_mod.from_run(run)
        specs = model_specs(cfg)
        if which == "auto":
            which = "fine_tuned" if (Path(specs["fine_tuned"]) / "config.json").is_file() else "base"
        if which not in specs:
            raise UserError(f"unknown captioner {which!r} - choose auto, base or fine_tuned")
        if which == "fine_tuned" and not (Path(specs["fine_tuned"]) / "config.json").is_file():
            raise MissingModelError(f"no fine-tuned BLIP in {specs['fine_tuned']} - set captions.finetune: true and "
                                    f"{stages.hint('04', cfg.run_name, force=True)}")
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

        from medxpert_utils.core.progress import tqdm

        out: list[str] = []
        for start in tqdm(range(0, len(images), size), desc=f"captions ({self.name})", disable=not progress,
                          leave=False):
            pil = [rgb_image(im) for im in images[start:start + size]]
            kwargs = {"images": pil, "return_tensors": "pt"}
            if self.prompt:
                kwargs["text"] = [self.prompt] * len(pil)
            inputs = self.processor(**kwargs)
            with torch.no_grad():
                ids = self.model.generate(pixel_values=inputs["pixel_values"].to(device),
                                          input_ids=inputs["input_ids"].to(device) if self.prompt else None,
                                          max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                                          do_sample=False, **self.generate_kwargs)
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

    Columns: study_id, image_path, caption, reference (the report), model. The manifest's readable rows only;
    an image that fails to decode now raises :class:`~medxpert_utils.data.images.ImageChangedError` (one line
    naming it), as in every stage.
    """
    import pandas as pd

    from medxpert_utils.data import manifest

    frame = manifest.read(cfg.run_dir)
    rows = frame[frame["split"] == split].sort_values(["study_id", "image_path"])
    if cfg.captions.max_images:
        rows = rows.head(cfg.captions.max_images)
    from medxpert_utils.data.images import load_manifest_image

    images, keep = [], []
    for row in rows.itertuples(index=False):
        image = load_manifest_image(row.image_path)
        image.thumbnail((MAX_KEPT_SIDE, MAX_KEPT_SIDE))  # grey and at most this size in memory
        images.append(image)
        keep.append(row)
    if not keep:
        raise UserError(f"no images in the {split} split to caption - check data.split and the manifest")
    if published.builds_in_run(cfg.captions.model):
        prepare_base_model(cfg)
    out = []
    for name in models or available_models(cfg):
        captioner = Captioner.from_run(cfg, which=name)
        captions = captioner.caption(images, progress=progress)
        out.append(pd.DataFrame({"study_id": [r.study_id for r in keep], "image_path": [r.image_path for r in keep],
                                 "caption": captions, "reference": [r.report for r in keep], "model": name}))
    result = pd.concat(out, ignore_index=True)
    io.write_parquet(cfg.paths.captions, result)
    return result
