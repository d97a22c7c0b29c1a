"""PyTorch datasets and loaders for image-report pairs and for images alone.

Images are decoded inside DataLoader workers with :func:`medxpert_utils.data.images.load_image`
and turned into tensors by :class:`ImageTransform`, a hand-written PIL resize + NumPy normalise
that reproduces the CLIP image processor exactly (it is several times faster than calling the
processor per image, which keeps data loading off the critical path). Training passes uint8
pixels from the workers and normalises whole batches on the device (``raw_pixels``). Training augmentation is
a small rotation, a random resized crop and brightness/contrast jitter; never a horizontal flip,
because laterality (left/right findings, the heart on the left) is part of the report.

Augmentation randomness is a function of ``(seed, epoch, row)`` alone, so a batch is the same
whichever worker builds it and a resumed run sees exactly the images an uninterrupted one saw.
Reports are tokenised per batch in the collate function (padding to the longest, truncation at
``max_length``). Unreadable images are skipped: the dataset yields ``None``, the collate drops it
and counts it in ``n_skipped``; an epoch never stops on a bad file.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from medxpert_utils.errors import ImageLoadError

# Aspect-ratio jitter of the random resized crop: narrower than torchvision's 3/4..4/3, since
# a radiograph's proportions (heart width against chest width) carry meaning.
_RATIO_RANGE = (0.9, 1 / 0.9)


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> normalised ``3 x H x W`` float tensor, as the CLIP image processor computes it.

    ``shortest_edge`` resizes keeping the aspect ratio (else ``size`` is the exact ``(h, w)``),
    then a centre crop to ``crop`` (when set), rescale and per-channel normalise. With
    ``augment`` and an ``rng`` the call applies the training augmentation instead of the resize
    and crop; without an ``rng`` it is always the deterministic eval transform.
    """

    shortest_edge: int | None
    size: tuple[int, int] | None
    crop: tuple[int, int] | None
    resample: int
    rescale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: tuple[float, float, float, float] | None = None  # rotation_deg, scale_min, brightness, contrast

    @property
    def output_size(self) -> tuple[int, int]:
        if self.crop is not None:
            return self.crop
        if self.size is not None:
            return self.size
        return (self.shortest_edge, self.shortest_edge)  # only square inputs give a fixed size here

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Normalised ``3 x H x W`` float32 tensor (augmented when this transform has ``augment`` and an ``rng``)."""
        return self._normalise(self.pixels(img, rng))

    def raw(self, img: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        """The same image before normalisation as uint8 ``C x H x W`` (C = 1 for grey): 12x fewer bytes
        to pass from loader workers; :meth:`normalise_batch` finishes the job on the device."""
        return torch.from_numpy(np.rint(self.pixels(img, rng)).astype(np.uint8))

    def normalise_batch(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x H x W`` uint8 (or 0..255 float) -> normalised ``B x 3 x H x W`` float32, on ``x``'s device.

        Same float32 arithmetic as the per-image path, so ``normalise_batch(raw(img)[None])[0] == img_tensor``.
        """
        scale = torch.tensor([self.rescale / s for s in self.std], dtype=torch.float32, device=x.device)
        shift = torch.tensor([m / s for m, s in zip(self.mean, self.std)], dtype=torch.float32, device=x.device)
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x * scale.view(1, 3, 1, 1) - shift.view(1, 3, 1, 1)

    def pixels(self, img: Image.Image, rng: np.random.Generator | None = None) -> np.ndarray:
        """Resized/cropped (or augmented) pixels as float32 ``C x H x W`` in 0..255, before normalisation."""
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        if self.augment is not None and rng is not None:
            return self._augmented(img, rng)
        img = self._resize(img)
        if self.crop is not None:
            h, w = self.crop
            top, left = (img.height - h) // 2, (img.width - w) // 2
            img = img.crop((left, top, left + w, top + h))  # outside the image PIL fills 0, as the processor pads
        return self._to_array(img)

    def _resize(self, img: Image.Image) -> Image.Image:
        if self.shortest_edge is not None:
            short, long = (img.width, img.height) if img.width <= img.height else (img.height, img.width)
            new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
            new_w, new_h = (new_short, new_long) if img.width <= img.height else (new_long, new_short)
        else:
            new_h, new_w = self.size
        if (new_w, new_h) == img.size:
            return img
        return img.resize((new_w, new_h), resample=self.resample)

    @staticmethod
    def _to_array(img: Image.Image) -> np.ndarray:
        """``C x H x W`` float32 (C = 1 for grey). NumPy, not torch: no intra-op threads for tiny ops."""
        arr = np.asarray(img, dtype=np.float32)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def _normalise(self, x: np.ndarray) -> torch.Tensor:
        """uint8-valued ``C x H x W`` -> normalised 3 channels (grey is replicated, as ``to_rgb`` does)."""
        out = np.empty((3, *x.shape[1:]), dtype=np.float32)
        for c in range(3):
            src = x[c] if x.shape[0] == 3 else x[0]
            if c and x.shape[0] == 1 and self.mean[c] == self.mean[0] and self.std[c] == self.std[0]:
                out[c] = out[0]
                continue
            np.multiply(src, np.float32(self.rescale / self.std[c]), out=out[c])
            out[c] -= np.float32(self.mean[c] / self.std[c])
        return torch.from_numpy(out)

    def _plan_augment(self, img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, tuple[float, ...], float, float]:
        """One augmentation's random draws: the source (box-reduced if large), the affine matrix from
        output to source pixel coordinates (PIL's ``AFFINE`` convention), brightness and contrast factors."""
        rotation, scale_min, brightness, contrast = self.augment
        out_h, out_w = self.output_size
        # Box-filter big films down first (antialiased, fast) so the affine step below never
        # shrinks by much more than 1x: it samples points and would alias on a large reduction.
        factor = int(min(img.width, img.height) * math.sqrt(scale_min) * 0.9 // max(out_h, out_w))
        if factor >= 2:
            img = img.reduce(factor)
        # The eval view is the centred box with the output's aspect ratio; crop a random part of it.
        box_w, box_h = min(img.width, img.height * out_w / out_h), min(img.height, img.width * out_h / out_w)
        area = box_w * box_h * rng.uniform(scale_min, 1.0)
        ratio = math.exp(rng.uniform(math.log(_RATIO_RANGE[0]), math.log(_RATIO_RANGE[1]))) * box_w / box_h
        cw, ch = min(box_w, math.sqrt(area * ratio)), min(box_h, math.sqrt(area / ratio))
        left = (img.width - box_w) / 2 + rng.uniform(0, box_w - cw)
        top = (img.height - box_h) / 2 + rng.uniform(0, box_h - ch)
        angle = -math.radians(rng.uniform(-rotation, rotation)) if rotation > 0 else 0.0  # sign as PIL's rotate
        # output (u, v) -> crop (left + u*sx, top + v*sy) -> source pixel of the image rotated about its centre
        cos, sin = math.cos(angle), math.sin(angle)
        cx, cy = img.width / 2, img.height / 2
        sx, sy = cw / out_w, ch / out_h
        x0, y0 = left - cx, top - cy
        matrix = (cos * sx, sin * sy, cos * x0 + sin * y0 + cx,
                  -sin * sx, cos * sy, -sin * x0 + cos * y0 + cy)
        gain = float(rng.uniform(1 - brightness, 1 + brightness)) if brightness > 0 else 1.0
        spread = float(rng.uniform(1 - contrast, 1 + contrast)) if contrast > 0 else 1.0
        return img, matrix, gain, spread

    def _augmented(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        """Random rotation + resized crop as one affine resampling of the output pixels, then jitter."""
        _, _, brightness, contrast = self.augment
        img, matrix, gain, spread = self._plan_augment(img, rng)
        resample = self.resample if self.resample in (Image.NEAREST, Image.BILINEAR, Image.BICUBIC) else Image.BILINEAR
        out_h, out_w = self.output_size
        img = img.transform((out_w, out_h), Image.Transform.AFFINE, matrix, resample=resample, fillcolor=0)
        x = self._to_array(img)
        if brightness > 0:
            x *= np.float32(gain)
        if contrast > 0:
            mean = x.mean(dtype=np.float64)
            x = (x - mean) * np.float32(spread) + np.float32(mean)
        return np.clip(x, 0, 255, out=x)

    def augment_spec(self, img: Image.Image, rng: np.random.Generator) -> dict[str, Any]:
        """The draws of :meth:`raw`'s augmentation, for :meth:`augment_batch` to apply to a whole batch."""
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        img, matrix, gain, spread = self._plan_augment(img, rng)
        arr = np.asarray(img, dtype=np.uint8)
        source = torch.from_numpy(arr[None].copy() if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())
        return {"source": source, "affine": matrix, "jitter": (gain, spread)}

    def augment_batch(self, specs: Sequence[dict[str, Any]]) -> torch.Tensor:
        """uint8 ``B x C x H x W`` augmented images from :meth:`augment_spec` draws, resampled together.

        The same geometry and jitter as :meth:`raw` with the same draws, computed with one
        ``grid_sample`` per source size. Torch's bicubic kernel differs from PIL's (interior pixels
        within a few grey levels) and pixels straddling the image's edge blend into the zero fill
        instead of being cut sharply. Per-item PIL work would cost a small model on a 1-2 core
        machine a good share of its step.
        """
        import torch.nn.functional as F

        _, _, brightness, contrast = self.augment
        out_h, out_w = self.output_size
        mode = {Image.NEAREST: "nearest", Image.BICUBIC: "bicubic"}.get(self.resample, "bilinear")
        channels = max(spec["source"].shape[0] for spec in specs)
        out = torch.empty((len(specs), channels, out_h, out_w), dtype=torch.uint8)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, spec in enumerate(specs):
            by_size.setdefault(tuple(spec["source"].shape[1:]), []).append(i)
        for (height, width), rows in by_size.items():
            src = torch.stack([specs[i]["source"].expand(channels, -1, -1) for i in rows]).float()
            # PIL's matrix maps output pixel-centre coordinates (u + 0.5, v + 0.5) to source ones; in the
            # [-1, 1] coordinates of affine_grid / grid_sample (align_corners=False) it becomes theta.
            a, b, c, d, e, f = np.array([specs[i]["affine"] for i in rows], dtype=np.float64).T
            theta = np.stack([
                np.stack([a * out_w / width, b * out_h / width, (a * out_w + b * out_h + 2 * c) / width - 1], -1),
                np.stack([d * out_w / height, e * out_h / height, (d * out_w + e * out_h + 2 * f) / height - 1], -1),
            ], axis=1)
            grid = F.affine_grid(torch.from_numpy(theta).float(), [len(rows), channels, out_h, out_w],
                                 align_corners=False)
            img = F.grid_sample(src, grid, mode=mode, padding_mode="zeros", align_corners=False)
            jitter = torch.tensor([specs[i]["jitter"] for i in rows], dtype=torch.float32)
            if brightness > 0:
                img = img * jitter[:, 0, None, None, None]
            if contrast > 0:
                mean = img.double().mean(dim=(1, 2, 3), keepdim=True).float()
                img = (img - mean) * jitter[:, 1, None, None, None] + mean
            out[rows] = img.clamp_(0, 255).round_().to(torch.uint8)
        return out


def _image_processor(processor: Any) -> Any:
    return getattr(processor, "image_processor", processor)


def _size_dict(size: Any) -> dict[str, Any]:
    """A processor's size as a plain dict without empty keys (transformers 5 uses a ``SizeDict`` dataclass)."""
    if isinstance(size, (int, np.integer)):
        return {"shortest_edge": int(size)}
    items = size.items() if isinstance(size, dict) else vars(size).items()
    return {key: value for key, value in items if value is not None}


def eval_image_transform(processor: Any) -> ImageTransform:
    """The processor's resize / crop / normalise as a fast callable ``PIL -> tensor`` (no augmentation)."""
    ip = _image_processor(processor)

    def get(name: str, default: Any = None) -> Any:
        value = getattr(ip, name, default)
        return default if value is None else value

    size = _size_dict(get("size", {}))
    shortest, fixed = size.get("shortest_edge"), None
    if size.get("longest_edge") or size.get("max_height"):
        raise ValueError(f"unsupported image processor size {size!r}: expected shortest_edge or height/width")
    if not shortest:
        if size.get("height") and size.get("width"):
            fixed = (int(size["height"]), int(size["width"]))
        else:
            raise ValueError(f"unsupported image processor size {size!r}: expected shortest_edge or height/width")
    crop = None
    if get("do_center_crop", False):
        cs = _size_dict(get("crop_size", {}))
        crop = (int(cs["height"]), int(cs["width"]))
    if not get("do_resize", True):
        raise ValueError("image processors without resizing are not supported: batches need one image size")
    mean = get("image_mean", [0.0, 0.0, 0.0]) if get("do_normalize", True) else [0.0, 0.0, 0.0]
    std = get("image_std", [1.0, 1.0, 1.0]) if get("do_normalize", True) else [1.0, 1.0, 1.0]
    mean = [float(mean)] * 3 if np.isscalar(mean) else [float(m) for m in mean]
    std = [float(std)] * 3 if np.isscalar(std) else [float(s) for s in std]
    resample = get("resample", Image.BICUBIC)
    return ImageTransform(
        shortest_edge=int(shortest) if shortest else None,
        size=fixed,
        crop=crop,
        resample=int(getattr(resample, "value", resample)),
        rescale=float(get("rescale_factor", 1 / 255)) if get("do_rescale", True) else 1.0,
        mean=tuple(mean),
        std=tuple(std),
    )


def train_image_transform(processor: Any, augment: Any | None) -> ImageTransform:
    """The eval transform plus training augmentation from ``AugmentParams`` (None or disabled: none)."""
    base = eval_image_transform(processor)
    if augment is None or not getattr(augment, "enabled", True):
        return base
    params = (float(augment.rotation_deg), float(augment.scale_min), float(augment.brightness), float(augment.contrast))
    return ImageTransform(**{**base.__dict__, "augment": params})


def positive_label_matrix(frame: pd.DataFrame) -> np.ndarray:
    """``rows x 14`` float32 multi-hot of positive (== 1) CheXpert labels; absent columns count as 0."""
    from medxpert_utils.data.labels import CHEXPERT_LABELS

    out = np.zeros((len(frame), len(CHEXPERT_LABELS)), dtype=np.float32)
    for j, name in enumerate(CHEXPERT_LABELS):
        if name in frame.columns:
            out[:, j] = pd.to_numeric(frame[name], errors="coerce").eq(1).fillna(False).to_numpy(dtype=np.float32)
    return out


class ImageTextDataset(Dataset):
    """Manifest rows as dicts of ``pixel_values``, ``text``, ``index``, ``report_group`` and ``labels``.

    ``index`` is the row's position in ``frame``. Keys may be plain row positions or
    ``(row, epoch)`` pairs (from :class:`EpochBatchSampler`), which seed the augmentation with
    ``(seed, epoch, row)``. An unreadable image gives ``None``. With ``raw`` the pixels stay uint8
    and unnormalised (see :meth:`ImageTransform.raw`).
    """

    def __init__(self, frame: pd.DataFrame, image_transform: ImageTransform, text_column: str = "report",
                 seed: int = 0, raw: bool = False, cache_mb: float = 0.0):
        from medxpert_utils.data.manifest import report_groups

        self.paths = frame["image_path"].astype(str).tolist()
        self.texts = frame[text_column].fillna("").astype(str).tolist()
        if "report_group" in frame.columns:
            self.groups = frame["report_group"].to_numpy(dtype=np.int64)
        else:
            self.groups = report_groups(self.texts)
        self.labels = positive_label_matrix(frame)
        self.transform = image_transform
        self.seed = int(seed)
        self.raw = bool(raw)
        # Decoded images kept in memory up to cache_mb (first come, first kept): epochs after the first
        # skip decoding, which costs as much as the augmentation. Each worker process has its own.
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: dict[int, Image.Image] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.paths)

    def _image(self, index: int) -> Image.Image:
        from medxpert_utils.data.images import load_image

        img = self._cache.get(index)
        if img is None:
            img = load_image(self.paths[index])
            size = img.width * img.height * len(img.getbands())
            if self._cached_bytes + size <= self.cache_bytes:
                self._cache[index] = img
                self._cached_bytes += size
        return img

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | None:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
        try:
            img = self._image(index)
        except (ImageLoadError, OSError):
            return None
        rng = np.random.default_rng([self.seed, epoch, index]) if self.transform.augment is not None else None
        if self.raw and rng is not None:  # augmented in the collate, for the whole batch at once
            image = {"augment": self.transform.augment_spec(img, rng)}
        else:
            image = {"pixel_values": self.transform.raw(img, rng) if self.raw else self.transform(img, rng)}
        return {
            **image,
            "text": self.texts[index],
            "index": index,
            "report_group": int(self.groups[index]),
            "labels": self.labels[index],
        }


class ClipCollate:
    """Stack images, tokenise the batch's reports, drop (and count) rows whose image failed."""

    def __init__(self, tokenizer: Any, max_length: int, transform: ImageTransform | None = None):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.transform = transform  # applies the batch augmentation of items that carry "augment" draws

    def __call__(self, items: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        kept = [item for item in items if item is not None]
        batch: dict[str, Any] = {"n": len(kept), "n_skipped": len(items) - len(kept)}
        if not kept:
            return batch
        enc = self.tokenizer([item["text"] for item in kept], padding="longest", truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        batch.update(
            pixel_values=(self.transform.augment_batch([item["augment"] for item in kept]) if "augment" in kept[0]
                          else torch.stack([item["pixel_values"] for item in kept])),
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            index=torch.tensor([item["index"] for item in kept], dtype=torch.long),
            report_group=torch.tensor([item["report_group"] for item in kept], dtype=torch.long),
            labels=torch.from_numpy(np.stack([item["labels"] for item in kept])),
        )
        return batch


class EpochBatchSampler(Sampler):
    """Batches of ``(row, epoch)`` keys; the order is a permutation seeded by ``(seed, epoch)``.

    Reproducible from the seed alone, so a resumed run can start at ``start_batch`` of an epoch
    without replaying it. Under several processes each rank takes its slice of every global
    batch (``batch_size`` rows per process). ``num_batches`` caps the batches per epoch.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 num_batches: int | None = None, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.shuffle, self.seed = int(n), int(batch_size), bool(shuffle), int(seed)
        self.drop_last, self.rank, self.world_size = bool(drop_last), int(rank), int(world_size)
        self.num_batches = num_batches
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def batches_per_epoch(self) -> int:
        global_batch = self.batch_size * self.world_size
        full, rest = divmod(self.n, global_batch)
        count = full if (self.drop_last or rest == 0) else full + 1
        return count if self.num_batches is None else min(count, int(self.num_batches))

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.order(self.epoch)
        global_batch = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch()):
            rows = order[b * global_batch:(b + 1) * global_batch]
            rows = rows[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            yield [(int(r), self.epoch) for r in rows]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)


def tokenizer_max_length(processor: Any, cap: int | None = None) -> int:
    """Truncation length: the tokenizer's limit, the text tower's positions and ``cap``, whichever is least."""
    tokenizer = getattr(processor, "tokenizer", processor)
    limit = int(min(getattr(tokenizer, "model_max_length", 77) or 77, 4096))
    return min(limit, int(cap)) if cap else limit


_PREFETCH_BYTES = 4 * 2**30  # host memory the batches waiting in worker queues may take


def _loader_kwargs(num_workers: int, device: Any, batch_bytes: int) -> dict[str, Any]:
    if num_workers > 0:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenise in workers, not with threads
    pin = device is not None and torch.device(device).type == "cuda"
    kwargs: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin}
    if num_workers > 0:
        # Each worker builds whole batches; with huge batches 4 queued per worker would fill the host.
        prefetch = int(max(1, min(4, _PREFETCH_BYTES // max(1, batch_bytes * num_workers))))
        kwargs.update(persistent_workers=True, prefetch_factor=prefetch)
    return kwargs


def make_loader(frame: pd.DataFrame, processor: Any, batch_size: int, shuffle: bool, augment: Any | None,
                num_workers: int, seed: int, *, max_length: int | None = None, drop_last: bool | None = None,
                num_batches: int | None = None, device: Any = None, rank: int = 0, world_size: int = 1,
                raw_pixels: bool = False, cache_mb: float = 0.0) -> DataLoader:
    """DataLoader of tokenised image-report batches over ``frame`` (see :class:`ClipCollate` for the keys).

    The batch sampler is ``loader.batch_sampler`` (:class:`EpochBatchSampler`): call its
    ``set_epoch(epoch, start_batch)`` before iterating. ``drop_last`` defaults to ``shuffle``
    (training batches are full so every step sees the same number of negatives). With
    ``raw_pixels`` batches carry uint8 pixels; normalise them on the device with
    ``loader.dataset.transform.normalise_batch``. ``cache_mb`` keeps up to that many MB of decoded
    images in memory across epochs (transforms still run on every pass), split between the workers.
    """
    transform = train_image_transform(processor, augment) if augment is not None else eval_image_transform(processor)
    dataset = ImageTextDataset(frame.reset_index(drop=True), transform, seed=seed, raw=raw_pixels,
                               cache_mb=cache_mb / max(1, num_workers))
    drop = shuffle if drop_last is None else drop_last
    if drop and len(dataset) < batch_size * world_size:
        drop = False  # a split smaller than one batch still trains
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed=seed, drop_last=drop, num_batches=num_batches,
                                rank=rank, world_size=world_size)
    collate = ClipCollate(getattr(processor, "tokenizer", processor), tokenizer_max_length(processor, max_length),
                          transform)
    # A private generator: iterating the loader then never draws from the global torch RNG.
    generator = torch.Generator().manual_seed(int(seed))
    out_h, out_w = transform.output_size
    batch_bytes = batch_size * out_h * out_w * (1 if raw_pixels else 3 * 4)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, generator=generator,
                      **_loader_kwargs(num_workers, device, batch_bytes))


class ImageDataset(Dataset):
    """Images alone (for embedding a corpus): item ``(pixel_values, position)`` or ``None`` when unreadable."""

    def __init__(self, paths: Sequence[str | os.PathLike], transform: ImageTransform):
        self.paths = [os.fspath(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        from medxpert_utils.data.images import load_image

        try:
            return self.transform(load_image(self.paths[index])), int(index)
        except (ImageLoadError, OSError):
            return None


def collate_images(items: Sequence[tuple[torch.Tensor, int] | None]) -> dict[str, Any]:
    """Stack the readable images of a batch: ``pixel_values``, their ``index`` positions, ``n_skipped``."""
    kept = [item for item in items if item is not None]
    out: dict[str, Any] = {"n": len(kept), "n_skipped": len(items) - len(kept)}
    if kept:
        out["pixel_values"] = torch.stack([item[0] for item in kept])
        out["index"] = torch.tensor([item[1] for item in kept], dtype=torch.long)
    return out


def make_image_loader(paths: Sequence[str | os.PathLike], processor: Any, batch_size: int, num_workers: int,
                      device: Any = None) -> DataLoader:
    """In-order DataLoader of images for embedding, with the eval transform; batches from :func:`collate_images`."""
    transform = eval_image_transform(processor)
    out_h, out_w = transform.output_size
    return DataLoader(ImageDataset(paths, transform), batch_size=batch_size, shuffle=False, collate_fn=collate_images,
                      **_loader_kwargs(num_workers, device, batch_size * out_h * out_w * 3 * 4))


class Prefetch:
    """Iterate ``iterable`` in a background thread, up to ``depth`` items ahead (for in-process loading).

    With no DataLoader workers (a 1-2 core machine) decoding and augmenting the next batch would
    otherwise wait for the model's step; PIL, numpy and the tokenizer release the GIL for most of
    that work, so a thread overlaps it with the forward/backward pass. Items arrive in the
    iterable's order (results are unchanged). Use as a context manager, or call :meth:`close`
    when stopping early: the thread stops at its next item.
    """

    _DONE = object()

    def __init__(self, iterable: Any, depth: int = 2):
        import queue
        import threading

        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterable,), name="medxpert-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterable: Any) -> None:
        try:
            for item in iterable:
                if not self._put((item, None)):
                    return
        except BaseException as exc:  # re-raised in the consumer's thread
            self._put((self._DONE, exc))
            return
        self._put((self._DONE, None))

    def __iter__(self) -> "Prefetch":
        return self

    def __next__(self) -> Any:
        if self._stop.is_set() and self._queue.empty():  # exhausted or closed: never wait on a stopped thread
            raise StopIteration
        item, error = self._queue.get()
        if item is self._DONE:
            self._stop.set()
            if error is not None:
                raise error
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "Prefetch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def prefetched(loader: DataLoader, depth: int = 2) -> "Prefetch | _Closable":
    """``loader``'s batches, loaded ahead in a thread when it has no worker processes (call ``close()`` after)."""
    if loader.num_workers > 0:  # worker processes already load ahead
        return _Closable(iter(loader))
    return Prefetch(loader, depth)


class _Closable:
    def __init__(self, iterator: Iterator[Any]):
        self._iterator = iterator

    def __iter__(self) -> Iterator[Any]:
        return self._iterator

    def close(self) -> None:
        pass
