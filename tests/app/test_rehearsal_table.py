"""The rehearsal's extrapolation (benchmarks/rehearsal_table.py) scales each stage by its own unit costs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "rehearsal_table.py"


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("rehearsal_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def measured(**changes):
    stages = {name: {"status": "ok", "wall_s": wall, "peak_rss_mb": 1000.0, "peak_rss_tree_mb": 1500.0}
              for name, wall in (("00_data_prep", 10.0), ("01_clip_finetune", 300.0), ("02_embed_index", 60.0),
                                 ("03_retrieval_eval", 100.0), ("04_blip_captions", 120.0),
                                 ("05_diagnosis_reports", 20.0), ("06_dashboard", 2.0))}
    base = {"run": "r", "profile": "rehearsal", "random_weights": {"clip.model": "random:x"}, "machine": "m",
            "git": "g", "chain_wall_s": 500.0, "stages": stages, "studies": 200, "test": 30,
            "train": {"steps": 24, "batch_size": 16, "processes": 1, "step_seconds": 6.0, "val_seconds": 6.0,
                      "n_val": 30},
            "embed_seconds_per_row": 0.1, "corpus_rows": 200, "caption_seconds": 60.0, "n_captions": 12,
            "num_beams": 3, "max_new_tokens": 60, "n_reports": 20, "image_cache_mb": 1024.0,
            "fixed_bytes": {"clip": 600 * 2**20}, "scaled_bytes": {"embeddings": 4 * 2**20, "index": 2**20}}
    return {**base, **changes}


def test_each_stage_scales_by_its_own_work(table):
    target = table.Target(train_pairs=1600, epochs=3, val_cases=300, test_cases=300, captions=120, reports=40)
    result = table.extrapolate(measured(), target, cores=2)
    by = {row["stage"]: row for row in result["stages"]}
    # 100 steps of 16 per epoch x 3 at 6 s, plus 300 validation pairs at 0.2 s, four times (zero-shot + 3 epochs)
    assert by["01_clip_finetune"]["target_s"] == pytest.approx(300 * 6.0 + 300 * 0.2 * 4)
    assert by["02_embed_index"]["target_s"] == pytest.approx(0.1 * 2200)  # every study of the target, both models
    assert by["03_retrieval_eval"]["target_s"] == pytest.approx(100.0 * 300 / 30)
    assert by["04_blip_captions"]["target_s"] == pytest.approx(5.0 * 120)
    assert by["05_diagnosis_reports"]["target_s"] == pytest.approx(20.0 * 40 / 20)
    assert by["06_dashboard"]["target_s"] == 2.0
    assert by["00_data_prep"]["target_s"] == pytest.approx(10.0 * 2200 / 200)
    total = sum(row["target_s"] for row in result["stages"])
    assert result["target_total_s"] == pytest.approx(total) and result["target_core_hours"] == pytest.approx(
        2 * total / 3600, abs=0.01)
    assert by["01_clip_finetune"]["peak_rss_mb"] == 1000.0  # memory is reported as measured, not scaled
    assert result["disk"]["target_mb"] == {"clip": 600.0, "embeddings": 44.0, "index": 11.0}


def test_two_processes_take_half_the_steps(table):
    target = table.Target(train_pairs=1600, epochs=1, val_cases=300, test_cases=300, captions=12, reports=20)
    one = table.extrapolate(measured(), target, cores=2)["stages"][1]["target_s"]
    two = table.extrapolate(measured(train={**measured()["train"], "processes": 2}), target, cores=2)
    assert two["stages"][1]["target_s"] == pytest.approx(one - 50 * 6.0)


def test_markdown_lists_every_stage_and_the_disk(table):
    text = table.markdown(table.extrapolate(measured(), table.Target(), cores=2))
    for stage in ("00_data_prep", "01_clip_finetune", "06_dashboard", "sum of stages", "| clip |", "embeddings"):
        assert stage in text
    assert "1000 MB / 1.5 GB" in text
