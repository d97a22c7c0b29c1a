"""The steps every dataset source shares, from raw rows to a validated manifest and its stats.

Reports cleaned and rebuilt as impression-else-findings, rows with an empty report dropped, an
optional seeded sample of studies (``data.max_studies``), every image checked (unreadable ones
skipped and counted, never a crash), labels from the rule-based labeler unless the source ships
labels, and a seeded patient-level split unless the source ships one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medxpert_utils.core.config import Config
from medxpert_utils.core.errors import ImageLoadError, UserError
from medxpert_utils.core.paths import PROJECT_ROOT, data_dir
from medxpert_utils.core.progress import tqdm
from medxpert_utils.data import manifest as mf
from medxpert_utils.data.images import verify_image
from medxpert_utils.data.split import patient_split

LEAKAGE_NOTE = "split by row: the {what} has no patient ids; patient leakage cannot be ruled out"
MAX_EXAMPLES = 5


@dataclass
class BuildStats:
    """What a build kept and skipped; ``to_dict`` is the ``stats`` of ``sources.build_manifest``."""

    source: str
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def skip(self, reason: str, names: list[str] | None = None, count: int | None = None,
             messages: list[str] | None = None) -> None:
        count = len(names or messages or []) if count is None else count
        if not count:
            return
        self.skipped[reason] = self.skipped.get(reason, 0) + count
        for text in (messages or [f"{n}: {reason}" for n in (names or [])])[: MAX_EXAMPLES - len(self.examples)]:
            self.examples.append(text)

    def to_dict(self, frame: pd.DataFrame) -> dict[str, Any]:
        return {
            "source": self.source,
            "n_rows": int(len(frame)),
            "n_studies": int(frame["study_id"].nunique()),
            "n_patients": int(frame["patient_id"].nunique()),
            "n_skipped": int(sum(self.skipped.values())),
            "skipped_by_reason": dict(self.skipped),
            "skipped_examples": list(self.examples),
            "splits": {s: int((frame["split"] == s).sum()) for s in mf.SPLIT_VALUES},
            "notes": list(self.notes),
        }


def resolve_data_root(value: str | os.PathLike | None, default: Path | None = None) -> Path | None:
    """A dataset folder from params: absolute as given; ``data/...`` inside the data cache
    (``MEDXPERT_DATA``); any other relative path from the project root."""
    if value is None or not str(value).strip():
        return default
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    if path.parts[0] == "data":
        return data_dir().joinpath(*path.parts[1:])
    return (PROJECT_ROOT / path).resolve()


def clean_reports(frame: pd.DataFrame, stats: BuildStats) -> pd.DataFrame:
    from medxpert_utils.data.reports import clean_report, report_text

    frame = frame.copy()
    for col in ("findings", "impression"):
        frame[col] = [clean_report(t) if isinstance(t, str) and t.strip() else "" for t in frame[col]]
    frame["report"] = [report_text(f, i) or "" for f, i in zip(frame["findings"], frame["impression"])]
    empty = frame["report"].str.strip().eq("")
    stats.skip("empty report (no findings or impression)", names=frame.loc[empty, "study_id"].astype(str).tolist())
    return frame.loc[~empty].reset_index(drop=True)


def sample_studies(frame: pd.DataFrame, cfg: Config, stats: BuildStats) -> pd.DataFrame:
    """Keep a seeded random sample of at most ``data.max_studies`` studies (all their images)."""
    limit = cfg.data.max_studies
    studies = pd.unique(frame["study_id"])
    if limit is None or len(studies) <= limit:
        return frame
    rng = np.random.default_rng(cfg.seed)
    keep = set(studies[np.sort(rng.choice(len(studies), size=limit, replace=False))])
    stats.notes.append(f"kept a seeded sample of {limit} of {len(studies)} studies (data.max_studies)")
    return frame.loc[frame["study_id"].isin(keep)].reset_index(drop=True)


def check_images(frame: pd.DataFrame, stats: BuildStats, progress: bool) -> pd.DataFrame:
    """Drop rows whose image cannot be read (quick check: format, PNG CRCs, JPEG end marker)."""
    paths = frame["image_path"].astype(str).tolist()

    def check(path: str) -> str | None:
        try:
            verify_image(path, name=os.path.basename(path))
        except ImageLoadError as exc:
            return str(exc)
        return None

    workers = max(1, min(8, (os.cpu_count() or 1)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        errors = list(tqdm(pool.map(check, paths), total=len(paths), desc="checking images",
                           disable=not progress or len(paths) < 200, mininterval=1.0))
    bad = np.array([e is not None for e in errors], dtype=bool)
    for message in (e for e in errors if e):
        problem = message.split("': ", 1)[-1].split(" - ")[0]
        stats.skip(f"unreadable image: {re.sub(r' [(].*[)]', '', problem)}", messages=[message])
    return frame.loc[~bad].reset_index(drop=True)


def finish(frame: pd.DataFrame, cfg: Config, stats: BuildStats, progress: bool,
           materialise: Callable[[pd.DataFrame, BuildStats], pd.DataFrame] | None = None) -> tuple[pd.DataFrame, dict]:
    """The steps every source shares, from raw rows to a validated manifest and its stats.

    ``frame`` holds study_id, patient_id, findings, impression and (unless ``materialise`` adds it)
    image_path; label columns when the source ships labels (rows flagged ``_label_from_report``
    still get the labeler), ``split`` when the source ships a split; any other columns are kept.
    """
    from medxpert_utils.data.labels import label_frame

    frame = clean_reports(frame, stats)
    frame = sample_studies(frame, cfg, stats)
    if materialise is not None:
        frame = materialise(frame, stats)
    frame = check_images(frame, stats, progress)
    if frame.empty:
        raise UserError(f"data source '{stats.source}' produced no usable rows ({skip_summary(stats)}) - "
                        "check data.root and the dataset layout")

    has_labels = all(c in frame.columns for c in mf.LABEL_COLUMNS)
    relabel = frame.pop("_label_from_report").astype(bool).to_numpy() if "_label_from_report" in frame else None
    if not has_labels or (relabel is not None and relabel.any()):
        rows = np.arange(len(frame)) if not has_labels else np.flatnonzero(relabel)
        # Each distinct report is labelled once (big datasets repeat "No acute process." thousands of times).
        codes, distinct = pd.factorize(frame["report"].iloc[rows])
        labels = label_frame(list(distinct))
        for col in mf.LABEL_COLUMNS:
            if col not in frame.columns:
                frame[col] = pd.array([pd.NA] * len(frame), dtype="Int8")
            frame[col] = frame[col].astype("Int8")
            frame.loc[frame.index[rows], col] = labels[col].astype("Int8").to_numpy()[codes]
        if has_labels:
            stats.notes.append(f"{len(rows)} row(s) without source labels were labelled from their report")
    if "split" not in frame.columns:
        frame["split"] = patient_split(frame["patient_id"].tolist(), cfg.data.split, cfg.seed)
    frame["image_path"] = [os.path.abspath(p) for p in frame["image_path"]]
    frame = mf.validate(frame)
    return frame, stats.to_dict(frame)


def skip_summary(stats: BuildStats) -> str:
    if not stats.skipped:
        return "no rows found"
    return "; ".join(f"{n} skipped: {reason}" for reason, n in stats.skipped.items())
