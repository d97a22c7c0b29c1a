"""Compare finished runs: one table row per run with the params that differ and the key metrics.

Reads only what runs leave on disk (``run.json`` and ``metrics/*.json``), tolerating missing
files and extra keys, so runs of any stage, age or profile can be compared. Notebook 07 and
``medxpert sweep`` call :func:`write_comparison`, which writes ``comparison.csv`` and figures.
"""

from __future__ import annotations

import glob as _glob
import json
import math
import os
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medxpert_utils.core import io
from medxpert_utils.core.errors import UserError
from medxpert_utils.core.paths import PROJECT_ROOT, outputs_dir

ID_COLUMNS = ("run", "status", "wall_s")
# Metric columns start with one of these; every other column after the ids is a param.
METRIC_PREFIXES = ("val_", "ft_", "zs_", "cap_", "rep_")
SORT_METRIC = "ft_i2t_R@10"
# Shown in the figures when present, in this order.
KEY_METRICS = ("ft_i2t_R@10", "ft_t2i_R@10", "ft_i2t_R@1", "val_i2t_acc", "cap_ft_label_f1_micro", "cap_label_f1_micro",
               "rep_label_f1_micro")
_MODELS = {"fine_tuned": "ft", "zero_shot": "zs"}
_CAPTIONERS = {"fine_tuned": "ft", "base": "base"}
_DIRECTIONS = {"image_to_text": "i2t", "text_to_image": "t2i"}
_RECALLS = ("R@1", "R@5", "R@10", "MRR")
_CI_KEYS = ("ci", "ci95", "ci_95")
_MISSING = object()


class NoRunsError(UserError, FileNotFoundError):
    """Nothing matched the runs pattern."""


# --------------------------------------------------------------------------- finding runs


def collect_runs(pattern: str | os.PathLike) -> list[Path]:
    """Run folders (holding ``run.json``) named by ``pattern``.

    ``pattern`` is a sweep name under ``outputs/`` (its ``*/run.json``), a run name or a glob of
    run names under ``outputs/`` (``"demo*"``; a matching sweep folder contributes its runs), or a
    path / path glob (relative paths are tried from the working directory, then the project root).
    """
    text = os.fspath(pattern).strip()
    if not text:
        raise NoRunsError("empty runs pattern - pass a sweep name under outputs/, a glob of run names or a path")
    found: list[Path] = []
    for match in _matches(text):
        found.extend(_runs_in(match))
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise NoRunsError(f"no runs match {text!r} (looked under {outputs_dir()}) - pass a sweep name under "
                          "outputs/, a glob of run names such as 'demo*', or a path glob to run folders")
    return unique


def _is_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.startswith((".", "~")) or Path(text).is_absolute()


def _matches(text: str) -> list[Path]:
    magic = any(c in text for c in "*?[")
    if not _is_path(text):
        root = outputs_dir()
        return sorted(root.glob(text)) if magic else [root / text]
    expanded = os.path.expanduser(text)
    bases = [expanded] if os.path.isabs(expanded) else [expanded, str(PROJECT_ROOT / expanded)]
    for base in bases:
        hits = sorted(Path(p) for p in _glob.glob(base)) if magic else ([Path(base)] if Path(base).exists() else [])
        if hits:
            return hits
    return []


def _runs_in(path: Path) -> list[Path]:
    if path.is_file() and path.name == "run.json":
        return [path.parent]
    if not path.is_dir():
        return []
    if (path / "run.json").is_file():
        return [path]
    return sorted(p.parent for p in path.glob("*/run.json"))


def sweep_folder(pattern: str | os.PathLike) -> Path | None:
    """The sweep folder ``pattern`` names (a folder of run folders), else None."""
    text = os.fspath(pattern).strip()
    if not text or any(c in text for c in "*?["):
        return None
    for match in _matches(text):
        if match.is_dir() and not (match / "run.json").is_file() and any(match.glob("*/run.json")):
            return match.resolve()
    return None


def default_out_dir(pattern: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Where the comparison goes: ``out`` (relative to the project root), else the sweep folder, else
    outputs/comparison/."""
    if out:
        path = Path(out).expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path
    return sweep_folder(pattern) or outputs_dir() / "comparison"


# --------------------------------------------------------------------------- the table


def comparison_table(run_dirs: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per run: name, status, total wall time, the params that differ between the runs, key metrics.

    Params are flattened to dotted keys (``train.lr``); a param is shown only when its value is
    not the same in every run. Metric columns: ``val_i2t_acc``/``val_t2i_acc`` (validation
    accuracy of the best epoch, metrics/train.json), ``{ft,zs}_{i2t,t2i}_{R@1,R@5,R@10,MRR}`` plus
    any other numbers of each direction (``_lo``/``_hi`` for confidence intervals, label
    precision@K), ``cap_{ft,base}_*`` per captioner (metrics/captions.json; ``cap_*`` when the file
    holds one set of scores) and ``rep_*`` (metrics/reports.json). Missing
    files give empty cells. Rows are sorted by fine-tuned image-to-text R@10, best first, runs
    without it last.
    """
    rows, flats = [], []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        info = _read_json(run_dir / "run.json") or {}
        flats.append(_flatten(info.get("params") or {}))
        stages = info.get("stages") or {}
        walls = [s.get("wall_s") for s in stages.values() if _is_number(s.get("wall_s"))]
        rows.append({"run": run_dir.name, "status": _status(info),
                     "wall_s": round(sum(walls), 1) if walls else math.nan, **run_metrics(run_dir)})
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    varying = [k for k in keys if len({_hashable(f.get(k, _MISSING)) for f in flats}) > 1]
    seen = list(dict.fromkeys(k for row in rows for k in row if k not in ID_COLUMNS))
    metric_cols = sorted(seen, key=lambda c: (_metric_rank(c), seen.index(c)))
    table = pd.DataFrame(
        [{**{c: row.get(c) for c in ID_COLUMNS}, **{k: _cell(flat.get(k)) for k in varying},
          **{m: row.get(m, math.nan) for m in metric_cols}} for row, flat in zip(rows, flats)],
        columns=[*ID_COLUMNS, *varying, *metric_cols],
    )
    if SORT_METRIC in table.columns:
        table = table.sort_values(SORT_METRIC, ascending=False, na_position="last", kind="mergesort")
    return table.reset_index(drop=True)


def param_columns(table: pd.DataFrame) -> list[str]:
    """The varying-param columns of a comparison table (also after a round trip through CSV)."""
    return [c for c in table.columns if c not in ID_COLUMNS and not str(c).startswith(METRIC_PREFIXES)]


def metric_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if str(c).startswith(METRIC_PREFIXES)]


def run_metrics(run_dir: str | os.PathLike) -> dict[str, float]:
    """The metrics of one run as flat columns (see :func:`comparison_table`); absent files give nothing."""
    metrics_dir = Path(run_dir) / "metrics"
    out: dict[str, float] = {}
    train = _read_json(metrics_dir / "train.json")
    if train is not None:
        out.update(_train_metrics(train))
    retrieval = _read_json(metrics_dir / "retrieval.json")
    if isinstance(retrieval, dict):
        out.update(_retrieval_metrics(retrieval))
    captions = _read_json(metrics_dir / "captions.json")
    models = captions.get("models") if isinstance(captions, dict) else None
    # {"models": {"base": {...}, "fine_tuned": {...}}}: one set of columns per captioner; else top-level scores
    blocks = ({f"cap_{_CAPTIONERS.get(m, _clean(m))}": v for m, v in models.items() if isinstance(v, dict)}
              if isinstance(models, dict) else {"cap": captions})
    for prefix in sorted(blocks, key=lambda b: (b != "cap_ft", b)):
        for key in ("bleu", "rouge_l", "label_f1_micro", "label_f1_macro"):
            value = _find_number(blocks[prefix], key)
            if value is not None:
                out[f"{prefix}_{key}"] = value
    reports = _read_json(metrics_dir / "reports.json")
    for key in ("label_f1_micro", "label_f1_macro"):
        value = _find_number(reports, key)
        if value is not None:
            out[f"rep_{key}"] = value
    return out


def _train_metrics(train: Any) -> dict[str, float]:
    """Validation accuracies of the best epoch (``best`` dict, else ``best_epoch`` row, else the best value seen)."""
    history = _history(train)
    best = train.get("best") if isinstance(train, dict) else None
    best = best if isinstance(best, dict) else {}
    best_epoch = train.get("best_epoch") if isinstance(train, dict) else None
    best_epoch = best_epoch if best_epoch is not None else best.get("epoch")
    best_row = next((h for h in history if best_epoch is not None and h.get("epoch") == best_epoch), None)
    out = {}
    for column in ("val_i2t_acc", "val_t2i_acc"):
        value = _lookup(best, column)
        if value is None and best_row is not None:
            value = _lookup(best_row, column)
        if value is None:
            seen = [v for v in (_lookup(h, column) for h in history) if v is not None]
            value = max(seen) if seen else None
        if value is not None:
            out[column] = value
    return out


def _history(train: Any) -> list[dict]:
    if isinstance(train, list):
        return [h for h in train if isinstance(h, dict)]
    if not isinstance(train, dict):
        return []
    for key in ("history", "epochs", "log", "val"):
        if isinstance(train.get(key), list):
            return [h for h in train[key] if isinstance(h, dict)]
    for value in train.values():
        if isinstance(value, list) and value and all(isinstance(h, dict) for h in value):
            return value
    return []


def _retrieval_metrics(payload: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    found = payload.get("models")
    models: dict[str, Any] = found if isinstance(found, dict) else {}
    for model, short in _MODELS.items():  # the contract's two models; others are not compared
        directions = models.get(model)
        if not isinstance(directions, dict):
            continue
        for direction in [d for d in _DIRECTIONS if d in directions] + [d for d in directions if d not in _DIRECTIONS]:
            if isinstance(directions[direction], dict):
                prefix = f"{short}_{_DIRECTIONS.get(direction, _clean(direction))}"
                out.update(_direction_metrics(prefix, directions[direction]))
    return out


def _metric_rank(column: str) -> tuple:
    """Column order: validation, fine-tuned then zero-shot (i2t, t2i; R@1, R@5, R@10, MRR, extras; CI after
    its metric), captions, reports."""
    group = next((i for i, p in enumerate(("val_", "ft_", "zs_", "cap_", "rep_")) if column.startswith(p)), 5)
    if group not in (1, 2):
        return (group,)
    _, direction, rest = (column.split("_", 2) + ["", ""])[:3]
    suffix = 1 if rest.endswith("_lo") else 2 if rest.endswith("_hi") else 0
    base = rest[:-3] if suffix else rest
    directions = list(_DIRECTIONS.values())
    return (group, directions.index(direction) if direction in directions else 2,
            _RECALLS.index(base) if base in _RECALLS else len(_RECALLS), suffix)


def _direction_metrics(prefix: str, scores: dict) -> dict[str, float]:
    """Numbers of one retrieval direction: recalls and MRR first, each followed by its CI, then any extras."""
    out: dict[str, float] = {}
    cis: dict = {}
    for key in _CI_KEYS:
        if isinstance(scores.get(key), dict):
            cis.update(scores[key])
    # counts (n_queries, ...) describe the evaluation, they are not scores to compare
    keys = [k for k in _RECALLS if k in scores] + sorted(
        (k for k in scores if k not in _RECALLS and k not in _CI_KEYS and not str(k).startswith("n_")), key=str)
    for key in keys:
        value, column = scores[key], f"{prefix}_{_clean(key)}"
        pair = _interval(value)
        if _is_number(value):
            out[column] = float(value)
        elif pair and re.search(r"ci(95|_95)?$", str(key), re.I):  # e.g. "R@1_ci": [lo, hi]
            base = re.sub(r"[_ ]?ci(95|_95)?$", "", f"{prefix}_{_clean(key)}", flags=re.I)
            out[f"{base}_lo"], out[f"{base}_hi"] = pair
        elif isinstance(value, dict):  # e.g. "precision@k": {"10": 0.3}
            for sub, number in value.items():
                if _is_number(number):
                    out[f"{column}_{_clean(sub)}"] = float(number)
        pair = _interval(cis.get(key))
        if pair:
            out[f"{column}_lo"], out[f"{column}_hi"] = pair
    return out


def _interval(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
        return float(value[0]), float(value[1])
    if isinstance(value, dict):
        for lo, hi in (("lo", "hi"), ("low", "high"), ("lower", "upper")):
            if _is_number(value.get(lo)) and _is_number(value.get(hi)):
                return float(value[lo]), float(value[hi])
    return None


def _status(info: dict) -> str:
    stages = info.get("stages") or {}
    if not info:
        return "missing"
    statuses = [s.get("status") for s in stages.values() if isinstance(s, dict)]
    if not statuses:
        return "not started"
    for status in ("failed", "running"):
        if status in statuses:
            return status
    return "ok" if all(s == "ok" for s in statuses) else "incomplete"


def _flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _hashable(value: Any) -> str:
    return "<missing>" if value is _MISSING else json.dumps(value, sort_keys=True, default=str)


def _cell(value: Any) -> Any:
    """Lists and dicts as compact JSON text so the table stays one value per cell."""
    return json.dumps(value, default=str) if isinstance(value, (list, dict)) else value


def _norm(key: Any) -> str:
    return re.sub(r"[^a-z0-9@]", "", str(key).lower())


def _lookup(mapping: dict, key: str) -> float | None:
    want = _norm(key)
    for k, v in mapping.items():
        if _norm(k) == want and _is_number(v):
            return float(v)
    return None


def _find_number(payload: Any, key: str, max_depth: int = 3) -> float | None:
    """The first number stored under ``key`` (spelling-insensitive), breadth-first: top-level keys win."""
    queue = deque([(payload, 0)])
    while queue:
        node, depth = queue.popleft()
        if not isinstance(node, dict):
            continue
        value = _lookup(node, key)
        if value is not None:
            return value
        if depth < max_depth:
            queue.extend((v, depth + 1) for v in node.values() if isinstance(v, dict))
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _clean(key: Any) -> str:
    return re.sub(r"[^A-Za-z0-9@_+-]+", "_", str(key)).strip("_")


def _read_json(path: Path) -> Any:
    try:
        return io.read_json(path)
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- writing


@dataclass
class Comparison:
    """What :func:`write_comparison` produced."""

    table: pd.DataFrame
    out_dir: Path
    csv: Path
    figures: list[Path] = field(default_factory=list)


def write_comparison(pattern: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                     figures: bool = True) -> Comparison:
    """Build the table for ``pattern`` (see :func:`collect_runs`), write ``comparison.csv`` and figures.

    ``out_dir`` defaults to the sweep folder when ``pattern`` names one, else ``outputs/comparison/``.
    Figures (under ``<out_dir>/figures/``): key metrics against each varying param
    (``metrics_vs_params.png``; hue by the other param when exactly two vary) and the main metric
    per run (``metric_by_run.png``).
    """
    run_dirs = collect_runs(pattern)
    out = default_out_dir(pattern, out_dir)
    table = comparison_table(run_dirs)
    csv = out / "comparison.csv"
    with io.atomic_path(csv, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    return Comparison(table, out, csv, comparison_figures(table, out / "figures") if figures else [])


def comparison_figures(table: pd.DataFrame, figures_dir: Path) -> list[Path]:
    """Draw and save the comparison figures of ``table``; returns their paths (none without metrics)."""
    import matplotlib.pyplot as plt

    from medxpert_utils.viz import plots

    figures: list[Path] = []
    metrics = [m for m in KEY_METRICS if m in table.columns and table[m].notna().any()][:4]
    params = [p for p in param_columns(table) if table[p].nunique(dropna=False) > 1][:3]
    if metrics and params:
        fig = plots.metrics_vs_params(table, params, metrics, path=figures_dir / "metrics_vs_params.png")
        plt.close(fig)
        figures.append(figures_dir / "metrics_vs_params.png")
    if metrics:
        fig = plots.metric_by_run(table, metrics[0], path=figures_dir / "metric_by_run.png")
        plt.close(fig)
        figures.append(figures_dir / "metric_by_run.png")
    return figures


def sweep_status(pattern: str | os.PathLike) -> pd.DataFrame | None:
    """Per-combination status of the sweep ``pattern`` names, from its sweep.json (None when it is not a sweep)."""
    folder = sweep_folder(pattern)
    state = _read_json(folder / "sweep.json") if folder else None
    if not isinstance(state, dict):
        return None
    rows = [{"run": c.get("name"), "status": c.get("status"), "wall_s": c.get("wall_s"),
             "overrides": json.dumps(c.get("overrides", {}), default=str), "error": c.get("error")}
            for c in state.get("combinations", []) if isinstance(c, dict)]
    return pd.DataFrame(rows, columns=["run", "status", "wall_s", "overrides", "error"])
