"""Stage keys and status, parametrised from the registry itself: every param is declared, a change to a declared
param makes its stages and only their dependents stale, image pixels enter the data stage's key."""

from __future__ import annotations

import io as _io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medxpert_utils.core import config, keys, runs, stages
from medxpert_utils.core.stages import STAGES
from medxpert_utils.data import manifest
from medxpert_utils.data.labels import CHEXPERT_LABELS

FIELDS = keys.param_fields()


def _declaring(field: str) -> set[str]:
    """Numbers of the stages whose key a change of ``field`` changes (declared, not volatile)."""
    return {s.number for s in STAGES
            if keys._matches(field, s.params) and not keys._matches(field, s.volatile)}


def _expected_stale(field: str) -> set[str]:
    direct = _declaring(field)
    return direct | {d.number for n in direct for d in stages.downstream(n)}


@pytest.mark.parametrize("field", FIELDS)
def test_every_param_is_declared_by_a_stage_or_global(field):
    # A new params field must say which stage's results it changes (or that it is volatile or global).
    assert not keys.undeclared([field]), (f"params field '{field}' is read by no stage in core/stages.py - declare "
                                          "it in the stage that reads it (params or volatile) or in GLOBAL_PARAMS")


def test_the_field_list_follows_the_schema():
    assert "train.lr" in FIELDS and "train.label_aware.label_weight" in FIELDS and "seed" in FIELDS
    assert "eval.classification.phrases" in FIELDS  # a dict-valued param is one value, not a section
    assert not any(f == "train" or f == "data.split" for f in FIELDS)  # sections are not leaves


def _png(value: int) -> bytes:
    buffer = _io.BytesIO()
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _record_run(run_dir):
    """A demo run whose every stage is recorded as finished under the current params, with placeholder
    artefacts, a one-image manifest (its content hash included) and the image itself."""
    from medxpert_utils.core import hashing

    cfg = runs.prepare(config.load("params/demo.yaml", run_dir))
    image = cfg.run_dir / "img.png"
    image.write_bytes(_png(10))
    cfg.paths.manifest.parent.mkdir(parents=True, exist_ok=True)
    row = {"study_id": "s1", "patient_id": "p1", "image_path": str(image), "findings": "", "impression": "Clear.",
           "report": "Clear.", "split": "train", **dict.fromkeys(CHEXPERT_LABELS),
           "image_sha256": hashing.sha256_file(image), "unreadable": ""}
    manifest.validate(pd.DataFrame([row])).to_parquet(cfg.paths.manifest)
    for stage in STAGES:
        for artefact in stage.artefacts:
            path = cfg.run_dir / artefact
            if not path.exists():
                if "." in path.name:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("{}")
                else:
                    path.mkdir(parents=True, exist_ok=True)
        keys.record_success(cfg, stage)
    return cfg


@pytest.fixture()
def recorded_run(isolated_dirs):
    return _record_run(isolated_dirs / "keys")


@pytest.fixture(scope="module")
def shared_recorded_run(tmp_path_factory):
    """The same, built once for the tests that only read it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDXPERT_DATA", str(tmp_path_factory.mktemp("keys_data")))
        yield _record_run(tmp_path_factory.mktemp("keys_outputs") / "keys")


def test_a_recorded_run_is_fresh_and_keys_are_recorded(recorded_run):
    status = keys.evaluate(recorded_run)
    assert [s.state for s in status.stages] == ["fresh"] * len(STAGES), keys.format_status(status)
    info = runs.read(recorded_run.run_dir)["stages"]
    assert info["01_clip_finetune"]["params"]["train.lr"] == recorded_run.train.lr
    assert "train.num_workers" not in info["01_clip_finetune"]["params"]  # volatile: not part of the key
    assert info["02_embed_index"]["inputs"]["01"] == info["01_clip_finetune"]["key"]
    assert len({v["key"] for v in info.values()}) == len(STAGES)


@pytest.mark.parametrize("field", FIELDS)
def test_a_param_change_makes_exactly_its_stages_and_their_dependents_stale(shared_recorded_run, field):
    flat = keys.flatten(shared_recorded_run.to_dict())
    changed = {**flat, field: {"changed from": flat[field]}}
    status = keys.evaluate(shared_recorded_run, flat=changed)
    stale = {s.stage.number for s in status.stages if s.state != "fresh"}
    assert stale == _expected_stale(field)
    for number in _declaring(field):
        reasons = status[number].reasons
        assert any(r.startswith(f"{field}: ") and "->" in r for r in reasons), reasons
    for number in stale - _declaring(field):
        assert any(r.startswith(("input ", "waits for ")) for r in status[number].reasons), \
            status[number].reasons


def test_lr_change_redoes_training_and_what_reads_it_but_not_data_or_captions(recorded_run):
    status = keys.evaluate(config.load("params/demo.yaml", "keys", {"train.lr": 0.002}))
    assert {s.stage.number for s in status.stages if s.state == "stale"} == {"01", "02", "03", "05", "06"}
    assert status["01"].reasons == [f"train.lr: {recorded_run.train.lr} -> 0.002"]
    assert status["02"].reasons == ["input 01_clip_finetune changed"]
    payload = status.to_json()
    assert payload["run"] == "keys" and payload["stages"][1] == {
        "name": "01_clip_finetune", "state": "stale", "key": status["01"].key,
        "recorded_key": status["01"].recorded_key, "reasons": ["train.lr: 0.0005 -> 0.002"]}
    json.dumps(payload)  # serialisable as is


def test_changed_pixels_under_the_same_name_make_the_data_stage_and_everything_after_it_stale(recorded_run):
    image = recorded_run.run_dir / "img.png"
    image.write_bytes(_png(200))  # same file name, other pixels
    status = keys.evaluate(recorded_run)
    assert status["00"].state == "stale"
    assert status["00"].reasons == [f"images changed on disk: 1 of 1 (e.g. {image})"]
    for stage in stages.downstream("00"):
        assert status[stage.number].state == "stale" and status[stage.number].key is None
        assert len(status[stage.number].reasons) == 1 and status[stage.number].reasons[0].startswith("waits for ")
    assert status["01"].reasons == ["waits for 00_data_prep to be remade"]


def test_a_missing_artefact_or_a_failed_attempt_is_missing(recorded_run):
    (recorded_run.run_dir / "metrics" / "retrieval.json").unlink()
    runs.record_stage(recorded_run.run_dir, "04_blip_captions", status="failed")
    status = keys.evaluate(recorded_run)
    assert status["03"].state == "missing" and status["03"].reasons == ["artefact missing: metrics/retrieval.json"]
    assert status["04"].state == "missing" and status["04"].reasons == ["last attempt failed"]
    assert status["05"].state == "fresh"  # its inputs' keys did not change: nothing to redo there


def test_a_code_version_bump_is_a_reason(recorded_run, monkeypatch):
    import dataclasses

    bumped = tuple(dataclasses.replace(s, version=s.version + "-next") if s.number == "03" else s for s in STAGES)
    status = keys.evaluate(recorded_run, registry=bumped)
    assert status["03"].state == "stale" and status["03"].reasons == ["code version eval-v1 -> eval-v1-next"]
    assert status["06"].state == "stale" and status["05"].state == "fresh"


def test_stage_key_from_disk_equals_the_recorded_key(recorded_run):
    for stage in STAGES:
        assert keys.stage_key(recorded_run, stage) == keys.evaluate(recorded_run)[stage.number].key
    assert keys.stage_key(recorded_run, "01", without=("train.compare_losses_minutes",)) != \
        keys.stage_key(recorded_run, "01")


def test_digest_is_stable_and_sensitive():
    a = keys.digest("v1", {"x": 1, "y": [1, 2]}, {"00": "abc"})
    assert a == keys.digest("v1", {"y": [1, 2], "x": 1}, {"00": "abc"})  # order does not matter
    assert len({a, keys.digest("v2", {"x": 1, "y": [1, 2]}, {"00": "abc"}),
                keys.digest("v1", {"x": 2, "y": [1, 2]}, {"00": "abc"}),
                keys.digest("v1", {"x": 1, "y": [1, 2]}, {"00": "abd"})}) == 4


def test_medxpert_status_reports_without_running_anything(recorded_run, capsys):
    from medxpert_utils.app import cli

    run = str(recorded_run.run_dir)
    assert cli.main(["status", "--run", run]) == 0  # the run's own params: all fresh
    assert "every stage is up to date" in capsys.readouterr().out
    before = runs.read(recorded_run.run_dir)
    assert cli.main(["status", "params/demo.yaml", "--run", run, "--set", "train.lr=0.002", "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    states = {s["name"]: s["state"] for s in payload["stages"]}
    assert states == {"00_data_prep": "fresh", "01_clip_finetune": "stale", "02_embed_index": "stale",
                      "03_retrieval_eval": "stale", "04_blip_captions": "fresh", "05_diagnosis_reports": "stale",
                      "06_dashboard": "stale"}
    assert payload["stages"][1]["reasons"] == ["train.lr: 0.0005 -> 0.002"]
    assert runs.read(recorded_run.run_dir) == before  # nothing written
    assert cli.main(["status", "--run", run, "--set", "dashboard.default_k=9"]) == 1
    text = capsys.readouterr().out
    assert "stale    06_dashboard" in text and "dashboard.default_k: 5 -> 9" in text
    assert cli.main(["status", "--run", str(recorded_run.run_dir.parent / "nope")]) == 2
    assert "no run at" in capsys.readouterr().err


def test_run_state_marks_a_run_stale_when_its_data_changed(recorded_run):
    assert keys.run_state(recorded_run.run_dir) == keys.run_state(recorded_run.run_dir, deep=False) == "fresh"
    (recorded_run.run_dir / "img.png").write_bytes(_png(99))
    assert keys.run_state(recorded_run.run_dir) == "stale"
    # the dashboard's glance reads no image (it trusts what the data stage recorded); status looks deeper
    assert keys.run_state(recorded_run.run_dir, deep=False) == "fresh"
    runs.record_stage(recorded_run.run_dir, "03_retrieval_eval", key="0" * 16)  # made under other params
    assert keys.run_state(recorded_run.run_dir, deep=False) == "stale"
    assert keys.run_state(recorded_run.run_dir.parent / "nothing-here") == "unknown"


def test_a_shallow_evaluation_agrees_with_a_deep_one_on_an_unchanged_run(recorded_run):
    deep, shallow = keys.evaluate(recorded_run), keys.evaluate(recorded_run, deep=False)
    assert [(s.state, s.key) for s in deep.stages] == [(s.state, s.key) for s in shallow.stages]


def test_setting_an_api_key_makes_the_reports_stale_without_recording_the_key(recorded_run, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "secret-value-123")
    status = keys.evaluate(recorded_run)
    assert {s.stage.number for s in status.stages if s.state != "fresh"} == {"05", "06"}
    assert status["05"].reasons == ["GEMINI_API_KEY/GOOGLE_API_KEY set: false -> true"]
    keys.record_success(recorded_run, "05")
    assert "secret-value-123" not in (recorded_run.run_dir / "run.json").read_text()


def test_the_data_stage_output_ignores_where_the_dataset_is_cached(recorded_run, tmp_path):
    # the same images and reports under another data folder: the manifest's bytes differ, its content hash not
    from medxpert_utils.core import config as _config

    frame = manifest.read(recorded_run.run_dir)
    moved = tmp_path / "elsewhere" / "img.png"
    moved.parent.mkdir()
    moved.write_bytes((recorded_run.run_dir / "img.png").read_bytes())
    other = _config.load("params/demo.yaml", tmp_path / "other")
    other.paths.manifest.parent.mkdir(parents=True)
    frame.assign(image_path=[str(moved)]).to_parquet(other.paths.manifest)
    assert other.paths.manifest.read_bytes() != recorded_run.paths.manifest.read_bytes()
    assert keys.stage_key(other, "01") == keys.stage_key(recorded_run, "01")


def test_the_csv_sources_file_enters_the_data_stage_key(isolated_dirs, session_data_dir):
    folder = session_data_dir / "my_csv"  # "data/my_csv" resolves inside the dataset cache, as the source reads it
    folder.mkdir(exist_ok=True)
    (folder / "index.csv").write_text("image_path,report\na.png,Clear.\n")
    cfg = config.load("params/demo.yaml", "csvrun", {"data.source": "csv", "data.root": "data/my_csv",
                                                       "data.csv_file": "index.csv"})
    before = keys.stage_key(cfg, "00")
    assert keys.stage_key(cfg, "00") == before
    (folder / "index.csv").write_text("image_path,report\na.png,Clear.\nb.png,Small effusion.\n")
    assert keys.stage_key(cfg, "00") != before
