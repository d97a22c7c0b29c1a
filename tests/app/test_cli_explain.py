"""``medxpert explain`` and ``Assistant.explain`` on a tiny fabricated run: the overlay file, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medxpert_utils.app.cli import main
from medxpert_utils.assistant import Assistant
from medxpert_utils.report.schema import DiagnosisReport, Finding
from tests.retrieval.test_embed import make_tiny_run

pytestmark = pytest.mark.slow  # builds tiny CLIP models


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("cli") / "run").run_dir


@pytest.fixture
def xray(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 255, (40, 56), dtype=np.uint8), "L").save(path)
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("medxpert: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_explain_writes_the_overlay(run, xray, tmp_path, capsys):
    out = tmp_path / "map.png"
    assert main(["explain", "--run", str(run), "--image", str(xray), "--text", "left pleural effusion",
                 "--out", str(out)]) == 0
    assert f"wrote {out} (56x40" in capsys.readouterr().out
    picture = np.asarray(Image.open(out))
    assert picture.shape == (40, 56, 3)
    grey = np.asarray(Image.open(xray)).astype(int)
    assert np.abs(picture.astype(int) - grey[..., None]).max() > 20  # the heatmap is blended in
    other = tmp_path / "zero.png"
    assert main(["explain", "--run", str(run), "--image", str(xray), "--text", "left pleural effusion",
                 "--out", str(other), "--model", "zero_shot", "--method", "patch"]) == 0
    assert not np.array_equal(np.asarray(Image.open(other)), picture)


def test_explain_errors_are_one_line(run, xray, tmp_path, capsys):
    assert main(["explain", "--run", str(run), "--image", str(xray), "--text", "  ", "--out",
                 str(tmp_path / "m.png")]) == 2
    assert "--text 'left pleural effusion'" in _one_line_error(capsys)
    assert main(["explain", "--run", str(run), "--image", str(xray), "--text", "effusion", "--out",
                 str(tmp_path / "m.txt")]) == 2
    assert "must end in .png or .jpg" in _one_line_error(capsys)
    assert main(["explain", "--run", str(run), "--image", str(tmp_path / "missing.png"), "--text", "effusion",
                 "--out", str(tmp_path / "m.png")]) == 2
    assert "missing.png" in _one_line_error(capsys)
    assert not (tmp_path / "m.png").exists()


def test_assistant_explains_the_report_findings(run, xray):
    assistant = Assistant(run)
    image = Image.open(xray)
    heat = assistant.explain(image, "right pneumothorax")
    assert heat.shape == (40, 56)
    report = DiagnosisReport(findings=[
        Finding(name="Pleural Effusion", status="present", location="left"),
        Finding(name="Pneumothorax", status="absent"),
        Finding(name="Cardiomegaly", status="uncertain")], generator="offline-retrieval")
    maps = assistant.explain_findings(image, report)
    assert list(maps) == ["left pleural effusion", "cardiomegaly"]  # absent findings get no map
    assert all(m.shape == (40, 56) for m in maps.values())
    assert np.allclose(maps["left pleural effusion"], assistant.explain(image, "left pleural effusion"))


def test_the_assistant_shares_the_search_engines_clip(tmp_path_factory):
    from tests.retrieval.test_embed import make_indexed_run

    cfg = make_indexed_run(tmp_path_factory.mktemp("shared") / "run")
    assistant = Assistant(cfg.run_dir)
    explainer = assistant.explainer("fine_tuned")
    assert explainer.model is assistant.engine("fine_tuned").clip_model()[0]
    assert assistant.explainer("fine_tuned") is explainer
