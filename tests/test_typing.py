"""Typing as a habit: mypy is clean on core/ and app/ (pyproject [tool.mypy]), and the public surfaces of the
stage registry, the keys, the Assistant and the CLI carry types without Any."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import typing

import pytest

from medxpert_utils.core.paths import PROJECT_ROOT


@pytest.mark.slow
def test_mypy_is_clean_on_core_and_app():
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Success: no issues found" in done.stdout


def _public_callables(module):
    for name, value in vars(module).items():
        if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(value):
            yield name, value
        elif inspect.isclass(value):
            for attr, member in vars(value).items():
                if inspect.isfunction(member) and (not attr.startswith("_") or attr == "__init__"):
                    yield f"{name}.{attr}", member


def _mentions_any(annotation: object) -> bool:
    """Any in an annotation, written as a string (``from __future__ import annotations``) or as an object."""
    if isinstance(annotation, str):
        return re.search(r"\bAny\b", annotation) is not None
    if annotation is typing.Any:
        return True
    return any(_mentions_any(arg) for arg in typing.get_args(annotation))


@pytest.mark.parametrize("module_name", ["medxpert_utils.core.stages", "medxpert_utils.core.keys",
                                         "medxpert_utils.app.cli", "medxpert_utils.assistant.assistant"])
def test_public_surfaces_are_typed_without_any(module_name):
    import importlib

    module = importlib.import_module(module_name)
    untyped, with_any = [], []
    for name, function in _public_callables(module):
        signature = inspect.signature(function)
        params = [p for p in signature.parameters.values() if p.name not in ("self", "cls")]
        if any(p.annotation is inspect.Parameter.empty for p in params) or (
                signature.return_annotation is inspect.Signature.empty and not name.endswith("__init__")):
            untyped.append(name)
            continue
        annotations = [p.annotation for p in params] + [signature.return_annotation]
        if any(_mentions_any(a) for a in annotations):
            with_any.append(name)
    assert not untyped, f"{module_name}: public functions without full annotations: {untyped}"
    assert not with_any, f"{module_name}: public functions typed with Any: {with_any}"
