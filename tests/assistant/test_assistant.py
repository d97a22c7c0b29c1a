"""The assistant: notebook 05's batch on a hand-made run with a stand-in search engine, and the caches
and query checks every front end relies on."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medxpert_utils.assistant import Assistant
from medxpert_utils.core import config, io, runs
from medxpert_utils.core.errors import UserError
from medxpert_utils.data import manifest
from medxpert_utils.data.labels import CHEXPERT_LABELS
from medxpert_utils.report import read_reports
from medxpert_utils.retrieval.ood import QueryChecker
from tests.report.test_offline_reporter import hit
from tests.retrieval.test_ood import stub_checker

# --- notebook 05's batch, on a hand-made run with a stand-in search engine ------------------------

@pytest.fixture
def report_run(tmp_path, monkeypatch):
    cfg = runs.prepare(config.load("params/smoke.yaml", run=str(tmp_path / "outputs" / "rep"),
                                   overrides={"report.n_cases": 3, "report.top_k": 2}))
    rows = []
    for i, (split, finding) in enumerate([("train", "Pleural Effusion"), ("train", "Pleural Effusion"),
                                          ("test", "Pleural Effusion"), ("test", "Cardiomegaly"), ("test", None)]):
        path = tmp_path / f"{i}.png"
        Image.new("L", (32, 32), 40 * i).save(path)
        labels = dict.fromkeys(CHEXPERT_LABELS)
        labels[finding or "No Finding"] = 1
        rows.append({"study_id": f"s{i}", "patient_id": f"p{i}", "image_path": str(path), "findings": "",
                     "impression": "x", "report": "Small right pleural effusion." if finding == "Pleural Effusion"
                     else "Normal.", "split": split, **labels})
    rows[-1]["image_path"] = str(tmp_path / "missing.png")  # unreadable: skipped and counted
    io.write_parquet(cfg.paths.manifest, manifest.validate(pd.DataFrame(rows)))

    class Engine:
        def pixel_values(self, images):  # the image's mean grey level stands for its model input and embedding
            return np.array([[float(np.asarray(image).mean())] for image in images], dtype=np.float32)

        def embed_pixels(self, pixels):
            return pixels

        def search_vectors(self, vectors, k=5, target="reports"):  # the query itself comes first: leave-one-out
            return [self.search_image_mean(float(vectors[0][0]), k)]  # must drop it

        def search_image_mean(self, mean, k):
            query = f"s{round(mean / 40)}"
            ids = [query, "s0", "s1", "s3"][:k]
            return [hit(r + 1, 0.9 - 0.1 * r, sid, rows[int(sid[1:])]["report"],
                        **{k.replace(" ", "_"): v for k, v in rows[int(sid[1:])].items() if k in CHEXPERT_LABELS})
                    for r, sid in enumerate(ids)]

    monkeypatch.setattr(Assistant, "engine", lambda self, model="fine_tuned": Engine())
    return cfg


def test_batch_reports_leave_the_query_out_and_are_scored(report_run):
    batch = Assistant(report_run).generate_reports(progress=False)
    assert [r.query_study_id for r in batch.reports] == ["s2", "s3"]
    for report in batch.reports:
        assert report.query_study_id not in report.supporting_study_ids
        assert len(report.supporting_study_ids) == 2
    assert read_reports(report_run) == batch.reports
    assert sorted(p.name for p in report_run.paths.reports.glob("*.html")) == ["s2.html", "s3.html"]
    saved = json.loads((report_run.paths.metrics / "reports.json").read_text())
    assert saved["n_cases"] == 2 and saved["n_skipped"] == 1 and saved["generators"] == {"offline-retrieval": 2}
    assert saved["fallbacks"] == 0 and "truth" not in saved
    assert saved["chexbert"]["available"] is False and "eval.chexbert" in saved["chexbert"]["reason"]
    # s2 (effusion) gets effusion from s0/s1: tp; s3 (cardiomegaly) gets effusion too: fp + fn -> 2/(2+1+1)
    assert saved["label_f1_micro"] == pytest.approx(0.5)
    table = batch.table()
    assert list(table["truth"]) == ["Pleural Effusion", "Cardiomegaly"]




# --- one query, step by step and whole --------------------------------------------------------------

class CountingEngine:
    """Stand-in search engine: two hits per study, records every query."""

    def __init__(self):
        self.calls = []

    def search_text(self, query, k=5):
        self.calls.append(("text", query, k))
        ids = [f"s{i // 2}" for i in range(k)]  # each study twice: the assistant keeps one hit per study
        return [hit(r + 1, 0.9 - 0.01 * r, sid, "Small right pleural effusion.", Pleural_Effusion=1)
                for r, sid in enumerate(ids)]

    search_image = search_text

    def search_vectors(self, vectors, k=5, target="reports"):  # an image query, by its embedding
        return [self.search_text("<image>", k)]

    def pixel_values(self, images):
        return np.zeros((len(images), 3, 2, 2), np.float32)

    def embed_pixels(self, pixels):
        return np.full((len(pixels), 4), 0.5, np.float32)


@pytest.fixture
def assistant(tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(QueryChecker, "from_run", classmethod(lambda cls, run, model="fine_tuned": stub_checker()))

    def fake_from_run(run_dir, model="fine_tuned"):
        loads.append(model)
        return CountingEngine()

    monkeypatch.setattr("medxpert_utils.assistant.assistant.SearchEngine.from_run", fake_from_run)
    cfg = runs.prepare(config.load("params/smoke.yaml", run=str(tmp_path / "outputs" / "a")))
    helper = Assistant(cfg.run_dir)
    helper.loads = loads
    return helper


def test_engines_load_once_per_model(assistant):
    assistant.search(text="effusion", k=3)
    assistant.search(text="effusion", k=3)
    assistant.search(text="effusion", k=3, model="zero_shot")
    assert assistant.loads == ["fine_tuned", "zero_shot"]


def test_similar_cases_keep_one_hit_per_study_and_k(assistant):
    cases = assistant.similar_cases(text="effusion", k=3)
    assert [c.study_id for c in cases] == ["s0", "s1", "s2"]
    assert [c.rank for c in cases] == [1, 2, 3]
    assert assistant.engine().calls == [("text", "effusion", 6)]  # twice k fetched


def test_a_query_is_an_image_or_a_text(assistant):
    with pytest.raises(UserError, match="either an image or a text"):
        assistant.search(k=3)
    with pytest.raises(UserError, match="either an image or a text"):
        assistant.search(image=Image.new("L", (8, 8)), text="effusion", k=3)
    with pytest.raises(UserError, match="empty query"):
        assistant.diagnose(text="   ")
    with pytest.raises(UserError, match="nothing to diagnose"):
        assistant.diagnose()


def test_diagnose_uses_the_question_as_the_query_and_report_top_k(assistant):
    report, cases = assistant.diagnose_with_cases(question="effusion?")
    assert report.query == "effusion?" and report.present_names() == {"Pleural Effusion"}
    assert len(cases) == assistant.cfg.report.top_k == len(report.supporting_study_ids)


def test_run_without_captioner_says_so(assistant):
    assert assistant.captioner() is None
    assert assistant.caption_or_none(Image.new("L", (8, 8))) is None
    with pytest.raises(UserError, match="no captioning model"):
        assistant.caption(Image.new("L", (8, 8)))
