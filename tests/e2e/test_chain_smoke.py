"""Tier 2: the whole notebook chain on the smoke profile, checked through the files it writes.

Tests read the contracts of docs/contracts.md (run.json, manifest, embeddings, metrics JSON, reports), not
notebook output.
"""

import json

import nbformat
import numpy as np
import pandas as pd
import pytest

from medxpert_utils.core import io
from medxpert_utils.core.stages import STAGES
from medxpert_utils.data.labels import CHEXPERT_LABELS

pytestmark = pytest.mark.slow

MANIFEST_COLUMNS = ["study_id", "patient_id", "image_path", "findings", "impression", "report", "split",
                    *CHEXPERT_LABELS]


def test_every_notebook_ran_and_was_recorded(smoke_run):
    info = io.read_json(smoke_run / "run.json")
    expected = {s.name for s in STAGES}
    assert set(info["stages"]) == expected
    for name, stage in info["stages"].items():
        assert stage["status"] == "ok", (name, stage.get("error"))
        assert stage["wall_s"] > 0
        assert len(stage["key"]) == 16 and stage["version"] and isinstance(stage["params"], dict)
        nb = nbformat.read(str(smoke_run / "notebooks" / f"{name}.ipynb"), as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors, name
    assert info["params"]["profile"] == "smoke"
    assert info["git"]["sha"] is None or len(info["git"]["sha"]) == 40
    assert info["data"]["hash"]


def test_manifest_contract(smoke_run):
    manifest = pd.read_parquet(smoke_run / "data" / "manifest.parquet")
    assert list(manifest.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1  # no patient in two splits
    fallback = manifest["impression"].str.strip() == ""
    assert (manifest.loc[~fallback, "report"] == manifest.loc[~fallback, "impression"]).all()
    assert (manifest.loc[fallback, "report"] == manifest.loc[fallback, "findings"]).all()
    for label in CHEXPERT_LABELS:
        assert set(manifest[label].dropna().unique()) <= {-1, 0, 1}
    for name in ("label_prevalence.png", "report_lengths.png", "sample_grid.png"):
        assert (smoke_run / "figures" / name).stat().st_size > 1000


def test_clip_stage_outputs(smoke_run):
    train = io.read_json(smoke_run / "metrics" / "train.json")
    assert (smoke_run / "models" / "clip" / "config.json").is_file()
    assert (smoke_run / "figures" / "training_curves.png").is_file()
    assert json.dumps(train)  # valid JSON with per-epoch history
    assert train.get("history"), "train.json keeps per-epoch metrics"


@pytest.mark.parametrize("model", ["zero_shot", "fine_tuned"])
def test_embeddings_contract(smoke_run, model):
    folder = smoke_run / "embeddings" / model
    manifest = pd.read_parquet(smoke_run / "data" / "manifest.parquet")
    test = manifest[manifest["split"] == "test"]
    image, text = np.load(folder / "image.npy"), np.load(folder / "text.npy")
    ids = pd.read_parquet(folder / "ids.parquet")
    assert image.dtype == np.float32 and text.dtype == np.float32
    assert image.shape[0] == text.shape[0] == len(ids) == len(test)
    assert np.allclose(np.linalg.norm(image, axis=1), 1, atol=1e-4)
    assert np.allclose(np.linalg.norm(text, axis=1), 1, atol=1e-4)
    assert list(ids["study_id"]) == list(test["study_id"])
    same_text = test["report"].str.lower().str.split().str.join(" ").to_numpy()
    groups = ids["report_group"].to_numpy()
    for i in range(len(ids)):  # rows share a group exactly when their normalised reports match
        for j in range(i + 1, min(len(ids), i + 25)):
            if same_text[i] == same_text[j]:
                assert groups[i] == groups[j]


def test_retrieval_metrics_contract(smoke_run):
    result = io.read_json(smoke_run / "metrics" / "retrieval.json")
    assert result["split"] == "test" and result["n_images"] > 0 and 0 < result["n_reports"] <= result["n_images"]
    for model in ("zero_shot", "fine_tuned"):
        for direction in ("image_to_text", "text_to_image"):
            scores = result["models"][model][direction]
            for key in ("R@1", "R@5", "R@10", "MRR"):
                assert 0.0 <= scores[key] <= 1.0
            assert scores["R@1"] <= scores["R@5"] <= scores["R@10"]
    assert (smoke_run / "metrics" / "retrieval_table.csv").is_file()


def test_captions_and_reports(smoke_run):
    captions = pd.read_parquet(smoke_run / "captions.parquet")
    assert len(captions) > 0 and captions["caption"].map(len).gt(0).any()
    assert io.read_json(smoke_run / "metrics" / "captions.json")
    from medxpert_utils.report.schema import DiagnosisReport

    lines = (smoke_run / "reports" / "reports.jsonl").read_text().splitlines()
    assert lines
    for line in lines:
        report = DiagnosisReport.model_validate(json.loads(line) if "report" not in json.loads(line)
                                                else json.loads(line)["report"])
        assert "not for clinical use" in report.disclaimer.lower()
    assert list((smoke_run / "reports").glob("*.html"))
    assert io.read_json(smoke_run / "metrics" / "reports.json")


def test_a_rerun_skips_every_stage_and_a_copied_run_is_up_to_date(smoke_run, tmp_path):
    import shutil

    from medxpert_utils.app.pipeline import run_chain
    from medxpert_utils.core import config, keys

    copy = tmp_path / "copied"
    shutil.copytree(smoke_run, copy)  # copying a run shares it: its keys hold in another folder
    assert keys.evaluate(config.load("params/smoke.yaml", copy)).fresh
    messages: list[str] = []
    run_chain("params/smoke.yaml", run=copy, log=messages.append)
    assert sum(" up to date (key " in m for m in messages) == len(STAGES), messages
    attempt = io.read_json(copy / "run.json")["attempts"][-1]
    assert attempt["ran"] == [] and len(attempt["up_to_date"]) == len(STAGES)


def test_a_new_learning_rate_redoes_training_and_what_reads_it_but_not_data_or_captions(smoke_run, tmp_path):
    import shutil

    from medxpert_utils.app.pipeline import run_chain
    from medxpert_utils.core import config, keys

    run_dir = tmp_path / "lr"
    shutil.copytree(smoke_run, run_dir)
    overrides = {"train.lr": 0.002}
    before = keys.evaluate(config.load("params/smoke.yaml", run_dir, overrides))
    predicted = [s.name for s in before.stages if s.state != "fresh"]
    assert predicted == ["01_clip_finetune", "02_embed_index", "03_retrieval_eval", "05_diagnosis_reports",
                         "06_dashboard"]
    model = (run_dir / "models" / "clip" / "model.safetensors").read_bytes()
    run_chain("params/smoke.yaml", run=run_dir, overrides=overrides, log=lambda m: None)
    attempt = io.read_json(run_dir / "run.json")["attempts"][-1]
    assert sorted(attempt["ran"]) == predicted  # status said what the run then did (03 and 05 run side by side)
    assert attempt["up_to_date"] == ["00_data_prep", "04_blip_captions"]
    assert (run_dir / "models" / "clip" / "model.safetensors").read_bytes() != model  # retrained, not resumed
    assert keys.evaluate(config.load("params/smoke.yaml", run_dir, overrides)).fresh
