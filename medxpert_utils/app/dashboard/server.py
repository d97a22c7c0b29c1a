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

from medxpert_utils.app.dashboard.inputs import run_problem
from medxpert_utils.core.errors import UserError
from medxpert_utils.core.paths import PROJECT_ROOT, resolve_run_dir

NOTEBOOK = PROJECT_ROOT / "notebooks" / "06_dashboard.ipynb"


def free_port(start: int = 8866, host: str = "127.0.0.1") -> int:
    """The first port from ``start`` that nothing listens on."""
    for port in range(start, start + 100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex((host, port)) != 0:
                return port
    raise UserError(f"no free port in {start}-{start + 99}: pass --port")


def voila_command(port: int, notebook: Path = NOTEBOOK) -> list[str]:
    """The Voilà command serving the dashboard on 127.0.0.1 only (code cells hidden, no tracebacks)."""
    return [sys.executable, "-m", "voila", "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
            "--VoilaConfiguration.show_tracebacks=False", "--VoilaConfiguration.strip_sources=True", str(notebook)]


def serve(run: str | None = None, port: int | None = None) -> int:
    """Serve notebook 06 with Voilà on 127.0.0.1 and print its URL; returns Voilà's exit code."""
    env = dict(os.environ)
    if run:
        run_dir = resolve_run_dir(run)
        problem = run_problem(run_dir)
        if problem:
            raise UserError(problem)
        env["MEDXPERT_RUN"] = str(run_dir)
    port = port or free_port()
    print(f"MedXpert dashboard: http://127.0.0.1:{port}/  (Ctrl+C stops it)", flush=True)
    process = subprocess.Popen(voila_command(port), cwd=PROJECT_ROOT, env=env)
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
    args = parser.parse_args(argv)
    try:
        return serve(args.run, args.port)
    except UserError as exc:
        print(f"medxpert dashboard: error: {exc}", file=sys.stderr)
        return 2
