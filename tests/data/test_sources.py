"""Dataset sources on tiny fixtures in each real layout; bad rows skipped and counted; no network."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medxpert_utils.core import config
from medxpert_utils.core.errors import MissingModelError, UserError
from medxpert_utils.core.paths import data_dir
from medxpert_utils.data import download as dl
from medxpert_utils.data import manifest as mf
from medxpert_utils.data import openi, sources
from medxpert_utils.data.labels import CHEXPERT_LABELS, label_report


def make_cfg(tmp_path: Path, **overrides):
    return config.load("params/demo.yaml", run=str(tmp_path / "run"), overrides=overrides)


def png(value: int = 100, size: int = 16) -> bytes:
    arr = (np.random.default_rng(value).integers(0, 40, (size, size)) + value).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(value: int = 100, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


BAD_IMAGES = {
    "corrupt.png": png(5)[:60] + b"\x00" * 40 + png(5)[100:],
    "truncated.png": png(6)[:-30],
    "notes.png": b"this is a text file renamed to .png\n",
    "empty.png": b"",
}


def assert_contract(frame: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(frame, mf.validate(frame))
    assert list(frame.columns[: len(mf.MANIFEST_COLUMNS)]) == mf.MANIFEST_COLUMNS
    assert all(Path(p).is_absolute() for p in frame["image_path"])
    assert all(Path(p).is_file() for p in mf.readable(frame)["image_path"])  # unreadable rows stay, flagged
    assert frame.groupby("patient_id")["split"].nunique().max() == 1
    has_impression = frame["impression"].str.strip() != ""
    assert (frame.loc[has_impression, "report"] == frame.loc[has_impression, "impression"]).all()
    assert (frame.loc[~has_impression, "report"] == frame.loc[~has_impression, "findings"]).all()
    assert (frame["report"].str.strip() != "").all()
    for label in CHEXPERT_LABELS:
        assert str(frame[label].dtype) == "Int8"


def clean(text: str) -> str:
    from medxpert_utils.data.reports import clean_report

    return clean_report(text)


def labels_of(frame: pd.DataFrame, row: int) -> dict:
    return {k: (None if pd.isna(v) else int(v)) for k, v in frame.loc[row, CHEXPERT_LABELS].items()}


# --------------------------------------------------------------------------- csv source and bad images

def build_csv_dataset(root: Path, with_patients: bool = True) -> Path:
    (root / "imgs").mkdir(parents=True)
    rows = []
    reports = [
        "FINDINGS: Heart size is normal. Lungs are clear.\nIMPRESSION: No acute cardiopulmonary process.",
        "Large right pleural effusion.",
        "FINDINGS: Mild cardiomegaly.\nIMPRESSION: Cardiomegaly, possible edema.",
        "Right pneumothorax.",
        "FINDINGS: No pneumothorax.",
        "Left lower lobe consolidation.",
        "",  # empty report: dropped and counted
        "Lungs are clear.",
    ]
    for i, text in enumerate(reports):
        (root / "imgs" / f"ok{i}.png").write_bytes(png(20 * i))
        rows.append({"path": f"imgs/ok{i}.png", "text": text, "pid": f"P{i % 4}"})
    for i, (name, data) in enumerate(BAD_IMAGES.items()):
        (root / "imgs" / name).write_bytes(data)
        rows.append({"path": f"imgs/{name}", "text": "Small left effusion.", "pid": f"P{i}"})
    rows.append({"path": "imgs/missing.png", "text": "Small left effusion.", "pid": "P9"})
    table = pd.DataFrame(rows)
    if not with_patients:
        table = table.drop(columns="pid")
    table.to_csv(root / "index.csv", index=False)
    return root


def test_csv_source_skips_and_counts_bad_rows(tmp_path):
    root = build_csv_dataset(tmp_path / "ds")
    cfg = make_cfg(tmp_path, **{"data.source": "csv", "data.root": str(root), "data.csv_file": "index.csv",
                                "data.image_column": "path", "data.report_column": "text",
                                "data.patient_column": "pid", "data.split": {"train": 0.5, "val": 0.25, "test": 0.25}})
    frame, stats = sources.build_manifest(cfg, progress=False)
    assert_contract(frame)
    # bad images and the missing file stay in the manifest, flagged with their reason, and count as skipped
    assert len(frame) == 12 and stats["n_rows"] == len(mf.readable(frame)) == 7 and stats["n_unreadable"] == 5
    assert stats["n_skipped"] == 1 + len(BAD_IMAGES) + 1  # empty report, bad images, missing file
    text = " ".join(stats["skipped_examples"]) + " ".join(stats["skipped_by_reason"])
    assert "empty report" in text and "file not found" in text
    assert sum(n for r, n in stats["skipped_by_reason"].items() if r.startswith("unreadable image")) == 5
    assert set(mf.readable(frame)["patient_id"]) <= {"P0", "P1", "P2", "P3"}
    first = frame.loc[frame["image_path"].str.endswith("ok0.png")].iloc[0]
    assert first["impression"] == clean("No acute cardiopulmonary process.")
    assert first["findings"] == clean("Heart size is normal. Lungs are clear.")
    plain = frame.loc[frame["image_path"].str.endswith("ok1.png")].iloc[0]
    assert plain["findings"] == clean("Large right pleural effusion.") and plain["impression"] == ""
    row = int(np.flatnonzero(frame["image_path"].str.endswith("ok1.png"))[0])
    assert labels_of(frame, row) == label_report(frame.loc[row, "report"])  # labels from the labeler


def test_csv_without_patient_column_notes_leakage(tmp_path):
    root = build_csv_dataset(tmp_path / "ds", with_patients=False)
    cfg = make_cfg(tmp_path, **{"data.source": "csv", "data.root": str(root), "data.csv_file": "index.csv",
                                "data.image_column": "path", "data.report_column": "text"})
    frame, stats = sources.build_manifest(cfg, progress=False)
    assert frame["patient_id"].str.startswith("row").all()
    assert any("patient leakage cannot be ruled out" in n for n in stats["notes"])


def test_csv_errors_name_what_is_missing(tmp_path):
    root = build_csv_dataset(tmp_path / "ds")
    cfg = make_cfg(tmp_path, **{"data.source": "csv", "data.root": str(root), "data.csv_file": "other.csv"})
    with pytest.raises(UserError, match="other.csv"):
        sources.build_manifest(cfg, progress=False)
    cfg = make_cfg(tmp_path, **{"data.source": "csv", "data.root": str(root), "data.csv_file": "index.csv",
                                "data.image_column": "file"})
    with pytest.raises(UserError, match="no column 'file'"):
        sources.build_manifest(cfg, progress=False)


def test_csv_label_columns_are_used_as_given(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    rows = []
    for i in range(4):
        (root / f"{i}.png").write_bytes(png(40 * i))
        rows.append({"image_path": f"{i}.png", "report": "Lungs are clear.", "patient": f"P{i}",
                     **{label: ["1.0", "0.0", "-1.0", ""][(i + j) % 4] for j, label in enumerate(CHEXPERT_LABELS)}})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    cfg = make_cfg(tmp_path, **{"data.source": "csv", "data.root": str(root), "data.csv_file": "labels.csv",
                                "data.patient_column": "patient"})
    frame, _ = sources.build_manifest(cfg, progress=False)
    assert_contract(frame)
    by_image = frame.set_index(frame["image_path"].map(lambda p: Path(p).name))
    assert by_image.loc["0.png", CHEXPERT_LABELS[0]] == 1 and by_image.loc["1.png", CHEXPERT_LABELS[0]] == 0
    assert by_image.loc["2.png", CHEXPERT_LABELS[0]] == -1 and pd.isna(by_image.loc["3.png", CHEXPERT_LABELS[0]])


def test_max_studies_is_a_seeded_sample(tmp_path):
    root = build_csv_dataset(tmp_path / "ds")
    over = {"data.source": "csv", "data.root": str(root), "data.csv_file": "index.csv", "data.image_column": "path",
            "data.report_column": "text", "data.max_studies": 4}
    a, stats = sources.build_manifest(make_cfg(tmp_path, **over), progress=False)
    b, _ = sources.build_manifest(make_cfg(tmp_path, **over), progress=False)
    c, _ = sources.build_manifest(make_cfg(tmp_path, **over, seed=3), progress=False)
    assert len(a) <= 4 and list(a["study_id"]) == list(b["study_id"])
    assert any("max_studies" in n for n in stats["notes"])
    assert list(a["study_id"]) != list(c["study_id"]) or len(a) < 4


# --------------------------------------------------------------------------- demo

def test_demo_generates_once_and_labels_from_reports(tmp_path):
    cfg = make_cfg(tmp_path, **{"data.n_studies": 12, "data.image_size": 32})
    frame, stats = sources.build_manifest(cfg, progress=False)
    assert_contract(frame)
    assert stats["source"] == "demo" and stats["n_rows"] == len(frame) >= 10
    cache = sources.demo_cache_dir(12, 32, 1, cfg.seed)
    assert all(Path(p).is_relative_to(cache) for p in frame["image_path"])
    assert {c for c in frame.columns if c.startswith("truth_")}  # the generator's truth kept beside the labels
    for row in range(len(frame)):
        assert labels_of(frame, row) == label_report(frame.loc[row, "report"])

    mtimes = {p: Path(p).stat().st_mtime_ns for p in frame["image_path"]}
    again, _ = sources.build_manifest(cfg, progress=False)  # the cached images are reused
    assert {p: Path(p).stat().st_mtime_ns for p in again["image_path"]} == mtimes
    pd.testing.assert_frame_equal(frame, again)
    assert mf.content_hash(frame) == mf.content_hash(again)
    assert sources.demo_cache_dir(12, 32, 1, cfg.seed + 1) != cache
    assert sources.demo_cache_dir(12, 64, 1, cfg.seed) != cache


# --------------------------------------------------------------------------- mimic_hf

HF_ROWS = [
    ("Heart size normal. Lungs clear.", "No acute cardiopulmonary process."),
    ("Small left pleural effusion.", "Left effusion."),
    ("Enlarged cardiac silhouette.", None),
    (None, "Right upper lobe pneumonia."),
    ("Mild pulmonary edema.", "Edema."),
    (None, None),  # no report: dropped
    ("Right pneumothorax.", "Pneumothorax."),
    ("Lungs are clear.", "Normal chest."),
]


def build_hf_fixture(root: Path) -> dict[str, Path]:
    import datasets

    images = [{"bytes": png(25 * i), "path": None} for i in range(len(HF_ROWS))]
    images[4] = {"bytes": b"\x89PNG\r\n\x1a\nbroken image bytes", "path": None}  # unreadable: skipped
    features = datasets.Features({"image": datasets.Image(), "findings": datasets.Value("string"),
                                  "impression": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": images, "findings": [f for f, _ in HF_ROWS],
                                     "impression": [i for _, i in HF_ROWS]}, features=features)
    saved = root / "saved"
    ds.save_to_disk(str(saved))
    parquet = root / "parquet"
    (parquet / "data").mkdir(parents=True)
    renamed = ds.rename_columns({"findings": "Findings", "impression": "Impression"})
    renamed.to_parquet(str(parquet / "data" / "train-00000-of-00001.parquet"))
    return {"saved": saved, "parquet": parquet}


@pytest.mark.parametrize("layout", ["saved", "parquet"])
def test_mimic_hf_local_copy(tmp_path, layout):
    fixture = build_hf_fixture(tmp_path / "hf")
    cfg = make_cfg(tmp_path, **{"data.source": "mimic_hf", "data.hf_dataset": str(fixture[layout])})
    frame, stats = sources.build_manifest(cfg, progress=False)
    assert_contract(frame)
    assert len(frame) == 6 and stats["n_skipped"] == 2
    assert "row4" not in set(frame["study_id"]) and "row5" not in set(frame["study_id"])
    assert (frame["patient_id"] == frame["study_id"]).all() and frame["study_id"].str.startswith("row").all()
    assert any("patient leakage cannot be ruled out" in n for n in stats["notes"])
    assert any("row 4" in e for e in stats["skipped_examples"])
    row2 = frame.index[frame["study_id"] == "row2"][0]
    assert frame.loc[row2, "report"] == clean("Enlarged cardiac silhouette.") and frame.loc[row2, "impression"] == ""
    out_dir = sources.hf_image_dir(str(fixture[layout]), "train", None)
    assert all(Path(p).parent == out_dir and p.endswith(".png") for p in frame["image_path"])
    assert np.asarray(Image.open(frame.loc[0, "image_path"])).shape == (16, 16)

    mtimes = {p: Path(p).stat().st_mtime_ns for p in frame["image_path"]}
    again, _ = sources.build_manifest(cfg, progress=False)  # cached PNGs are reused, not rewritten
    assert {p: Path(p).stat().st_mtime_ns for p in again["image_path"]} == mtimes


def test_mimic_hf_offline_error_is_one_clear_line(tmp_path, monkeypatch):
    # Real call in offline mode (conftest sets HF_HUB_OFFLINE): datasets raises ConnectionError.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = make_cfg(tmp_path, **{"data.source": "mimic_hf", "data.hf_dataset": "medxpert-tests/not-a-cached-dataset"})
    with pytest.raises(MissingModelError) as info:
        sources.build_manifest(cfg, progress=False)
    message = str(info.value)
    assert "cannot load dataset 'medxpert-tests/not-a-cached-dataset' (offline or not cached" in message
    assert "HF_TOKEN" in message and "demo profile" in message and "\n" not in message


@pytest.mark.parametrize("error", ["local_entry", "not_found", "connection"])
def test_mimic_hf_hub_errors_become_missing_model_error(tmp_path, monkeypatch, error):
    import datasets
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import LocalEntryNotFoundError

    raised = {
        "local_entry": LocalEntryNotFoundError("Cannot find the requested files in the disk cache"),
        "not_found": DatasetNotFoundError("Dataset 'x/y' doesn't exist on the Hub or cannot be accessed."),
        "connection": ConnectionError("Couldn't reach 'x/y' on the Hub (LocalEntryNotFoundError)"),
    }[error]
    seen = {}

    def fake_load_dataset(path, **kwargs):
        seen.update(kwargs, path=path)
        raise raised

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    cfg = make_cfg(tmp_path, **{"data.source": "mimic_hf", "data.hf_dataset": "x/y", "data.hf_revision": "abc123"})
    with pytest.raises(MissingModelError, match="cannot load dataset 'x/y'"):
        sources.build_manifest(cfg, progress=False)
    assert seen == {"path": "x/y", "split": "train", "revision": "abc123", "token": "hf_test_token"}


# --------------------------------------------------------------------------- mimic_cxr_jpg

MIMIC_STUDIES = [  # subject, study, official split, report (None: no report file), labels (None: no chexpert row)
    (10000032, 50414267, "train", "FINDINGS: Heart size is normal. Lungs are clear.\n\nIMPRESSION: No acute process.",
     {"No Finding": 1.0}),
    (10000032, 53189527, "train", "FINDINGS: Small left effusion.\n\nIMPRESSION: Left pleural effusion.",
     {"Pleural Effusion": 1.0, "Cardiomegaly": -1.0, "Pneumothorax": 0.0}),
    (10000764, 57375967, "validate", "FINDINGS: Right lower lobe opacity.\n\nIMPRESSION: Possible pneumonia.",
     {"Pneumonia": -1.0, "Lung Opacity": 1.0}),
    (11000011, 51234567, "test", "FINDINGS: Mild cardiomegaly.", None),
    (11000011, 52222222, "test", None, {"Cardiomegaly": 1.0}),
]


def write_gz_csv(frame: pd.DataFrame, path: Path) -> None:
    with gzip.open(path, "wt", newline="") as handle:
        frame.to_csv(handle, index=False)


def build_mimic_fixture(root: Path, reports_root: Path) -> None:
    meta, split, chexpert = [], [], []
    for n, (subject, study, official, report, labels) in enumerate(MIMIC_STUDIES):
        folder = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True)
        for k, view in enumerate(("PA" if n % 2 == 0 else "AP", "LATERAL")):
            dicom_id = hashlib.sha1(f"{study}-{k}".encode()).hexdigest()[:8] + "-" + "abcdef01"
            (folder / f"{dicom_id}.jpg").write_bytes(jpeg(40 + 30 * n + k))
            meta.append({"dicom_id": dicom_id, "subject_id": subject, "study_id": study,
                         "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view,
                         "Rows": 16, "Columns": 16})
            split.append({"dicom_id": dicom_id, "study_id": study, "subject_id": subject, "split": official})
        if report is not None:
            path = reports_root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
                            f" {report}\n")
        if labels is not None:
            chexpert.append({"subject_id": subject, "study_id": study, **{c: labels.get(c) for c in CHEXPERT_LABELS}})
    write_gz_csv(pd.DataFrame(meta), root / "mimic-cxr-2.0.0-metadata.csv.gz")
    write_gz_csv(pd.DataFrame(split), root / "mimic-cxr-2.0.0-split.csv.gz")
    write_gz_csv(pd.DataFrame(chexpert), root / "mimic-cxr-2.0.0-chexpert.csv.gz")


def test_mimic_cxr_jpg_official_labels_and_split(tmp_path):
    root, reports = tmp_path / "mimic-cxr-jpg", tmp_path / "mimic-cxr-reports"
    build_mimic_fixture(root, reports)
    cfg = make_cfg(tmp_path, **{"data.source": "mimic_cxr_jpg", "data.root": str(root),
                                "data.reports_root": str(reports), "data.official_split": True})
    frame, stats = sources.build_manifest(cfg, progress=False)
    assert_contract(frame)
    assert len(frame) == 4 and set(frame["view"]) <= {"PA", "AP"}  # frontal only; one study lacks a report
    assert stats["skipped_by_reason"] == {"report file missing": 1}
    assert set(frame["study_id"]) == {"s50414267", "s53189527", "s57375967", "s51234567"}
    assert set(frame["patient_id"]) == {"p10000032", "p10000764", "p11000011"}
    by_study = frame.set_index("study_id")
    assert by_study.loc["s57375967", "split"] == "val" and by_study.loc["s51234567", "split"] == "test"
    assert by_study.loc["s53189527", "Pleural Effusion"] == 1 and by_study.loc["s53189527", "Cardiomegaly"] == -1
    assert by_study.loc["s53189527", "Pneumothorax"] == 0 and pd.isna(by_study.loc["s53189527", "Edema"])
    assert by_study.loc["s53189527", "impression"] == clean("Left pleural effusion.")
    path = Path(by_study.loc["s50414267", "image_path"])
    assert path.parts[-4:-1] == ("p10", "p10000032", "s50414267") and path.suffix == ".jpg"
    no_chexpert = frame.index[frame["study_id"] == "s51234567"][0]  # labelled from its report instead
    assert frame.loc[no_chexpert, "report"] == clean("Mild cardiomegaly.")
    assert labels_of(frame, no_chexpert) == label_report(frame.loc[no_chexpert, "report"])
    assert any("labelled from their report" in n for n in stats["notes"])


def test_mimic_cxr_jpg_seeded_patient_split_and_all_views(tmp_path):
    root, reports = tmp_path / "mimic-cxr-jpg", tmp_path / "mimic-cxr-reports"
    build_mimic_fixture(root, reports)
    over = {"data.source": "mimic_cxr_jpg", "data.root": str(root), "data.reports_root": str(reports),
            "data.official_split": False, "data.frontal_only": False}
    frame, _ = sources.build_manifest(make_cfg(tmp_path, **over), progress=False)
    assert len(frame) == 8 and "LATERAL" in set(frame["view"])
    assert frame.groupby("patient_id")["split"].nunique().max() == 1


def test_mimic_cxr_jpg_missing_files_are_named(tmp_path):
    root, reports = tmp_path / "mimic-cxr-jpg", tmp_path / "mimic-cxr-reports"
    cfg = make_cfg(tmp_path, **{"data.source": "mimic_cxr_jpg", "data.root": str(root),
                                "data.reports_root": str(reports)})
    with pytest.raises(UserError, match="MIMIC-CXR-JPG folder not found"):
        sources.build_manifest(cfg, progress=False)
    build_mimic_fixture(root, reports)
    (root / "mimic-cxr-2.0.0-chexpert.csv.gz").unlink()
    with pytest.raises(UserError, match="mimic-cxr-2.0.0-chexpert.csv.gz not found"):
        sources.build_manifest(cfg, progress=False)


# --------------------------------------------------------------------------- iu_xray

IU_REPORTS = {  # report number -> (findings, impression, [(image id, caption)])
    1: ("The cardiac silhouette and mediastinum size are within normal limits. There is no pulmonary edema.",
        "Normal chest x-XXXX.",
        [("CXR1_1_IM-0001-3001", "Xray Chest PA and Lateral"), ("CXR1_1_IM-0001-4001", "Xray Chest PA and Lateral")]),
    2: ("Borderline cardiomegaly. Midline sternotomy XXXX.", "No acute pulmonary findings.",
        [("CXR2_IM-0652-1001", "Lateral view"), ("CXR2_IM-0652-2001", "PA view")]),
    3: ("", "Small right pleural effusion.", [("CXR3_IM-1384-1001", "Xray Chest PA and Lateral")]),
    4: ("", "", [("CXR4_IM-2050-1001", "Xray Chest PA and Lateral")]),  # no text: dropped
}


def iu_xml(number: int, findings: str, impression: str, images: list[tuple[str, str]]) -> str:
    parents = "".join(
        f'<parentImage id="{image_id}"><figureId>F{k + 1}</figureId><caption>{caption}</caption>'
        f'<panel type="single"><url>/hadoop/storage/radiology/extract/{image_id}.jpg</url></panel></parentImage>'
        for k, (image_id, caption) in enumerate(images))
    return (f'<?xml version="1.0" encoding="utf-8"?><eCitation><meta type="rr"/><uId id="CXR{number}"/>'
            f'<pmcId id="{number}"/><MedlineCitation Owner="Indiana University" Status="supplied">'
            f'<Article PubModel="Electronic">'
            f'<Abstract><AbstractText Label="COMPARISON">None.</AbstractText>'
            f'<AbstractText Label="INDICATION">Chest pain.</AbstractText>'
            f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
            f'<AbstractText Label="IMPRESSION">{impression}</AbstractText></Abstract></Article></MedlineCitation>'
            f'<MeSH><major>normal</major></MeSH>{parents}</eCitation>')


def tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def iu_archives() -> dict[str, bytes]:
    images = {f"{image_id}.png": png(30 * n + k) for n, (_, _, imgs) in IU_REPORTS.items()
              for k, (image_id, _) in enumerate(imgs)}
    images["CXR3_IM-1384-1001.png"] = png(3)[:-40]  # truncated: skipped at build time
    xmls = {f"ecgen-radiology/{n}.xml": iu_xml(n, *spec).encode() for n, spec in IU_REPORTS.items()}
    return {"/NLMCXR_png.tgz": tgz(images), "/NLMCXR_reports.tgz": tgz(xmls)}


class FileServer:
    """A local HTTP server with Range support; ``cut[path]`` bytes then hang up, to test resuming."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.cut, self.requests = files, {}, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                data = outer.files.get(self.path)
                outer.requests.append((self.path, self.headers.get("Range")))
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = outer.cut.pop(self.path, None)
                self.wfile.write(body if cut is None else body[:cut])
                if cut is not None:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def no_proxy(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_iu_xray_download_parse_and_frontal_heuristic(tmp_path, monkeypatch, no_proxy):
    archives = iu_archives()
    with FileServer(archives) as server:
        monkeypatch.setattr(openi, "IU_PNG_URL", server.url + "/NLMCXR_png.tgz")
        monkeypatch.setattr(openi, "IU_REPORTS_URL", server.url + "/NLMCXR_reports.tgz")
        cfg = make_cfg(tmp_path, **{"data.source": "iu_xray", "data.root": None})
        frame, stats = sources.build_manifest(cfg, progress=False)
        root = data_dir() / "iu_xray"
        assert_contract(frame)
        assert list(frame["study_id"]) == ["CXR1", "CXR2", "CXR3"]  # CXR4: no text
        assert list(mf.readable(frame)["study_id"]) == ["CXR1", "CXR2"]  # CXR3: truncated PNG (kept, flagged)
        assert stats["n_skipped"] == 2
        assert Path(frame.loc[0, "image_path"]).name == "CXR1_1_IM-0001-3001.png"  # first image of the report
        assert Path(frame.loc[1, "image_path"]).name == "CXR2_IM-0652-2001.png"  # the caption says PA
        assert frame.loc[0, "impression"] == clean(IU_REPORTS[1][1])
        assert frame.loc[0, "findings"] == clean(IU_REPORTS[1][0])
        checksums = json.loads((root / dl.CHECKSUMS_FILE).read_text())
        assert checksums["NLMCXR_png.tgz"] == hashlib.sha256(archives["/NLMCXR_png.tgz"]).hexdigest()
        n_requests = len(server.requests)
        again, _ = sources.build_manifest(cfg, progress=False)  # extracted data reused: no network
        assert len(server.requests) == n_requests
        pd.testing.assert_frame_equal(frame, again)

        everything, _ = sources.build_manifest(make_cfg(tmp_path, **{"data.source": "iu_xray", "data.root": None,
                                                                      "data.frontal_only": False}), progress=False)
        assert len(mf.readable(everything)) == 4 and set(everything["view"]) == {"frontal", "lateral"}


def test_download_resumes_with_range_request(tmp_path, no_proxy):
    payload = bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8))
    with FileServer({"/big.tgz": payload}) as server:
        server.cut["/big.tgz"] = 120_000
        dest = tmp_path / "big.tgz"
        with pytest.raises(MissingModelError, match="cannot download"):
            dl.download(server.url + "/big.tgz", dest, progress=False)
        part = tmp_path / "big.tgz.part"
        assert part.is_file() and 0 < part.stat().st_size < len(payload) and not dest.exists()
        kept = part.stat().st_size
        dl.download(server.url + "/big.tgz", dest, progress=False)
        assert server.requests[-1] == ("/big.tgz", f"bytes={kept}-")
        assert dest.read_bytes() == payload and not part.exists()


def test_download_checksum_mismatch(tmp_path, no_proxy):
    with FileServer({"/a.tgz": b"archive bytes"}) as server:
        dest = tmp_path / "a.tgz"
        with pytest.raises(dl.ChecksumError, match="checksum mismatch for a.tgz"):
            dl.download(server.url + "/a.tgz", dest, sha256="0" * 64, progress=False)
        assert not dest.exists() and not (tmp_path / "a.tgz.part").exists()
        dl.download(server.url + "/a.tgz", dest, progress=False)  # no known checksum: recorded
        assert dl.recorded_checksum(dest) == hashlib.sha256(b"archive bytes").hexdigest()
        dest.write_bytes(b"tampered")
        with pytest.raises(dl.ChecksumError):
            dl.verify_checksum(dest)


def test_iu_xray_checksum_table_is_enforced(tmp_path, monkeypatch, no_proxy):
    with FileServer(iu_archives()) as server:
        monkeypatch.setattr(openi, "IU_PNG_URL", server.url + "/NLMCXR_png.tgz")
        monkeypatch.setattr(openi, "IU_REPORTS_URL", server.url + "/NLMCXR_reports.tgz")
        monkeypatch.setitem(openi.IU_CHECKSUMS, "NLMCXR_png.tgz", "f" * 64)
        cfg = make_cfg(tmp_path, **{"data.source": "iu_xray", "data.root": str(tmp_path / "iu")})
        with pytest.raises(dl.ChecksumError, match="NLMCXR_png.tgz"):
            sources.build_manifest(cfg, progress=False)


def test_iu_xray_offline_without_download(tmp_path):
    cfg = make_cfg(tmp_path, **{"data.source": "iu_xray", "data.root": str(tmp_path / "iu"), "data.download": False})
    with pytest.raises(UserError, match="data.download"):
        sources.build_manifest(cfg, progress=False)
    (tmp_path / "iu2").mkdir()
    with pytest.raises(MissingModelError, match="cannot download"):
        openi.ensure_iu_xray(tmp_path / "iu2", png_url="http://127.0.0.1:9/NLMCXR_png.tgz", progress=False)


def test_safe_extract_refuses_path_traversal_and_links(tmp_path):
    evil = tmp_path / "evil.tgz"
    evil.write_bytes(tgz({"ok.txt": b"fine", "../escape.txt": b"bad"}))
    with pytest.raises(UserError, match="unsafe path '../escape.txt'"):
        dl.safe_extract(evil, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out").exists()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    linked = tmp_path / "link.tgz"
    linked.write_bytes(buffer.getvalue())
    with pytest.raises(UserError, match="link or special file"):
        dl.safe_extract(linked, tmp_path / "out2")


def test_parse_iu_report_and_frontal_rule(tmp_path):
    path = tmp_path / "7.xml"
    path.write_text(iu_xml(7, "Heart normal.", "No acute disease.", [("A", "Xray Chest PA and Lateral"), ("B", "x")]))
    report = openi.parse_iu_report(path)
    assert report == {"uid": "CXR7", "findings": "Heart normal.", "impression": "No acute disease.",
                      "images": [("A", "Xray Chest PA and Lateral"), ("B", "x")]}
    assert openi.iu_is_frontal(0, "Xray Chest PA and Lateral") and not openi.iu_is_frontal(1, "PA and lateral")
    assert openi.iu_is_frontal(1, "Frontal view") and not openi.iu_is_frontal(0, "Lateral view")
