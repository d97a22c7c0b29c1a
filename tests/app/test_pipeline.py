"""The papermill chain on throw-away notebooks: order, failure report, run.json, resume, history."""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

from medxpert_utils.app import pipeline
from medxpert_utils.core import keys, runs, stages
from medxpert_utils.core import memory as memory_module
from medxpert_utils.core.errors import UserError
from medxpert_utils.core.stages import Stage


def _notebook(path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('PARAMS = "params/demo.yaml"\nRUN = ""\nOVERRIDES = {}')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


def _stage(folder: Path, name: str, needs: tuple[str, ...] = (), params: tuple[str, ...] = ("seed",),
           volatile: tuple[str, ...] = ()) -> Stage:
    number, slug = name.split("_", 1)
    return Stage(number, slug, slug, needs=needs, params=params, volatile=volatile, artefacts=(),
                 run_ref="builtins:print", version="v1", notebooks_dir=folder)


@pytest.fixture()
def fake_chain(tmp_path):
    """A three-stage registry over throw-away notebooks: 00 reads seed, 01 reads train.lr (train.num_workers is
    volatile), 02 reads eval.bootstrap; each needs the one before."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    # Each notebook appends its number to a log file in the run folder, so order and re-runs are visible.
    record = ("from pathlib import Path\n"
              "from medxpert_utils.core.stages import forced\n"
              "Path(RUN).mkdir(parents=True, exist_ok=True)\n"
              "open(Path(RUN) / 'log.txt', 'a').write('{n} ' + str(OVERRIDES.get('seed', '')) + '\\n')\n"
              "open(Path(RUN) / 'forced.txt', 'a').write('{n}' + ('!' if forced() else '') + ' ')\n")
    _notebook(folder / "00_first.ipynb", record.format(n="00"))
    _notebook(folder / "01_second.ipynb", record.format(n="01") +
              "import os\nif os.path.exists(Path(RUN) / 'fail'): raise RuntimeError('boom in 01')\n")
    _notebook(folder / "02_third.ipynb", record.format(n="02"))
    return (_stage(folder, "00_first"), _stage(folder, "01_second", ("00",), ("train.lr",), ("train.num_workers",)),
            _stage(folder, "02_third", ("01",), ("eval.bootstrap",)))


def _log(run_dir):
    return [line.split()[0] for line in (run_dir / "log.txt").read_text().splitlines()]


@pytest.mark.slow
def test_chain_runs_in_order_and_records_status(fake_chain, isolated_dirs):
    messages = []
    cfg = pipeline.run_chain("params/demo.yaml", run="r1", overrides={"seed": 5}, log=messages.append,
                             parallel=1, registry=fake_chain)  # one at a time, in this process
    run_dir = isolated_dirs / "r1"
    assert cfg.run_dir == run_dir
    assert _log(run_dir) == ["00", "01", "02"]
    info = runs.read(run_dir)
    assert {k: v["status"] for k, v in info["stages"].items()} == {
        "00_first": "ok", "01_second": "ok", "02_third": "ok"}
    assert all(v["wall_s"] >= 0.5 for v in info["stages"].values())  # a kernel's start alone takes longer
    # each kernel's memory, measured in this process (one notebook at a time): a Python kernel takes some MB
    assert all(10 < v["peak_rss_mb"] <= v["peak_rss_tree_mb"] + 50 for v in info["stages"].values()), info["stages"]
    assert info["params"]["profile"] == "demo" and info["overrides"] == {"seed": 5}
    assert info["attempts"][-1]["status"] == "ok"
    assert (run_dir / "notebooks" / "01_second.ipynb").is_file()
    executed = json.loads((run_dir / "notebooks" / "00_first.ipynb").read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and str(run_dir) in "".join(injected[0]["source"])
    assert any("00_first done in" in m and m.endswith(" MB") and ", peak " in m for m in messages), messages


def _failed_run(runs_root, name: str, marker: str, registry, **kwargs):
    """Run the chain into a run folder holding ``marker`` (the file a notebook fails on); expect ChainFailed."""
    run_dir = runs_root / name
    run_dir.mkdir()
    (run_dir / marker).write_text("")
    messages: list[str] = []
    with pytest.raises(pipeline.ChainFailed) as info:
        pipeline.run_chain("params/demo.yaml", run=name, log=messages.append, registry=registry, **kwargs)
    return run_dir, messages, info


@pytest.mark.slow
def test_failure_stops_names_the_notebook_and_resume_continues(fake_chain, isolated_dirs):
    run_dir, messages, info = _failed_run(isolated_dirs, "r2", "fail", fake_chain)
    assert info.value.stage == "01_second"
    assert str(run_dir / "notebooks" / "01_second.ipynb") in messages[-1]
    assert "boom in 01" in info.value.reason
    assert _log(run_dir) == ["00", "01"]  # 02 never ran
    state = runs.read(run_dir)
    assert state["stages"]["01_second"]["status"] == "failed"
    assert state["stages"]["01_second"]["peak_rss_mb"] > 10  # a failure's kernel is measured too
    assert state["attempts"][-1]["status"] == "failed"

    (run_dir / "fail").unlink()
    pipeline.run_chain("params/demo.yaml", run="r2", log=lambda m: None, registry=fake_chain)
    assert _log(run_dir) == ["00", "01", "01", "02"]  # 00 was up to date: only the failed one and after it
    state = runs.read(run_dir)
    assert [a["status"] for a in state["attempts"]] == ["failed", "ok"]
    assert state["attempts"][-1]["ran"] == ["01_second", "02_third"]
    assert state["attempts"][-1]["up_to_date"] == ["00_first"]
    assert runs.is_finished(run_dir)


def test_selection_rules(fake_chain):
    assert [s.number for s in stages.select(registry=fake_chain)] == ["00", "01", "02"]
    assert [s.number for s in stages.select(start="01", registry=fake_chain)] == ["01", "02"]
    assert [s.number for s in stages.select(only=["2"], registry=fake_chain)] == ["02"]
    assert [s.number for s in stages.select(until="01", registry=fake_chain)] == ["00", "01"]
    assert [s.number for s in stages.select(allowed=["00", "02"], registry=fake_chain)] == ["00", "02"]
    with pytest.raises(UserError, match="no such stage"):
        stages.select(start="09", registry=fake_chain)
    # the project's chain is the registry's, one notebook per stage, 07 (comparing runs) outside it
    assert [s.name for s in stages.select()] == sorted(p.stem for p in pipeline.NOTEBOOKS_DIR.glob("0[0-6]_*.ipynb"))
    assert all(s.notebook.is_file() for s in stages.STAGES)


@pytest.mark.slow
def test_a_second_run_skips_what_is_up_to_date_and_a_change_redoes_exactly_its_dependents(fake_chain,
                                                                                            isolated_dirs):
    run_dir = isolated_dirs / "again"
    pipeline.run_chain("params/demo.yaml", run="again", log=lambda m: None, registry=fake_chain)
    messages: list[str] = []
    scans = []
    real_scan = keys.scan_images
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keys, "scan_images", lambda run: scans.append(run) or real_scan(run))
        pipeline.run_chain("params/demo.yaml", run="again", log=messages.append, registry=fake_chain)
    assert _log(run_dir) == ["00", "01", "02"]  # nothing ran again
    assert scans == [run_dir]  # the data stage's images are scanned once per chain, not once per stage
    assert sum("up to date (key " in m for m in messages) == 3 and "every stage up to date" in messages[-1]

    # a volatile param changes nothing; a declared one redoes its stage and what reads it
    pipeline.run_chain("params/demo.yaml", run="again", overrides={"train.num_workers": 3}, log=lambda m: None,
                       registry=fake_chain)
    assert _log(run_dir) == ["00", "01", "02"]
    messages.clear()
    pipeline.run_chain("params/demo.yaml", run="again", overrides={"train.lr": 0.002}, log=messages.append,
                       registry=fake_chain)
    assert _log(run_dir) == ["00", "01", "02", "01", "02"]
    assert any(m.startswith("> 01_second (stale: train.lr: 0.0005 -> 0.002)") for m in messages), messages
    assert any(m.startswith("> 02_third (stale: input 01_second changed)") for m in messages), messages

    # --force NN redoes that stage alone (its key is unchanged, so nothing after it); --force redoes all
    pipeline.run_chain("params/demo.yaml", run="again", overrides={"train.lr": 0.002}, log=lambda m: None,
                       registry=fake_chain, force=["1"])
    assert _log(run_dir)[5:] == ["01"]
    # a forced stage is told so (it then reuses none of its own caches); the others are not
    assert (run_dir / "forced.txt").read_text().split()[-1] == "01!"
    assert "!" not in "".join((run_dir / "forced.txt").read_text().split()[:-1])
    pipeline.run_chain("params/demo.yaml", run="again", overrides={"train.lr": 0.002}, log=lambda m: None,
                       registry=fake_chain, force=True)
    assert _log(run_dir)[6:] == ["00", "01", "02"]


@pytest.mark.slow
def test_kernels_talk_over_local_ipc_sockets(tmp_path, monkeypatch, isolated_dirs):
    folder = tmp_path / "ipc_notebooks"
    folder.mkdir()
    _notebook(folder / "00_transport.ipynb",
              "from pathlib import Path\nfrom ipykernel.connect import get_connection_info\n"
              "Path(RUN).mkdir(parents=True, exist_ok=True)\n"
              "info = get_connection_info(unpack=True)\n"
              "(Path(RUN) / 'transport.txt').write_text(info['transport'])\n"
              "(Path(RUN) / 'ip.txt').write_text(info['ip'])\n"
              "import os\n(Path(RUN) / 'omp.txt').write_text(os.environ.get('OMP_WAIT_POLICY', ''))\n"
              "from medxpert_utils.core.progress import tqdm\n"
              "for _ in tqdm(range(7), desc='steps'):\n    pass\n")
    monkeypatch.delenv("MEDXPERT_BATCH", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    pipeline.run_chain("params/demo.yaml", run="ipc", log=lambda message: None,
                       registry=(_stage(folder, "00_transport"),))
    assert (isolated_dirs / "ipc" / "transport.txt").read_text() == "ipc"  # no TCP ports, no plain-text warning
    assert (isolated_dirs / "ipc" / "omp.txt").read_text() == "PASSIVE"  # kernels sharing cores do not spin
    # sockets of this kernel alone, under the Jupyter runtime folder (kernels running at once must not share them)
    from jupyter_core.paths import jupyter_runtime_dir

    ip = Path((isolated_dirs / "ipc" / "ip.txt").read_text())
    assert ip.parent == Path(jupyter_runtime_dir()) and ip.name.startswith("kernel-") and ip.name != "kernel-ipc"
    # batch kernels print text bars whose last state the executed notebook keeps (not a widget's "0%")
    executed = json.loads((isolated_dirs / "ipc" / "notebooks" / "00_transport.ipynb").read_text())
    outputs = [out for cell in executed["cells"] for out in cell.get("outputs", [])]
    text = "".join("".join(out.get("text", "")) for out in outputs if out["output_type"] == "stream")
    assert "steps: 100%" in text and "7/7" in text and "  0%" not in text
    assert not any(out["output_type"] == "display_data" for out in outputs)
    assert "MEDXPERT_BATCH" not in os.environ  # the caller's environment is left alone


def test_waits_follow_what_each_stage_reads():
    waits = stages.waits_for(stages.STAGES)
    assert waits["01"] == {"00"} and waits["04"] == {"00"}  # the captioner does not wait for CLIP
    assert waits["03"] == {"02"} and waits["05"] == {"02", "04"}  # evaluation and reports side by side
    assert waits["06"] == {"03", "05"}
    # a selection closes over what is left out: 05 alone waits for nothing, 02 + 05 makes 05 wait for 02
    assert stages.waits_for(stages.select(only=["05"])) == {"05": set()}
    assert stages.waits_for(stages.select(only=["02", "05"])) == {"02": set(), "05": {"02"}}
    assert stages.waits_for(stages.select(only=["00", "06"]))["06"] == {"00"}
    assert [s.number for s in stages.downstream("01")] == ["02", "03", "05", "06"]
    assert [s.number for s in stages.upstream("05")] == ["00", "01", "02", "04"]


def _meet(me: str, other: str) -> str:
    """Notebook body: mark ``me`` started, then wait (up to 60 s) for ``other`` to have started too."""
    return ("import time\nfrom pathlib import Path\n"
            "Path(RUN).mkdir(parents=True, exist_ok=True)\n"
            f"(Path(RUN) / 'started-{me}').write_text('')\n"
            "deadline = time.time() + 60\n"
            f"while not (Path(RUN) / 'started-{other}').exists():\n"
            "    assert time.time() < deadline, 'ran alone'\n"
            "    time.sleep(0.05)\n"
            f"if (Path(RUN) / 'fail-{me}').exists():\n"
            f"    raise RuntimeError('boom in {me}')\n"
            f"time.sleep(1.0 if '{me}' == '01' else 0)\n"
            f"(Path(RUN) / 'done-{me}').write_text('')\n")


@pytest.fixture()
def forked_chain(tmp_path):
    """00, then 01 and 04 (both need only 00) which each wait for the other to start, then 05 (needs 04)."""
    folder = tmp_path / "forked"
    folder.mkdir()
    _notebook(folder / "00_data.ipynb", "from pathlib import Path\nPath(RUN).mkdir(parents=True, exist_ok=True)\n")
    _notebook(folder / "01_train.ipynb", _meet("01", "04"))
    _notebook(folder / "04_caption.ipynb", _meet("04", "01"))
    _notebook(folder / "05_report.ipynb", "from pathlib import Path\nassert (Path(RUN) / 'done-04').exists()\n"
                                          "(Path(RUN) / 'done-05').write_text('')\n")
    return (_stage(folder, "00_data"), _stage(folder, "01_train", ("00",)), _stage(folder, "04_caption", ("00",)),
            _stage(folder, "05_report", ("04",)))  # here the report reads only the captions


@pytest.mark.slow
def test_independent_notebooks_run_side_by_side(forked_chain, isolated_dirs):
    messages = []
    pipeline.run_chain("params/demo.yaml", run="fork", parallel=2, log=messages.append, registry=forked_chain)
    run_dir = isolated_dirs / "fork"
    assert all((run_dir / f"done-{n}").exists() for n in ("01", "04", "05"))  # 01 and 04 met, so ran at once
    info = runs.read(run_dir)  # every writer's record survived the concurrent updates of run.json
    assert {k: v["status"] for k, v in info["stages"].items()} == {
        "00_data": "ok", "01_train": "ok", "04_caption": "ok", "05_report": "ok"}
    assert info["attempts"][-1]["status"] == "ok" and info["params"]["profile"] == "demo"
    assert all(v["wall_s"] >= 0.5 for v in info["stages"].values())
    assert all(v["peak_rss_mb"] > 10 and v["peak_rss_tree_mb"] > 10 for v in info["stages"].values())
    assert messages[-1].startswith("Run 'fork' finished")


@pytest.mark.slow
def test_a_parallel_failure_lets_the_running_notebook_finish_and_starts_nothing_after(forked_chain, isolated_dirs):
    run_dir, messages, info = _failed_run(isolated_dirs, "fork2", "fail-04", forked_chain, parallel=2)
    assert info.value.stage == "04_caption" and "boom in 04" in info.value.reason
    assert (run_dir / "done-01").exists()  # finished after 04 had failed (never lose finished work)
    assert not (run_dir / "done-05").exists()  # needs the failed one: never started
    assert str(run_dir / "notebooks" / "04_caption.ipynb") in messages[-1]
    stages = runs.read(run_dir)["stages"]
    assert stages["01_train"]["status"] == "ok" and stages["04_caption"]["status"] == "failed"
    assert "05_report" not in stages


def test_parallel_must_be_positive(fake_chain, isolated_dirs):
    with pytest.raises(UserError, match="--parallel 0"):
        pipeline.run_chain("params/demo.yaml", run="p0", parallel=0, log=lambda m: None, registry=fake_chain)


_BIG = """import subprocess, sys, time
from pathlib import Path
import numpy as np
Path(RUN).mkdir(parents=True, exist_ok=True)
# a worker process holding 200 MB until told to stop (as a DataLoader worker would), and 300 MB in the kernel
child = subprocess.Popen([sys.executable, "-c", "import sys\\nb = b'x' * (200 * 2**20)\\nprint('ready', flush=True)\\n"
                          "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "ready"
a = np.ones(300 * 2**20 // 8)
a.sum()
(Path(RUN) / "allocated").write_text("")
deadline = time.time() + 60
while not (Path(RUN) / "small-done").exists():
    assert time.time() < deadline, "01 never ran"
    time.sleep(0.05)
time.sleep(1.0)
child.stdin.close()
child.wait()
"""

_SMALL = """import time
from pathlib import Path
Path(RUN).mkdir(parents=True, exist_ok=True)
deadline = time.time() + 60
while not (Path(RUN) / "allocated").exists():
    assert time.time() < deadline, "00 never allocated"
    time.sleep(0.05)
time.sleep(1.0)
(Path(RUN) / "small-done").write_text("")
"""


@pytest.mark.slow
def test_each_stage_records_its_own_kernels_peak_memory(tmp_path, isolated_dirs):
    """Two notebooks at once, one holding 300 MB in its kernel and 200 MB in a child process: each stage's record
    has its own kernel's peak and its tree's, not the other's."""
    folder = tmp_path / "memory"
    folder.mkdir()
    _notebook(folder / "00_big.ipynb", _BIG)
    _notebook(folder / "01_small.ipynb", _SMALL)
    messages: list[str] = []
    pipeline.run_chain("params/demo.yaml", run="mem", parallel=2, log=messages.append,
                       registry=(_stage(folder, "00_big"), _stage(folder, "01_small")))
    stages = runs.read(isolated_dirs / "mem")["stages"]
    big, small = stages["00_big"], stages["01_small"]
    assert big["peak_rss_mb"] >= 300, big  # VmHWM of the kernel alone
    assert big["peak_rss_tree_mb"] >= 500, big  # the kernel and its child, both held for a while
    assert small["peak_rss_mb"] < 200 and small["peak_rss_tree_mb"] < 200, small  # ran meanwhile, apart
    assert any(m.startswith("  00_big done in") and f", peak {big['peak_rss_mb']} MB" in m for m in messages)


@pytest.mark.slow
def test_the_kernels_peak_is_read_once_more_just_before_it_shuts_down(tmp_path, monkeypatch, isolated_dirs):
    """A peak in the last moments of a notebook, between two looks of the sampler, is not lost: the kernel manager
    reads the kernel's VmHWM as it shuts it down (here the sampler looks only once, before the kernel starts)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("VmHWM is Linux's")
    folder = tmp_path / "brief"
    folder.mkdir()
    _notebook(folder / "00_brief.ipynb", "import numpy as np\na = np.ones(300 * 2**20 // 8)\na.sum()\ndel a\n")
    monkeypatch.setattr(memory_module, "_INTERVAL_S", 600.0)
    pipeline.run_chain("params/demo.yaml", run="brief", parallel=1, log=lambda m: None,  # sampled in this process
                       registry=(_stage(folder, "00_brief"),))
    record = runs.read(isolated_dirs / "brief")["stages"]["00_brief"]
    assert record["peak_rss_mb"] >= 300, record
    assert record["peak_rss_tree_mb"] < 300, record  # the array was gone by then: the tree is current RSS
