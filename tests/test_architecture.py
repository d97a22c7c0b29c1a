"""The package's shape, enforced: the layer order and acyclic siblings (import-linter's contracts in
pyproject.toml), no private name imported across modules, and ruff clean."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medxpert_utils.core.paths import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "medxpert_utils"


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_import_contracts_hold():
    result = _lint_imports(PROJECT_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, upward", [
    ("core/io.py", "from medxpert_utils.data import manifest"),
    ("data/split.py", "from medxpert_utils.models import clip"),
    ("report/schema.py", "from medxpert_utils.retrieval import search"),
    ("retrieval/index.py", "from medxpert_utils.training import trainer"),
    ("speech/audio.py", "from medxpert_utils.retrieval import search"),
])
def test_an_upward_or_sideways_import_breaks_the_contract(tmp_path, module, upward):
    """The contract check can fail: a copy of the package with one forbidden import (inside a function,
    where it would be easy to hide) is reported."""
    copy = tmp_path / "project"
    shutil.copytree(PACKAGE, copy / "medxpert_utils", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / "pyproject.toml", copy / "pyproject.toml")
    target = copy / "medxpert_utils" / module
    target.write_text(target.read_text() + textwrap.dedent(f"""

        def _added_for_the_test():
            {upward}
        """))
    result = _lint_imports(copy)
    assert result.returncode != 0 and "BROKEN" in result.stdout


def _private_imports() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medxpert_utils"):
                found += [f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {node.module}.{alias.name}"
                          for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    return found


def test_no_private_name_is_imported_across_modules():
    assert _private_imports() == []


def test_the_private_name_check_finds_one(tmp_path, monkeypatch):
    fake = tmp_path / "medxpert_utils"
    fake.mkdir()
    (fake / "a.py").write_text("from medxpert_utils.core.io import _json_default\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    monkeypatch.setattr(sys.modules[__name__], "PROJECT_ROOT", tmp_path)
    assert _private_imports() == ["medxpert_utils/a.py:1 medxpert_utils.core.io._json_default"]


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "medxpert_utils", "tests",
                             "benchmarks"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-1000:]
