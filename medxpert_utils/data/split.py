"""Seeded train/val/test split at patient level: no patient's images appear in two splits."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from medxpert_utils.core.config import SplitRatios

SPLITS = ("train", "val", "test")


def _ratios(ratios: SplitRatios | Mapping[str, float]) -> tuple[float, float, float]:
    values = ratios.model_dump() if isinstance(ratios, SplitRatios) else dict(ratios)
    unknown = set(values) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split name(s) {sorted(unknown)}: use train, val and test")
    out = tuple(float(values.get(name, 0.0)) for name in SPLITS)
    if any(v < 0 for v in out) or abs(sum(out) - 1.0) > 1e-6 or out[0] <= 0:
        raise ValueError(f"split ratios must be >= 0 with train > 0 and sum to 1, got {dict(zip(SPLITS, out))}")
    return out  # type: ignore[return-value]


def missing_patient_ids(patient_ids: Sequence[object]) -> np.ndarray:
    """Boolean mask of rows without a usable patient id (None, NaN or blank)."""
    series = pd.Series(list(patient_ids), dtype="object")
    return (series.isna() | series.astype(str).str.strip().eq("")).to_numpy()


def patient_split(patient_ids: Sequence[object], ratios: SplitRatios | Mapping[str, float], seed: int) -> np.ndarray:
    """Assign each row to "train", "val" or "test" so that no patient is in two splits.

    Unique patients are shuffled with ``seed`` and walked in that order while counting their rows;
    a patient goes to the split whose share of the cumulative row count its middle row falls in.
    So the ratios hold for rows (images), not patients, to within one patient's worth of rows.
    Every split with a positive ratio gets at least one patient when there are enough patients.
    Rows without a patient id (None, NaN, blank) are each treated as their own patient, which
    cannot rule out leakage between their splits; a warning says how many there were.
    """
    fractions = _ratios(ratios)
    ids = pd.Series(list(patient_ids), dtype="object")
    missing = missing_patient_ids(ids)
    if missing.any():
        warnings.warn(
            f"{int(missing.sum())} row(s) have no patient id: each is split as its own patient, "
            "so patient leakage between splits cannot be ruled out for them",
            UserWarning,
            stacklevel=2,
        )
        # A key no real id can take: the row number behind a NUL character.
        ids = ids.astype(str).where(~missing, pd.Series([f"\x00row{i}" for i in range(len(ids))]))
    keys = ids.astype(str).to_numpy()
    n_rows = len(keys)
    if n_rows == 0:
        return np.array([], dtype="<U5")

    codes, uniques = pd.factorize(keys, sort=True)  # sorted: the shuffle must not depend on row order
    counts = np.bincount(codes, minlength=len(uniques))
    order = np.random.default_rng(seed).permutation(len(uniques))
    cum_end = np.cumsum(counts[order])
    middle = cum_end - counts[order] / 2.0
    targets = np.cumsum(fractions)[:2] * n_rows
    first_val = int(np.searchsorted(middle, targets[0], side="left"))
    first_test = int(np.searchsorted(middle, targets[1], side="left"))
    first_val, first_test = _ensure_nonempty(first_val, first_test, len(uniques), fractions)

    split_of_rank = np.empty(len(uniques), dtype="<U5")
    split_of_rank[:first_val] = "train"
    split_of_rank[first_val:first_test] = "val"
    split_of_rank[first_test:] = "test"
    split_of_patient = np.empty(len(uniques), dtype="<U5")
    split_of_patient[order] = split_of_rank
    return split_of_patient[codes]


def _ensure_nonempty(first_val: int, first_test: int, n_patients: int,
                     fractions: tuple[float, float, float]) -> tuple[int, int]:
    """Move a boundary by the fewest patients so each split with a positive ratio has one patient."""
    wanted = [f > 0 for f in fractions]
    if n_patients < sum(wanted):
        return first_val, first_test
    val_size = 1 if wanted[1] else 0
    test_size = 1 if wanted[2] else 0
    first_val = min(max(first_val, 1), n_patients - val_size - test_size)
    first_test = min(max(first_test, first_val + val_size), n_patients - test_size)
    if not wanted[1]:
        first_test = first_val
    return first_val, first_test


def split_counts(splits: Sequence[str], patient_ids: Sequence[object] | None = None) -> dict[str, dict[str, int]]:
    """Rows (and patients, when given) per split, for the data-prep summary table."""
    frame = pd.DataFrame({"split": list(splits)})
    out: dict[str, dict[str, int]] = {"rows": {s: int((frame["split"] == s).sum()) for s in SPLITS}}
    if patient_ids is not None:
        frame["patient"] = list(patient_ids)
        out["patients"] = {s: int(frame.loc[frame["split"] == s, "patient"].nunique()) for s in SPLITS}
    return out
