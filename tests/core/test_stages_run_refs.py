"""The registry's package functions exist with the stage signature, and "run notebook NN" hints are worded in one
place: every error that tells the user to (re)run a stage takes its words from ``core.stages``."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from medxpert_utils.core import stages
from medxpert_utils.core.paths import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "medxpert_utils"
OLD_HINT = re.compile(r"run notebook 0", re.IGNORECASE)  # also matches "rerun notebook 0"
CHAIN = [s for s in stages.STAGES if s.number <= "05"]  # 06, the dashboard, is tested with the app


@pytest.mark.parametrize("stage", CHAIN, ids=lambda s: s.name)
def test_run_ref_resolves_to_a_stage_function(stage):
    function = stages.resolve(stage.run_ref)
    assert callable(function), stage.run_ref
    signature = inspect.signature(function)
    assert list(signature.parameters) == ["cfg"], f"{stage.run_ref} must take (cfg: Config)"
    assert "Config" in str(signature.parameters["cfg"].annotation), f"{stage.run_ref}: annotate cfg as Config"
    returns = signature.return_annotation
    assert returns is not inspect.Signature.empty and str(returns) not in ("Any", "typing.Any", "object"), (
        f"{stage.run_ref} must declare what it returns")


def _raised_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string literal, f-string parts included, inside a ``raise`` statement."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    found.append((part.lineno, part.value))
    return found


def old_hints(package: Path) -> list[str]:
    """``path:line text`` of each raised message that words a notebook hint itself (core/stages.py aside)."""
    hits = []
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).as_posix() == "core/stages.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        hits += [f"{path.relative_to(package).as_posix()}:{line} {text!r}"
                 for line, text in _raised_strings(tree) if OLD_HINT.search(text)]
    return hits


def test_no_error_words_its_own_notebook_hint():
    assert old_hints(PACKAGE) == [], "build the hint with stages.hint(...) or raise stages.missing(...)"


def test_the_hint_scan_finds_one(tmp_path):
    package = tmp_path / "medxpert_utils"
    (package / "core").mkdir(parents=True)
    (package / "a.py").write_text('def f(run):\n    raise ValueError(f"no index - rerun notebook 02 ({run})")\n'
                                  '# a comment that says run notebook 02 is fine\n')
    (package / "core" / "stages.py").write_text('def f():\n    raise ValueError("run notebook 02")\n')
    assert old_hints(package) == ["a.py:2 'no index - rerun notebook 02 ('"]
