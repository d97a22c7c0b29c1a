"""The query check (retrieval.ood): scores, gates, calibration beside the embeddings, the text check, metrics."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medxpert_utils.core import config, runs
from medxpert_utils.core import io as mxio
from medxpert_utils.data.images import ImageFacts, image_facts
from medxpert_utils.data.labels import CHEXPERT_LABELS
from medxpert_utils.retrieval import ood
from medxpert_utils.retrieval.ood_eval import auroc_fpr
from medxpert_utils.retrieval.store import CACHE_KEY_FILE, CORPUS_DIR, write_set


def stub_checker(vocabulary=("pleural", "effusion", "pneumonia", "right", "small"), threshold: float = 0.5):
    """A checker over one reference vector (0.5, 0.5, 0.5, 0.5): a query embedded as that vector scores 0."""
    cal = ood.Calibration(method="knn", k=1, threshold=threshold, accept=0.95, colour_limit=0.06, n_bank=1,
                          n_calibration=1, calibration_rows="val split", val_accepted=1.0, embeddings_key="stub")
    return ood.QueryChecker(np.full((1, 4), 0.5, np.float32), cal, set(vocabulary))


def unit(rows) -> np.ndarray:
    arr = np.asarray(rows, dtype=np.float32)
    return arr / np.linalg.norm(arr, axis=1, keepdims=True)


# --- scores -----------------------------------------------------------------------------------------

def test_knn_score_is_the_distance_to_the_kth_neighbour():
    bank = unit([[1, 0], [0, 1], [-1, 0]])
    query = unit([[1, 0]])
    assert ood.knn_scores(bank, query, 1) == pytest.approx([0.0])
    assert ood.knn_scores(bank, query, 2) == pytest.approx([1.0])  # orthogonal: 1 - cos 90
    assert ood.knn_scores(bank, query, 3) == pytest.approx([2.0])
    assert ood.knn_scores(bank, query, 10) == pytest.approx([2.0])  # k clamped to the bank
    assert ood.knn_scores(bank, bank[:1], 1, exclude_self=True) == pytest.approx([1.0])


def test_mahalanobis_grows_away_from_the_training_cloud():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(500, 3)) * [1.0, 1.0, 0.1]
    near, far_thin, far_wide = ood.scores("mahalanobis", bank, [[0, 0, 0], [0, 0, 1.0], [1.0, 0, 0]])
    assert near < 0.2 and far_thin > 5 * far_wide  # a step along a thin direction is far
    with pytest.raises(ood.UserError, match="query_check.method"):
        ood.scores("energy", bank, bank[:1])


def test_calibration_accepts_the_requested_share():
    rng = np.random.default_rng(1)
    bank, val = unit(rng.normal(size=(300, 8))), unit(rng.normal(size=(200, 8)))
    threshold, values = ood.calibrate(bank, val, "knn", 5, accept=0.95)
    assert 0.95 <= np.mean(values <= threshold) < 0.96


def test_split_bank_uses_train_and_val_else_holds_out_training_rows():
    bank, val, where = ood.split_bank(np.array(["train", "val", "test", "train", "val"]))
    assert list(bank) == [0, 3] and list(val) == [1, 4] and where == "val split"
    bank, val, where = ood.split_bank(np.array(["train"] * 20 + ["test"] * 5))
    assert len(val) == 3 and len(bank) == 17 and not set(bank) & set(val) and where == "held-out training rows"


# --- gates ------------------------------------------------------------------------------------------

def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def test_colour_gate_refuses_photos_and_tints_not_grey_files():
    import matplotlib.cbook as cbook

    photo = image_facts(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    assert ood.gate_reason(photo, 0.06).startswith("a colour image")
    grey = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    assert image_facts(_png(grey)).colourfulness == 0.0
    assert image_facts(_png(grey.convert("RGB"), "JPEG")).colourfulness < 0.01  # a grey JPEG saved as RGB
    from PIL import ImageOps

    tinted = ImageOps.colorize(grey, black=(0, 0, 0), white=(255, 120, 120))
    assert ood.gate_reason(image_facts(_png(tinted)), 0.06) is not None
    assert ood.gate_reason(image_facts(np.stack([np.asarray(grey)] * 3, -1)), 0.06) is None
    assert ood.gate_reason(None, 0.06) is None


def _dicom(**tags) -> bytes:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for name, value in tags.items():
        if value is None:
            delattr(ds, name) if name in ds else None
        else:
            setattr(ds, name, value)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_dicom_gates_modality_body_part_and_view():
    ct = image_facts(_dicom())
    assert ct.dicom and ct.modality == "CT"
    assert "Modality CT" in ood.gate_reason(ct, 0.06)
    assert ood.gate_reason(image_facts(_dicom(Modality="DX", BodyPartExamined="CHEST", ViewPosition="PA")),
                           0.06) is None
    assert ood.gate_reason(image_facts(_dicom(Modality="CR", BodyPartExamined=None)), 0.06) is None  # unknown: pass
    assert "KNEE" in ood.gate_reason(image_facts(_dicom(Modality="DX", BodyPartExamined="KNEE")), 0.06)
    assert "lateral" in ood.gate_reason(image_facts(_dicom(Modality="DX", ViewPosition="LL")), 0.06)


def test_image_facts_of_a_broken_file_is_the_usual_one_line_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnope")
    with pytest.raises(ood.UserError, match="cannot read image"):
        image_facts(bad)


# --- the checker --------------------------------------------------------------------------------------

def test_check_vector_reports_score_threshold_and_reason():
    checker = stub_checker()
    inside = checker.check_vector(np.full((1, 4), 0.5, np.float32))
    assert inside.in_distribution and inside.score == pytest.approx(0.0) and inside.threshold == 0.5
    outside = checker.check_vector(unit([[1, -1, 1, -1]]))
    assert not outside.in_distribution and outside.score == pytest.approx(1.0)
    assert "unlike the training images" in outside.reason and "threshold 0.500" in outside.reason
    gated = checker.check_vector(np.full((1, 4), 0.5, np.float32), ImageFacts(colourfulness=0.4))
    assert not gated.in_distribution and "colour" in gated.reason
    assert set(outside.to_dict()) == {"in_distribution", "score", "threshold", "reason"}
    assert "--force" in outside.message() and "\n" not in outside.message()


@pytest.mark.parametrize("query, accepted", [
    ("small right pleural effusion", True),
    ("signs of pneumonia?", True),  # "signs" unknown, "pneumonia" known: half
    ("What is the capital of France?", False),
    ("the of and", False),  # stop words only
    ("???", False),
])
def test_text_check_by_corpus_vocabulary(query, accepted):
    check = stub_checker().check_text(query)
    assert check.in_distribution is accepted and check.kind == "text"
    assert 0.0 <= check.score <= 1.0 and check.reason


# --- calibration beside the embeddings ------------------------------------------------------------------

@pytest.fixture
def embedded_run(tmp_path):
    cfg = runs.prepare(config.load("params/smoke.yaml", run=str(tmp_path / "outputs" / "ood")))
    rng = np.random.default_rng(0)
    splits = ["train"] * 60 + ["val"] * 20 + ["test"] * 20
    image = unit(rng.normal(size=(len(splits), 6)) + [3, 0, 0, 0, 0, 0])
    rows = pd.DataFrame({"row": np.arange(len(splits)), "study_id": [f"s{i}" for i in range(len(splits))],
                         "image_path": [f"/x/{i}.png" for i in range(len(splits))],
                         "report": ["Small right pleural effusion."] * len(splits), "split": splits,
                         "report_group": 0,
                         **{label: pd.array([None] * len(splits), "Int8") for label in CHEXPERT_LABELS}})
    folder = cfg.paths.embeddings("fine_tuned")
    write_set(folder / CORPUS_DIR, image, image, rows)
    write_set(folder, image[80:], image[80:], rows.iloc[80:])
    mxio.write_json(folder / CACHE_KEY_FILE, {"key": "abc"})
    return cfg, image


def test_calibrate_run_writes_ood_json_and_a_stale_file_is_redone(embedded_run):
    cfg, image = embedded_run
    assert ood.read_calibration(cfg, "fine_tuned") is None
    checker = ood.QueryChecker.from_run(cfg, "fine_tuned")  # lazily calibrated and written
    saved = json.loads(ood.ood_file(cfg).read_text())
    assert saved["embeddings_key"] == "abc" and saved["n_bank"] == 60 and saved["n_calibration"] == 20
    assert saved["val_accepted"] >= 0.95 and saved["method"] == "mahalanobis" and saved["k"] == cfg.query_check.k
    assert ood.read_calibration(cfg, "fine_tuned").threshold == pytest.approx(checker.calibration.threshold)
    assert checker.vocabulary >= {"pleural", "effusion"} and len(checker.bank) == 60
    mxio.write_json(cfg.paths.embeddings("fine_tuned") / CACHE_KEY_FILE, {"key": "new"})  # re-embedded
    assert ood.read_calibration(cfg, "fine_tuned") is None
    other = config.load("params/smoke.yaml", run=str(cfg.run_dir), overrides={"query_check.method": "knn"})
    assert ood.calibrate_run(other, "fine_tuned").method == "knn"
    assert ood.read_calibration(cfg, "fine_tuned") is None  # the Mahalanobis params no longer match the file
    assert ood.describe(ood.read_calibration(other, "fine_tuned"))["method"] == "knn"
    assert ood.QueryChecker.from_run(other, "fine_tuned").score(image[:1])[0] < 0.5  # a training image: near


def test_a_query_reads_the_saved_reference_and_an_older_run_gets_it_once(embedded_run, monkeypatch):
    """Calibration saves what a query's check reads (ood.npz: training rows, Gaussian, vocabulary) beside ood.json;
    a query then reads no corpus table and fits nothing, and a run calibrated before it was saved gets it once."""
    from medxpert_utils.retrieval import store

    cfg, image = embedded_run
    fitted = ood.QueryChecker.from_run(cfg, "fine_tuned")  # calibrates: ood.json and ood.npz
    assert ood.reference_file(cfg).is_file()
    fits, tables = [], []
    real_fit, real_load = ood.Gaussian.fit.__func__, store.load_embeddings
    monkeypatch.setattr(ood.Gaussian, "fit", classmethod(lambda cls, bank: fits.append(1) or real_fit(cls, bank)))
    monkeypatch.setattr(store, "load_embeddings", lambda *a, **kw: tables.append(1) or real_load(*a, **kw))
    checker = ood.QueryChecker.from_run(cfg, "fine_tuned")
    assert fits == [] and tables == []
    assert np.array_equal(checker.score(image), fitted.score(image)) and np.array_equal(checker.bank, fitted.bank)
    assert checker.vocabulary == fitted.vocabulary >= {"pleural", "effusion"}
    ood.reference_file(cfg).unlink()  # as calibrated before the reference was saved
    older = ood.QueryChecker.from_run(cfg, "fine_tuned")
    assert fits == [1] and tables == [1] and ood.reference_file(cfg).is_file()
    assert np.allclose(older.score(image), fitted.score(image)) and older.vocabulary == fitted.vocabulary
    ood.QueryChecker.from_run(cfg, "fine_tuned")
    assert fits == [1] and tables == [1]
    knn = config.load("params/smoke.yaml", run=str(cfg.run_dir), overrides={"query_check.method": "knn"})
    calibration = ood.calibrate_run(knn, "fine_tuned")  # rewrites both files
    saved = ood.reference_file(cfg)
    assert ood.Reference.load(saved, calibration).gaussian is None  # knn needs no Gaussian ...
    assert ood.Reference.load(saved, dataclasses.replace(calibration, method="mahalanobis")) is None  # ... this does
    assert ood.Reference.load(saved, dataclasses.replace(calibration, embeddings_key="other")) is None  # re-embedded


def test_the_stop_words_are_scikit_learns():
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    from medxpert_utils.retrieval.stop_words import ENGLISH_STOP_WORDS as copied

    assert copied == ENGLISH_STOP_WORDS


def test_a_run_without_embeddings_names_notebook_02(tmp_path):
    cfg = runs.prepare(config.load("params/smoke.yaml", run=str(tmp_path / "outputs" / "bare")))
    with pytest.raises(ood.RunNotReadyError, match="run 02_embed_index first .*--run bare --until 02"):
        ood.QueryChecker.from_run(cfg, "fine_tuned")


# --- metrics -------------------------------------------------------------------------------------------

def test_auroc_and_fpr_at_95_tpr():
    ind = np.linspace(0, 1, 100)
    assert auroc_fpr(ind, ind + 2) == {"auroc": 1.0, "fpr@95tpr": 0.0}
    both = auroc_fpr(ind, ind)
    assert both["auroc"] == pytest.approx(0.5) and both["fpr@95tpr"] >= 0.94
    gated = auroc_fpr(ind, np.array([np.inf, 0.5]))  # a gated image counts as the most out-of-distribution
    assert gated["auroc"] == pytest.approx((100 + 50) / 200, abs=0.01)


def ood_test_images(run_dir) -> list[tuple[str, bytes, str]]:
    """(name, file bytes, mime) of the out-of-distribution images every front end must flag: a photo, a CT slice
    (DICOM), noise, a text page and one of the run's own radiographs upside down."""
    import matplotlib.cbook as cbook
    from PIL import ImageOps
    from pydicom.data import get_testdata_file

    from medxpert_utils.data import manifest
    from medxpert_utils.data.images import load_image
    from medxpert_utils.retrieval.ood_eval import documents, noise_images

    frame = manifest.read(run_dir)
    radiograph = load_image(frame.loc[frame["split"] == "test", "image_path"].iloc[0])
    return [
        ("grace_hopper.jpg", open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), "rb").read(),
         "image/jpeg"),
        ("CT_small.dcm", open(get_testdata_file("CT_small.dcm"), "rb").read(), "application/dicom"),
        ("noise.png", _png(noise_images(1, seed=3)[0][1]), "image/png"),
        ("letter.png", _png(documents(1, seed=3)[0]), "image/png"),
        ("upside_down.png", _png(ImageOps.flip(radiograph)), "image/png"),
    ]


@pytest.mark.slow
def test_every_out_of_distribution_test_image_is_flagged_by_the_cli(smoke_run, tmp_path, capsys):
    from medxpert_utils.app import cli
    from medxpert_utils.data import manifest

    for name, content, _ in ood_test_images(smoke_run):
        path = tmp_path / name
        path.write_bytes(content)
        assert cli.main(["search", "--run", str(smoke_run), "--image", str(path), "--json", "-k", "3"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["query_check"]["in_distribution"] is False, (name, data["query_check"])
        assert len(data["hits"]) == 3
        assert cli.main(["diagnose", "--run", str(smoke_run), "--image", str(path), "--json"]) == 3, name
        out = capsys.readouterr()
        assert out.out == "" and out.err.startswith("medxpert: not answered:")
    frame = manifest.read(smoke_run)
    test_image = frame.loc[frame["split"] == "test", "image_path"].iloc[0]
    assert cli.main(["search", "--run", str(smoke_run), "--image", test_image, "--json"]) == 0
    check = json.loads(capsys.readouterr().out)["query_check"]
    assert set(check) == {"in_distribution", "score", "threshold", "reason"}
    assert cli.main(["search", "--run", str(smoke_run), "--text", "What is the capital of France?", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["query_check"]["in_distribution"] is False
