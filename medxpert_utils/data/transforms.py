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
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

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
