"""A cold query imports only what it uses: ``medxpert search`` / ``diagnose`` in a fresh interpreter on a tiny run,
then the modules it loaded. scikit-learn, scipy.stats, matplotlib, seaborn, the speech backends and BLIP/captioning
each cost a cold CLI up to a second or more, and none of them answers a text or an image search; nor does pandas
(the corpus rows are read with pyarrow, the query check's reference from ``ood.npz``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medxpert_utils.core.paths import PROJECT_ROOT
from tests.retrieval.test_embed import make_indexed_run

pytestmark = pytest.mark.slow  # tiny CLIP models, a fresh interpreter per query

NOT_FOR_A_SEARCH = ("sklearn", "scipy.stats", "matplotlib", "seaborn", "pocketsphinx", "av", "medxpert_utils.speech",
                    "medxpert_utils.captions", "medxpert_utils.models.blip", "transformers.models.blip", "pandas")
# Runs the CLI, then writes the names of the loaded modules to the file named by the first argument.
PROBE = ("import json, sys; from medxpert_utils.app.cli import main; out = sys.argv.pop(1); rc = main(sys.argv[1:]); "
         "open(out, 'w').write(json.dumps({'rc': rc, 'modules': sorted(sys.modules)}))")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_indexed_run(tmp_path_factory.mktemp("cold") / "run").run_dir


def _loaded(tmp_path, *argv: str) -> list[str]:
    out = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", PROBE, str(out), *argv], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["rc"] == 0, done.stderr[-3000:]
    return result["modules"]


def _unwanted(modules: list[str], names=NOT_FOR_A_SEARCH) -> list[str]:
    return [m for m in modules if any(m == name or m.startswith(name + ".") for name in names)]


def test_a_text_search_imports_no_scikit_learn_plots_speech_or_captioning(run, tmp_path):
    modules = _loaded(tmp_path, "search", "--run", str(run), "--text", "small left pleural effusion", "--json")
    assert "faiss" in modules and "transformers" in modules  # it did search
    assert _unwanted(modules) == []


def test_an_image_search_imports_no_scikit_learn_plots_speech_or_captioning(run, tmp_path):
    image = next((run / "images").glob("*.png"))
    modules = _loaded(tmp_path, "search", "--run", str(run), "--image", str(image), "--json")
    assert "medxpert_utils.retrieval.ood" in modules
    assert _unwanted(modules) == []


def test_a_text_diagnosis_imports_no_scikit_learn_plots_speech_or_captioning(run, tmp_path):
    modules = _loaded(tmp_path, "diagnose", "--run", str(run), "--text", "small left pleural effusion", "--json",
                      "--force")
    assert "medxpert_utils.report.offline" in modules
    assert _unwanted(modules) == []


def test_the_check_catches_an_unwanted_import():
    assert _unwanted(["sklearn.covariance", "scipy.stats._stats", "av", "avro", "medxpert_utils.speech.sphinx",
                      "scipy.optimize"]) == ["sklearn.covariance", "scipy.stats._stats", "av",
                                             "medxpert_utils.speech.sphinx"]
