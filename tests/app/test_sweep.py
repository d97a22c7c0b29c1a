"""Sweeps: expansion, run names, fail-fast validation, resume, failures, parallel runs, and a real smoke sweep."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from medxpert_utils.app import cli, pipeline, sweep, sweep_plan
from medxpert_utils.core import io, keys, runs
from medxpert_utils.core.config import load
from medxpert_utils.core.paths import PROJECT_ROOT
from medxpert_utils.core.stages import Stage, select


def _write_sweep(tmp_path: Path, body: dict, name: str = "grid") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


# The chain seen by the sweep: 00 reads the seed, 01 the training params (notebooks need not exist for planning).
FAKE_STAGES = (
    Stage("00", "data", "data", needs=(), params=("seed",), volatile=(), artefacts=(), run_ref="builtins:print",
          version="v1"),
    Stage("01", "train", "train", needs=("00",), params=("train",), volatile=(), artefacts=(),
          run_ref="builtins:print", version="v1"),
)


@pytest.fixture()
def fake_stages():
    return FAKE_STAGES


class FakeRunner:
    """Stands in for pipeline.run_chain: records calls and leaves the run.json a finished run would (keys too)."""

    def __init__(self, fail_when=None):
        self.calls: list[dict] = []
        self.fail_when = fail_when or (lambda overrides: False)

    def __call__(self, params, run=None, overrides=None, start=None, until=None, log=print, **_):
        self.calls.append({"params": params, "run": run, "overrides": dict(overrides), "start": start, "until": until})
        cfg = runs.prepare(load(params, run, overrides))
        if self.fail_when(overrides):
            runs.record_stage(cfg.run_dir, "00_data", status="failed")
            raise pipeline.ChainFailed("00_data", cfg.paths.notebooks / "00_data.ipynb", "RuntimeError: boom")
        for stage in select(start, None, until, registry=FAKE_STAGES):
            keys.record_success(cfg, stage, FAKE_STAGES, wall_s=0.1)
        return cfg


def record_env_runner(params, run=None, overrides=None, start=None, until=None, log=print, **_):
    """Module-level (picklable) runner for worker processes: notes the thread limit it was given."""
    cfg = runs.prepare(load(params, run, overrides))
    (cfg.run_dir / "env.json").write_text(json.dumps({"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                                                      "pid": os.getpid()}))
    runs.record_stage(cfg.run_dir, "00_data", status="ok", wall_s=0.1)  # the fake chain's 00 (no monkeypatch here)


# --------------------------------------------------------------------------- expansion and names


def test_grid_expands_as_a_product_in_file_order(tmp_path):
    path = _write_sweep(tmp_path, {"base": "params/smoke.yaml",
                                   "grid": {"train.lr": [0.001, 0.002], "train.loss": ["infonce", "label_aware"]}})
    combos = sweep_plan.expand(path)
    assert [c.overrides for c in combos] == [
        {"train.lr": 0.001, "train.loss": "infonce"}, {"train.lr": 0.001, "train.loss": "label_aware"},
        {"train.lr": 0.002, "train.loss": "infonce"}, {"train.lr": 0.002, "train.loss": "label_aware"}]
    assert combos[0].name == "grid__lr=0.001__loss=infonce"
    assert combos[0].run_dir == sweep_plan.sweep_dir("grid") / "grid__lr=0.001__loss=infonce"
    assert [c.name for c in sweep_plan.expand(path)] == [c.name for c in combos]  # deterministic


def test_list_form_keeps_order_reads_exponent_floats_and_names_the_base(tmp_path):
    path = tmp_path / "abl.yaml"
    path.write_text("name: ablation\nbase: params/smoke.yaml\n"
                    "list:\n  - {train.lr: 5e-4}\n  - {train.loss: label_aware, seed: 3}\n  - {}\n")
    combos = sweep_plan.expand(path)
    assert combos[0].overrides == {"train.lr": 0.0005}  # 5e-4 without a dot is still a float
    assert [c.name for c in combos] == ["ablation__lr=0.0005", "ablation__loss=label_aware__seed=3", "ablation__base"]
    assert all(c.run_dir.parent.name == "ablation" for c in combos)


def test_names_are_sanitised_disambiguated_unique_and_bounded():
    names = sweep_plan.combination_names("s", [{"data.root": "a/b c"}, {"data.root": "a b/c"}])
    assert all("/" not in n and " " not in n for n in names)
    assert len(set(names)) == 2 and all(n.startswith("s__root=a-b-c-") for n in names)  # collided -> hashed

    names = sweep_plan.combination_names("s", [{"train.lr": 0.1, "captions.lr": 0.2}])
    assert names == ["s__train.lr=0.1__captions.lr=0.2"]  # shared last segment -> full key

    long = [{"report.question": "x" * 150}, {"report.question": "x" * 149}]
    names = sweep_plan.combination_names("s", long)
    assert all(len(n) <= sweep_plan.MAX_NAME_CHARS for n in names) and len(set(names)) == 2
    assert names == sweep_plan.combination_names("s", long)

    assert sweep_plan.combination_names("s", [{"train.betas": [0.9, 0.98], "train.augment.enabled": False}]) == [
        "s__betas=0.9-0.98__enabled=false"]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("body, needle", [
    ({"base": "params/smoke.yaml", "grid": {"train.lr": [0.1]}, "gird": 1}, "unknown key 'gird'"),
    ({"grid": {"train.lr": [0.1]}}, "missing required key 'base'"),
    ({"base": "params/smoke.yaml", "grid": {"train.lr": [0.1]}, "list": [{}]}, "exactly one of 'grid'"),
    ({"base": "params/smoke.yaml", "grid": {"train.lr": []}}, "train.lr"),
    ({"base": "params/smoke.yaml", "grid": {"train.lr": [0.1, 0.1]}}, "lists a value twice"),
    ({"base": "params/smoke.yaml", "list": [{"seed": 1}, {"seed": 1}]}, "same combination"),
    ({"base": "params/smoke.yaml", "grid": {"seed": [1]}, "parallel": 0}, "parallel"),
])
def test_bad_sweep_files_fail_naming_the_problem(tmp_path, body, needle):
    with pytest.raises(sweep_plan.SweepError, match=needle.replace("(", r"\(")):
        sweep_plan.expand(_write_sweep(tmp_path, body))


def test_a_bad_param_in_any_combination_fails_before_anything_runs(tmp_path, fake_stages):
    path = _write_sweep(tmp_path, {"base": "params/smoke.yaml",
                                   "list": [{"train.lr": 0.001}, {"train.lrr": 0.002}]})
    runner = FakeRunner()
    with pytest.raises(sweep_plan.SweepError, match=r"grid__lrr=0.002.*unknown key 'train.lrr'"):
        sweep.run_sweep(path, runner=runner, compare=False, log=lambda m: None)
    assert runner.calls == []
    assert not sweep_plan.sweep_dir("grid").exists()

    bad_value = _write_sweep(tmp_path, {"base": "params/smoke.yaml", "grid": {"train.loss": ["infonce", "hinge"]}}, "v")
    with pytest.raises(sweep_plan.SweepError, match="train.loss"):
        sweep.run_sweep(bad_value, runner=runner, compare=False, log=lambda m: None)
    with pytest.raises(Exception, match="no such stage"):
        sweep.run_sweep(_write_sweep(tmp_path, {"base": "params/smoke.yaml", "grid": {"seed": [1]}, "until": "09"},
                                     "u"),
                        runner=runner, compare=False, log=lambda m: None)
    assert runner.calls == []


# --------------------------------------------------------------------------- running and resuming


def _fabricate(planned: sweep_plan.PlannedRun, stages: dict[str, str], overrides: dict | None = None) -> None:
    """A run folder as the chain leaves it, with the given stage outcomes, made under ``overrides`` of the plan's."""
    cfg = load("params/smoke.yaml", planned.combo.run_dir, {**planned.overrides, **(overrides or {})})
    runs.prepare(cfg)
    for stage in FAKE_STAGES:
        if stages.get(stage.name) == "ok":
            keys.record_success(cfg, stage, FAKE_STAGES)
        elif stage.name in stages:
            runs.record_stage(cfg.run_dir, stage.name, status=stages[stage.name])


def test_resume_skips_fresh_reruns_stale_and_continues_partial(tmp_path, fake_stages):
    path = _write_sweep(tmp_path, {"base": "params/smoke.yaml", "overrides": {"train.max_steps": 2},
                                   "grid": {"seed": [1, 2, 3, 4]}})
    planned = sweep_plan.plan(sweep_plan.load_sweep(path), registry=FAKE_STAGES)
    done, changed, partial, fresh = planned
    _fabricate(done, {"00_data": "ok", "01_train": "ok"}, {"dashboard.default_k": 7})  # no stage reads it
    _fabricate(changed, {"00_data": "ok", "01_train": "ok"}, {"train.lr": 0.5})
    (changed.combo.run_dir / "marker").write_text("old")
    _fabricate(partial, {"00_data": "ok", "01_train": "failed"})

    runner = FakeRunner()
    messages: list[str] = []
    summary = sweep.run_sweep(path, runner=runner, compare=False, log=messages.append, registry=FAKE_STAGES)

    assert {c["run"] for c in runner.calls} == {str(p.combo.run_dir) for p in (changed, partial, fresh)}
    by_run = {c["run"]: c for c in runner.calls}
    assert by_run[str(partial.combo.run_dir)]["start"] == "01"  # continues at the notebook that did not finish
    assert by_run[str(changed.combo.run_dir)]["start"] == "01"  # only training's params changed
    assert by_run[str(fresh.combo.run_dir)]["start"] == "00"
    assert by_run[str(fresh.combo.run_dir)]["overrides"] == {"train.max_steps": 2, "seed": 4}
    assert (summary["total"], summary["ran"], summary["skipped"], summary["failed"]) == (4, 3, 1, 0)
    assert (changed.combo.run_dir / "marker").read_text() == "old"  # redone in place, never deleted

    state = io.read_json(sweep_plan.sweep_dir("grid") / "sweep.json")
    assert state["status"] == "ok" and state["name"] == "grid"
    assert [c["status"] for c in state["combinations"]] == ["skipped", "ok", "ok", "ok"]
    assert [c["name"] for c in state["combinations"]] == [p.combo.name for p in planned]

    again = FakeRunner()
    summary = sweep.run_sweep(path, runner=again, compare=False, log=lambda m: None, registry=FAKE_STAGES)
    assert again.calls == [] and summary["skipped"] == 4


def test_until_limits_what_counts_as_finished(tmp_path, fake_stages):
    path = _write_sweep(tmp_path, {"base": "params/smoke.yaml", "grid": {"seed": [1]}, "until": 0})
    (item,) = sweep_plan.plan(sweep_plan.load_sweep(path), "00", registry=FAKE_STAGES)
    _fabricate(item, {"00_data": "ok"})
    runner = FakeRunner()
    assert sweep.run_sweep(path, runner=runner, compare=False, log=lambda m: None,
                           registry=FAKE_STAGES)["skipped"] == 1  # the file's until: 00
    summary = sweep.run_sweep(path, until="01", runner=runner, compare=False, log=lambda m: None,
                              registry=FAKE_STAGES)
    assert summary["ran"] == 1 and runner.calls[0]["start"] == "01" and runner.calls[0]["until"] == "01"


def test_a_failing_combination_is_recorded_and_the_others_run(tmp_path, fake_stages):
    path = _write_sweep(tmp_path, {"base": "params/smoke.yaml", "grid": {"seed": [1, 2, 3]}})
    runner = FakeRunner(fail_when=lambda overrides: overrides["seed"] == 2)
    summary = sweep.run_sweep(path, runner=runner, compare=False, log=lambda m: None, registry=FAKE_STAGES)
    assert len(runner.calls) == 3
    assert (summary["ran"], summary["failed"]) == (2, 1)
    failed = [r for r in summary["runs"] if r["status"] == "failed"]
    assert failed[0]["name"] == "grid__seed=2" and "boom" in failed[0]["error"]
    state = io.read_json(sweep_plan.sweep_dir("grid") / "sweep.json")
    assert state["status"] == "failed" and [c["status"] for c in state["combinations"]] == ["ok", "failed", "ok"]


def test_dry_run_lists_and_writes_nothing(tmp_path, fake_stages, monkeypatch, capsys):
    path = _write_sweep(tmp_path, {"base": "params/smoke.yaml", "grid": {"seed": [1, 2]}})
    runner = FakeRunner()
    messages: list[str] = []
    summary = sweep.run_sweep(path, dry_run=True, runner=runner, log=messages.append, registry=FAKE_STAGES)
    assert runner.calls == [] and not sweep_plan.sweep_dir("grid").exists()
    assert [r["status"] for r in summary["runs"]] == ["would run", "would run"]
    assert any("grid__seed=1" in m for m in messages)

    assert cli.main(["sweep", str(path), "--dry-run"]) == 0
    assert "grid__seed=2" in capsys.readouterr().out
    assert not sweep_plan.sweep_dir("grid").exists()
    assert cli.main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "sweep file not found" in capsys.readouterr().err


def test_parallel_is_capped_and_warns_on_oversubscription(tmp_path, fake_stages, monkeypatch):
    monkeypatch.setattr(sweep, "_cores", lambda: 2)
    path = _write_sweep(tmp_path, {"base": "params/smoke.yaml", "overrides": {"train.num_workers": 1},
                                   "grid": {"seed": [1, 2, 3]}, "parallel": 8})
    messages: list[str] = []
    sweep.run_sweep(path, dry_run=True, log=messages.append)
    assert any("capped at 2" in m for m in messages)
    assert any("exceed 2 cores" in m for m in messages)


@pytest.mark.slow
def test_parallel_runs_in_worker_processes_with_a_share_of_the_cores(tmp_path, fake_stages, monkeypatch):
    monkeypatch.setattr(sweep, "_cores", lambda: 4)
    path = _write_sweep(tmp_path, {"base": "params/smoke.yaml", "grid": {"seed": [1, 2]}, "until": "00"})
    summary = sweep.run_sweep(path, parallel=2, runner=record_env_runner, compare=False, log=lambda m: None,
                              registry=FAKE_STAGES)
    assert summary["ran"] == 2
    envs = [json.loads((Path(r["run_dir"]) / "env.json").read_text()) for r in summary["runs"]]
    assert [e["OMP_NUM_THREADS"] for e in envs] == ["2", "2"]  # 4 cores // 2 runs
    assert all(e["pid"] != os.getpid() for e in envs)
    assert all(runs.read(r["run_dir"])["stages"]["00_data"]["status"] == "ok" for r in summary["runs"])


# --------------------------------------------------------------------------- the shipped sweeps


@pytest.mark.parametrize("name, runs_expected", [("demo_grid", 4), ("mimic_ablation", 6)])
def test_shipped_sweeps_expand_and_validate(name, runs_expected):
    loaded = sweep_plan.load_sweep(PROJECT_ROOT / "params" / "sweeps" / f"{name}.yaml")
    assert loaded.name == name and loaded.spec.until == "03"
    assert len(loaded.combinations) == runs_expected
    for combo in loaded.combinations:
        cfg = load(loaded.spec.base, combo.run_dir, loaded.overrides_for(combo))
        assert cfg.train.loss == combo.overrides["train.loss"]
    assert len({c.name for c in loaded.combinations}) == runs_expected


# --------------------------------------------------------------------------- real notebooks


@pytest.mark.slow
def test_smoke_sweep_runs_notebook_00_twice_compares_and_resumes(tmp_path, isolated_dirs):
    path = _write_sweep(tmp_path, {"name": "smoke_sweep", "base": "params/smoke.yaml",
                                   "grid": {"train.lr": [0.001, 0.002]}, "until": "00"})
    summary = sweep.run_sweep(path, log=lambda m: None)
    folder = isolated_dirs / "smoke_sweep"
    assert (summary["ran"], summary["failed"]) == (2, 0), summary["runs"]
    for record in summary["runs"]:
        info = runs.read(record["run_dir"])
        assert Path(record["run_dir"]).parent == folder
        assert info["stages"]["00_data_prep"]["status"] == "ok"
        assert info["params_hash"] == record["params_hash"]
        assert (Path(record["run_dir"]) / "data" / "manifest.parquet").is_file()
    state = io.read_json(folder / "sweep.json")
    assert state["comparison"]["status"] == "ok", state["comparison"]
    assert (folder / "07_compare_runs.ipynb").is_file()
    import pandas as pd

    table = pd.read_csv(folder / "comparison.csv")
    assert sorted(table["train.lr"]) == [0.001, 0.002] and set(table["status"]) == {"ok"}

    again = sweep.run_sweep(path, compare=False, log=lambda m: None)
    assert (again["skipped"], again["ran"]) == (2, 0)
