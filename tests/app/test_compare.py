"""Comparing runs: finding them, the table (varying params, metrics, sorting, missing files), files and notebook 07."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from medxpert_utils.app import compare
from medxpert_utils.core import io, runs
from medxpert_utils.core.config import load
from medxpert_utils.core.paths import PROJECT_ROOT


def _directions(r10: float, ci: str | None = None) -> dict:
    """One model's block of retrieval.json; with ``ci`` the extras notebook 03 writes (CIs under that key)."""
    def one(scale: float) -> dict:
        scores = {"R@1": r10 * scale / 4, "R@5": r10 * scale / 2, "R@10": r10 * scale, "MRR": r10 * scale / 3,
                  "curve": [0.1] * 20}
        if ci:
            scores[ci] = {"R@1": [0.01, 0.2], "R@10": [r10 * scale - 0.05, r10 * scale + 0.05]}
            scores.update({"P@10": 0.33, "n_queries": 20, "n_precision_queries": 12,
                           "per_label": {"Edema": {"R@10": 0.5, "P@10": 0.2}}})
        return scores
    return {"image_to_text": one(1.0), "text_to_image": one(0.5)}


def make_run(folder: Path, name: str, overrides: dict | None = None, stages: dict | None = None,
             train=None, retrieval=None, captions=None, reports=None) -> Path:
    """A run folder as the notebooks leave it: run.json plus whichever metrics files are given."""
    run_dir = folder / name
    cfg = load("params/smoke.yaml", run_dir, overrides or {})
    runs.update(run_dir, run=name, params=cfg.to_dict(), params_hash=cfg.params_hash(),
                stages={k: {"status": v, "wall_s": 2.0} for k, v in (stages or {"00_data_prep": "ok"}).items()})
    for file, payload in (("train", train), ("retrieval", retrieval), ("captions", captions), ("reports", reports)):
        if payload is not None:
            io.write_json(run_dir / "metrics" / f"{file}.json", payload)
    return run_dir


def _retrieval(ft_r10: float, zs_r10: float = 0.05, ci: str | None = None) -> dict:
    return {"split": "test", "n_images": 20, "n_reports": 15,
            "models": {"zero_shot": _directions(zs_r10), "fine_tuned": _directions(ft_r10, ci)}}


@pytest.fixture()
def sweep_runs(isolated_dirs) -> list[Path]:
    folder = isolated_dirs / "grid"
    history = [{"epoch": 1, "val_i2t_acc": 0.2, "val_t2i_acc": 0.1, "val_loss": 3.0},
               {"epoch": 2, "val_i2t_acc": 0.5, "val_t2i_acc": 0.3, "val_loss": 2.0},
               {"epoch": 3, "val_i2t_acc": 0.4, "val_t2i_acc": 0.6, "val_loss": 2.5}]
    return [
        make_run(folder, "grid__lr=0.001__loss=infonce", {"train.lr": 0.001, "train.loss": "infonce"},
                 train={"history": history, "best_epoch": 2}, retrieval=_retrieval(0.4),
                 captions={"bleu": 0.12, "rouge_l": 0.3, "label_f1_micro": 0.5, "label_f1_macro": 0.25, "n": 16},
                 reports={"n_reports": 3, "label_f1_micro": 0.6, "label_f1_macro": 0.45}),
        make_run(folder, "grid__lr=0.002__loss=infonce", {"train.lr": 0.002, "train.loss": "infonce"},
                 train={"history": history, "best": {"epoch": 3, "val_i2t_acc": 0.45, "val_t2i_acc": 0.61}},
                 retrieval=_retrieval(0.7, ci="ci95"),
                 captions={"split": "test", "definitions": {"BLEU": "corpus BLEU-4 / 100"}, "models": {
                     "base": {"n": 16, "BLEU": 0.01, "ROUGE-L": 0.1, "label_f1_micro": 0.2, "label_f1_macro": 0.1},
                     "fine_tuned": {"n": 16, "BLEU": 0.2, "ROUGE-L": 0.4, "label_f1_micro": 0.6,
                                    "label_f1_macro": None, "label_f1_per_label": {"Edema": 0.5}}}}),
        make_run(folder, "grid__lr=0.001__loss=label_aware", {"train.lr": 0.001, "train.loss": "label_aware"},
                 stages={"00_data_prep": "ok", "01_clip_finetune": "failed"}, train=history),
        make_run(folder, "grid__lr=0.002__loss=label_aware", {"train.lr": 0.002, "train.loss": "label_aware"},
                 retrieval=_retrieval(0.55, ci="ci")),
    ]


def test_table_shows_only_varying_params_and_sorts_by_fine_tuned_recall(sweep_runs):
    table = compare.comparison_table(sweep_runs)
    assert list(table.columns[:5]) == ["run", "status", "wall_s", "train.lr", "train.loss"]
    assert compare.param_columns(table) == ["train.lr", "train.loss"]  # seed, data.*, ... are equal: hidden
    assert list(table["run"]) == ["grid__lr=0.002__loss=infonce", "grid__lr=0.002__loss=label_aware",
                                  "grid__lr=0.001__loss=infonce", "grid__lr=0.001__loss=label_aware"]  # NaN last
    assert list(table["status"]) == ["ok", "ok", "ok", "failed"]
    assert table["wall_s"].tolist() == [2.0, 2.0, 2.0, 4.0]


def test_table_extracts_metrics_defensively(sweep_runs):
    table = compare.comparison_table(sweep_runs).set_index("run")
    first, second = table.loc["grid__lr=0.001__loss=infonce"], table.loc["grid__lr=0.002__loss=infonce"]
    # validation accuracy of the best epoch: best_epoch row / best dict / best value seen in a bare list
    assert (first["val_i2t_acc"], first["val_t2i_acc"]) == (0.5, 0.3)
    assert (second["val_i2t_acc"], second["val_t2i_acc"]) == (0.45, 0.61)
    assert table.loc["grid__lr=0.001__loss=label_aware", "val_t2i_acc"] == 0.6
    assert first["ft_i2t_R@10"] == pytest.approx(0.4) and first["ft_t2i_R@10"] == pytest.approx(0.2)
    assert first["zs_i2t_R@10"] == pytest.approx(0.05) and first["ft_i2t_MRR"] == pytest.approx(0.4 / 3)
    assert (second["ft_i2t_R@10_lo"], second["ft_i2t_R@10_hi"]) == pytest.approx((0.65, 0.75))
    assert second["ft_i2t_P@10"] == pytest.approx(0.33) and math.isnan(first["ft_i2t_P@10"])
    assert not any("curve" in c for c in table.columns)  # long lists are not table cells
    assert table.loc["grid__lr=0.002__loss=label_aware", "ft_t2i_R@10_hi"] == pytest.approx(0.325)  # "ci" key
    assert not any("n_queries" in c or "per_label" in c for c in table.columns)  # counts and breakdowns stay out
    # captions: one set per captioner from {"models": ...} (BLEU / ROUGE-L spelt either way), or top-level scores
    assert (second["cap_ft_bleu"], second["cap_ft_rouge_l"], second["cap_base_label_f1_micro"]) == (0.2, 0.4, 0.2)
    assert "cap_ft_label_f1_macro" not in table.columns  # null in the only run that has it
    assert (first["cap_bleu"], first["cap_rouge_l"], first["cap_label_f1_macro"]) == (0.12, 0.3, 0.25)
    assert math.isnan(second["cap_bleu"]) and math.isnan(first["cap_ft_bleu"])
    assert (first["rep_label_f1_micro"], first["rep_label_f1_macro"]) == (0.6, 0.45)
    columns = list(table.columns)
    assert columns.index("ft_i2t_R@1") < columns.index("ft_i2t_R@10") < columns.index("ft_i2t_R@10_lo") < \
        columns.index("ft_i2t_MRR") < columns.index("ft_i2t_P@10") < columns.index("ft_t2i_R@1") < \
        columns.index("zs_i2t_R@1") < columns.index("cap_ft_bleu") < columns.index("rep_label_f1_micro")


def test_missing_and_broken_files_are_tolerated(isolated_dirs):
    bare = make_run(isolated_dirs, "bare")
    broken = make_run(isolated_dirs, "broken", {"seed": 7})
    (broken / "metrics").mkdir(parents=True, exist_ok=True)
    (broken / "metrics" / "retrieval.json").write_text("{not json")
    (broken / "metrics" / "train.json").write_text(json.dumps({"note": "no history yet"}))
    empty = isolated_dirs / "empty"
    empty.mkdir()
    table = compare.comparison_table([bare, broken, empty])
    assert list(table["run"]) == ["bare", "broken", "empty"]
    assert list(table["status"]) == ["ok", "ok", "missing"]
    assert compare.metric_columns(table) == []
    assert "seed" in table.columns and table.set_index("run").loc["broken", "seed"] == 7
    assert compare.comparison_table([]).empty


def test_collect_runs_by_sweep_name_glob_and_path(sweep_runs, isolated_dirs, tmp_path):
    lone = make_run(isolated_dirs, "demo_single")
    superseded = make_run(isolated_dirs / "grid" / "_superseded", "old_run")
    expected = sorted(p.resolve() for p in sweep_runs)
    assert compare.collect_runs("grid") == expected
    assert superseded.resolve() not in compare.collect_runs("grid")
    assert compare.collect_runs("demo_single") == [lone.resolve()]
    assert compare.collect_runs("demo*") == [lone.resolve()]
    assert set(compare.collect_runs("*")) == {*expected, lone.resolve()}  # sweep folders contribute their runs
    assert compare.collect_runs(str(isolated_dirs / "grid" / "*infonce")) == [
        p.resolve() for p in sorted(sweep_runs) if p.name.endswith("infonce")]
    assert compare.collect_runs(str(sweep_runs[0])) == [sweep_runs[0].resolve()]
    with pytest.raises(compare.NoRunsError, match="no runs match 'nothing\\*'"):
        compare.collect_runs("nothing*")
    assert compare.sweep_folder("grid") == (isolated_dirs / "grid").resolve()
    assert compare.sweep_folder("demo_single") is None
    assert compare.default_out_dir("demo*") == isolated_dirs / "comparison"
    assert compare.default_out_dir("grid", "elsewhere/cmp") == PROJECT_ROOT / "elsewhere" / "cmp"


def test_write_comparison_writes_the_csv_beside_the_sweep(sweep_runs, isolated_dirs):
    io.write_json(isolated_dirs / "grid" / "sweep.json", {"name": "grid", "combinations": [
        {"name": p.name, "status": "ok", "wall_s": 1.0, "overrides": {}, "error": None} for p in sweep_runs]})
    result = compare.write_comparison("grid", figures=False)
    folder = isolated_dirs / "grid"
    assert result.out_dir == folder.resolve() and result.csv == folder.resolve() / "comparison.csv"
    back = pd.read_csv(result.csv)
    assert list(back["run"]) == list(result.table["run"])
    assert compare.param_columns(back) == ["train.lr", "train.loss"]
    assert result.figures == [] and not (folder / "figures").exists()
    status = compare.sweep_status("grid")
    assert list(status["status"]) == ["ok"] * 4
    assert compare.sweep_status(str(sweep_runs[0])) is None

    other = compare.write_comparison(str(folder / "grid__lr=0.002*"), figures=False)  # not a sweep
    assert other.out_dir == isolated_dirs / "comparison" and len(other.table) == 2
    assert pd.read_csv(other.csv)["train.loss"].tolist() == ["infonce", "label_aware"]
    assert compare.param_columns(other.table) == ["train.loss"]


def test_notebook_07_parameters_cell_and_no_outputs():
    nb = json.loads((PROJECT_ROOT / "notebooks" / "07_compare_runs.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    assert "".join(code[0]["source"]).splitlines() == [
        'RUNS = "demo_grid"  # sweep name under outputs/, or a glob of run names / paths',
        'OUT = ""  # folder for comparison.csv and figures; empty: outputs/<sweep>/ (or outputs/comparison/)',
    ]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)


@pytest.mark.slow
def test_figures_plot_metrics_against_the_swept_params(sweep_runs):
    result = compare.write_comparison("grid")
    assert {p.name for p in result.figures} == {"metrics_vs_params.png", "metric_by_run.png"}
    assert all(p.is_file() and p.stat().st_size > 1000 and p.parent == result.out_dir / "figures"
               for p in result.figures)
    only_ids = compare.comparison_table([sweep_runs[0]])  # one run: nothing varies, no metric-vs-param panel
    assert [p.name for p in compare.comparison_figures(only_ids, result.out_dir / "one")] == ["metric_by_run.png"]


@pytest.mark.slow
def test_notebook_07_runs_on_fabricated_runs(sweep_runs, isolated_dirs):
    import papermill as pm

    from medxpert_utils.app import pipeline

    out = isolated_dirs / "07.ipynb"
    pm.execute_notebook(str(PROJECT_ROOT / "notebooks" / "07_compare_runs.ipynb"), str(out),
                        parameters={"RUNS": str(isolated_dirs / "grid"), "OUT": ""},
                        cwd=str(PROJECT_ROOT / "notebooks"),
                        kernel_name=pipeline._kernel_name(), progress_bar=False)
    assert (isolated_dirs / "grid" / "comparison.csv").is_file()
    assert (isolated_dirs / "grid" / "figures" / "metrics_vs_params.png").is_file()
    executed = json.loads(out.read_text())
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
