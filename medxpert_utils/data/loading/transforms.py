"""Fast image transforms reproducing the CLIP/BLIP image processors, with training augmentation.

:class:`ImageTransform` is a hand-written PIL resize + NumPy normalise that gives exactly what the
model's image processor gives (several times faster than calling the processor per image, which
keeps data loading off the critical path). Training augmentation is a small rotation, a random
resized crop and brightness/contrast jitter -- never a horizontal flip, because laterality (left or
right findings, the heart on the left) is part of the report. It runs per image with PIL
(:meth:`ImageTransform.raw`) or for a whole batch at once with ``grid_sample``
(:meth:`ImageTransform.augment_spec` + :meth:`ImageTransform.augment_batch`), from the same draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

# Aspect-ratio jitter of the random resized crop: narrower than torchvision's 3/4..4/3, since
# a radiograph's proportions (heart width against chest width) carry meaning.
_RATIO_RANGE = (0.9, 1 / 0.9)
# Uniform [0, 1) draws behind one augmented view: crop area, aspect ratio, crop left, crop top,
# rotation, brightness and contrast.
N_DRAWS = 7


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> normalised ``3 x H x W`` float tensor, as the CLIP image processor computes it.

    ``shortest_edge`` resizes keeping the aspect ratio (else ``size`` is the exact ``(h, w)``),
    then a centre crop to ``crop`` (when set), rescale and per-channel normalise. With
    ``augment`` and an ``rng`` the call applies the training augmentation instead of the resize
    and crop; without an ``rng`` it is always the deterministic eval transform. ``rng`` is a
    NumPy generator or the view's :data:`N_DRAWS` uniform draws (see :meth:`draws`).
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

    def __call__(self, img: Image.Image, rng: "np.random.Generator | np.ndarray | None" = None) -> torch.Tensor:
        """Normalised ``3 x H x W`` float32 tensor (augmented when this transform has ``augment`` and an ``rng``)."""
        return self._normalise(self.pixels(img, rng))

    def raw(self, img: Image.Image, rng: "np.random.Generator | np.ndarray | None" = None) -> torch.Tensor:
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

    def pixels(self, img: Image.Image, rng: "np.random.Generator | np.ndarray | None" = None) -> np.ndarray:
        """Resized/cropped (or augmented) pixels as float32 ``C x H x W`` in 0..255, before normalisation."""
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        if self.augment is not None and rng is not None:
            return self._augmented(img, self.draws(rng))
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

    @staticmethod
    def draws(rng: "np.random.Generator | np.ndarray") -> np.ndarray:
        """The :data:`N_DRAWS` uniform draws of one augmented view (drawn from ``rng`` if it is a generator)."""
        if isinstance(rng, np.random.Generator):
            return rng.random(N_DRAWS)
        draws = np.asarray(rng, dtype=np.float64)
        if draws.shape != (N_DRAWS,):
            raise ValueError(f"augmentation draws must be {N_DRAWS} numbers in [0, 1), got shape {draws.shape}")
        return draws

    def augment_source(self, img: Image.Image) -> Image.Image:
        """What the augmentation samples from: big films box-filtered down first (antialiased, fast),
        so the affine step never shrinks by much more than 1x -- it samples points and would alias."""
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        _, scale_min, _, _ = self.augment
        factor = int(min(img.width, img.height) * math.sqrt(scale_min) * 0.9 // max(self.output_size))
        return img.reduce(factor) if factor >= 2 else img

    def source_tensor(self, img: Image.Image) -> torch.Tensor:
        """:meth:`augment_source` as uint8 ``C x H x W`` (C = 1 for grey), the input of :meth:`augment_batch`."""
        arr = np.asarray(self.augment_source(img), dtype=np.uint8)
        return torch.from_numpy(arr[None].copy() if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())

    def _plan(self, widths: np.ndarray, heights: np.ndarray, draws: np.ndarray) -> tuple[np.ndarray, ...]:
        """Views of sources ``widths x heights`` from ``B x N_DRAWS`` draws, vectorised: the ``B x 6``
        affine matrices from output to source pixel coordinates (PIL's ``AFFINE`` convention) and the
        brightness and contrast factors."""
        rotation, scale_min, brightness, contrast = self.augment
        out_h, out_w = self.output_size
        w, h = np.asarray(widths, dtype=np.float64), np.asarray(heights, dtype=np.float64)
        u = np.asarray(draws, dtype=np.float64).reshape(-1, N_DRAWS).T
        # The eval view is the centred box with the output's aspect ratio; crop a random part of it.
        box_w, box_h = np.minimum(w, h * out_w / out_h), np.minimum(h, w * out_h / out_w)
        area = box_w * box_h * (scale_min + (1 - scale_min) * u[0])
        log_lo, log_hi = math.log(_RATIO_RANGE[0]), math.log(_RATIO_RANGE[1])
        ratio = np.exp(log_lo + (log_hi - log_lo) * u[1]) * box_w / box_h
        cw, ch = np.minimum(box_w, np.sqrt(area * ratio)), np.minimum(box_h, np.sqrt(area / ratio))
        left = (w - box_w) / 2 + u[2] * (box_w - cw)
        top = (h - box_h) / 2 + u[3] * (box_h - ch)
        angle = -np.radians(rotation * (2 * u[4] - 1))  # sign as PIL's rotate
        # output (x, y) -> crop (left + x*sx, top + y*sy) -> source pixel of the image rotated about its centre
        cos, sin = np.cos(angle), np.sin(angle)
        cx, cy = w / 2, h / 2
        sx, sy = cw / out_w, ch / out_h
        x0, y0 = left - cx, top - cy
        matrices = np.stack([cos * sx, sin * sy, cos * x0 + sin * y0 + cx,
                             -sin * sx, cos * sy, -sin * x0 + cos * y0 + cy], axis=1)
        return matrices, 1 + brightness * (2 * u[5] - 1), 1 + contrast * (2 * u[6] - 1)

    def _augmented(self, img: Image.Image, draws: np.ndarray) -> np.ndarray:
        """Random rotation + resized crop as one affine resampling of the output pixels, then jitter."""
        _, _, brightness, contrast = self.augment
        img = self.augment_source(img)
        matrices, gains, spreads = self._plan(np.array([img.width]), np.array([img.height]), draws)
        resample = self.resample if self.resample in (Image.NEAREST, Image.BILINEAR, Image.BICUBIC) else Image.BILINEAR
        out_h, out_w = self.output_size
        img = img.transform((out_w, out_h), Image.Transform.AFFINE, tuple(matrices[0]), resample=resample, fillcolor=0)
        x = self._to_array(img)
        if brightness > 0:
            x *= np.float32(gains[0])
        if contrast > 0:
            mean = x.mean(dtype=np.float64)
            x = (x - mean) * np.float32(spreads[0]) + np.float32(mean)
        return np.clip(x, 0, 255, out=x)

    def augment_spec(self, img: Image.Image, rng: "np.random.Generator | np.ndarray") -> dict[str, Any]:
        """One item for :meth:`augment_batch`: the source tensor and the view's draws."""
        return {"source": self.source_tensor(img), "draws": self.draws(rng)}

    def augment_batch(self, specs: Sequence[dict[str, Any]]) -> torch.Tensor:
        """uint8 ``B x C x H x W`` augmented images from :meth:`augment_spec` items, resampled together.

        The same geometry and jitter as :meth:`raw` with the same draws, planned for the whole
        batch at once and computed with one ``grid_sample`` per source size. Torch's bicubic
        kernel differs from PIL's (interior pixels within a few grey levels) and pixels straddling
        the image's edge blend into the zero fill instead of being cut sharply. Per-item PIL work
        would cost a small model on a 1-2 core machine a good share of its step.
        """
        import torch.nn.functional as F

        _, _, brightness, contrast = self.augment
        out_h, out_w = self.output_size
        mode = {Image.NEAREST: "nearest", Image.BICUBIC: "bicubic"}.get(self.resample, "bilinear")
        channels = max(spec["source"].shape[0] for spec in specs)
        heights = np.array([spec["source"].shape[1] for spec in specs])
        widths = np.array([spec["source"].shape[2] for spec in specs])
        matrices, gains, spreads = self._plan(widths, heights, np.stack([spec["draws"] for spec in specs]))
        out = torch.empty((len(specs), channels, out_h, out_w), dtype=torch.uint8)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(zip(heights.tolist(), widths.tolist())):
            by_size.setdefault(size, []).append(i)
        for (height, width), rows in by_size.items():
            src = torch.stack([specs[i]["source"].expand(channels, -1, -1) for i in rows]).float()
            # PIL's matrix maps output pixel-centre coordinates (u + 0.5, v + 0.5) to source ones; in the
            # [-1, 1] coordinates of affine_grid / grid_sample (align_corners=False) it becomes theta.
            a, b, c, d, e, f = matrices[rows].T
            theta = np.stack([
                np.stack([a * out_w / width, b * out_h / width, (a * out_w + b * out_h + 2 * c) / width - 1], -1),
                np.stack([d * out_w / height, e * out_h / height, (d * out_w + e * out_h + 2 * f) / height - 1], -1),
            ], axis=1)
            grid = _affine_grid(torch.from_numpy(theta).float(), out_h, out_w)
            img = F.grid_sample(src, grid, mode=mode, padding_mode="zeros", align_corners=False)
            if brightness > 0:
                img = img * torch.from_numpy(gains[rows]).float()[:, None, None, None]
            if contrast > 0:
                mean = img.double().mean(dim=(1, 2, 3), keepdim=True).float()
                img = (img - mean) * torch.from_numpy(spreads[rows]).float()[:, None, None, None] + mean
            out[rows] = img.clamp_(0, 255).round_().to(torch.uint8)
        return out


def _affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, [B, C, height, width], align_corners=False)`` computed by broadcasting.

    The same sampling grid (to float rounding) several times faster on a CPU: ``affine_grid``
    multiplies a ``B x H*W x 3`` base grid by ``theta`` with a batched matmul whose inner size
    of 3 makes it slow, and it costs as much as the resampling itself for a small model's batch.
    """
    x = (torch.arange(width, dtype=torch.float32) * 2 + 1) / width - 1  # pixel centres in [-1, 1]
    y = (torch.arange(height, dtype=torch.float32) * 2 + 1) / height - 1
    t = theta.to(torch.float32)[:, :, :, None, None]  # B x 2 x 3 x 1 x 1
    grid = t[:, :, 0] * x[None, None, None, :] + t[:, :, 1] * y[None, None, :, None] + t[:, :, 2]
    return grid.permute(0, 2, 3, 1)  # B x H x W x 2, as (x, y) pairs


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
