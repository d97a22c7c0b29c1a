"""``medxpert search`` / ``eval`` / ``export-csv`` on a tiny fabricated run: output shapes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from medxpert_utils.app.cli import main
from medxpert_utils.core import io
from medxpert_utils.core.paths import PROJECT_ROOT
from tests.retrieval.test_embed import make_indexed_run

pytestmark = pytest.mark.slow  # builds tiny CLIP models


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_indexed_run(tmp_path_factory.mktemp("cli") / "run").run_dir


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("medxpert: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_search_json_and_table(run, capsys):
    assert main(["search", "--run", str(run), "--text", "pleural effusion", "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"query", "query_check", "hits"} and out["query"] == "pleural effusion"
    assert set(out["query_check"]) == {"in_distribution", "score", "threshold", "reason"}
    assert [h["rank"] for h in out["hits"]] == [1, 2, 3]
    for hit in out["hits"]:
        assert set(hit) == {"rank", "score", "study_id", "report", "image_path", "labels"}
        assert len(hit["labels"]) == 14 and set(hit["labels"].values()) <= {1, 0, -1, None}
    image = out["hits"][0]["image_path"]
    assert main(["search", "--run", str(run), "--image", image, "-k", "2", "--model", "zero_shot"]) == 0
    table = capsys.readouterr().out
    assert "rank" in table and len(table.strip().splitlines()) == 4  # header, rule, 2 hits


def test_search_errors_are_one_line_with_exit_2(run, tmp_path, capsys):
    assert main(["search", "--run", str(tmp_path / "missing"), "--text", "effusion"]) == 2
    assert "no run at" in _one_line_error(capsys)
    assert main(["search", "--run", str(run), "--image", str(tmp_path / "nope.png")]) == 2
    assert "nope.png" in _one_line_error(capsys)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    assert main(["search", "--run", str(run), "--image", str(corrupt)]) == 2
    assert "corrupt.jpg" in _one_line_error(capsys)
    assert main(["search", "--run", str(run), "--text", "  "]) == 2
    assert "empty query" in _one_line_error(capsys)


def test_eval_prints_and_writes(run, capsys):
    assert main(["eval", "--run", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "test" and set(result["models"]) == {"zero_shot", "fine_tuned"}
    assert not (run / "metrics" / "retrieval.json").exists()
    assert main(["eval", "--run", str(run), "--write"]) == 0
    text = capsys.readouterr().out
    assert "Recall@1" in text and "untrained: random weights" in text
    assert io.read_json(run / "metrics" / "retrieval.json")["n_images"] == result["n_images"]
    assert (run / "metrics" / "retrieval_table.csv").is_file()


def test_export_csv(run, capsys):
    assert main(["export-csv", "--run", str(run), "-k", "2"]) == 0
    path = run / "exports" / "test_top2_fine_tuned.csv"
    assert capsys.readouterr().out.strip() == f"wrote {path}"
    table = pd.read_csv(path)
    assert set(table["direction"]) == {"image_to_text", "text_to_image"} and table["rank"].max() == 2


def test_python_dash_m_entry_point(run, tmp_path):
    bad = subprocess.run([sys.executable, "-m", "medxpert_utils", "search", "--run", str(run), "--image",
                          str(tmp_path / "absent.png")], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "absent.png" in bad.stderr and "Traceback" not in bad.stderr
