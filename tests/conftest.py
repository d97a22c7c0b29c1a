"""Shared fixtures.

Every test gets its own ``outputs/`` (``MEDXPERT_OUTPUTS``) and the session shares one dataset
cache (``MEDXPERT_DATA``), so nothing writes into the repository's outputs/ or data/.
``smoke_run`` runs the whole notebook chain once per session on ``params/smoke.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SECRET_ENV = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL")


@pytest.fixture(scope="session")
def session_data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, session_data_dir, monkeypatch) -> Path:
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    monkeypatch.setenv("MEDXPERT_OUTPUTS", str(outputs))
    monkeypatch.setenv("MEDXPERT_DATA", str(session_data_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for name in SECRET_ENV:
        monkeypatch.delenv(name, raising=False)
    return outputs


@pytest.fixture(scope="session")
def smoke_outputs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smoke_outputs")


@pytest.fixture(scope="session")
def smoke_run(smoke_outputs, session_data_dir) -> Path:
    """A finished run of every notebook of the chain on the smoke profile (built once per session)."""
    from medxpert_utils.app.pipeline import run_chain

    run_dir = smoke_outputs / "smoke"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDXPERT_OUTPUTS", str(smoke_outputs))
        mp.setenv("MEDXPERT_DATA", str(session_data_dir))
        mp.setenv("HF_HUB_OFFLINE", "1")
        for name in SECRET_ENV:
            mp.delenv(name, raising=False)
        run_chain("params/smoke.yaml", run=run_dir, log=lambda message: None)
    return run_dir


@pytest.fixture
def torch_one_thread():
    """Small models run faster on one thread on a busy machine; restores the thread count afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
