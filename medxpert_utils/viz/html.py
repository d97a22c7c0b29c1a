"""Small HTML helpers shared by the report pages, the caption examples and the dashboard: escaped text,
inline PNG data URIs and thumbnails of corpus images."""

from __future__ import annotations

import base64
import html
import io as _io
from functools import lru_cache
from typing import Any

from PIL import Image

from medxpert_utils.core.errors import UserError
from medxpert_utils.data.pixels import HIGH_DEPTH_MODES, to_grey


def esc(value: Any) -> str:
    """``value`` as HTML-escaped text (None as '')."""
    return html.escape("" if value is None else str(value))


def png_bytes(image: Image.Image, max_side: int = 384) -> bytes:
    """PNG of ``image`` shrunk to ``max_side`` (16-bit and float modes scaled to 8 bit by their own range)."""
    if image.mode in HIGH_DEPTH_MODES:  # a plain convert would clip 16-bit films to white
        image = to_grey(image)
    image = image.copy() if image.mode in ("L", "RGB", "RGBA") else image.convert("RGB")
    image.thumbnail((max_side, max_side))
    buffer = _io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(data: bytes | str, mime: str) -> str:
    """``data`` inline as a base64 ``data:`` URI."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


@lru_cache(maxsize=512)
def thumbnail_uri(path: str | None, side: int = 128) -> str:
    """Small PNG data URI of an image file ('' when there is none or it cannot be read)."""
    if not path:
        return ""
    from medxpert_utils.data.images import load_image

    try:
        return data_uri(png_bytes(load_image(path), side), "image/png")
    except (UserError, OSError, ValueError):
        return ""
