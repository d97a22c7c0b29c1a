"""Committed notebooks: no outputs, one parameters cell of literals, thin (logic lives in the package)."""

import ast

import nbformat
import pytest

from medxpert_utils.app.pipeline import NOTEBOOKS_DIR

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
CHAIN_PARAMS = ["PARAMS", "RUN", "OVERRIDES"]


def test_the_chain_has_its_notebooks():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert numbers[:1] == ["00"], "notebook 00_data_prep must exist"
    assert numbers == sorted(set(numbers)), "one notebook per number"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a cell has outputs - clear them before committing"
            assert cell.execution_count is None, f"{path.name}: a cell has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_holds_only_commented_literals(path):
    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0], (
        f"{path.name}: the first code cell must be the only 'parameters' cell")
    tree = ast.parse(tagged[0].source)
    names = []
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, f"{path.name}: only NAME = literal lines"
        ast.literal_eval(node.value)  # raises for anything but a literal
        names.append(node.targets[0].id)
    expected = ["RUNS", "OUT"] if path.name.startswith("07") else CHAIN_PARAMS
    assert names == expected
    for line in tagged[0].source.strip().splitlines():
        assert "#" in line, f"{path.name}: give each parameter a trailing comment ({line!r})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_thin_and_not_stubs(path):
    nb = nbformat.read(str(path), as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "medxpert_utils" in source, f"{path.name}: notebooks call into the package"
    assert "sys.path" not in source, f"{path.name}: never edit sys.path; the package is installed"
    tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
    defined = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert not defined, f"{path.name}: defines {defined} - move them into medxpert_utils with a test"
    assert any(c.cell_type == "markdown" for c in nb.cells), f"{path.name}: tell the story in markdown"
