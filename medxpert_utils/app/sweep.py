"""Parameter sweeps: run the notebook chain once per combination of a sweep file.

A sweep file (``params/sweeps/<name>.yaml``) names a base profile, overrides applied to every
run, and either a ``grid`` (cartesian product of dotted keys) or a ``list`` of override dicts.
Each combination runs into ``outputs/<sweep>/<sweep>__<combo>/`` so the sweep's
``sweep.json``, ``comparison.csv`` and executed ``07_compare_runs.ipynb`` sit beside its runs.
Every combination is validated before anything runs; a combination already finished with the
same resolved params is skipped, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medxpert_utils.app import pipeline
from medxpert_utils.app.sweep_plan import (
    COMPARE_NOTEBOOK,
    PlannedRun,
    Sweep,
    SweepError,
    fresh_stages,
    load_sweep,
    plan,
    sweep_dir,
)
from medxpert_utils.core import io, runs
from medxpert_utils.core.stages import STAGES, Registry

# --------------------------------------------------------------------------- running


Runner = Callable[..., Any]


def run_sweep(path: str | os.PathLike | Sweep, until: str | None = None, parallel: int | None = None,
              dry_run: bool = False, log: Callable[[str], None] = print, runner: Runner | None = None,
              compare: bool = True, registry: Registry = STAGES) -> dict[str, Any]:
    """Run every combination of a sweep (skipping those whose stages are all up to date) and compare the runs.

    A combination whose run folder holds stages made with other params or data reruns exactly its stale stages
    (their keys say which, :mod:`medxpert_utils.core.keys`); the chain skips the fresh ones.

    ``until`` and ``parallel`` default to the sweep file's. ``runner`` is called like
    :func:`pipeline.run_chain` (``runner(base, run=, overrides=, start=, until=, log=)``) and
    defaults to it. A failing combination is recorded and the others still run. ``compare``
    executes notebook 07 into ``outputs/<sweep>/`` at the end (never on a dry run).
    Returns ``{"name", "sweep_dir", "total", "ran", "skipped", "failed", "runs": [...]}`` where
    ``ran`` counts combinations that ran and succeeded, so total = ran + skipped + failed.
    """
    sweep = load_sweep(path)
    until = str(until).zfill(2) if until is not None else sweep.spec.until
    planned = plan(sweep, until, registry)
    folder = sweep_dir(sweep.name)
    _warn_duplicates(planned, log)

    records: list[dict[str, Any]] = []
    todo: list[tuple[PlannedRun, dict[str, Any]]] = []
    for item in planned:
        done = fresh_stages(item.cfg, registry)
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

    state = {"name": sweep.name, "file": str(sweep.path), "base": sweep.spec.base,
             "description": sweep.spec.description, "overrides": sweep.spec.overrides, "until": until,
             "parallel": workers, "started": runs.now(), "finished": None, "status": "running", "combinations": records}
    _write_state(folder, state)

    runner = runner or pipeline.run_chain
    try:
        if workers <= 1:
            for item, record in todo:
                log(f"[{records.index(record) + 1}/{len(records)}] {item.combo.name}")
                record.update(status="running", started=runs.now())
                _write_state(folder, state)
                record.update(_run_one(runner, sweep.spec.base, item.combo.name, str(item.combo.run_dir),
                                       item.overrides, str(record["start"]) if record["start"] else None, until,
                                       None, log))
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
        from medxpert_utils.core.runtime import default_num_workers

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
        reason = pipeline.short_reason(exc)
        log(f"x comparison failed: {reason} - open {out}")
        return {"status": "failed", "notebook": str(out), "error": reason}
    log(f"  comparison written in {time.perf_counter() - t0:.1f} s: {folder / 'comparison.csv'}")
    return {"status": "ok", "notebook": str(out), "csv": str(folder / "comparison.csv"), "error": None}
