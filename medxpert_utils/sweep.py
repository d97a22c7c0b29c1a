"""Parameter sweeps: run the notebook chain once per combination of a sweep file.

A sweep file (``params/sweeps/<name>.yaml``) names a base profile, overrides applied to every
run, and either a ``grid`` (cartesian product of dotted keys) or a ``list`` of override dicts.
Each combination runs into ``outputs/<sweep>/<sweep>__<combo>/`` so the sweep's
``sweep.json``, ``comparison.csv`` and executed ``07_compare_runs.ipynb`` sit beside its runs.
Every combination is validated before anything runs; a combination already finished with the
same resolved params is skipped, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medxpert_utils import io, pipeline, runs
from medxpert_utils.config import Config, ConfigError, load
from medxpert_utils.errors import UserError
from medxpert_utils.paths import PROJECT_ROOT, outputs_dir

MAX_NAME_CHARS = 100
COMPARE_NOTEBOOK = "07_compare_runs.ipynb"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_SEP = "__"


class SweepError(UserError, ValueError):
    """A sweep file is wrong; the message names the key or combination and the fix."""


class SweepSpec(BaseModel):
    """The validated contents of a sweep YAML."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = Field(None, description="Sweep name: folder under outputs/ and run-name prefix (default: file stem).")
    description: str = Field("", description="One line on what the sweep compares.")
    base: str = Field(..., description="Base params YAML (profile) every combination starts from.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted overrides applied to every combination.")
    grid: dict[str, list[Any]] | None = Field(None, description="Cartesian product of dotted keys -> values.")
    list_: list[dict[str, Any]] | None = Field(None, alias="list", description="Explicit combinations (dotted overrides each).")
    until: str | None = Field(None, description="Default last notebook number of each run, e.g. '03'.")
    parallel: int = Field(1, ge=1, description="Runs at once (1: sequential).")

    @field_validator("until", mode="before")
    @classmethod
    def _until_text(cls, value: Any) -> Any:
        # YAML reads an unquoted 03 as the integer 3.
        return None if value is None else str(value).zfill(2)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or _UNSAFE.search(value)):
            raise ValueError("use letters, digits, '.', '_', '+' or '-' only (it names a folder)")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> "SweepSpec":
        if (self.grid is None) == (self.list_ is None):
            raise ValueError("give exactly one of 'grid' (cartesian product) or 'list' (explicit combinations)")
        if self.grid is not None:
            if not self.grid:
                raise ValueError("'grid' is empty - list at least one dotted key with its values")
            for key, values in self.grid.items():
                if not values:
                    raise ValueError(f"grid key '{key}' has no values")
                seen = [json.dumps(v, sort_keys=True, default=str) for v in values]
                if len(set(seen)) != len(seen):
                    raise ValueError(f"grid key '{key}' lists a value twice")
        if self.list_ is not None:
            if not self.list_:
                raise ValueError("'list' is empty - give at least one combination")
            seen = [json.dumps(c, sort_keys=True, default=str) for c in self.list_]
            for i, blob in enumerate(seen):
                if blob in seen[:i]:
                    raise ValueError(f"list entries {seen.index(blob) + 1} and {i + 1} are the same combination")
        return self


@dataclass(frozen=True)
class Combination:
    """One run of a sweep: its folder name and its own dotted overrides (the sweep's are added on top)."""

    name: str
    overrides: dict[str, Any]
    sweep: str = ""

    @property
    def run_dir(self) -> Path:
        return sweep_dir(self.sweep) / self.name


@dataclass
class Sweep:
    """A loaded sweep file: spec, resolved name and source path."""

    spec: SweepSpec
    name: str
    path: Path
    combinations: list[Combination] = field(default_factory=list)

    def overrides_for(self, combo: Combination) -> dict[str, Any]:
        """Sweep-wide overrides, then the combination's own (which win)."""
        return {**self.spec.overrides, **combo.overrides}


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-4`` (no dot) as a float, as people write learning rates."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def sweep_dir(name: str) -> Path:
    """Folder of a sweep under ``outputs/``."""
    return outputs_dir() / name


def resolve_sweep_path(path: str | os.PathLike) -> Path:
    """A sweep file as given, else relative to the project root, else a name under params/sweeps/."""
    candidate = Path(path).expanduser()
    for option in (candidate, PROJECT_ROOT / candidate, PROJECT_ROOT / "params" / "sweeps" / f"{path}.yaml"):
        if option.is_file():
            return option.resolve()
    raise SweepError(f"sweep file not found: {path} - pass a YAML under params/sweeps/ (e.g. params/sweeps/demo_grid.yaml)")


def load_sweep(sweep_file: str | os.PathLike | Sweep) -> Sweep:
    """Read and validate a sweep file (unknown keys fail naming the key) and expand its combinations."""
    if isinstance(sweep_file, Sweep):
        return sweep_file
    path = resolve_sweep_path(sweep_file)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except yaml.YAMLError as exc:
        raise SweepError(f"{path.name}: not valid YAML ({exc.__class__.__name__}) - fix the file's syntax") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path.name}: expected a mapping with base, grid or list, ... at the top level")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise SweepError(_pydantic_message(path.name, exc)) from None
    sweep = Sweep(spec, spec.name or _sanitise(path.stem), path)
    sweep.combinations = _combinations(sweep)
    return sweep


def expand(sweep_file: str | os.PathLike | Sweep) -> list[Combination]:
    """The sweep's combinations in a deterministic order, each with its run-folder name.

    A grid expands like ``itertools.product`` over its keys in file order (the last key varies
    fastest); a list keeps its order.
    """
    return list(load_sweep(sweep_file).combinations)


def _combinations(sweep: Sweep) -> list[Combination]:
    spec = sweep.spec
    if spec.grid is not None:
        keys = list(spec.grid)
        combos = [dict(zip(keys, values)) for values in itertools.product(*(spec.grid[k] for k in keys))]
    else:
        combos = [dict(c) for c in spec.list_ or []]
    names = combination_names(sweep.name, combos)
    return [Combination(n, c, sweep.name) for n, c in zip(names, combos)]


def combination_names(sweep: str, combos: list[Mapping[str, Any]]) -> list[str]:
    """Readable, unique, file-safe run names: ``<sweep>__<key>=<value>__...``.

    A key is shown by its last dotted segment unless another key of the sweep shares it. Names
    that collide after sanitising, or pass :data:`MAX_NAME_CHARS`, get a short hash of the
    combination appended.
    """
    all_keys = list(dict.fromkeys(k for c in combos for k in c))
    last = {k: k.rsplit(".", 1)[-1] for k in all_keys}
    shown = {k: (last[k] if list(last.values()).count(last[k]) == 1 else k) for k in all_keys}
    names = []
    for combo in combos:
        parts = [f"{_sanitise(shown[k])}={_sanitise(_format_value(v))}" for k, v in combo.items()]
        names.append(_SEP.join([sweep, *parts]) if parts else f"{sweep}{_SEP}base")
    counts = {n: names.count(n) for n in names}
    out = []
    for name, combo in zip(names, combos):
        digest = hashlib.sha256(json.dumps(combo, sort_keys=True, default=str).encode()).hexdigest()[:8]
        if counts[name] > 1 or len(name) > MAX_NAME_CHARS:
            name = f"{name[:MAX_NAME_CHARS - len(digest) - 1].rstrip('_.-=')}-{digest}"
        out.append(name)
    return out


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same float: 0.0005, 1e-05
    if isinstance(value, (list, tuple)):
        return "-".join(_format_value(v) for v in value) or "empty"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _sanitise(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-") or "x"


def _pydantic_message(source: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(f.alias or n for n, f in SweepSpec.model_fields.items())
        return f"sweep {source}: unknown key '{key}' - allowed keys: {allowed}"
    if err["type"] == "missing":
        return f"sweep {source}: missing required key '{key}' (e.g. base: params/demo.yaml)"
    msg = err["msg"].removeprefix("Value error, ")
    if not err["loc"]:
        return f"sweep {source}: {msg}"
    return f"sweep {source}: bad value for '{key}': {msg} (got {err.get('input')!r})"


# --------------------------------------------------------------------------- planning


@dataclass
class PlannedRun:
    """A combination resolved against its base profile: Config, params hash and the notebooks it runs."""

    combo: Combination
    overrides: dict[str, Any]
    cfg: Config
    stages: list[str]

    @property
    def params_hash(self) -> str:
        return self.cfg.params_hash()


def plan(sweep: Sweep, until: str | None = None) -> list[PlannedRun]:
    """Validate every combination with ``config.load`` and the stage selection, before anything runs."""
    planned = []
    for combo in sweep.combinations:
        overrides = sweep.overrides_for(combo)
        try:
            cfg = load(sweep.spec.base, combo.run_dir, overrides)
        except ConfigError as exc:
            raise SweepError(f"sweep {sweep.name}, combination {combo.name}: {exc}") from None
        stages = pipeline.select(pipeline.discover(), until=until, allowed=cfg.params.stages)
        if not stages:
            raise SweepError(f"sweep {sweep.name}: no notebook selected for {combo.name} - check until and the params' stages")
        planned.append(PlannedRun(combo, overrides, cfg, [s.name for s in stages]))
    return planned


def finished_stages(run_dir: Path, params_hash: str) -> set[str]:
    """Notebooks recorded ok in a run folder whose run.json was written with ``params_hash`` (else none)."""
    info = runs.read(run_dir)
    if info.get("params_hash") != params_hash:
        return set()
    return {name for name, state in info.get("stages", {}).items() if state.get("status") == "ok"}


# --------------------------------------------------------------------------- running


Runner = Callable[..., Any]


def run_sweep(path: str | os.PathLike | Sweep, until: str | None = None, parallel: int | None = None,
              dry_run: bool = False, log: Callable[[str], None] = print, runner: Runner | None = None,
              compare: bool = True) -> dict[str, Any]:
    """Run every combination of a sweep (skipping those already finished) and compare the runs.

    ``until`` and ``parallel`` default to the sweep file's. ``runner`` is called like
    :func:`pipeline.run_chain` (``runner(base, run=, overrides=, start=, until=, log=)``) and
    defaults to it. A failing combination is recorded and the others still run. ``compare``
    executes notebook 07 into ``outputs/<sweep>/`` at the end (never on a dry run).
    Returns ``{"name", "sweep_dir", "total", "ran", "skipped", "failed", "runs": [...]}`` where
    ``ran`` counts combinations that ran and succeeded, so total = ran + skipped + failed.
    """
    sweep = load_sweep(path)
    until = str(until).zfill(2) if until is not None else sweep.spec.until
    planned = plan(sweep, until)
    folder = sweep_dir(sweep.name)
    _warn_duplicates(planned, log)

    records: list[dict[str, Any]] = []
    todo: list[tuple[PlannedRun, dict[str, Any]]] = []
    for item in planned:
        done = finished_stages(item.combo.run_dir, item.params_hash)
        pending = [s for s in item.stages if s not in done]
        record = {"name": item.combo.name, "run_dir": str(item.combo.run_dir), "overrides": item.combo.overrides,
                  "params_hash": item.params_hash, "status": "skipped" if not pending else "pending",
                  "start": pending[0][:2] if pending else None, "wall_s": None, "error": None}
        if pending and len(pending) < len(item.stages):
            record["resume_from"] = pending[0]
        records.append(record)
        if pending:
            todo.append((item, record))

    workers = _workers(parallel if parallel is not None else sweep.spec.parallel, len(todo), planned, log)
    log(f"Sweep '{sweep.name}': {len(planned)} combinations, {len(todo)} to run, "
        f"{len(planned) - len(todo)} already finished" + (f", until {until}" if until else "")
        + (f", {workers} at once" if workers > 1 else "") + f" -> {folder}")
    if dry_run:
        for record in records:
            what = "skip (finished)" if record["status"] == "skipped" else (
                f"run from {record['start']}" if record.get("resume_from") else "run")
            log(f"  {record['name']}: {what}  {json.dumps(record['overrides'], default=str)}")
            record["status"] = "would skip" if record["status"] == "skipped" else "would run"
        return _summary(sweep, folder, records, dry_run=True)

    state = {"name": sweep.name, "file": str(sweep.path), "base": sweep.spec.base, "description": sweep.spec.description,
             "overrides": sweep.spec.overrides, "until": until, "parallel": workers, "started": runs.now(),
             "finished": None, "status": "running", "combinations": records}
    _write_state(folder, state)
    for item, _ in todo:
        _set_aside_stale(item, folder, log)

    runner = runner or pipeline.run_chain
    try:
        if workers <= 1:
            for item, record in todo:
                log(f"[{records.index(record) + 1}/{len(records)}] {item.combo.name}")
                record.update(status="running", started=runs.now())
                _write_state(folder, state)
                record.update(_run_one(runner, sweep.spec.base, item.combo.name, str(item.combo.run_dir),
                                       item.overrides, record["start"], until, None, log))
                _report(record, log)
                _write_state(folder, state)
        else:
            _run_parallel(runner, sweep, todo, until, workers, state, folder, log)
    except BaseException:
        for record in records:
            if record["status"] in ("pending", "running"):
                record["status"] = "interrupted"
        state.update(status="interrupted", finished=runs.now())
        _write_state(folder, state)
        raise
    summary = _summary(sweep, folder, records)
    state.update(status="ok" if summary["failed"] == 0 else "failed", finished=runs.now())
    _write_state(folder, state)
    log(f"Sweep '{sweep.name}': {summary['ran']} ran, {summary['skipped']} skipped, {summary['failed']} failed "
        f"-> {folder / 'sweep.json'}")
    if compare:
        summary["comparison"] = state["comparison"] = run_comparison_notebook(folder, log)
        _write_state(folder, state)
    return summary


def _run_one(runner: Runner, base: str, name: str, run_dir: str, overrides: dict[str, Any], start: str | None,
             until: str | None, threads: int | None, log: Callable[[str], None] | None) -> dict[str, Any]:
    """Run one combination; never raises for a failing run (the sweep goes on), only for an interrupt."""
    if threads is not None:  # a worker process: keep each run to its share of the cores
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
    if log is None:
        def log(message: str) -> None:
            print(f"[{name}] {message}", flush=True)
    t0 = time.perf_counter()
    try:
        runner(base, run=run_dir, overrides=overrides, start=start, until=until, log=log)
    except Exception as exc:  # ChainFailed, or any error of that run: record it and continue
        return {"status": "failed", "error": _short(exc), "wall_s": round(time.perf_counter() - t0, 1),
                "finished": runs.now()}
    return {"status": "ok", "error": None, "wall_s": round(time.perf_counter() - t0, 1), "finished": runs.now()}


def _run_parallel(runner: Runner, sweep: Sweep, todo: list[tuple[PlannedRun, dict[str, Any]]], until: str | None,
                  workers: int, state: dict[str, Any], folder: Path, log: Callable[[str], None]) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, _cores() // workers)
    # fork where it is safe (Linux): a worker only drives a notebook kernel, which is a fresh process, and
    # fork needs no importable __main__ (``python -m medxpert_utils`` would re-run the CLI under spawn).
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method)) as pool:
        futures = {}
        try:
            for item, record in todo:
                record.update(status="running", started=runs.now())
                futures[pool.submit(_run_one, runner, sweep.spec.base, item.combo.name, str(item.combo.run_dir),
                                    item.overrides, record["start"], until, threads, None)] = record
            _write_state(folder, state)
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    record = futures[future]
                    try:
                        record.update(future.result())
                    except Exception as exc:  # the worker process itself died
                        record.update(status="failed", error=_short(exc), finished=runs.now())
                    _report(record, log)
                    _write_state(folder, state)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _workers(requested: int, n_todo: int, planned: list[PlannedRun], log: Callable[[str], None]) -> int:
    """Runs at once: as asked, capped at the core count and the runs left; warns when cores are oversubscribed."""
    if requested < 1:
        raise SweepError(f"--parallel {requested}: pass 1 (sequential) or more")
    cores = _cores()
    workers = max(1, min(requested, cores, n_todo or 1))
    if requested > cores and n_todo > 1:
        log(f"parallel {requested} capped at {workers}: this machine has {cores} cores")
    if workers > 1 and planned:
        from medxpert_utils.runtime import default_num_workers

        threads = max(1, cores // workers)
        loader = max(default_num_workers(p.cfg.params.train.num_workers) for p in planned)
        if workers * (threads + loader) > cores:
            log(f"warning: {workers} runs x ({threads} compute + {loader} data-loader threads) exceed {cores} cores; "
                "runs will slow each other down - lower --parallel or set train.num_workers")
        if any(p.cfg.params.device in ("auto", "cuda") for p in planned) and _cuda_available():
            log(f"warning: {workers} runs share the GPU; lower --parallel if they run out of GPU memory")
    return workers


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # torch missing or broken: no GPU to share
        return False


def _set_aside_stale(item: PlannedRun, folder: Path, log: Callable[[str], None]) -> None:
    """Move a run folder made with other params out of the way, so training never resumes another run's checkpoint."""
    run_dir = item.combo.run_dir
    info = runs.read(run_dir)
    old = info.get("params_hash")
    if not old or old == item.params_hash:
        return
    target = folder / "_superseded" / f"{run_dir.name}__{old}"
    if target.exists():
        target = target.with_name(f"{target.name}__{time.strftime('%Y%m%d-%H%M%S')}")
    target.parent.mkdir(parents=True, exist_ok=True)
    run_dir.rename(target)
    log(f"  {run_dir.name} was run with other params (hash {old}); moved to {target} and running afresh")


def _warn_duplicates(planned: list[PlannedRun], log: Callable[[str], None]) -> None:
    seen: dict[str, str] = {}
    for item in planned:
        if item.params_hash in seen:
            log(f"warning: {item.combo.name} resolves to the same params as {seen[item.params_hash]}")
        seen.setdefault(item.params_hash, item.combo.name)


def _report(record: dict[str, Any], log: Callable[[str], None]) -> None:
    if record["status"] == "ok":
        log(f"  {record['name']} done in {record['wall_s']} s")
    else:
        log(f"  {record['name']} FAILED: {record['error']}")


def _summary(sweep: Sweep, folder: Path, records: list[dict[str, Any]], dry_run: bool = False) -> dict[str, Any]:
    count = lambda *status: sum(r["status"] in status for r in records)  # noqa: E731
    return {"name": sweep.name, "sweep_dir": folder, "dry_run": dry_run, "total": len(records),
            "ran": count("ok"), "skipped": count("skipped", "would skip"), "failed": count("failed", "interrupted"),
            "runs": records}


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    io.write_json(folder / "sweep.json", state)


def _short(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).strip().splitlines()[0][:500]


def run_comparison_notebook(folder: Path, log: Callable[[str], None] = print,
                            kernel_name: str | None = None) -> dict[str, Any]:
    """Execute notebook 07 on a sweep folder into ``<folder>/07_compare_runs.ipynb`` (table, figures, CSV).

    A failure is reported, not raised: the runs themselves are done and stay valid.
    """
    import papermill as pm

    source = pipeline.NOTEBOOKS_DIR / COMPARE_NOTEBOOK
    out = folder / COMPARE_NOTEBOOK
    if not source.is_file():
        log(f"comparison skipped: {source} is missing")
        return {"status": "skipped", "notebook": None, "error": f"{source} is missing"}
    if not any(folder.glob("*/run.json")):
        log("comparison skipped: no run of this sweep has started")
        return {"status": "skipped", "notebook": None, "error": "no runs"}
    bindir = str(Path(sys.executable).parent)  # the kernel's "python" must be this interpreter
    if not os.environ.get("PATH", "").startswith(bindir + os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    log(f"> comparing the runs: {out}")
    t0 = time.perf_counter()
    try:
        # The folder's absolute path, not its name: the kernel runs in notebooks/ and must find the same runs.
        pm.execute_notebook(str(source), str(out), parameters={"RUNS": str(folder), "OUT": ""},
                            kernel_name=kernel_name or pipeline._kernel_name(), cwd=str(pipeline.NOTEBOOKS_DIR),
                            progress_bar=False, log_output=False, report_mode=False,
                            kernel_manager_class=pipeline.kernel_manager_class())
    except Exception as exc:
        reason = pipeline._short_reason(exc)
        log(f"x comparison failed: {reason} - open {out}")
        return {"status": "failed", "notebook": str(out), "error": reason}
    log(f"  comparison written in {time.perf_counter() - t0:.1f} s: {folder / 'comparison.csv'}")
    return {"status": "ok", "notebook": str(out), "csv": str(folder / "comparison.csv"), "error": None}
