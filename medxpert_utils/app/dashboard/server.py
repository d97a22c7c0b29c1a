"""Serving the dashboard: notebook 06 under Voilà on 127.0.0.1 (``python -m medxpert_utils.app.dashboard`` or
``./run_all.sh --dashboard``)."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from medxpert_utils.app.dashboard.inputs import pick_run, run_problem
from medxpert_utils.core import config
from medxpert_utils.core.config import DashboardParams
from medxpert_utils.core.errors import UserError
from medxpert_utils.core.paths import PROJECT_ROOT, resolve_run_dir
from medxpert_utils.core.stage import parse_overrides

NOTEBOOK = PROJECT_ROOT / "notebooks" / "06_dashboard.ipynb"
IOPUB_TIMEOUT_S = 60


def free_port(start: int = 8866, host: str = "127.0.0.1") -> int:
    """The first port from ``start`` that nothing listens on."""
    for port in range(start, start + 100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex((host, port)) != 0:
                return port
    raise UserError(f"no free port in {start}-{start + 99}: pass --port")


def serving_params(run_dir: Path | None, overrides: Sequence[str] = ()) -> DashboardParams:
    """The serving settings: ``dashboard`` in the params of the run the page shows by default (defaults when
    there is none), then ``--set dashboard.KEY=VALUE`` overrides (which change nothing in the run)."""
    values = parse_overrides(list(overrides))
    fields = list(DashboardParams.model_fields)
    for key in values:
        if key.removeprefix("dashboard.") not in fields or not key.startswith("dashboard."):
            raise UserError(f"--set {key}: the dashboard takes dashboard.KEY=VALUE with KEY one of {', '.join(fields)}")
    board = config.from_run(run_dir).params.dashboard if run_dir is not None else DashboardParams()
    try:
        return board.model_validate({**board.model_dump(), **{k.removeprefix("dashboard."): v
                                                                for k, v in values.items()}})
    except ValidationError as exc:
        raise UserError(f"--set: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None


def voila_command(port: int, board: DashboardParams | None = None, notebook: Path = NOTEBOOK) -> list[str]:
    """The Voilà command serving the dashboard on 127.0.0.1 only (code cells hidden, no tracebacks) with
    ``board``'s pool of preheated kernels, culling and session cap (:mod:`.voila_app`)."""
    board = board or DashboardParams()
    manager = "DashboardKernelManager"
    cmd = [sys.executable, "-m", "medxpert_utils.app.dashboard.voila_app", "--no-browser", f"--port={port}",
           "--Voila.ip=127.0.0.1", "--VoilaConfiguration.show_tracebacks=False",
           "--VoilaConfiguration.strip_sources=True",
           # A page's widgets arrive on IOPub after its cell's reply; on a loaded machine (a room arriving at once
           # while the pool refills) that takes longer than nbclient's 4 s, and a page that misses them stays empty.
           f"--VoilaExecutor.iopub_timeout={IOPUB_TIMEOUT_S}",
           f"--VoilaConfiguration.multi_kernel_manager_class=medxpert_utils.app.dashboard.voila_app.{manager}",
           # Culling: a closed page's kernel after idle_timeout_s, an open but unused one after open_idle_timeout_s.
           f"--{manager}.cull_disconnected_timeout={board.idle_timeout_s:g}",
           f"--{manager}.cull_idle_timeout={max(1, round(board.open_idle_timeout_s))}",
           f"--{manager}.cull_interval={max(1, min(30, round(board.idle_timeout_s / 4)))}",
           f"--{manager}.cull_connected=True",
           f"--DashboardVoila.max_sessions={board.max_sessions}"]
    if board.pool > 0:
        cmd += ["--VoilaConfiguration.preheat_kernel=True", f"--VoilaConfiguration.default_pool_size={board.pool}",
                f"--VoilaKernelManager.fill_delay={board.refill_delay_s:g}"]
    return [*cmd, str(notebook)]


def serve(run: str | None = None, port: int | None = None, overrides: Sequence[str] = ()) -> int:
    """Serve notebook 06 with Voilà on 127.0.0.1 and print its URL; returns Voilà's exit code."""
    env = dict(os.environ)
    if run:
        run_dir: Path | None = resolve_run_dir(run)
        problem = run_problem(run_dir)
        if problem:
            raise UserError(problem)
        env["MEDXPERT_RUN"] = str(run_dir)
    else:
        run_dir = pick_run(None, env)
    board = serving_params(run_dir, overrides)
    port = port or free_port()
    print(f"MedXpert dashboard: http://127.0.0.1:{port}/  (Ctrl+C stops it)", flush=True)
    print(f"  {board.pool} preheated kernel(s), at most {board.max_sessions} visitors at once; a closed page's kernel "
          f"stops after {board.idle_timeout_s:g} s idle (params dashboard.*, or --set dashboard.KEY=VALUE)",
          flush=True)
    process = subprocess.Popen(voila_command(port, board), cwd=PROJECT_ROOT, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medxpert_utils.app.dashboard",
                                     description="Serve the MedXpert dashboard.")
    parser.add_argument("--run", help="run name under outputs/ or a path (default: the latest finished run)")
    parser.add_argument("--port", type=int, help="port on 127.0.0.1 (default: the first free from 8866)")
    parser.add_argument("--set", action="append", default=[], metavar="dashboard.KEY=VALUE",
                        help="serving setting for this server only, e.g. --set dashboard.pool=2 (repeatable)")
    args = parser.parse_args(argv)
    try:
        return serve(args.run, args.port, args.set)
    except UserError as exc:
        print(f"medxpert dashboard: error: {exc}", file=sys.stderr)
        return 2
