"""Patient-level split: no patient crosses splits, row ratios within one patient's worth, seeded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medxpert_utils.core.config import SplitRatios
from medxpert_utils.data.split import patient_split, split_counts

RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}


def make_patients(n: int, seed: int, max_images: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = np.repeat([f"p{i:04d}" for i in range(n)], rng.integers(1, max_images + 1, n))
    return rng.permutation(ids)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_no_patient_in_two_splits_and_row_ratios_hold(seed):
    ids = make_patients(400, seed)
    splits = patient_split(ids, RATIOS, seed)
    frame = pd.DataFrame({"patient": ids, "split": splits})
    assert frame.groupby("patient")["split"].nunique().max() == 1
    biggest = frame["patient"].value_counts().max()
    for name, ratio in RATIOS.items():
        assert abs((splits == name).sum() - ratio * len(ids)) <= biggest


def test_deterministic_by_seed_and_independent_of_row_order():
    ids = make_patients(200, 3)
    a = patient_split(ids, RATIOS, seed=5)
    assert np.array_equal(a, patient_split(list(ids), SplitRatios(**RATIOS), seed=5))
    assert not np.array_equal(a, patient_split(ids, RATIOS, seed=6))
    order = np.random.default_rng(0).permutation(len(ids))
    shuffled = patient_split(ids[order], RATIOS, seed=5)
    first = dict(zip(ids, a))
    assert all(first[p] == s for p, s in zip(ids[order], shuffled))


def test_tiny_inputs_still_fill_every_split():
    splits = patient_split(["a", "b", "c"], RATIOS, seed=0)
    assert sorted(splits) == ["test", "train", "val"]
    assert set(patient_split(["a", "a", "b", "c", "c"], RATIOS, seed=1)) == {"train", "val", "test"}
    assert len(patient_split([], RATIOS, seed=0)) == 0


def test_zero_val_ratio_leaves_val_empty():
    splits = patient_split([f"p{i}" for i in range(50)], {"train": 0.8, "val": 0.0, "test": 0.2}, seed=0)
    assert "val" not in set(splits) and (splits == "test").sum() == 10


def test_rows_without_patient_id_are_their_own_patients():
    ids = ["a", None, "", float("nan"), "a", None] + [f"p{i}" for i in range(30)]
    with pytest.warns(UserWarning, match="4 row\\(s\\) have no patient id"):
        splits = patient_split(ids, RATIOS, seed=2)
    assert splits[0] == splits[4]
    assert len(splits) == len(ids)


def test_bad_ratios_rejected():
    with pytest.raises(ValueError, match="sum to 1"):
        patient_split(["a", "b"], {"train": 0.5, "val": 0.1, "test": 0.1}, seed=0)
    with pytest.raises(ValueError, match="unknown split"):
        patient_split(["a", "b"], {"train": 0.5, "dev": 0.5}, seed=0)


def test_split_counts():
    counts = split_counts(["train", "train", "test"], ["a", "b", "c"])
    assert counts["rows"] == {"train": 2, "val": 0, "test": 1}
    assert counts["patients"]["train"] == 2
