"""What a reporter sees for one query: the retrieved cases, the caption and the question.

Reporters take a :class:`ReportContext` rather than a run, so they can be tested on hand-made
retrieval results and reused by the CLI, the dashboard and notebook 05 alike.
"""

from __future__ import annotations

import io as _io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class RetrievedCase:
    """One retrieved study: a search hit reduced to what reporters use."""

    rank: int
    score: float
    study_id: str
    report: str
    image_path: str | None = None
    labels: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hit(cls, hit: Any) -> "RetrievedCase":
        """From a ``search.Hit``, a dict with the same keys, or a RetrievedCase."""
        if isinstance(hit, RetrievedCase):
            return hit
        data = hit if isinstance(hit, Mapping) else (hit.to_dict() if hasattr(hit, "to_dict") else vars(hit))
        score = float(data.get("score", 0.0))
        return cls(
            rank=int(data.get("rank", 0)),
            score=score if math.isfinite(score) else 0.0,
            study_id=str(data["study_id"]),
            report=str(data.get("report") or ""),
            image_path=str(data["image_path"]) if data.get("image_path") else None,
            labels=dict(data.get("labels") or {}),
        )

    def label(self, name: str) -> int | None:
        """The case's CheXpert value for ``name``: 1, 0, -1 or None (unmentioned / missing)."""
        value = self.labels.get(name)
        if value is None:
            return None
        try:
            if isinstance(value, float) and math.isnan(value):
                return None
            return int(value)
        except (TypeError, ValueError):
            return None  # pandas NA and other missing markers


@dataclass
class ReportContext:
    """Everything a reporter may use for one query."""

    cases: list[RetrievedCase]
    query_text: str | None = None
    question: str | None = None
    caption: str | None = None
    image: Any = None  # the query image (PIL or bytes); sent to Gemini only when llm.send_image is on
    query_name: str | None = None
    query_study_id: str | None = None

    @cached_property
    def image_bytes(self) -> bytes | None:
        """PNG bytes of the query image (encoded on first use only)."""
        return None if self.image is None else _png_bytes(self.image)

    @classmethod
    def build(cls, hits: Iterable[Any], query_text: str | None = None, question: str | None = None,
              caption: str | None = None, image=None, query_name: str | None = None,
              query_study_id: str | None = None, exclude_study_ids: Iterable[str] = (),
              k: int | None = None) -> "ReportContext":
        """Normalise ``hits``, drop excluded studies (leave-one-out), keep the best ``k``, re-rank from 1."""
        excluded = {str(s) for s in exclude_study_ids}
        cases = [RetrievedCase.from_hit(h) for h in hits]
        cases = sorted((c for c in cases if c.study_id not in excluded), key=lambda c: (c.rank, -c.score))
        seen: set[str] = set()
        unique = []
        for case in cases:  # several images of one study: keep its best hit
            if case.study_id not in seen:
                seen.add(case.study_id)
                unique.append(case)
        if k is not None:
            unique = unique[:k]
        unique = [RetrievedCase(i + 1, c.score, c.study_id, c.report, c.image_path, c.labels)
                  for i, c in enumerate(unique)]
        return cls(cases=unique, query_text=query_text, question=question, caption=caption,
                   image=image, query_name=query_name,
                   query_study_id=query_study_id)

    @property
    def study_ids(self) -> list[str]:
        return [c.study_id for c in self.cases]

    @property
    def query(self) -> str | None:
        """What was asked: the text query, else the image's name."""
        return self.query_text or self.query_name


def _png_bytes(image) -> bytes:
    """PNG bytes of a PIL image (or the bytes as given)."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    buffer = _io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
