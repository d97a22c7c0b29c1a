"""One query image, decoded once: what every step of a query (check, search, caption, report, heatmaps) reads.

A door (the CLI's ``search``, ``diagnose`` and ``explain``, the dashboard's upload) builds one
:class:`QueryImage` with :meth:`QueryImage.of` and hands it to the :class:`~medxpert_utils.assistant.Assistant`,
which also wraps any other form of image it is given (path, bytes, PIL image, array) once. It holds:

- the grey pixels (PIL mode ``"L"``) and the :class:`~medxpert_utils.data.images.ImageFacts` (colour, DICOM
  Modality/BodyPartExamined/ViewPosition) from one read and one decode of the file (a DICOM is parsed once);
- the display PNG, encoded on first use and kept;
- per CLIP model, the model's input tensor and the image embedding, made on first use by the assistant and kept,
  so the query check, the search and the heatmaps preprocess and embed the image once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
from PIL import Image

from medxpert_utils.data.images import ImageFacts, colourfulness, read_query_image, to_grey

if TYPE_CHECKING:
    import torch

# A query image as the doors hand it over: a file path, the file's bytes, a PIL image or an (H, W[, C]) array.
ImageQuery: TypeAlias = "str | os.PathLike[str] | bytes | Image.Image | np.ndarray"

DISPLAY_SIDE = 384  # the longest side of the display PNG


class QueryImage:
    """A query image with what was read from it once and what was computed from it on first use (see the module)."""

    def __init__(self, image: Image.Image, facts: ImageFacts | None = None, name: str | None = None):
        self.image = to_grey(image)
        self.facts = facts if facts is not None else ImageFacts()
        self.name = name  # the file's name, for a report's "query" line; None for pixels handed over in memory
        self._png: dict[int, bytes] = {}
        self._pixels: dict[str, torch.Tensor] = {}
        self._vectors: dict[str, np.ndarray] = {}
        self._lock = threading.RLock()

    @classmethod
    def of(cls, source: ImageQuery | QueryImage, name: str | None = None, max_bytes: int | None = None) -> QueryImage:
        """``source`` itself when it is a query image already, else one built from it: a file (path, bytes or a
        binary file object) is read and decoded once (``name`` names it in errors, ``max_bytes`` refuses larger
        ones); a PIL image or an array is turned grey, its colour measured first."""
        if isinstance(source, QueryImage):
            return source
        if isinstance(source, (Image.Image, np.ndarray)):
            return cls(to_grey(source, name), ImageFacts(colourfulness=colourfulness(source)), name)
        image, facts = read_query_image(source, name=name, max_bytes=max_bytes)
        if name is None and isinstance(source, (str, os.PathLike)):
            name = Path(source).name
        return cls(image, facts, name or getattr(source, "name", None))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.image.size

    def png(self, max_side: int = DISPLAY_SIDE) -> bytes:
        """The grey image as PNG, shrunk to ``max_side`` (encoded once per size)."""
        from medxpert_utils.viz.html import png_bytes

        with self._lock:
            if max_side not in self._png:
                self._png[max_side] = png_bytes(self.image, max_side)
            return self._png[max_side]

    def pixel_values(self, model: str, make: Callable[[list[Image.Image]], torch.Tensor]) -> torch.Tensor:
        """``model``'s CLIP input for this image, (1, 3, H, W): ``make([image])`` on first use, then kept."""
        with self._lock:
            if model not in self._pixels:
                self._pixels[model] = make([self.image])
            return self._pixels[model]

    def embedding(self, model: str, embed: Callable[[], np.ndarray]) -> np.ndarray:
        """``model``'s L2-normalised embedding of this image, (1, dim): ``embed()`` on first use, then kept."""
        with self._lock:
            if model not in self._vectors:
                self._vectors[model] = embed()
            return self._vectors[model]
