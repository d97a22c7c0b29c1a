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
from medxpert_utils.data.pixels import colourfulness, scale_to_uint8, to_grey, to_rgb

__all__ = ["ImageChangedError", "ImageFacts", "colourfulness", "image_facts", "image_problem", "is_dicom",
           "load_image", "load_manifest_image", "read_dicom_pixels", "read_query_image", "scale_to_uint8",
           "to_grey", "to_rgb", "verify_image"]

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


def _dicom_frame(ds, shown: str) -> np.ndarray:
    """The (first) frame of a DICOM dataset's pixel data, with one-line errors for missing or undecodable pixels."""
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
    return arr[0] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr


def _dicom_grey(ds, shown: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The displayable grey pixels of a DICOM dataset (uint8, bright = dense) and, for a colour DICOM, its RGB
    frame (None for a grey one)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = _dicom_frame(ds, shown)
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:  # colour: the one grey conversion, after scaling to 8 bits
        try:
            rgb = _dicom_rgb(ds, arr)[..., :3]
        except (NotImplementedError, ValueError) as exc:
            raise _fail(shown, f"unsupported DICOM colour space ({_short(exc)})", "export as PNG") from None
        top = float(rgb.max())
        return np.asarray(to_grey(scale_to_uint8(rgb, 0, 255 if top <= 255 else top))), rgb
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
        out = scale_to_uint8(values, lo, hi)
    except (*_DECODE_ERRORS, KeyError, AttributeError, NotImplementedError) as exc:
        raise _fail(shown, f"cannot apply the DICOM LUT/window ({exc.__class__.__name__})") from None
    # MONOCHROME1: low values are white. Invert so every image shows dense tissue bright.
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        out = 255 - out
    return out, None


def read_dicom_pixels(source: ImageSource, name: str | None = None, max_bytes: int | None = None) -> np.ndarray:
    """The displayable pixels of a DICOM file as a 2-D ``uint8`` array (bright = dense).

    Applies the modality LUT (rescale slope/intercept) then the VOI LUT or window (first one listed)
    and inverts MONOCHROME1. Only the pixel array leaves this function - no tag is returned.
    Multi-frame files give their first frame; colour DICOMs are converted to luminance (:func:`to_grey`).
    """
    shown = _display_name(source, name)
    return _dicom_grey(_read_dicom(_read_bytes(source, shown, max_bytes), shown), shown)[0]


def load_image(source: ImageSource, name: str | None = None, max_bytes: int | None = None) -> Image.Image:
    """Read a PNG, JPEG or DICOM image (path, bytes or binary file object) as 8-bit grayscale.

    16-bit images are mapped linearly from their own min..max onto 0..255 (never clipped to white);
    RGB is converted to luminance (:func:`to_grey`); DICOM goes through :func:`read_dicom_pixels`. ``name`` is
    the name used in error messages (defaults to the path). ``max_bytes`` refuses larger inputs.
    Raises :class:`ImageLoadError` (one line naming the file) for anything unreadable, including
    truncated files: PIL's ``LOAD_TRUNCATED_IMAGES`` is left off on purpose.
    """
    return _decode(source, name, max_bytes, facts=False)[0]


def read_query_image(source: ImageSource, name: str | None = None,
                     max_bytes: int | None = None) -> tuple[Image.Image, ImageFacts]:
    """:func:`load_image` and :func:`image_facts` of a file from one read and one decode (a DICOM is parsed once)."""
    image, facts = _decode(source, name, max_bytes, facts=True)
    assert facts is not None
    return image, facts


def _decode(source: ImageSource, name: str | None, max_bytes: int | None,
            facts: bool) -> tuple[Image.Image, ImageFacts | None]:
    shown = _display_name(source, name)
    data = _read_bytes(source, shown, max_bytes)
    suffix = Path(os.fspath(source)).suffix.lower() if isinstance(source, (str, os.PathLike)) else ""
    if is_dicom(data) or suffix in _DICOM_SUFFIXES or (name and Path(name).suffix.lower() in _DICOM_SUFFIXES):
        ds = _read_dicom(data, shown)
        grey, rgb = _dicom_grey(ds, shown)
        if not facts:
            return Image.fromarray(grey), None
        colour = 0.0 if rgb is None else colourfulness(rgb.astype(np.float32) / max(float(rgb.max()), 1.0))
        return Image.fromarray(grey), _dicom_facts(ds, colour)
    img = _decode_with_pil(data, shown)
    try:
        grey = to_grey(img)
    except _DECODE_ERRORS as exc:
        raise _fail(shown, f"unsupported pixel layout (mode {img.mode}: {_short(exc)})") from None
    return grey, ImageFacts(colourfulness=colourfulness(img)) if facts else None


def _decode_with_pil(data: bytes, shown: str) -> Image.Image:
    """The image PIL decodes from ``data``, in its own mode; one-line errors for anything unreadable."""
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
    return img


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


def image_facts(source: ImageSource | Image.Image | np.ndarray, name: str | None = None,
                max_bytes: int | None = None) -> ImageFacts:
    """Colourfulness and, for DICOM, the Modality / BodyPartExamined / ViewPosition tags of a query image.

    Reads the same sources as :func:`load_image` (plus PIL images and arrays); an unreadable file raises
    :class:`ImageLoadError`. No other DICOM tag is read into the result. A query that also needs the pixels
    reads both at once with :func:`read_query_image`.
    """
    if isinstance(source, (Image.Image, np.ndarray)):
        return ImageFacts(colourfulness=colourfulness(source))
    return read_query_image(source, name, max_bytes)[1]


def _dicom_facts(ds, colour: float) -> ImageFacts:
    """The query check's DICOM facts: Modality, BodyPartExamined and ViewPosition, nothing else of the header."""

    def tag(keyword: str) -> str | None:
        value = str(ds.get(keyword, "") or "").strip().upper()
        return value or None

    return ImageFacts(colourfulness=colour, modality=tag("Modality"), body_part=tag("BodyPartExamined"),
                      view=tag("ViewPosition"), dicom=True)


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
