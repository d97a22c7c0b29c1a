"""``medxpert diagnose``: JSON is the DiagnosisReport, errors are one line with exit 2."""

import json

import numpy as np
import pytest
from PIL import Image

from medxpert_utils.app import cli
from medxpert_utils.assistant import Assistant
from medxpert_utils.core import config, runs
from medxpert_utils.core.notices import DISCLAIMER
from medxpert_utils.report.schema import DiagnosisReport
from medxpert_utils.retrieval.ood import QueryChecker
from tests.fake_gemini import FakeGemini
from tests.retrieval.test_ood import stub_checker

KEY = "AIzaCLI-secret-0123456789abcdefghij"
HITS = [
    {"rank": 1, "score": 0.8, "study_id": "s1", "report": "Small right pleural effusion.", "image_path": "/nope/s1.png",
     "labels": {"Pleural Effusion": 1}},
    {"rank": 2, "score": 0.7, "study_id": "s2", "report": "Right pleural effusion.", "image_path": "/nope/s2.png",
     "labels": {"Pleural Effusion": 1}},
    {"rank": 3, "score": 0.2, "study_id": "s3", "report": "No acute process.", "image_path": "/nope/s3.png",
     "labels": {"No Finding": 1}},
]


class FakeEngine:
    """Stands in for search.SearchEngine (no index needed): fixed hits, records queries."""

    def __init__(self):
        self.queries = []

    def search_text(self, query, k=5):
        self.queries.append(("text", query, k))
        return HITS[:k]

    def search_vectors(self, vectors, k=5, target="reports"):  # an image query, by its embedding
        self.queries.append(("image", target, k))
        return [HITS[:k]]

    def pixel_values(self, images):  # the model input: the images' mean grey levels
        self.queries.append(("pixels", images[0].size))
        return np.array([float(np.asarray(image).mean()) for image in images], np.float32)

    def embed_pixels(self, pixels):  # the query check's embedding: the stub checker's reference vector, unless
        self.queries.append(("embed", len(pixels)))  # the image is black: then far from it (score 1 > 0.5)
        if pixels[0] < 10:
            return np.array([[0.5, -0.5, 0.5, -0.5]], np.float32)
        return np.full((1, 4), 0.5, np.float32)


@pytest.fixture(autouse=True)
def stub_query_check(monkeypatch):
    """The hand-made runs here have no embeddings: the query check compares with one stub vector."""
    monkeypatch.setattr(QueryChecker, "from_run", classmethod(lambda cls, run, model="fine_tuned": stub_checker()))


@pytest.fixture
def engine(monkeypatch):
    engine = FakeEngine()
    monkeypatch.setattr(Assistant, "engine", lambda self, model="fine_tuned": engine)
    return engine


@pytest.fixture
def run_dir(tmp_path, engine):
    cfg = runs.prepare(config.load("params/smoke.yaml", run=str(tmp_path / "outputs" / "cli_run")))
    return cfg.run_dir


def test_json_is_the_diagnosis_report(run_dir, capsys):
    assert cli.main(["diagnose", "--run", str(run_dir), "--text", "effusion?", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == set(DiagnosisReport.model_fields)
    report = DiagnosisReport.model_validate(data)
    assert report.generator == "offline-retrieval" and report.disclaimer == DISCLAIMER
    assert report.present_names() == {"Pleural Effusion"} and report.query == "effusion?"
    assert report.supporting_study_ids == ["s1", "s2", "s3"]  # report.top_k of the smoke profile


def test_image_query_with_question_prints_text(run_dir, engine, tmp_path, capsys):
    image = tmp_path / "query.png"
    Image.new("L", (64, 64), 90).save(image)
    assert cli.main(["diagnose", "--run", str(run_dir), "--image", str(image), "--question", "signs of pneumonia?",
                     "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("!! " + DISCLAIMER) and "Query: query.png" in out and "Answer:" in out
    assert "Supporting studies: s1, s2" in out
    # the query check and the search share one preprocessing and one embedding of the image
    assert [q[0] for q in engine.queries] == ["pixels", "embed", "image"]


@pytest.mark.parametrize("argv, message", [
    (["--image", "/no/such/file.png"], "cannot read image '/no/such/file.png'"),
    (["--text", "x", "--generator", "gemini"], "GEMINI_API_KEY"),
    (["--text", "   "], "empty query"),
])
def test_user_errors_are_one_line_exit_2(run_dir, capsys, argv, message):
    assert cli.main(["diagnose", "--run", str(run_dir), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medxpert: error:") and message in err and "\n" not in err


def test_unreadable_image_and_missing_run(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert cli.main(["diagnose", "--run", str(run_dir), "--image", str(bad)]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert cli.main(["diagnose", "--run", "no_such_run", "--text", "effusion"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no run at" in err and "\n" not in err


def test_with_a_key_gemini_writes_the_report_and_the_key_stays_secret(tmp_path, monkeypatch, capsys):
    engine = FakeEngine()
    monkeypatch.setattr(Assistant, "engine", lambda self, model="fine_tuned": engine)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    with FakeGemini() as server:
        cfg = runs.prepare(config.load("params/smoke.yaml", run=str(tmp_path / "outputs" / "g"),
                                       overrides={"llm.base_url": server.base_url, "llm.backoff_s": 0}))
        assert cli.main(["diagnose", "--run", str(cfg.run_dir), "--text", "effusion?", "--json"]) == 0
        assert len(server.requests) == 1
    out = capsys.readouterr()
    report = DiagnosisReport.model_validate_json(out.out)
    assert report.generator == "gemini:gemini-2.5-flash" and report.present_names() == {"Pleural Effusion"}
    assert KEY not in out.out + out.err
    assert KEY not in (cfg.run_dir / "run.json").read_text()
    assert cli.main(["diagnose", "--run", str(cfg.run_dir), "--text", "effusion?", "--generator", "offline",
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["generator"] == "offline-retrieval"


@pytest.mark.slow
def test_diagnose_on_a_finished_smoke_run(smoke_run, capsys):
    assert cli.main(["diagnose", "--run", str(smoke_run), "--text", "pleural effusion", "--json"]) == 0
    report = DiagnosisReport.model_validate_json(capsys.readouterr().out)
    assert report.supporting_study_ids and report.disclaimer == DISCLAIMER


def test_an_unlike_query_gets_no_report_and_gemini_is_never_asked(tmp_path, monkeypatch, capsys):
    import matplotlib.cbook as cbook

    engine = FakeEngine()
    monkeypatch.setattr(Assistant, "engine", lambda self, model="fine_tuned": engine)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    black = tmp_path / "black.png"
    Image.new("L", (64, 64), 0).save(black)
    photo = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    with FakeGemini() as server:
        cfg = runs.prepare(config.load("params/smoke.yaml", run=str(tmp_path / "outputs" / "ood"),
                                       overrides={"llm.base_url": server.base_url, "llm.backoff_s": 0}))
        run = str(cfg.run_dir)
        for argv, reason in ((["--image", str(photo)], "a colour image"),
                             (["--image", str(black), "--question", "effusion?"], "unlike the training images"),
                             (["--text", "What is the capital of France?"], "content words are in no report")):
            assert cli.main(["diagnose", "--run", run, *argv, "--json"]) == 3
            out = capsys.readouterr()
            assert out.out == "" and "\n" not in out.err.strip()
            assert out.err.startswith("medxpert: not answered:") and reason in out.err and "--force" in out.err
        assert server.requests == []  # nothing was sent for any of them
        assert cli.main(["diagnose", "--run", run, "--image", str(black), "--json", "--force"]) == 0
        assert len(server.requests) == 1
    out = capsys.readouterr()
    assert DiagnosisReport.model_validate_json(out.out).findings is not None
    assert out.err.startswith("warning: forced:")
