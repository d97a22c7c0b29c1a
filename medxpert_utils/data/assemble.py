"""The steps every dataset source shares, from raw rows to a validated manifest and its stats.

Reports cleaned and rebuilt as impression-else-findings, rows with an empty report dropped, an
optional seeded sample of studies (``data.max_studies``), every image decoded once and hashed
(unreadable ones kept with their reason in the ``unreadable`` column and counted, never a crash),
labels from the rule-based labeler unless the source ships labels, and a seeded patient-level split
unless the source ships one. Labels and split are made from the readable rows alone, so an
unreadable image changes nothing for the others.
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

from medxpert_utils.core import hashing
from medxpert_utils.core.config import Config
from medxpert_utils.core.errors import ImageLoadError, UserError
from medxpert_utils.core.hashing import FileStamp
from medxpert_utils.core.paths import PROJECT_ROOT, data_dir
from medxpert_utils.core.progress import tqdm
from medxpert_utils.data import manifest as mf
from medxpert_utils.data.images import image_problem, load_image
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
        """Counts of the rows later stages use (the readable ones); ``n_unreadable`` rows are in the manifest
        but used by no stage, and counted in ``n_skipped`` and ``skipped_by_reason`` too."""
        usable = mf.readable(frame)
        return {
            "source": self.source,
            "n_rows": int(len(usable)),
            "n_unreadable": int(len(frame) - len(usable)),
            "n_studies": int(usable["study_id"].nunique()),
            "n_patients": int(usable["patient_id"].nunique()),
            "n_skipped": int(sum(self.skipped.values())),
            "skipped_by_reason": dict(self.skipped),
            "skipped_examples": list(self.examples),
            "splits": {s: int((usable["split"] == s).sum()) for s in mf.SPLIT_VALUES},
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


def _check_image(path: str) -> tuple[str, FileStamp | None, str]:
    """Read a file once: its sha256 ("" when it cannot be read), its stamp, and why it is not a readable
    image ("" when it decodes)."""
    try:
        content = hashing.read_file(path)
    except FileNotFoundError:
        return "", None, "file not found"
    except IsADirectoryError:
        return "", None, "not a file"
    except OSError as exc:
        return "", None, f"cannot open the file ({exc.strerror or exc.__class__.__name__})"
    try:
        load_image(content.data, name=path)  # the name carries a .dcm suffix to the DICOM reader
    except ImageLoadError as exc:
        return content.sha256, content.stamp, image_problem(exc).replace("\n", " ")
    return content.sha256, content.stamp, ""


def check_images(frame: pd.DataFrame, stats: BuildStats, progress: bool) -> pd.DataFrame:
    """Decode every image fully once and add ``image_sha256`` and ``unreadable`` (the reason, "" if readable).

    Rows are kept; unreadable ones are counted in ``stats`` by reason. Hashes and verdicts are cached
    by file size and mtime (:mod:`medxpert_utils.core.hashing`), so a rebuild over unchanged files reads
    only the ones found unreadable before (an unreadable verdict can be a missing decoder, since installed).
    """
    paths = [os.path.abspath(p) for p in frame["image_path"].astype(str)]
    cached = hashing.lookup(paths)
    sha = [r.sha256 if r is not None else "" for r in cached]
    problems = ["" for _ in paths]
    todo = [i for i, r in enumerate(cached) if r is None or r.note != ""]  # no verdict yet, or unreadable

    workers = max(1, min(8, (os.cpu_count() or 1)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(lambda i: _check_image(paths[i]), todo), total=len(todo),
                            desc="checking images", disable=not progress or len(todo) < 200, mininterval=1.0))
    done, done_stamps = [], []
    for i, (digest, stamp, problem) in zip(todo, results):
        sha[i], problems[i] = digest, problem
        if digest:
            done.append((paths[i], hashing.FileRecord(digest, problem)))
            done_stamps.append(stamp)
    hashing.store(done, stamps=done_stamps)

    frame = frame.copy()
    frame["image_sha256"] = sha
    frame["unreadable"] = problems
    for path, problem in zip(paths, problems):
        if problem:
            stats.skip(f"unreadable image: {re.sub(r' [(].*[)]', '', problem)}",
                       messages=[f"{os.path.basename(path)}: {problem}"])
    return frame


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
    readable = frame["unreadable"].eq("").to_numpy()
    if not readable.any():
        raise UserError(f"data source '{stats.source}' produced no usable rows ({skip_summary(stats)}) - "
                        "check data.root and the dataset layout")

    has_labels = all(c in frame.columns for c in mf.LABEL_COLUMNS)
    relabel = frame.pop("_label_from_report").astype(bool).to_numpy() if "_label_from_report" in frame else None
    # Unreadable rows keep the source's labels, or get none.
    if not has_labels:
        rows = np.flatnonzero(readable)
    else:
        rows = np.flatnonzero(readable & relabel) if relabel is not None else np.array([], dtype=np.int64)
    if len(rows):
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
        frame["split"] = split_readable(frame["patient_id"], readable, cfg)
    frame["image_path"] = [os.path.abspath(p) for p in frame["image_path"]]
    frame = mf.validate(frame)
    return frame, stats.to_dict(frame)


def split_readable(patient_ids: pd.Series, readable: np.ndarray, cfg: Config) -> np.ndarray:
    """The seeded patient split of the readable rows (as if the others were not there); an unreadable row
    goes with its patient, or to train when its patient has no readable image (no stage reads it)."""
    out = np.full(len(patient_ids), "train", dtype="<U5")
    out[readable] = patient_split(patient_ids[readable].tolist(), cfg.data.split, cfg.seed)
    if not readable.all():
        of_patient = dict(zip(patient_ids[readable], out[readable]))
        rest = np.flatnonzero(~readable)
        out[rest] = [of_patient.get(p, "train") for p in patient_ids.iloc[rest]]
    return out


def skip_summary(stats: BuildStats) -> str:
    if not stats.skipped:
        return "no rows found"
    return "; ".join(f"{n} skipped: {reason}" for reason, n in stats.skipped.items())
