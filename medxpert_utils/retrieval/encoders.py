"""CLIP encoders of images and report texts: L2-normalised float32 embeddings in batches, on any device."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medxpert_utils.core.runtime import autocast, autocast_dtype

if TYPE_CHECKING:
    from transformers import CLIPModel, CLIPProcessor


def _progress(total: int, desc: str, unit: str, show: bool):
    from medxpert_utils.core.progress import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not show, dynamic_ncols=True)


def image_transform(processor: "CLIPProcessor"):
    """The evaluation transform (PIL image -> (3, H, W) tensor) matching training's validation."""
    from medxpert_utils.data.loading.transforms import eval_image_transform

    return eval_image_transform(processor)


def embed_images(model: "CLIPModel", processor: "CLIPProcessor", paths: Sequence[str], batch_size: int = 64,
                 num_workers: int = 0, device: Any = None, mixed_precision: str = "auto", progress: bool = True,
                 transform: Any = None) -> np.ndarray:
    """L2-normalised image embeddings (n, dim) float32 of the image files, decoded by DataLoader workers.

    Every file must be readable (the contract is one row per manifest row; the data stage left out the images it
    could not decode): one that fails now raises :class:`~medxpert_utils.data.images.ImageChangedError`, one line
    naming it, as in every stage.
    """
    import torch

    from medxpert_utils.data.loading.datasets import ImageDataset, ManifestLoader, collate_images
    from medxpert_utils.models.clip import image_features

    device = torch.device(device) if device is not None else next(model.parameters()).device
    paths = [os.fspath(p) for p in paths]
    dataset = ImageDataset(paths, transform or image_transform(processor))
    loader = ManifestLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_images, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if num_workers else None)
    out = np.empty((len(dataset), model.config.projection_dim), dtype=np.float32)
    with torch.inference_mode(), autocast(device, autocast_dtype(device, mixed_precision)), \
            _progress(len(dataset), "images", "img", progress) as bar:
        for batch in loader:
            if batch["n"]:
                feats = image_features(model, batch["pixel_values"].to(device, non_blocking=True))
                index = batch["index"].numpy()
                out[index] = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
            bar.update(batch["n"])
    return out


def text_token_limit(model: "CLIPModel", max_length: int) -> int:
    """Tokens kept per report: params ``clip.max_length`` capped by the text tower's positions."""
    return min(int(max_length), int(model.config.text_config.max_position_embeddings))


def embed_texts(model: "CLIPModel", processor: "CLIPProcessor", texts: Sequence[str], batch_size: int = 64,
                max_length: int = 77, device: Any = None, mixed_precision: str = "auto",
                progress: bool = True) -> np.ndarray:
    """L2-normalised text embeddings (n, dim) float32; each distinct text is embedded once, truncated
    to ``max_length`` tokens (capped by the model), in length-sorted batches to limit padding."""
    import torch

    from medxpert_utils.models.clip import text_features

    device = torch.device(device) if device is not None else next(model.parameters()).device
    texts = ["" if t is None else str(t) for t in texts]
    distinct, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    order = np.argsort([len(t) for t in distinct], kind="stable")
    limit = text_token_limit(model, max_length)
    unique_out = np.empty((len(distinct), model.config.projection_dim), dtype=np.float32)
    with torch.inference_mode(), autocast(device, autocast_dtype(device, mixed_precision)), \
            _progress(len(distinct), "reports", "report", progress) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            tokens = processor.tokenizer([distinct[i] for i in idx], padding=True, truncation=True,
                                         max_length=limit, return_tensors="pt")
            feats = text_features(model, tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
            unique_out[idx] = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
            bar.update(len(idx))
    return unique_out[np.asarray(inverse).reshape(-1)]
