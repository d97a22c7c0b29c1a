"""Pixel arithmetic shared by every image path: the one 16-bit/float to 8-bit scaling, the one grey conversion
and how colourful an image is.

Every way an image enters the project (a file decoded by :mod:`.images`, a DICOM frame, a PIL image or an array
handed to the search, a display PNG) goes through :func:`to_grey`, so the same pixels give the same grey levels
whatever form they came in: colour by ITU-R 601-2 luma with PIL's own ``"L"`` conversion (``L = R * 299/1000 +
G * 587/1000 + B * 114/1000``), transparency flattened onto white, and more than 8 bits per sample mapped
linearly from the image's own range onto 0..255 by :func:`scale_to_uint8` (never clipped to white).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from medxpert_utils.core.errors import ImageLoadError

HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # PIL modes with more than 8 bits per sample
COLOUR_MODES = ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV")


def scale_to_uint8(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map ``[lo, hi]`` (default: the array's own range) linearly onto 0..255, rounded; NaN becomes 0.

    A constant image has no range; it is mapped by its bit depth instead so a flat grey stays grey
    rather than turning black or white.
    """
    arr = np.asarray(arr, dtype=np.float64)
    if arr.size == 0:
        return arr.astype(np.uint8)
    if lo is None or hi is None:
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("pixel values are not finite")
    if hi <= lo:
        depth_max = 255.0 if hi <= 255 else float(2 ** int(np.ceil(np.log2(hi + 1))) - 1)
        return np.full(arr.shape, np.clip(round(hi / depth_max * 255), 0, 255), dtype=np.uint8)
    scaled = np.nan_to_num((arr - lo) * (255.0 / (hi - lo)), nan=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """A transparent image composited onto white (a plain convert would turn transparent pixels black)."""
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def to_grey(image: Image.Image | np.ndarray, name: str | None = None) -> Image.Image:
    """Any image as 8-bit grey (PIL mode ``"L"``): a PIL image of any mode, or an (H, W) / (H, W, 1|3|4) array.

    Colour goes through PIL's ``"L"`` conversion (ITU-R 601-2 luma) for arrays as for files; 16-bit, 32-bit and
    float pixels are first scaled by their own range (:func:`scale_to_uint8`); an alpha channel of an array is
    ignored. An ``"L"`` image is returned as it is. ``name`` names the image in the one-line error for an array of
    another shape.
    """
    if isinstance(image, Image.Image):
        if image.mode == "L":
            return image
        if image.mode in HIGH_DEPTH_MODES:
            return Image.fromarray(scale_to_uint8(np.asarray(image)), mode="L")
        return (_flatten_alpha(image) if _has_alpha(image) else image).convert("L")
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    colour = arr.ndim == 3 and arr.shape[-1] in (3, 4)
    if not (arr.ndim == 2 or colour) or arr.size == 0:
        raise ImageLoadError(f"cannot read image '{name or '<array>'}': expected a 2-D grey or (H, W, 3) array, "
                             f"got shape {np.shape(image)} - pass an image array")
    if colour:
        arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = scale_to_uint8(arr)
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB").convert("L") if colour else \
        Image.fromarray(arr, mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """3-channel copy of an image, as CLIP/BLIP processors expect (gray replicated to R, G, B)."""
    return img if img.mode == "RGB" else to_grey(img).convert("RGB")


def colourfulness(img: Image.Image | np.ndarray) -> float:
    """Mean chroma in 0..1 (per pixel max - min of R, G, B): 0 for a grey image, ~0.3+ for a colour photo."""
    if isinstance(img, Image.Image):
        if img.mode not in COLOUR_MODES and not _has_alpha(img):
            return 0.0  # grey, 16-bit, float: no colour
        small = _flatten_alpha(img) if _has_alpha(img) else img.copy()
        small.thumbnail((256, 256))  # chroma is a global property: a thumbnail is enough and fast
        arr = np.asarray(small.convert("RGB"), dtype=np.float32)
    else:
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim != 3 or arr.shape[-1] < 3:
            return 0.0
        arr = arr[..., :3]
    chroma = arr.max(axis=-1) - arr.min(axis=-1)
    scale = 255.0 if arr.size and arr.max() > 1.0 else 1.0  # uint8-like values, or already in 0..1
    return float(chroma.mean() / scale) if arr.size else 0.0
