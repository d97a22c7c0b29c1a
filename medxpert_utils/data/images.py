"""Image loading: the one place the project reads PNG, JPEG and DICOM files.

Every image comes back as an 8-bit grayscale ``PIL.Image`` (mode ``"L"``); a file that cannot be
read raises :class:`~medxpert_utils.core.errors.ImageLoadError` with one line naming the file and the
problem, which the CLI/dashboard show. The data stage decodes every manifest image once and marks the
unreadable ones; stages after it read manifest images with :func:`load_manifest_image`, for which a
file that fails is one that changed since (:class:`ImageChangedError`, the same line in every stage).

DICOM files give up their pixels only: the modality LUT (rescale) and the VOI LUT / window are
applied, MONOCHROME1 is inverted so bone is always bright, and no tag (patient name, id, dates)
is copied into anything this module returns. :func:`image_facts` is the one exception, for the query
check: it reads the three acquisition tags Modality, BodyPartExamined and ViewPosition (nothing that
identifies a patient) and how colourful the image is, before it is turned grey.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from medxpert_utils.core import stages
from medxpert_utils.core.errors import ImageLoadError

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128
_DICOM_SUFFIXES = (".dcm", ".dicom")
_FIX = "re-export the file or remove it from the dataset"
# Errors PIL raises on broken files (truncation, bad CRC, bad chunk lengths, bad zlib streams).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError, TypeError)


class ImageChangedError(ImageLoadError):
    """A manifest image no longer decodes: it changed after the data stage checked it (rebuild the manifest)."""


def _fail(name: str, problem: str, fix: str = _FIX) -> ImageLoadError:
    error = ImageLoadError(f"cannot read image '{name}': {problem} - {fix}")
    error.problem = problem  # type: ignore[attr-defined]  # read by image_problem
    return error


def image_problem(error: ImageLoadError) -> str:
    """What is wrong with the file, without its name or the fix: e.g. ``truncated or corrupt PNG (...)``."""
    problem = getattr(error, "problem", None)
    if isinstance(problem, str):
        return problem
    return str(error).split("': ", 1)[-1].split(" - ")[0]


def load_manifest_image(path: str | os.PathLike) -> Image.Image:
    """:func:`load_image` for an image of the manifest, which the data stage has decoded once already.

    A failure here means the file changed (or went away) after the manifest was built: it raises
    :class:`ImageChangedError`, one line naming the file and saying to rebuild the manifest. Every
    stage that reads manifest images (training, embedding, captioning) goes through this function.
    """
    try:
        return load_image(path)
    except ImageLoadError as exc:
        raise ImageChangedError(f"{os.fspath(path)}: {image_problem(exc)} - the image changed after the data stage "
                                f"built the manifest; {stages.hint('00', None, force=True)}") from None


def _display_name(source: ImageSource, name: str | None) -> str:
    if name:
        return str(name)
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or "<upload>"


def _read_bytes(source: ImageSource, name: str, max_bytes: int | None) -> bytes:
    """The raw bytes of ``source``, refusing files larger than ``max_bytes`` before reading them."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise _fail(name, "file not found" if not path.exists() else "not a file",
                        "check the path (relative paths are from the current folder)")
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise _fail(name, f"too large ({size / 2**20:.1f} MB > {max_bytes / 2**20:.1f} MB)",
                        "downscale the image or raise the size limit")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _fail(name, f"cannot open the file ({exc.strerror or exc.__class__.__name__})",
                        "check the file's permissions") from None
    elif hasattr(source, "read"):
        limit = -1 if max_bytes is None else max_bytes + 1
        data = source.read(limit)
        if isinstance(data, str):
            raise _fail(name, "file object opened in text mode", "open it with 'rb'")
    else:
        raise TypeError(f"load_image expects a path, bytes or a binary file object, not {type(source).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise _fail(name, f"too large (more than {max_bytes / 2**20:.1f} MB)",
                    "downscale the image or raise the size limit")
    if not data:
        raise _fail(name, "empty file")
    return data


def is_dicom(source: ImageSource) -> bool:
    """True when ``source`` is a DICOM file: "DICM" at byte 128, or a path ending in ``.dcm``.

    Byte strings and file objects are judged by the preamble only; a file object is rewound.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        head = bytes(source[: DICOM_MAGIC_OFFSET + 4])
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix.lower() in (".dcm", ".dicom"):
            return True
        try:
            with open(path, "rb") as handle:
                head = handle.read(DICOM_MAGIC_OFFSET + 4)
        except OSError:
            return False
    elif hasattr(source, "read"):
        start = source.tell() if hasattr(source, "tell") else None
        head = source.read(DICOM_MAGIC_OFFSET + 4)
        if start is not None and hasattr(source, "seek"):
            source.seek(start)
    else:
        return False
    return head[DICOM_MAGIC_OFFSET: DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC


def _to_uint8(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map ``[lo, hi]`` (default: the array's own range) linearly onto 0..255.

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
    scaled = (arr - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _read_dicom(data: bytes, shown: str):
    """The pydicom dataset of DICOM bytes; one-line :class:`ImageLoadError` when they are not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    has_preamble = data[DICOM_MAGIC_OFFSET: DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC
    try:
        # force=True reads preamble-less files (named .dcm); a real preamble needs no forcing.
        return pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except (InvalidDicomError, *_DECODE_ERRORS) as exc:
        raise _fail(shown, f"not a valid DICOM file ({exc.__class__.__name__})") from None


def _dicom_rgb(ds, arr: np.ndarray) -> np.ndarray:
    """A colour DICOM frame in RGB (YBR photometric interpretations converted)."""
    if str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
        from pydicom.pixels import convert_color_space

        return convert_color_space(arr, str(ds.PhotometricInterpretation), "RGB")
    return arr


def read_dicom_pixels(source: ImageSource, name: str | None = None, max_bytes: int | None = None) -> np.ndarray:
    """The displayable pixels of a DICOM file as a 2-D ``uint8`` array (bright = dense).

    Applies the modality LUT (rescale slope/intercept) then the VOI LUT or window (first one listed)
    and inverts MONOCHROME1. Only the pixel array leaves this function - no tag is returned.
    Multi-frame files give their first frame; colour DICOMs are converted to luminance.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    shown = _display_name(source, name)
    ds = _read_dicom(_read_bytes(source, shown, max_bytes), shown)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise _fail(shown, "DICOM file has no pixel data (a structured report or a header-only file?)",
                    "export the image itself")
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        label = getattr(syntax, "name", None) or str(syntax or "unknown")
        raise _fail(shown, f"compressed DICOM ({label}) needs a decoder plugin ({exc.__class__.__name__})",
                    "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or export as PNG") from None
    except (*_DECODE_ERRORS, KeyError, AttributeError) as exc:
        raise _fail(shown, f"corrupt DICOM pixel data ({exc.__class__.__name__})") from None

    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:  # colour: ITU-R 601 luminance, PIL's weights for RGB -> L
        try:
            arr = _dicom_rgb(ds, arr)
        except (NotImplementedError, ValueError) as exc:
            raise _fail(shown, f"unsupported DICOM colour space ({_short(exc)})", "export as PNG") from None
        arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return _to_uint8(arr, 0, 255 if arr.max() <= 255 else float(arr.max()))
    if arr.ndim != 2:
        raise _fail(shown, f"unexpected DICOM pixel array shape {arr.shape}", "export a single 2-D image")

    try:
        values = apply_modality_lut(arr, ds)
        windowed = (ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
                    and not ds.get("VOILUTSequence"))
        values = apply_voi_lut(values, ds, index=0)
        lo = hi = None
        if windowed:
            # The window's output range, found by pushing two values far outside the window through it:
            # pixels clipped by the window map to pure black / white, as a viewer shows them.
            with np.errstate(over="ignore"):
                lo, hi = (float(v) for v in apply_voi_lut(np.array([-1e30, 1e30]), ds, index=0))
        out = _to_uint8(values, lo, hi)
    except (*_DECODE_ERRORS, KeyError, AttributeError, NotImplementedError) as exc:
        raise _fail(shown, f"cannot apply the DICOM LUT/window ({exc.__class__.__name__})") from None
    # MONOCHROME1: low values are white. Invert so every image shows dense tissue bright.
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        out = 255 - out
    return out


def _pil_to_gray(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit "L"; 16/32-bit and float images are scaled by their actual range."""
    if img.mode == "L":
        return img.copy()
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        return Image.fromarray(_to_uint8(arr))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels would turn black through a plain convert; flatten onto white first.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    return img.convert("L")


def load_image(source: ImageSource, name: str | None = None, max_bytes: int | None = None) -> Image.Image:
    """Read a PNG, JPEG or DICOM image (path, bytes or binary file object) as 8-bit grayscale.

    16-bit images are mapped linearly from their own min..max onto 0..255 (never clipped to white);
    RGB is converted to luminance; DICOM goes through :func:`read_dicom_pixels`. ``name`` is the
    name used in error messages (defaults to the path). ``max_bytes`` refuses larger inputs.
    Raises :class:`ImageLoadError` (one line naming the file) for anything unreadable, including
    truncated files: PIL's ``LOAD_TRUNCATED_IMAGES`` is left off on purpose.
    """
    shown = _display_name(source, name)
    data = _read_bytes(source, shown, max_bytes)
    suffix = Path(os.fspath(source)).suffix.lower() if isinstance(source, (str, os.PathLike)) else ""
    if is_dicom(data) or suffix in _DICOM_SUFFIXES or (name and Path(name).suffix.lower() in _DICOM_SUFFIXES):
        return Image.fromarray(read_dicom_pixels(data, name=shown))
    return _decode_with_pil(data, shown)


def _decode_with_pil(data: bytes, shown: str) -> Image.Image:
    fmt = _guess_format(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or fmt
            img.load()  # full decode: a truncated file raises here
    except UnidentifiedImageError:
        raise _fail(shown, _unrecognised(data), "check the file or remove it from the dataset") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _fail(shown, "too large (more pixels than the decompression-bomb limit)", "downscale the image") from None
    except _DECODE_ERRORS as exc:
        raise _fail(shown, f"truncated or corrupt {fmt} ({_short(exc)})") from None
    try:
        return _pil_to_gray(img)
    except _DECODE_ERRORS as exc:
        raise _fail(shown, f"unsupported pixel layout (mode {img.mode}: {_short(exc)})") from None


def verify_image(source: str | os.PathLike, name: str | None = None, full: bool = False,
                 max_bytes: int | None = None) -> None:
    """Check that a file is a readable image, cheaply unless ``full``; raise :class:`ImageLoadError`.

    The quick check recognises the format and runs PIL's ``verify()``: for PNG that reads every
    chunk's CRC up to IEND, which catches truncation and most corruption. A JPEG is checked by its
    header and its end-of-image marker only (two small reads, affordable over hundreds of thousands
    of files); corruption inside its entropy-coded data shows only on a full decode, which is why the
    data stage decodes every image (``assemble.check_images``) rather than calling this.
    DICOM files and ``full=True`` decode the whole image with :func:`load_image`.
    """
    shown = _display_name(source, name)
    if full or is_dicom(source):
        load_image(source, name=shown, max_bytes=max_bytes)
        return
    path = Path(source)
    if not path.is_file():
        raise _fail(shown, "file not found" if not path.exists() else "not a file",
                    "check the path (relative paths are from the current folder)")
    size = path.stat().st_size
    if size == 0:
        raise _fail(shown, "empty file")
    if max_bytes is not None and size > max_bytes:
        raise _fail(shown, f"too large ({size / 2**20:.1f} MB > {max_bytes / 2**20:.1f} MB)",
                    "downscale the image or raise the size limit")
    with open(path, "rb") as handle:
        head = handle.read(512)
        handle.seek(0)
        fmt = _guess_format(head)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(handle)
                fmt = img.format or fmt
                if fmt != "JPEG":
                    img.verify()
        except UnidentifiedImageError:
            raise _fail(shown, _unrecognised(head), "check the file or remove it from the dataset") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _fail(shown, "too large (more pixels than the decompression-bomb limit)",
                        "downscale the image") from None
        except _DECODE_ERRORS as exc:
            raise _fail(shown, f"truncated or corrupt {fmt} ({_short(exc)})") from None
        if fmt == "JPEG":
            handle.seek(max(0, size - 1024))
            if not handle.read().rstrip(b"\x00").endswith(b"\xff\xd9"):
                raise _fail(shown, "truncated or corrupt JPEG (no end-of-image marker)")


@dataclass(frozen=True)
class ImageFacts:
    """What a query image says about itself before it is turned grey (see :func:`image_facts`).

    ``colourfulness``: mean chroma (max - min of R, G, B, in 0..1) over the pixels; a radiograph is grey (~0).
    ``modality``, ``body_part``, ``view``: DICOM Modality, BodyPartExamined, ViewPosition (upper case), or None.
    """

    colourfulness: float = 0.0
    modality: str | None = None
    body_part: str | None = None
    view: str | None = None
    dicom: bool = False


def colourfulness(img: Image.Image | np.ndarray) -> float:
    """Mean chroma in 0..1 (per pixel max - min of R, G, B): 0 for a grey image, ~0.3+ for a colour photo."""
    if isinstance(img, Image.Image):
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        if img.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
            return 0.0  # grey, 16-bit, float: no colour
        img.thumbnail((256, 256))  # chroma is a global property: a thumbnail is enough and fast
        arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    else:
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim != 3 or arr.shape[-1] < 3:
            return 0.0
        arr = arr[..., :3]
    chroma = arr.max(axis=-1) - arr.min(axis=-1)
    scale = 255.0 if arr.size and arr.max() > 1.0 else 1.0  # uint8-like values, or already in 0..1
    return float(chroma.mean() / scale) if arr.size else 0.0


def image_facts(source: ImageSource | Image.Image | np.ndarray, name: str | None = None,
                max_bytes: int | None = None) -> ImageFacts:
    """Colourfulness and, for DICOM, the Modality / BodyPartExamined / ViewPosition tags of a query image.

    Reads the same sources as :func:`load_image` (plus PIL images and arrays); an unreadable file raises
    :class:`ImageLoadError`. No other DICOM tag is read into the result.
    """
    if isinstance(source, (Image.Image, np.ndarray)):
        return ImageFacts(colourfulness=colourfulness(source.copy() if isinstance(source, Image.Image) else source))
    shown = _display_name(source, name)
    data = _read_bytes(source, shown, max_bytes)
    suffix = Path(os.fspath(source)).suffix.lower() if isinstance(source, (str, os.PathLike)) else ""
    if is_dicom(data) or suffix in (".dcm", ".dicom") or (name and Path(name).suffix.lower() == ".dcm"):
        ds = _read_dicom(data, shown)

        def tag(keyword: str) -> str | None:
            value = str(ds.get(keyword, "") or "").strip().upper()
            return value or None

        colour = 0.0
        if int(ds.get("SamplesPerPixel", 1) or 1) > 1:  # a colour DICOM (photo, endoscopy, a secondary capture)
            try:
                arr = ds.pixel_array
                if int(ds.get("NumberOfFrames", 1) or 1) > 1:
                    arr = arr[0]
                arr = _dicom_rgb(ds, arr)
                colour = colourfulness(arr.astype(np.float32) / max(float(arr.max()), 1.0))
            except (NotImplementedError, RuntimeError, *_DECODE_ERRORS, KeyError, AttributeError):
                colour = 1.0  # colour pixels we cannot decode: not a plain radiograph either way
        return ImageFacts(colourfulness=colour, modality=tag("Modality"), body_part=tag("BodyPartExamined"),
                          view=tag("ViewPosition"), dicom=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning, *_DECODE_ERRORS):
        load_image(data, name=shown)  # raises the same one-line error a query would
        raise
    return ImageFacts(colourfulness=colourfulness(img))


def to_rgb(img: Image.Image) -> Image.Image:
    """3-channel copy of an image, as CLIP/BLIP processors expect (gray replicated to R, G, B)."""
    return img if img.mode == "RGB" else _pil_to_gray(img).convert("RGB")


def _unrecognised(data: bytes) -> str:
    kind = "a text file" if _looks_like_text(data) else "not a recognised image format"
    return f"{kind} (expected PNG, JPEG or DICOM)"


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    return bool(head) and all(b in b"\t\n\r\x0c" or 32 <= b < 127 or b >= 128 for b in head) and b"\x00" not in head


def _guess_format(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "PNG"
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    return "image"


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return text[:120]
