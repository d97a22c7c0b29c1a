"""The notebook chain: papermill runs each numbered notebook with the same PARAMS/RUN/OVERRIDES.

Executed copies land in ``outputs/<run>/notebooks/``; status and wall time of each notebook,
and the history of attempts, go to ``run.json``. A notebook starts once the notebooks it reads
from (:data:`NEEDS`) have finished, so with ``parallel`` > 1 independent ones run side by side
(the captioner trains while CLIP does); the results are the same either way. The chain starts
nothing new after the first failure, lets the notebooks already running finish, and names the
executed notebook to open.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medxpert_utils.core import runs
from medxpert_utils.core.config import Config, load
from medxpert_utils.core.errors import UserError
from medxpert_utils.core.paths import PROJECT_ROOT

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
_NB = re.compile(r"^(\d\d)_[\w-]+\.ipynb$")
# Notebooks that are not steps of the chain: 07 compares finished runs and is run on its own.
NOT_IN_CHAIN = {"07"}
# What each notebook reads from the others: CLIP training and the captioner only need the data, the
# evaluation and the reports only need the index (and the reports the captioner), the dashboard all of it.
# A notebook not listed here waits for every selected notebook before it.
NEEDS: dict[str, tuple[str, ...]] = {
    "00": (), "01": ("00",), "02": ("01",), "03": ("02",), "04": ("00",), "05": ("02", "04"), "06": ("03", "05"),
}


@dataclass(frozen=True)
class Stage:
    number: str
    path: Path

    @property
    def name(self) -> str:
        return self.path.stem


def discover(notebooks_dir: Path | None = None) -> list[Stage]:
    """The numbered notebooks of the chain, in order."""
    stages = []
    for path in sorted((notebooks_dir or NOTEBOOKS_DIR).glob("*.ipynb")):
        match = _NB.match(path.name)
        if match and match.group(1) not in NOT_IN_CHAIN:
            stages.append(Stage(match.group(1), path))
    return stages


def select(stages: list[Stage], start: str | None = None, only: list[str] | str | None = None,
           until: str | None = None, allowed: list[str] | None = None) -> list[Stage]:
    """Stages from ``start`` to ``until`` (inclusive), or exactly ``only``; ``allowed`` comes from params."""
    numbers = [s.number for s in stages]

    def norm(value: str, flag: str) -> str:
        value = str(value).zfill(2)
        if value not in numbers:
            raise UserError(f"{flag} {value}: no such notebook - choose one of {', '.join(numbers)}")
        return value

    chosen = stages
    if only:
        wanted = {norm(o, "--only") for o in ([only] if isinstance(only, str) else only)}
        chosen = [s for s in stages if s.number in wanted]
    else:
        if start:
            first = norm(start, "--from")
            chosen = [s for s in chosen if s.number >= first]
        if until:
            last = norm(until, "--until")
            chosen = [s for s in chosen if s.number <= last]
    if allowed:
        keep = {str(a).zfill(2) for a in allowed}
        chosen = [s for s in chosen if s.number in keep]
    return chosen


def _default_log(message: str) -> None:
    print(message, flush=True)


def waits_for(stages: list[Stage]) -> dict[str, set[str]]:
    """For each selected stage, the selected stages it must wait for (:data:`NEEDS`, closed over the chain:
    a notebook that needs an unselected one waits for what that one needed, as far as it was selected)."""
    numbers = [s.number for s in stages]
    chosen = set(numbers)
    out: dict[str, set[str]] = {}
    for i, number in enumerate(numbers):
        if number not in NEEDS:
            out[number] = set(numbers[:i])
            continue
        found: set[str] = set()
        todo = list(NEEDS[number])
        while todo:
            need = todo.pop()
            if need in chosen:
                found.add(need)
            elif need in NEEDS:
                todo.extend(NEEDS[need])
        out[number] = found
    return out


def run_chain(params: str | os.PathLike = "params/demo.yaml", run: str | os.PathLike | None = None,
              overrides: Mapping[str, Any] | None = None, start: str | None = None,
              only: list[str] | str | None = None, until: str | None = None,
              log: Callable[[str], None] = _default_log, kernel_name: str | None = None,
              parallel: int | None = None) -> Config:
    """Run the notebook chain; returns the Config of the run. Raises :class:`ChainFailed` on a failure.

    ``parallel`` (default: the params' ``parallel_notebooks``) is how many notebooks may run at once.
    """
    cfg = load(params, run, overrides)
    # The kernel spec's "python" must be this interpreter (a .venv's), not whatever PATH finds first.
    bindir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bindir + os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    stages = select(discover(), start, only, until, cfg.params.stages)
    if not stages:
        raise UserError("no notebook selected - check --from/--only/--until and the params' stages list")
    workers = int(parallel if parallel is not None else cfg.params.parallel_notebooks)
    if workers < 1:
        raise UserError(f"--parallel {workers}: pass 1 (one notebook at a time) or more")
    runs.prepare(cfg)
    info = runs.read(cfg.run_dir)
    attempts = info.get("attempts", [])
    attempt = {"started": runs.now(), "stages": [s.name for s in stages], "status": "running",
               "overrides": dict(overrides or {})}
    attempts.append(attempt)
    runs.update(cfg.run_dir, attempts=attempts)
    log(f"MedXpert run '{cfg.run_name}' ({cfg.params.profile}) -> {cfg.run_dir}")
    total = time.perf_counter()
    kernel = kernel_name or _kernel_name()
    failures = _schedule(cfg, stages, waits_for(stages), workers, kernel, dict(overrides or {}), log)
    if failures:
        _close_attempt(cfg, "failed")
        stage, out, reason = failures[0]
        log(f"  open the executed notebook to see where: {out}")
        raise ChainFailed(stage.name, out, reason)
    _close_attempt(cfg, "ok")
    log(f"Run '{cfg.run_name}' finished in {time.perf_counter() - total:.1f} s; outputs in {cfg.run_dir}")
    return cfg


def _schedule(cfg: Config, stages: list[Stage], waits: dict[str, set[str]], workers: int, kernel: str,
              overrides: dict[str, Any], log: Callable[[str], None]) -> list[tuple[Stage, Path, str]]:
    """Run ``stages`` as their ``waits`` allow, at most ``workers`` at once (in order of number among the
    ready ones); after a failure start nothing new. Returns the failures (stage, executed notebook, reason).

    One notebook at a time runs here; several run in worker processes (papermill's kernel clients each
    want a process of their own), while this process alone records them in run.json.
    """
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    parameters = {"PARAMS": str(cfg.params_path), "RUN": str(cfg.run_dir), "OVERRIDES": overrides}
    done: set[str] = set()
    pending = list(stages)
    running: dict[Future, tuple[Stage, float]] = {}
    failures: list[tuple[Stage, Path, str]] = []
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) \
        if workers > 1 else None

    def start(stage: Stage) -> None:
        out = cfg.paths.notebooks / stage.path.name
        log(f"> {stage.name} ...")
        runs.record_stage(cfg.run_dir, stage.name, status="running", started=runs.now(), notebook=str(out))
        args = (str(stage.path), str(out), parameters, kernel, str(NOTEBOOKS_DIR))
        t0 = time.perf_counter()
        if pool is None:  # one at a time: run it here, now
            future: Future = Future()
            future.set_result(_execute(*args))
        else:
            future = pool.submit(_execute, *args)
        running[future] = (stage, t0)

    try:
        while pending or running:
            if not failures:
                for stage in [s for s in pending if waits[s.number] <= done][:workers - len(running)]:
                    pending.remove(stage)
                    start(stage)
            if not running:
                break  # a failure left the rest waiting for it
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: running[f][0].number):
                stage, t0 = running.pop(future)
                wall = time.perf_counter() - t0
                reason = future.result()
                if reason is None:
                    done.add(stage.number)
                    runs.record_stage(cfg.run_dir, stage.name, status="ok", wall_s=round(wall, 1),
                                      finished=runs.now(), error=None)
                    log(f"  {stage.name} done in {wall:.1f} s")
                else:
                    runs.record_stage(cfg.run_dir, stage.name, status="failed", wall_s=round(wall, 1), error=reason,
                                      finished=runs.now())
                    log(f"x {stage.name} failed after {wall:.1f} s: {reason}")
                    if running:
                        log(f"  letting {', '.join(s.name for s, _ in running.values())} finish; starting nothing new")
                    failures.append((stage, cfg.paths.notebooks / stage.path.name, reason))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return failures


def _execute(notebook: str, out: str, parameters: dict[str, Any], kernel: str, cwd: str) -> str | None:
    """Run one notebook with papermill. Returns None, or the failure's reason (one line)."""
    import papermill as pm

    try:
        pm.execute_notebook(notebook, out, parameters=parameters, kernel_name=kernel, cwd=cwd, progress_bar=False,
                            log_output=False, report_mode=False, kernel_manager_class=kernel_manager_class())
    except Exception as exc:  # papermill raises PapermillExecutionError with the cell's error
        return short_reason(exc)
    return None


class ChainFailed(UserError):
    def __init__(self, stage: str, notebook: Path, reason: str):
        super().__init__(f"{stage} failed: {reason} - open {notebook}")
        self.stage, self.notebook, self.reason = stage, notebook, reason


def _close_attempt(cfg: Config, status: str) -> None:
    info = runs.read(cfg.run_dir)
    attempts = info.get("attempts", [])
    if attempts:
        attempts[-1].update(status=status, finished=runs.now())
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
    with ``OMP_WAIT_POLICY=PASSIVE`` unless the caller set it (kernels running at once share the cores).
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

    return IPCKernelManager


def _kernel_name() -> str:
    """The kernel papermill starts: the project's own when installed, else this Python's native one."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    return "python3" if "python3" in specs else next(iter(specs), "python3")
