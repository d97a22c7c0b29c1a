"""The manifest contract: ``outputs/<run>/data/manifest.parquet``, one row per image.

Columns, in this order (extra columns such as ``view`` or ``source`` may follow):
``study_id``, ``patient_id``, ``image_path`` (absolute), ``findings``, ``impression``,
``report`` (impression, else findings), ``split`` (train/val/test by patient), the 14
CheXpert label columns (1 positive, 0 negative, -1 uncertain, <NA> unmentioned; nullable Int8),
``image_sha256`` (sha256 of the image file's bytes, hex; "" where the file could not be read) and
``unreadable`` (why the data stage could not decode the image, one line; "" for a readable image).

Unreadable images keep their rows, so the manifest says what was left out and why, but no stage
uses them: :func:`read` returns the readable rows unless asked for all. A manifest built without
the last two columns (by hand, in tests) gets "" in both: every image counts as readable.
Every later stage reads the manifest through :func:`read`, which validates it.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medxpert_utils.core import stages
from medxpert_utils.core.errors import RunNotReadyError, UserError
from medxpert_utils.core.paths import RunPaths, resolve_run_dir
from medxpert_utils.data.labels import CHEXPERT_LABELS

TEXT_COLUMNS = ["study_id", "patient_id", "image_path", "findings", "impression", "report", "split"]
LABEL_COLUMNS = list(CHEXPERT_LABELS)
IMAGE_COLUMNS = ["image_sha256", "unreadable"]
MANIFEST_COLUMNS: list[str] = TEXT_COLUMNS + LABEL_COLUMNS + IMAGE_COLUMNS
SPLIT_VALUES = ("train", "val", "test")
LABEL_VALUES = (1, 0, -1)
_REQUIRED_TEXT = ("study_id", "patient_id", "image_path", "report", "split")
_SHA256 = r"[0-9a-f]{64}"
_HASH_VERSION = "manifest-v2"


class ManifestError(UserError, ValueError):
    """A manifest breaks the contract; the message names the column, value or patient."""


def validate(df: pd.DataFrame) -> pd.DataFrame:
    """Check ``df`` against the manifest contract and return it in canonical form.

    Canonical: contract columns first (extras after, in their order), a fresh 0..n-1 index, text
    columns as strings (missing findings/impression as ""), labels as nullable Int8, ``image_sha256``
    and ``unreadable`` as strings ("" where absent or missing). Raises :class:`ManifestError` naming
    the missing column, the bad value (with its row) or a patient found in two splits.
    """
    absent = [c for c in IMAGE_COLUMNS if c not in df.columns]
    if absent:
        df = df.assign(**dict.fromkeys(absent, ""))
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest is missing column '{missing[0]}'"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                            + f" - rebuild it: {stages.hint('00', None, force=True)}")
    extras = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    out = df.loc[:, MANIFEST_COLUMNS + extras].reset_index(drop=True).copy()

    for col in ("findings", "impression"):
        out[col] = out[col].astype("object").where(out[col].notna(), "").astype(str)
    for col in _REQUIRED_TEXT:
        values = out[col].astype("object")
        blank = values.isna() | values.astype(str).str.strip().eq("")
        if blank.any():
            row = int(np.flatnonzero(blank.to_numpy())[0])
            raise ManifestError(f"manifest column '{col}' is empty in row {row} - every row needs a {col}")
        out[col] = values.astype(str)

    relative = ~out["image_path"].map(os.path.isabs)
    if relative.any():
        row = int(np.flatnonzero(relative.to_numpy())[0])
        raise ManifestError(f"manifest column 'image_path' must hold absolute paths, row {row} has "
                            f"'{out.at[row, 'image_path']}'")
    duplicated = out["image_path"].duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise ManifestError(f"manifest has image '{out.at[row, 'image_path']}' twice (row {row}) - one row per image")

    bad_split = ~out["split"].isin(SPLIT_VALUES)
    if bad_split.any():
        row = int(np.flatnonzero(bad_split.to_numpy())[0])
        raise ManifestError(f"manifest column 'split' has bad value '{out.at[row, 'split']}' in row {row} - "
                            "use train, val or test")
    splits_per_patient = out.groupby("patient_id", sort=False)["split"].nunique()
    leaked = splits_per_patient[splits_per_patient > 1]
    if len(leaked):
        patient = leaked.index[0]
        found = sorted(out.loc[out["patient_id"] == patient, "split"].unique())
        more = f"; {len(leaked) - 1} more patients too" if len(leaked) > 1 else ""
        raise ManifestError(f"patient '{patient}' is in two splits ({', '.join(found)}) - split by patient "
                            f"(data.split.patient_split){more}")

    for col in LABEL_COLUMNS:
        out[col] = _label_column(out[col], col)
    for col in IMAGE_COLUMNS:
        out[col] = out[col].astype("object").where(out[col].notna(), "").astype(str)
    bad_sha = ~(out["image_sha256"].eq("") | out["image_sha256"].str.fullmatch(_SHA256))
    if bad_sha.any():
        row = int(np.flatnonzero(bad_sha.to_numpy())[0])
        raise ManifestError(f"manifest column 'image_sha256' has bad value '{out.at[row, 'image_sha256']}' in row "
                            f"{row} - use the file's sha256 in lower-case hex, or empty")
    multiline = out["unreadable"].str.contains("\n", regex=False)
    if multiline.any():
        row = int(np.flatnonzero(multiline.to_numpy())[0])
        raise ManifestError(f"manifest column 'unreadable' holds several lines in row {row} - give the reason "
                            "on one line")
    return out


def _label_column(values: pd.Series, col: str) -> pd.Series:
    if str(values.dtype) == "Int8" and values.dropna().isin(LABEL_VALUES).all():
        return values  # already canonical (the common case: a manifest read back from parquet)
    numeric = pd.to_numeric(values.astype("object").where(values.notna(), None), errors="coerce")
    bad = (numeric.isna() & values.notna()) | (numeric.notna() & ~numeric.isin(LABEL_VALUES))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = values.iloc[row]
        value = value.item() if hasattr(value, "item") else value
        raise ManifestError(f"manifest label column '{col}' has bad value {value!r} in row {row} - "
                            "use 1, 0, -1 or empty")
    return numeric.astype("Int8")


def manifest_path(run_or_path: str | os.PathLike) -> Path:
    """The manifest file of a run (name or folder), or ``run_or_path`` itself when it is a parquet file."""
    text = os.fspath(run_or_path)
    if text.endswith(".parquet"):
        return Path(text).expanduser().resolve()
    return RunPaths(resolve_run_dir(run_or_path)).manifest


def read(run_or_path: str | os.PathLike, *, include_unreadable: bool = False) -> pd.DataFrame:
    """Load and validate the manifest of a run (name or folder) or a manifest parquet file.

    Only the rows whose image the data stage could read (``unreadable == ""``), renumbered 0..n-1,
    unless ``include_unreadable``.
    """
    path = manifest_path(run_or_path)
    if not path.is_file():
        raise RunNotReadyError(f"manifest not found at {path} - {stages.hint('00', _run_name(path))}")
    frame = validate(pd.read_parquet(path))
    return frame if include_unreadable else readable(frame)


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of a manifest whose image is readable (``unreadable == ""``), renumbered 0..n-1."""
    if "unreadable" not in frame.columns:
        return frame
    keep = frame["unreadable"].fillna("").astype(str).eq("").to_numpy()
    return frame if keep.all() else frame.loc[keep].reset_index(drop=True)


def _run_name(manifest_file: Path) -> str | None:
    """The run folder's name of ``<run>/data/manifest.parquet``, for hints; None for a parquet file elsewhere."""
    return manifest_file.parent.parent.name if manifest_file.name == "manifest.parquet" else None


def report_groups(reports: Sequence[str]) -> np.ndarray:
    """Group id per report: same normalised text -> same id; ids are 0..G-1 in order of first appearance.

    Retrieval metrics rank groups, not rows, so that identical reports cannot decide a hit by a tie.
    """
    from medxpert_utils.data.reports import normalise_for_grouping

    keys = ["" if r is None or (isinstance(r, float) and np.isnan(r)) else normalise_for_grouping(str(r))
            for r in reports]
    codes, _ = pd.factorize(pd.Series(keys, dtype="object"), sort=False)
    return codes.astype(np.int64)


def file_content_hash(path: str | os.PathLike[str]) -> str:
    """:func:`content_hash` of a saved manifest (the data stage's output in every stage key downstream of it),
    remembered per file size and modification time within a process."""
    stat = os.stat(path)
    return _file_content_hash(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_content_hash(path: str, size: int, mtime_ns: int) -> str:
    return content_hash(pd.read_parquet(path))


def content_hash(df: pd.DataFrame) -> str:
    """sha256 of the manifest's contract columns, stable across runs and machines.

    Rows are hashed in order, with image paths taken relative to the folder all images share so
    that the same dataset cached under another ``data/`` folder hashes the same. The pixels enter
    through ``image_sha256``, the hash of each image file the data stage read (cached by size and
    mtime, see :mod:`medxpert_utils.core.hashing`), and ``unreadable`` is hashed too, so a dataset
    whose images changed, or went bad, hashes differently.
    """
    frame = validate(df)
    paths = frame["image_path"].tolist()
    base = os.path.commonpath(paths) if paths else ""
    if len(paths) == 1:
        base = os.path.dirname(base)
    digest = hashlib.sha256(_HASH_VERSION.encode())
    relative = [Path(os.path.relpath(p, base)).as_posix() if base else p for p in paths]
    columns = {col: frame[col].tolist() for col in MANIFEST_COLUMNS}
    columns["image_path"] = relative
    for col in LABEL_COLUMNS:
        columns[col] = ["" if pd.isna(v) else str(int(v)) for v in frame[col]]
    digest.update("\x1f".join(MANIFEST_COLUMNS).encode())
    for i in range(len(frame)):
        digest.update(b"\x1e")
        digest.update("\x1f".join(str(columns[col][i]) for col in MANIFEST_COLUMNS).encode("utf-8"))
    return digest.hexdigest()
