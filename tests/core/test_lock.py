"""The environment lock agrees with pyproject.toml, and run.json can tell when the environment differs from it."""

from __future__ import annotations

from pathlib import Path

from medxpert_utils.core import lock

PYPROJECT = """
[project]
name = "medxpert"
dependencies = ["numpy>=1.26", "Simple_ICD-10-CM>=1.1"]
[project.optional-dependencies]
test = ["pytest>=8"]
"""

LOCK = """# a pip-tools lock
numpy==2.1.0 \\
    --hash=sha256:00
    # via
    #   medxpert (pyproject.toml)
    #   pandas
pandas==0.0.1 \\
    --hash=sha256:11
    # via medxpert (pyproject.toml)
pytest==8.3.0 \\
    --hash=sha256:22
    # via medxpert (pyproject.toml)
simple-icd-10-cm==2.0.1 \\
    --hash=sha256:33
    # via medxpert (pyproject.toml)
"""


def _write(tmp_path: Path, pyproject: str, lock_text: str) -> tuple[Path, Path]:
    (tmp_path / "pyproject.toml").write_text(pyproject)
    (tmp_path / "cpu.lock").write_text(lock_text)
    return tmp_path / "pyproject.toml", tmp_path / "cpu.lock"


def test_the_project_lock_matches_pyproject():
    assert lock.LOCK_FILE.is_file(), "requirements/cpu.lock is missing - run ./requirements/refresh.sh"
    assert lock.lock_problems() == []
    pins = lock.read_lock()
    assert pins["torch"]["version"] == "2.13.0+cpu" and pins["torch"]["direct"]


def test_read_lock_names_versions_and_direct_pins(tmp_path):
    _, path = _write(tmp_path, PYPROJECT, LOCK)
    pins = lock.read_lock(path)
    assert pins["numpy"] == {"version": "2.1.0", "direct": True}
    assert set(pins) == {"numpy", "pandas", "pytest", "simple-icd-10-cm"}


def test_a_mismatch_is_reported(tmp_path):
    pyproject, path = _write(tmp_path, PYPROJECT, LOCK)
    problems = lock.lock_problems(pyproject, path)
    assert problems == ["pandas: pinned as a direct dependency in cpu.lock, not in pyproject.toml"]
    narrower = PYPROJECT.replace("numpy>=1.26", "numpy>=2.2").replace('"pytest>=8"', '"pytest>=8", "ruff>=0.15"')
    pyproject.write_text(narrower)
    problems = lock.lock_problems(pyproject, path)
    assert "numpy: cpu.lock pins 2.1.0, pyproject.toml asks for >=2.2" in problems
    assert "ruff: in pyproject.toml, not pinned in cpu.lock" in problems


def test_lock_record_hashes_the_file_and_lists_what_differs(tmp_path):
    import importlib.metadata

    _, path = _write(tmp_path, PYPROJECT, LOCK)
    record = lock.lock_record(path)
    assert len(record["sha256"]) == 64
    assert record["differs"]["pandas"]["lock"] == "0.0.1"
    assert record["differs"]["pandas"]["installed"] == importlib.metadata.version("pandas")
    assert lock.lock_record(tmp_path / "none.lock") == {"file": None, "sha256": None, "differs": {}}


def test_run_json_records_the_lock(tmp_path):
    import hashlib

    from medxpert_utils.core import config, runs

    cfg = runs.prepare(config.load("params/smoke.yaml", run=str(tmp_path / "outputs" / "locked")))
    recorded = runs.read(cfg.run_dir)["environment_lock"]
    assert recorded["file"] == "requirements/cpu.lock"
    assert recorded["sha256"] == hashlib.sha256(lock.LOCK_FILE.read_bytes()).hexdigest()
    assert isinstance(recorded["differs"], dict)
