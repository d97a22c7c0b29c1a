"""What makes a training run resumable: its checkpoint file, the key a checkpoint must match, RNG states.

Every ``checkpoint_every_steps`` optimiser steps the whole training state (weights, optimiser,
scheduler, scaler, RNGs, history, loader position) goes atomically to ``checkpoints/last.pt``. A
checkpoint resumes only under the same :func:`run_key` -- params that change results, the base
model, fingerprints of the training and validation data, the number of processes.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medxpert_utils.core import io

if TYPE_CHECKING:
    import pandas as pd

    from medxpert_utils.core.config import Config

CHECKPOINT_NAME = "last.pt"


def data_fingerprint(frame: "pd.DataFrame") -> str:
    """Hash of a split's image file names and reports: the same data in a moved or copied run matches."""
    import hashlib

    digest = hashlib.sha256()
    for path, report in zip(frame["image_path"].astype(str), frame["report"].fillna("").astype(str)):
        digest.update(f"{os.path.basename(path)}\x1f{report}\x1e".encode())
    return digest.hexdigest()[:16]


def model_identity(spec: str) -> str:
    """A base model in a key: a hub id as is, a local folder by its name (a moved run still matches)."""
    return os.path.basename(os.path.normpath(spec)) if os.path.isdir(spec) else spec


def run_key(cfg: "Config", base: str, train: "pd.DataFrame", val: "pd.DataFrame", processes: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed (settings that do not change results are left out)."""
    train_params = cfg.train.model_dump(mode="json")
    for volatile in ("resume", "checkpoint_every_steps", "num_workers", "compare_losses_minutes", "image_cache_mb"):
        train_params.pop(volatile, None)
    return {"train": train_params, "clip": cfg.clip.model_dump(mode="json"), "seed": cfg.seed,
            "base": model_identity(base), "train_data": data_fingerprint(train), "val_data": data_fingerprint(val),
            "processes": processes}


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    with io.atomic_path(folder / CHECKPOINT_NAME, suffix=".pt") as tmp:
        torch.save(state, tmp)


def load_checkpoint(folder: Path, key: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any] | None:
    path = folder / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged file must not block a fresh start
        log(f"ignoring unreadable checkpoint {path} ({exc.__class__.__name__}); training from the start")
        return None
    if not _same_run(state.get("key"), key, bool(state.get("finished") and "result" in state)):
        log(f"checkpoint {path} was made with other params or data; training from the start")
        return None
    return state


def _same_run(saved: Any, key: dict[str, Any], finished: bool) -> bool:
    """Same key; or, for a finished run, the same key but for the number of processes that trained it."""
    if saved == key:
        return True
    if not finished or not isinstance(saved, dict):
        return False
    return {k: v for k, v in saved.items() if k != "processes"} == {k: v for k, v in key.items() if k != "processes"}
