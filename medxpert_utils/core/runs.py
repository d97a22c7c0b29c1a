"""The run record: ``outputs/<run>/run.json``.

It holds the resolved params, git commit, package versions, the environment lock's hash, seed, data hash and, per
notebook, status and wall time, plus the history of attempts. Every writer takes a file lock
(``run.json.lock``), re-reads the file and replaces it atomically, so the pipeline and the
notebook kernels it starts (several at once with ``parallel_notebooks``) can all add to it.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

from filelock import FileLock

from medxpert_utils.core import io
from medxpert_utils.core.config import Config
from medxpert_utils.core.lock import lock_record
from medxpert_utils.core.paths import PROJECT_ROOT, outputs_dir

KEY_PACKAGES = (
    "torch", "transformers", "tokenizers", "datasets", "faiss-cpu", "pandas", "numpy", "pillow",
    "pydicom", "papermill", "ipywidgets", "voila", "google-genai", "accelerate", "sacrebleu", "rouge-score",
    "simple-icd-10-cm", "seaborn", "pydantic",
)


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def git_commit() -> dict[str, Any]:
    """Commit of the project checkout and whether it had uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha or None, "dirty": dirty}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def read(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    return io.read_json(path) if path.is_file() else {}


def _locked(run_dir: Path) -> FileLock:
    run_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(run_dir / "run.json.lock", timeout=60)


def update(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge top-level ``fields`` into run.json (dict values are merged one level deep)."""
    run_dir = Path(run_dir)
    with _locked(run_dir):
        return _merge(run_dir, fields)


def _merge(run_dir: Path, fields: dict[str, Any]) -> dict[str, Any]:
    info = read(run_dir)
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(info.get(key), dict):
            info[key] = {**info[key], **value}
        else:
            info[key] = value
    io.write_json(run_dir / "run.json", info)
    return info


def prepare(cfg: Config) -> Config:
    """Create the run folder and record the resolved params, environment and seed in run.json.

    Every notebook calls this right after loading its params, so a notebook run by hand in
    JupyterLab leaves the same record as one run by the pipeline.
    """
    cfg.paths.ensure()
    update(
        cfg.run_dir,
        run=cfg.run_name,
        profile=cfg.params.profile,
        params_path=str(cfg.params_path) if cfg.params_path else None,
        overrides=cfg.overrides,
        params=cfg.to_dict(),
        params_hash=cfg.params_hash(),
        random_weights=cfg.random_weights(),
        seed=cfg.params.seed,
        git=git_commit(),
        packages=package_versions(),
        environment_lock=lock_record(),
        python=platform.python_version(),
        machine=f"{platform.machine()} {platform.system()} {platform.release()}",
        updated=now(),
    )
    return cfg


def record_stage(run_dir: str | Path, stage: str, **fields: Any) -> None:
    """Set status fields of one notebook (``stage`` is its file stem) in run.json."""
    run_dir = Path(run_dir)
    with _locked(run_dir):
        stages = read(run_dir).get("stages", {})
        stages[stage] = {**stages.get(stage, {}), **fields}
        _merge(run_dir, {"stages": stages})


def is_finished(run_dir: str | Path, through: str | None = None) -> bool:
    """True when every notebook recorded in the latest attempt (or up to ``through``) succeeded."""
    info = read(run_dir)
    stages = info.get("stages", {})
    if not stages:
        return False
    relevant = {k: v for k, v in stages.items() if through is None or k[:2] <= through}
    return bool(relevant) and all(v.get("status") == "ok" for v in relevant.values())


def list_runs(root: Path | None = None) -> list[dict[str, Any]]:
    """Runs under ``outputs/`` (newest first) with their profile, status and update time."""
    root = root or outputs_dir()
    rows: list[dict[str, Any]] = []
    if not root.is_dir():
        return rows
    for run_json in root.glob("*/run.json"):
        try:
            info = io.read_json(run_json)
        except (OSError, ValueError):
            continue
        stages = info.get("stages", {})
        rows.append({
            "run": run_json.parent.name,
            "path": run_json.parent,
            "profile": info.get("profile"),
            "random_weights": bool(info.get("random_weights")),
            "updated": info.get("updated", ""),
            "stages": {k: v.get("status") for k, v in stages.items()},
            "finished": bool(stages) and all(v.get("status") == "ok" for v in stages.values()),
        })
    return sorted(rows, key=lambda r: r["updated"], reverse=True)
