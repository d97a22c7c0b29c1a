"""The notebook chain: papermill runs each stage's notebook with the same PARAMS/RUN/OVERRIDES, redoing only what
is stale.

The stages, their order and what each reads come from the registry (:mod:`medxpert_utils.core.stages`). When a
stage's turn comes (the stages it needs have finished or were up to date), its key is computed
(:mod:`medxpert_utils.core.keys`); a stage whose key matches the one recorded when it last succeeded, with its
artefacts present, is skipped ("up to date"), as ``make`` would. ``force`` redoes every selected stage, or the
named ones, regardless. Executed copies land in ``outputs/<run>/notebooks/``; status, wall time, peak memory, key,
the param values and inputs it was made from, and the history of attempts go to ``run.json``. With ``parallel`` > 1
independent stages run side by side (the captioner trains while CLIP does); the results are the same either way.
The chain starts nothing new after the first failure, lets the notebooks already running finish, and names the
executed notebook to open.

Each stage's record in ``run.json`` (``stages.<notebook stem>``), for a success or a failure, holds its kernel's
memory, in MB (2**20 bytes, one decimal; null where it could not be measured):

* ``peak_rss_mb`` - the kernel process's own peak resident set (Linux ``VmHWM``, read a last time just before the
  kernel is shut down; elsewhere the largest RSS sampled);
* ``peak_rss_tree_mb`` - the largest sum of the RSS of the kernel and all its descendants (DataLoader workers, ...)
  seen by a sampler polling every 0.25 s. Pages the processes share (a forked worker's copy of the dataset) count
  once per process, and a peak shorter than the polling interval can be missed, so it can be below or above the
  true peak of the tree; it is the figure to compare with the machine's memory when workers are many.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medxpert_utils.core import keys, runs
from medxpert_utils.core.config import Config, load
from medxpert_utils.core.errors import UserError
from medxpert_utils.core.memory import PeakMemory, sample_running
from medxpert_utils.core.stages import FORCE_ENV, NOTEBOOKS_DIR, STAGES, Registry, Stage, get, select, waits_for

__all__ = ["NOTEBOOKS_DIR", "ChainFailed", "kernel_manager_class", "run_chain", "short_reason"]

Overrides = Mapping[str, object]


def _default_log(message: str) -> None:
    print(message, flush=True)


def _forced(force: bool | Collection[str], registry: Registry) -> set[str]:
    if force is True:
        return {s.number for s in registry}
    if not force:
        return set()
    return {get(str(n), registry).number for n in force}


def run_chain(params: str | os.PathLike[str] = "params/demo.yaml", run: str | os.PathLike[str] | None = None,
              overrides: Overrides | None = None, start: str | None = None,
              only: list[str] | str | None = None, until: str | None = None,
              log: Callable[[str], None] = _default_log, kernel_name: str | None = None,
              parallel: int | None = None, force: bool | Collection[str] = False,
              registry: Registry = STAGES) -> Config:
    """Run the stale stages of the chain; returns the Config of the run. Raises :class:`ChainFailed` on a failure.

    ``parallel`` (default: the params' ``parallel_notebooks``) is how many notebooks may run at once. ``force``:
    True redoes every selected stage; a list of stage numbers redoes those regardless of their keys.
    """
    cfg = load(params, run, overrides)
    # The kernel spec's "python" must be this interpreter (a .venv's), not whatever PATH finds first.
    bindir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bindir + os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    stages = select(start, only, until, cfg.params.stages, registry)
    if not stages:
        raise UserError("no stage selected - check --from/--only/--until and the params' stages list")
    forced = _forced(force, registry)
    workers = int(parallel if parallel is not None else cfg.params.parallel_notebooks)
    if workers < 1:
        raise UserError(f"--parallel {workers}: pass 1 (one notebook at a time) or more")
    runs.prepare(cfg)
    info = runs.read(cfg.run_dir)
    attempts = info.get("attempts", [])
    attempt = {"started": runs.now(), "stages": [s.name for s in stages], "status": "running",
               "overrides": dict(overrides or {}), "forced": sorted(forced)}
    attempts.append(attempt)
    runs.update(cfg.run_dir, attempts=attempts)
    log(f"MedXpert run '{cfg.run_name}' ({cfg.params.profile}) -> {cfg.run_dir}")
    total = time.perf_counter()
    chain = _Chain(cfg, stages, registry, forced, workers, kernel_name, dict(overrides or {}), log)
    failures = chain.run()
    if failures:
        _close_attempt(cfg, "failed", chain.skipped, chain.ran)
        stage, out, reason = failures[0]
        log(f"  open the executed notebook to see where: {out}")
        raise ChainFailed(stage.name, out, reason)
    _close_attempt(cfg, "ok", chain.skipped, chain.ran)
    if chain.ran:
        log(f"Run '{cfg.run_name}' finished in {time.perf_counter() - total:.1f} s; outputs in {cfg.run_dir}")
    else:
        log(f"Run '{cfg.run_name}': every stage up to date ({time.perf_counter() - total:.1f} s); "
            f"outputs in {cfg.run_dir}")
    return cfg


class _Chain:
    """Runs ``stages`` as their needs allow, at most ``workers`` at once (in order among the ready ones), skipping
    fresh ones; after a failure starts nothing new.

    One notebook at a time runs here; several run in worker processes (papermill's kernel clients each want a
    process of their own), while this process alone records them in run.json.
    """

    def __init__(self, cfg: Config, stages: list[Stage], registry: Registry, forced: set[str], workers: int,
                 kernel: str | None, overrides: dict[str, object], log: Callable[[str], None]):
        self.cfg, self.stages, self.registry, self.forced = cfg, stages, registry, forced
        self.workers, self.kernel, self.log = workers, kernel, log
        self.waits = waits_for(stages, registry)
        self.parameters = {"PARAMS": str(cfg.params_path), "RUN": str(cfg.run_dir), "OVERRIDES": overrides}
        self.skipped: list[str] = []
        self.ran: list[str] = []
        self.scan: keys.ImageScan | None = None  # the data stage's images, scanned once per chain (and after it)

    def _scan(self) -> keys.ImageScan:
        if self.scan is None:
            self.scan = keys.scan_images(self.cfg.run_dir)
        return self.scan

    def _decide(self, stage: Stage) -> str | None:
        """None when ``stage`` is up to date and not forced (and says so); else the line to log as it starts."""
        if stage.number in self.forced:
            return f"> {stage.name} (forced) ..."
        status = keys.evaluate(self.cfg, registry=self.registry, scan=self._scan())[stage.number]
        if status.state == "fresh":
            self.log(f"= {stage.name} up to date (key {status.key})")
            return None
        why = "; ".join(status.reasons[:3]) + (f"; +{len(status.reasons) - 3} more" if len(status.reasons) > 3 else "")
        return f"> {stage.name} ({status.state}: {why}) ..."

    def run(self) -> list[tuple[Stage, Path, str]]:
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        cfg = self.cfg
        kernel = self.kernel
        done: set[str] = set()
        pending = list(self.stages)
        running: dict[Future[_Outcome], tuple[Stage, float]] = {}
        failures: list[tuple[Stage, Path, str]] = []
        pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")) \
            if self.workers > 1 else None

        decided: dict[str, str | None] = {}

        def start(stage: Stage) -> None:
            nonlocal kernel
            kernel = kernel or _kernel_name()
            self.log(decided[stage.number] or f"> {stage.name} ...")
            out = cfg.paths.notebooks / stage.notebook.name
            runs.record_stage(cfg.run_dir, stage.name, status="running", started=runs.now(), notebook=str(out))
            args = (str(stage.notebook), str(out), self.parameters, kernel, str(stage.notebook.parent),
                    stage.number in self.forced)
            t0 = time.perf_counter()
            future: Future[_Outcome]
            if pool is None:  # one at a time: run it here, now
                future = Future()
                future.set_result(_execute(*args))
            else:
                future = pool.submit(_execute, *args)
            running[future] = (stage, t0)

        try:
            while pending or running:
                progressed = True
                while progressed and not failures:
                    progressed = False
                    for stage in [s for s in pending if self.waits[s.number] <= done]:
                        if stage.number not in decided:
                            decided[stage.number] = self._decide(stage)
                        if decided[stage.number] is None:
                            pending.remove(stage)
                            done.add(stage.number)
                            self.skipped.append(stage.name)
                            progressed = True
                        elif len(running) < self.workers:
                            pending.remove(stage)
                            start(stage)
                if not running:
                    break  # a failure left the rest waiting for it
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=lambda f: running[f][0].number):
                    stage, t0 = running.pop(future)
                    wall = round(time.perf_counter() - t0, 1)
                    outcome = future.result()
                    reason, memory = outcome.reason, outcome.memory()
                    if reason is None:
                        done.add(stage.number)
                        self.ran.append(stage.name)
                        if stage.reads_images:  # the data stage rebuilt the manifest: scan its images anew
                            self.scan = None
                        status = keys.record_success(cfg, stage, self.registry, scan=self._scan(), wall_s=wall,
                                                     finished=runs.now(), **memory)
                        peak = f", peak {outcome.peak_rss_mb} MB" if outcome.peak_rss_mb is not None else ""
                        self.log(f"  {stage.name} done in {wall:.1f} s (key {status.key}){peak}")
                    else:
                        runs.record_stage(cfg.run_dir, stage.name, status="failed", wall_s=wall, error=reason,
                                          finished=runs.now(), **memory)
                        self.log(f"x {stage.name} failed after {wall:.1f} s: {reason}")
                        if running:
                            self.log(f"  letting {', '.join(s.name for s, _ in running.values())} finish; "
                                     "starting nothing new")
                        failures.append((stage, cfg.paths.notebooks / stage.notebook.name, reason))
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        return failures


@dataclass(frozen=True)
class _Outcome:
    """What running one notebook gave: None or the failure's reason (one line), and its kernel's peak memory (MB)."""

    reason: str | None
    peak_rss_mb: float | None = None
    peak_rss_tree_mb: float | None = None

    def memory(self) -> dict[str, float | None]:
        return {"peak_rss_mb": self.peak_rss_mb, "peak_rss_tree_mb": self.peak_rss_tree_mb}


def _execute(notebook: str, out: str, parameters: Mapping[str, object], kernel: str, cwd: str,
             force: bool = False) -> _Outcome:
    """Run one notebook with papermill; returns the failure's reason (None when it succeeded) with the kernel's
    peak memory. ``force``: the kernel starts with ``MEDXPERT_FORCE=1``, so the stage reuses none of its own
    caches.

    The kernel is a child of this process, which runs one notebook at a time (a pool worker, or the chain's own
    process with nothing else started meanwhile): :class:`PeakMemory` finds it among this process's descendants.
    """
    import papermill as pm

    previous = os.environ.pop(FORCE_ENV, None)
    if force:
        os.environ[FORCE_ENV] = "1"  # the kernel's environment is this process's
    reason: str | None = None
    memory = PeakMemory()
    try:
        with memory:
            pm.execute_notebook(notebook, out, parameters=parameters, kernel_name=kernel, cwd=cwd,
                                progress_bar=False, log_output=False, report_mode=False,
                                kernel_manager_class=kernel_manager_class())
    except Exception as exc:  # papermill raises PapermillExecutionError with the cell's error
        reason = short_reason(exc)
    finally:
        os.environ.pop(FORCE_ENV, None)
        if previous is not None:
            os.environ[FORCE_ENV] = previous
    return _Outcome(reason, memory.peak_rss_mb, memory.peak_rss_tree_mb)


class ChainFailed(UserError):
    def __init__(self, stage: str, notebook: Path, reason: str):
        super().__init__(f"{stage} failed: {reason} - open {notebook}")
        self.stage, self.notebook, self.reason = stage, notebook, reason


def _close_attempt(cfg: Config, status: str, skipped: list[str], ran: list[str]) -> None:
    info = runs.read(cfg.run_dir)
    attempts = info.get("attempts", [])
    if attempts:
        attempts[-1].update(status=status, finished=runs.now(), ran=ran, up_to_date=skipped)
    runs.update(cfg.run_dir, attempts=attempts, updated=runs.now())


def short_reason(exc: BaseException) -> str:
    ename = getattr(exc, "ename", None)
    evalue = getattr(exc, "evalue", None)
    if ename:
        return f"{ename}: {evalue}".strip()[:500]
    return f"{type(exc).__name__}: {exc}".strip()[:500]


@functools.cache
def kernel_manager_class() -> type:
    """The kernel manager papermill uses: local IPC sockets instead of TCP ports.

    The kernel and papermill share this machine, and ipykernel warns at every start that TCP
    without CurveZMQ keys sends everything in plain text; Unix sockets under the Jupyter runtime
    folder avoid both the open ports and the warning. Kernels start with ``MEDXPERT_BATCH=1``, so
    progress bars print text that the executed notebook keeps (:mod:`medxpert_utils.core.progress`), and
    with ``OMP_WAIT_POLICY=PASSIVE`` unless the caller set it (kernels running at once share the cores). Just
    before a kernel is shut down, the stage's :class:`PeakMemory` reads its peak a last time.
    """
    import uuid

    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets import default

    from medxpert_utils.core.progress import BATCH_ENV

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        async def _async_pre_start_kernel(self, **kw: Any) -> Any:
            env = kw.get("env", os.environ)
            # Spinning OpenMP threads of two kernels sharing the cores slow each several-fold (and a training's
            # time budget would then plan a shorter schedule): wait passively unless the caller chose otherwise.
            kw["env"] = {**env, BATCH_ENV: "1", "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY", "PASSIVE")}
            # Socket paths of this kernel alone: the default ("kernel-ipc-<n>" beside the notebook) is shared
            # by every kernel started from the same folder, and kernels running at once then read each
            # other's messages.
            runtime = Path(jupyter_runtime_dir())
            runtime.mkdir(parents=True, exist_ok=True)
            self.ip = str(runtime / f"kernel-{uuid.uuid4().hex[:16]}-ipc")
            return await super()._async_pre_start_kernel(**kw)

        # AsyncKernelManager's shutdown_kernel is a coroutine; KernelManager's typing says a plain method
        async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:  # type: ignore[override]
            sample_running()  # the kernel's VmHWM as late as it can be read: after its last cell, before it exits
            await super().shutdown_kernel(now=now, restart=restart)

    return IPCKernelManager


def _kernel_name() -> str:
    """The kernel papermill starts: the project's own when installed, else this Python's native one."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    return "python3" if "python3" in specs else next(iter(specs), "python3")
