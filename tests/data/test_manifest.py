"""The manifest contract: validation, reading a run's manifest, report groups and the content hash."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medxpert_utils.core import io
from medxpert_utils.core.errors import RunNotReadyError, UserError
from medxpert_utils.data import manifest as mf
from medxpert_utils.data.labels import CHEXPERT_LABELS


def make_manifest(base, n: int = 6) -> pd.DataFrame:
    rows = []
    for i in range(n):
        rows.append({
            "study_id": f"s{i}", "patient_id": f"p{i // 2}", "image_path": str(base / f"img{i}.png"),
            "findings": f"finding {i}", "impression": "" if i == 0 else f"impression {i}",
            "report": "finding 0" if i == 0 else f"impression {i}",
            "split": ["train", "val", "test"][(i // 2) % 3],
        })
    frame = pd.DataFrame(rows)
    for j, label in enumerate(CHEXPERT_LABELS):
        frame[label] = pd.array([[1, 0, -1, None][(i + j) % 4] for i in range(n)], dtype="Int8")
    frame["view"] = "PA"
    return frame


def test_contract_columns():
    assert mf.MANIFEST_COLUMNS[:7] == ["study_id", "patient_id", "image_path", "findings", "impression", "report",
                                       "split"]
    assert mf.MANIFEST_COLUMNS[7:21] == list(CHEXPERT_LABELS) and len(CHEXPERT_LABELS) == 14
    assert mf.MANIFEST_COLUMNS[21:] == ["image_sha256", "unreadable"]


def test_image_columns_default_to_empty_and_are_checked(tmp_path):
    frame = make_manifest(tmp_path)
    out = mf.validate(frame)  # built by hand without them: every image counts as readable
    assert (out["image_sha256"] == "").all() and (out["unreadable"] == "").all()
    given = frame.assign(image_sha256=["ab" * 32] * 5 + [None], unreadable=["", None, "", "", "", "empty file"])
    out = mf.validate(given)
    assert out.loc[5, "image_sha256"] == "" and out.loc[1, "unreadable"] == ""
    assert out.loc[5, "unreadable"] == "empty file"
    with pytest.raises(UserError, match="'image_sha256' has bad value 'XYZ' in row 0"):
        mf.validate(frame.assign(image_sha256=["XYZ"] + [""] * 5))
    with pytest.raises(UserError, match="'unreadable' holds several lines in row 2"):
        mf.validate(frame.assign(unreadable=["", "", "bad\nfile", "", "", ""]))


def test_validate_canonicalises(tmp_path):
    frame = make_manifest(tmp_path)
    shuffled = frame[["view"] + list(reversed(mf.TEXT_COLUMNS + mf.LABEL_COLUMNS))].copy()
    shuffled.index = range(10, 16)
    shuffled["findings"] = shuffled["findings"].astype(object)
    shuffled.loc[11, "findings"] = None
    shuffled["Edema"] = shuffled["Edema"].astype("float64")  # 1.0/0.0/-1.0/NaN as read from a CSV
    out = mf.validate(shuffled)
    assert list(out.columns) == mf.MANIFEST_COLUMNS + ["view"]
    assert list(out.index) == list(range(6))
    assert out.loc[1, "findings"] == ""
    assert str(out["Edema"].dtype) == "Int8" and out["Edema"].isna().sum() == frame["Edema"].isna().sum()


@pytest.mark.parametrize("change, expected", [
    (lambda f: f.drop(columns="report"), "missing column 'report'"),
    (lambda f: f.drop(columns="Cardiomegaly"), "missing column 'Cardiomegaly'"),
    (lambda f: f.assign(split=["train", "validate", "val", "val", "test", "test"]), "bad value 'validate'"),
    (lambda f: f.assign(Edema=pd.array([1, 2, 0, 0, 0, 0], dtype="Int8")), "'Edema' has bad value 2"),
    (lambda f: f.assign(report=["x", " ", "y", "z", "w", "v"]), "'report' is empty in row 1"),
    (lambda f: f.assign(image_path=["img.png"] + list(f["image_path"][1:])), "absolute paths"),
    (lambda f: f.assign(image_path=[f["image_path"][1]] + list(f["image_path"][1:])), "twice"),
    (lambda f: f.assign(split=["train", "val", "val", "val", "test", "test"]), "patient 'p0' is in two splits"),
])
def test_validate_names_the_problem(tmp_path, change, expected):
    with pytest.raises(UserError, match=expected.replace("(", "\\(")):
        mf.validate(change(make_manifest(tmp_path)))


def test_read_run_folder_name_and_parquet(tmp_path, monkeypatch):
    frame = make_manifest(tmp_path)
    with pytest.raises(RunNotReadyError, match="run 00_data_prep first .*--run no_such_run --until 00"):
        mf.read("no_such_run")
    run_dir = tmp_path / "outputs" / "myrun"
    io.write_parquet(run_dir / "data" / "manifest.parquet", frame)
    monkeypatch.setenv("MEDXPERT_OUTPUTS", str(tmp_path / "outputs"))
    by_name = mf.read("myrun")
    by_path = mf.read(run_dir)
    by_file = mf.read(run_dir / "data" / "manifest.parquet")
    pd.testing.assert_frame_equal(by_name, by_path)
    pd.testing.assert_frame_equal(by_name, by_file)
    assert str(by_name["No Finding"].dtype) == "Int8"
    assert by_name["No Finding"].isna().sum() == frame["No Finding"].isna().sum()


def test_read_leaves_unreadable_rows_out_unless_asked(tmp_path):
    frame = make_manifest(tmp_path).assign(unreadable=["", "truncated or corrupt JPEG (broken data stream)", "", "",
                                                        "file not found", ""])
    path = tmp_path / "run" / "data" / "manifest.parquet"
    io.write_parquet(path, frame)
    usable = mf.read(path)
    assert usable["study_id"].tolist() == ["s0", "s2", "s3", "s5"] and list(usable.index) == [0, 1, 2, 3]
    everything = mf.read(path, include_unreadable=True)
    assert len(everything) == 6 and everything.loc[4, "unreadable"] == "file not found"
    pd.testing.assert_frame_equal(mf.readable(everything), usable)


def test_report_groups_dense_in_order_of_first_appearance():
    reports = ["Normal chest.", "Small effusion.", "normal   CHEST.", "Cardiomegaly.", "Small effusion.", ""]
    groups = mf.report_groups(reports)
    assert groups.dtype.kind == "i"
    assert list(groups[:5]) == [0, 1, 0, 2, 1]
    assert groups[5] == 3 and set(groups) == set(range(4))


def test_content_hash_stable_across_roots_and_sensitive_to_content(tmp_path):
    a = make_manifest(tmp_path / "cache_a" / "demo")
    b = make_manifest(tmp_path / "elsewhere" / "demo")
    h = mf.content_hash(a)
    assert len(h) == 64 and int(h, 16) >= 0
    assert h == mf.content_hash(a.copy()) == mf.content_hash(b)
    assert h == mf.content_hash(a.assign(view="AP"))  # extra columns are not part of the contract
    changed = a.copy()
    changed.loc[3, "Edema"] = pd.NA if not pd.isna(changed.loc[3, "Edema"]) else 1
    assert mf.content_hash(changed) != h
    assert mf.content_hash(a.assign(split=["train", "train", "val", "val", "train", "train"])) != h
    assert mf.content_hash(a.iloc[::-1]) != h
    assert mf.content_hash(a.assign(image_path=a["image_path"].str.replace("img", "pic"))) != h
    assert mf.content_hash(a.assign(image_sha256="")) == h  # the default when the column is absent
    pixels = a.assign(image_sha256=[f"{i:064x}" for i in range(6)])
    assert mf.content_hash(pixels) != h  # the pixels are part of the data
    assert mf.content_hash(pixels.assign(image_sha256=[f"{i:064x}" for i in range(1, 7)])) != mf.content_hash(pixels)
    assert mf.content_hash(a.assign(unreadable=["", "", "", "", "", "empty file"])) != h
    assert not np.array_equal(mf.report_groups(a["report"]), [])
