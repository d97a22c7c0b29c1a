"""The command line's own behaviour: one-line errors, exit codes, argument forms."""

import subprocess
import sys

import pytest

from medxpert_utils.app import cli
from medxpert_utils.core.stage import parse_overrides


def test_bad_params_is_one_line_exit_2(capsys):
    assert cli.main(["run", "params/nope.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medxpert: error: params file not found") and "\n" not in err


def test_bad_override_names_the_key(capsys):
    assert cli.main(["run", "params/smoke.yaml", "--set", "train.nope=1"]) == 2
    assert "'train.nope'" in capsys.readouterr().err


def test_override_needs_key_value(capsys):
    assert cli.main(["run", "--set", "train.lr"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_unknown_notebook_number(capsys):
    assert cli.main(["run", "params/smoke.yaml", "--from", "42"]) == 2
    assert "--from 42: no such stage" in capsys.readouterr().err


def test_empty_query_and_bad_k_are_rejected_before_any_work(capsys):
    assert cli.main(["search", "--run", "nope", "--text", "   "]) == 2
    assert "empty query" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["search", "--run", "nope", "--text", "effusion", "-k", "0"])
    assert info.value.code == 2


def test_overrides_parse_yaml_values():
    assert parse_overrides(["train.lr=1e-5", "embed.corpus_splits=[test]", "llm.send_image=true"]) == {
        "train.lr": 1e-5, "embed.corpus_splits": ["test"], "llm.send_image": True}


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "medxpert_utils", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for command in ("run", "search", "diagnose", "eval", "export-csv", "sweep"):
        assert command in out.stdout
