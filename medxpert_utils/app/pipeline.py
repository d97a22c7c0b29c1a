"""The notebook chain: papermill runs each numbered notebook with the same PARAMS/RUN/OVERRIDES.

Executed copies land in ``outputs/<run>/notebooks/``; status and wall time of each notebook,
and the history of attempts, go to ``run.json``. The chain stops at the first failure and
names the executed notebook to open.
"""

from __future__ import annotations

import functools
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


def run_chain(params: str | os.PathLike = "params/demo.yaml", run: str | os.PathLike | None = None,
              overrides: Mapping[str, Any] | None = None, start: str | None = None,
              only: list[str] | str | None = None, until: str | None = None,
              log: Callable[[str], None] = _default_log, kernel_name: str | None = None) -> Config:
    """Run the notebook chain; returns the Config of the run. Raises :class:`ChainFailed` on a failure."""
    import papermill as pm

    cfg = load(params, run, overrides)
    # The kernel spec's "python" must be this interpreter (a .venv's), not whatever PATH finds first.
    bindir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bindir + os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    stages = select(discover(), start, only, until, cfg.params.stages)
    if not stages:
        raise UserError("no notebook selected - check --from/--only/--until and the params' stages list")
    runs.prepare(cfg)
    info = runs.read(cfg.run_dir)
    attempts = info.get("attempts", [])
    attempt = {"started": runs.now(), "stages": [s.name for s in stages], "status": "running",
               "overrides": dict(overrides or {})}
    attempts.append(attempt)
    runs.update(cfg.run_dir, attempts=attempts)
    log(f"MedXpert run '{cfg.run_name}' ({cfg.params.profile}) -> {cfg.run_dir}")
    total = time.perf_counter()
    for stage in stages:
        out = cfg.paths.notebooks / stage.path.name
        log(f"> {stage.name} ...")
        runs.record_stage(cfg.run_dir, stage.name, status="running", started=runs.now(), notebook=str(out))
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(
                str(stage.path), str(out),
                parameters={"PARAMS": str(cfg.params_path), "RUN": str(cfg.run_dir),
                            "OVERRIDES": dict(overrides or {})},
                kernel_name=kernel_name or _kernel_name(), cwd=str(NOTEBOOKS_DIR), progress_bar=False,
                log_output=False, report_mode=False, kernel_manager_class=kernel_manager_class(),
            )
        except Exception as exc:  # papermill raises PapermillExecutionError with the cell's error
            wall = time.perf_counter() - t0
            reason = short_reason(exc)
            runs.record_stage(cfg.run_dir, stage.name, status="failed", wall_s=round(wall, 1), error=reason,
                              finished=runs.now())
            _close_attempt(cfg, "failed")
            log(f"x {stage.name} failed after {wall:.1f} s: {reason}")
            log(f"  open the executed notebook to see where: {out}")
            raise ChainFailed(stage.name, out, reason) from None
        wall = time.perf_counter() - t0
        runs.record_stage(cfg.run_dir, stage.name, status="ok", wall_s=round(wall, 1), finished=runs.now(), error=None)
        log(f"  {stage.name} done in {wall:.1f} s")
    _close_attempt(cfg, "ok")
    log(f"Run '{cfg.run_name}' finished in {time.perf_counter() - total:.1f} s; outputs in {cfg.run_dir}")
    return cfg


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
    progress bars print text that the executed notebook keeps (:mod:`medxpert_utils.core.progress`).
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    from medxpert_utils.core.progress import BATCH_ENV

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        async def _async_pre_start_kernel(self, **kw: Any) -> Any:
            kw["env"] = {**kw.get("env", os.environ), BATCH_ENV: "1"}
            return await super()._async_pre_start_kernel(**kw)

    return IPCKernelManager


def _kernel_name() -> str:
    """The kernel papermill starts: the project's own when installed, else this Python's native one."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    return "python3" if "python3" in specs else next(iter(specs), "python3")
