"""What makes a training run resumable: its checkpoint file, the key a checkpoint must match, RNG states.

Every ``checkpoint_every_steps`` optimiser steps the whole training state (weights, optimiser,
scheduler, scaler, RNGs, history, loader position) goes atomically to ``checkpoints/last.pt``. A
checkpoint resumes only under the same :func:`run_key`: the training stage's key (params that change results,
the manifest's content, the stage's version) and the number of processes.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medxpert_utils.core import io

if TYPE_CHECKING:

    from medxpert_utils.core.config import Config

CHECKPOINT_NAME = "last.pt"


# The loss comparison of notebook 01 trains its own models elsewhere: it does not change the fine-tuned one.
NOT_IN_CHECKPOINT_KEY = ("train.compare_losses_minutes",)


def run_key(cfg: "Config", processes: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the training stage's key (:mod:`medxpert_utils.core.keys`:
    its declared params, the manifest's content hash, its code version) and the number of processes."""
    from medxpert_utils.core.keys import stage_key

    return {"stage": stage_key(cfg, "01", without=NOT_IN_CHECKPOINT_KEY), "processes": processes}


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


PREVIOUS_NAME = "previous.pt"  # the checkpoint before last.pt, kept in case last.pt turns out damaged


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``last.pt`` atomically, keeping the checkpoint it replaces as ``previous.pt``.

    The new file is written in full first; only then does ``last.pt`` become ``previous.pt`` and the new file
    ``last.pt`` (two renames), so an interrupted save leaves a loadable checkpoint behind.
    """
    last = folder / CHECKPOINT_NAME
    with io.atomic_path(last, suffix=".pt") as tmp:
        torch.save(state, tmp)
        if last.is_file():
            os.replace(last, folder / PREVIOUS_NAME)


def load_checkpoint(folder: Path, key: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any] | None:
    """The newest checkpoint in ``folder`` that loads and was made under ``key`` (see :func:`_same_run`), or None.

    ``last.pt`` is tried, then ``previous.pt``. A file that cannot be loaded is moved aside to
    ``<name>.damaged-<UTC time>``, one made with other params or data to ``<name>.foreign-<UTC time>``;
    neither is ever deleted or overwritten, and ``log`` names where each went.
    """
    found = False
    for path in (folder / CHECKPOINT_NAME, folder / PREVIOUS_NAME):
        if not path.is_file():
            continue
        found = True
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except FileNotFoundError:
            continue  # moved aside by another process of the same run meanwhile
        except Exception as exc:  # any damage: truncated, not a zip, unpickling errors
            log(f"checkpoint {path} is damaged ({_short(exc)}); moved it to {_move_aside(path, 'damaged')}")
            continue
        if not isinstance(state, dict):
            log(f"checkpoint {path} is damaged (holds a {type(state).__name__}, not a training state); "
                f"moved it to {_move_aside(path, 'damaged')}")
            continue
        if not _same_run(state.get("key"), key, bool(state.get("finished") and "result" in state)):
            log(f"checkpoint {path} was made with other params or data; moved it to {_move_aside(path, 'foreign')}")
            continue
        if path.name != CHECKPOINT_NAME:
            log(f"using the previous checkpoint {path} (step {state.get('step', '?')})")
        return state
    if found:
        log(f"no usable checkpoint in {folder}; training from the start")
    return None


def _move_aside(path: Path, why: str) -> Path:
    """Rename ``path`` to ``<name>.<why>-<UTC time>`` (a new name, never an existing file); return the new path."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.{why}-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.{why}-{stamp}-{n}")
        n += 1
    try:
        os.rename(path, target)
    except FileNotFoundError:  # another process of the same run moved it first
        pass
    return target


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _same_run(saved: Any, key: dict[str, Any], finished: bool) -> bool:
    """Same key; or, for a finished run, the same key but for the number of processes that trained it."""
    if saved == key:
        return True
    if not finished or not isinstance(saved, dict):
        return False
    return {k: v for k, v in saved.items() if k != "processes"} == {k: v for k, v in key.items() if k != "processes"}
