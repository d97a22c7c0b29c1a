import pytest

from medxpert_utils.core import config, io, runs, stages
from medxpert_utils.core.errors import RunNotReadyError


def test_prepare_records_params_environment_and_keeps_other_fields(isolated_dirs):
    cfg = config.load("demo", run="r")
    runs.update(cfg.run_dir, data={"hash": "abc"})
    runs.prepare(cfg)
    info = runs.read(cfg.run_dir)
    assert info["params"] == cfg.to_dict()
    assert info["params_hash"] == cfg.params_hash()
    assert info["packages"]["torch"] and info["seed"] == 0
    assert info["data"] == {"hash": "abc"}  # notebook-written fields survive
    assert (cfg.run_dir / "figures").is_dir()


def test_record_stage_merges_and_list_runs_reports_status(isolated_dirs):
    for name, status in (("a", "ok"), ("b", "failed")):
        runs.prepare(config.load("smoke", run=name))
        runs.record_stage(isolated_dirs / name, "00_data_prep", status="running")
        runs.record_stage(isolated_dirs / name, "00_data_prep", status=status, wall_s=1.0)
    listed = {r["run"]: r for r in runs.list_runs()}
    assert listed["a"]["finished"] and not listed["b"]["finished"]
    assert runs.read(isolated_dirs / "a")["stages"]["00_data_prep"] == {"status": "ok", "wall_s": 1.0}
    assert runs.is_finished(isolated_dirs / "a", through="00")


def test_from_run_rebuilds_the_config(isolated_dirs):
    cfg = runs.prepare(config.load("smoke", run="x", overrides={"seed": 7}))
    again = config.from_run("x")
    assert again.params == cfg.params and again.run_dir == cfg.run_dir


def test_missing_run_and_stage_errors_are_one_line(isolated_dirs):
    with pytest.raises(config.ConfigError, match="run ./run_all.sh first"):
        config.from_run("nope")
    with pytest.raises(RunNotReadyError) as info:
        stages.require(isolated_dirs / "x", "02")
    assert str(info.value) == (f"{isolated_dirs / 'x' / 'embeddings' / 'zero_shot'} is missing - run 02_embed_index "
                               "first (./run_all.sh --run x --until 02)")
    assert "\n" not in str(info.value)
    # the registry says who writes what
    assert stages.producer("embeddings/fine_tuned/corpus/image.npy").name == "02_embed_index"
    assert stages.producer("metrics/grounding.json").name == "03_retrieval_eval"
    assert stages.producer(isolated_dirs / "x" / "models" / "clip", isolated_dirs / "x").name == "01_clip_finetune"


def test_atomic_write_leaves_no_temp_files(tmp_path):
    tmp_path = tmp_path / "w"
    tmp_path.mkdir()
    io.write_json(tmp_path / "a.json", {"x": 1})
    try:
        with io.atomic_path(tmp_path / "b.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    except RuntimeError:
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert io.read_json(tmp_path / "a.json") == {"x": 1}
