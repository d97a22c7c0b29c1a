"""The papermill chain on throw-away notebooks: order, failure report, run.json, resume, history."""

import json
import os

import nbformat
import pytest

from medxpert_utils.app import pipeline
from medxpert_utils.core import runs
from medxpert_utils.core.errors import UserError


def _notebook(path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('PARAMS = "params/demo.yaml"\nRUN = ""\nOVERRIDES = {}')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


@pytest.fixture()
def fake_chain(tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    # Each notebook appends its number to a log file in the run folder, so order and re-runs are visible.
    record = ("from pathlib import Path\n"
              "Path(RUN).mkdir(parents=True, exist_ok=True)\n"
              "open(Path(RUN) / 'log.txt', 'a').write('{n} ' + str(OVERRIDES.get('seed', '')) + '\\n')\n")
    _notebook(folder / "00_first.ipynb", record.format(n="00"))
    _notebook(folder / "01_second.ipynb", record.format(n="01") +
              "import os\nif os.path.exists(Path(RUN) / 'fail'): raise RuntimeError('boom in 01')\n")
    _notebook(folder / "02_third.ipynb", record.format(n="02"))
    _notebook(folder / "07_compare.ipynb", "raise RuntimeError('not part of the chain')")
    (folder / "notes.ipynb").write_text("{}")  # not numbered: ignored
    monkeypatch.setattr(pipeline, "NOTEBOOKS_DIR", folder)
    return folder


def _log(run_dir):
    return [line.split()[0] for line in (run_dir / "log.txt").read_text().splitlines()]


@pytest.mark.slow
def test_chain_runs_in_order_and_records_status(fake_chain, isolated_dirs):
    messages = []
    cfg = pipeline.run_chain("params/demo.yaml", run="r1", overrides={"seed": 5}, log=messages.append)
    run_dir = isolated_dirs / "r1"
    assert cfg.run_dir == run_dir
    assert _log(run_dir) == ["00", "01", "02"]
    info = runs.read(run_dir)
    assert {k: v["status"] for k, v in info["stages"].items()} == {
        "00_first": "ok", "01_second": "ok", "02_third": "ok"}
    assert all(v["wall_s"] >= 0 for v in info["stages"].values())
    assert info["params"]["profile"] == "demo" and info["overrides"] == {"seed": 5}
    assert info["attempts"][-1]["status"] == "ok"
    assert (run_dir / "notebooks" / "01_second.ipynb").is_file()
    executed = json.loads((run_dir / "notebooks" / "00_first.ipynb").read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and str(run_dir) in "".join(injected[0]["source"])
    assert any("00_first done in" in m for m in messages)


@pytest.mark.slow
def test_failure_stops_names_the_notebook_and_resume_continues(fake_chain, isolated_dirs):
    run_dir = isolated_dirs / "r2"
    run_dir.mkdir()
    (run_dir / "fail").write_text("")
    messages = []
    with pytest.raises(pipeline.ChainFailed) as info:
        pipeline.run_chain("params/demo.yaml", run="r2", log=messages.append)
    assert info.value.stage == "01_second"
    assert str(run_dir / "notebooks" / "01_second.ipynb") in messages[-1]
    assert "boom in 01" in info.value.reason
    assert _log(run_dir) == ["00", "01"]  # 02 never ran
    state = runs.read(run_dir)
    assert state["stages"]["01_second"]["status"] == "failed"
    assert state["attempts"][-1]["status"] == "failed"

    (run_dir / "fail").unlink()
    pipeline.run_chain("params/demo.yaml", run="r2", start="01", log=lambda m: None)
    assert _log(run_dir) == ["00", "01", "01", "02"]
    state = runs.read(run_dir)
    assert [a["status"] for a in state["attempts"]] == ["failed", "ok"]
    assert state["attempts"][-1]["stages"] == ["01_second", "02_third"]
    assert runs.is_finished(run_dir)


def test_selection_rules(fake_chain):
    stages = pipeline.discover()
    assert [s.number for s in stages] == ["00", "01", "02"]  # 07 and unnumbered notebooks are not in the chain
    assert [s.number for s in pipeline.select(stages, start="01")] == ["01", "02"]
    assert [s.number for s in pipeline.select(stages, only=["2"])] == ["02"]
    assert [s.number for s in pipeline.select(stages, until="01")] == ["00", "01"]
    assert [s.number for s in pipeline.select(stages, allowed=["00", "02"])] == ["00", "02"]
    with pytest.raises(UserError, match="no such notebook"):
        pipeline.select(stages, start="09")


@pytest.mark.slow
def test_kernels_talk_over_local_ipc_sockets(tmp_path, monkeypatch, isolated_dirs):
    folder = tmp_path / "ipc_notebooks"
    folder.mkdir()
    _notebook(folder / "00_transport.ipynb",
              "from pathlib import Path\nfrom ipykernel.connect import get_connection_info\n"
              "Path(RUN).mkdir(parents=True, exist_ok=True)\n"
              "(Path(RUN) / 'transport.txt').write_text(get_connection_info(unpack=True)['transport'])\n"
              "from medxpert_utils.core.progress import tqdm\n"
              "for _ in tqdm(range(7), desc='steps'):\n    pass\n")
    monkeypatch.setattr(pipeline, "NOTEBOOKS_DIR", folder)
    monkeypatch.delenv("MEDXPERT_BATCH", raising=False)
    pipeline.run_chain("params/demo.yaml", run="ipc", log=lambda message: None)
    assert (isolated_dirs / "ipc" / "transport.txt").read_text() == "ipc"  # no TCP ports, no plain-text warning
    # batch kernels print text bars whose last state the executed notebook keeps (not a widget's "0%")
    executed = json.loads((isolated_dirs / "ipc" / "notebooks" / "00_transport.ipynb").read_text())
    outputs = [out for cell in executed["cells"] for out in cell.get("outputs", [])]
    text = "".join("".join(out.get("text", "")) for out in outputs if out["output_type"] == "stream")
    assert "steps: 100%" in text and "7/7" in text and "  0%" not in text
    assert not any(out["output_type"] == "display_data" for out in outputs)
    assert "MEDXPERT_BATCH" not in os.environ  # the caller's environment is left alone
