"""Checkpoint faults: the last two are kept; a damaged or foreign one is moved aside (never deleted), the next tried."""

from __future__ import annotations

from pathlib import Path

import torch

from medxpert_utils.training.state import CHECKPOINT_NAME, PREVIOUS_NAME, load_checkpoint, save_checkpoint

KEY = {"stage": "abc123", "processes": 1}


def state(step: int, key: dict | None = None, **extra) -> dict:
    return {"key": dict(key or KEY), "step": step, "model": {"w": torch.full((2,), float(step))}, **extra}


def load(folder: Path, key: dict | None = None) -> tuple[dict | None, list[str]]:
    messages: list[str] = []
    return load_checkpoint(folder, key or KEY, messages.append), messages


def aside(folder: Path, name: str, why: str) -> list[Path]:
    return sorted(folder.glob(f"{name}.{why}-*"))


def test_save_twice_keeps_last_and_previous(tmp_path):
    tmp_path = tmp_path / "checkpoints"
    save_checkpoint(tmp_path, state(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]
    save_checkpoint(tmp_path, state(2))
    save_checkpoint(tmp_path, state(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME, PREVIOUS_NAME]  # no temp file left
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)["step"] == 3
    assert torch.load(tmp_path / PREVIOUS_NAME, weights_only=False)["step"] == 2
    loaded, messages = load(tmp_path)
    assert loaded["step"] == 3 and messages == []


def test_damaged_last_resumes_from_previous_and_is_kept_aside(tmp_path):
    save_checkpoint(tmp_path, state(1))
    save_checkpoint(tmp_path, state(2))
    damaged = (tmp_path / CHECKPOINT_NAME).read_bytes()[:300]
    (tmp_path / CHECKPOINT_NAME).write_bytes(damaged)
    loaded, messages = load(tmp_path)
    assert loaded["step"] == 1 and torch.equal(loaded["model"]["w"], torch.ones(2))
    [moved] = aside(tmp_path, CHECKPOINT_NAME, "damaged")
    assert moved.read_bytes() == damaged and not (tmp_path / CHECKPOINT_NAME).exists()
    assert any(str(moved) in m and "damaged" in m for m in messages)
    assert any("previous checkpoint" in m for m in messages)
    save_checkpoint(tmp_path, state(2))  # training goes on: the damaged file stays where it was put
    assert moved.read_bytes() == damaged
    assert torch.load(tmp_path / PREVIOUS_NAME, weights_only=False)["step"] == 1


def test_both_damaged_gives_none_and_keeps_both(tmp_path):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    (tmp_path / PREVIOUS_NAME).write_bytes(b"PK\x03\x04 half a zip")
    loaded, messages = load(tmp_path)
    assert loaded is None
    [last] = aside(tmp_path, CHECKPOINT_NAME, "damaged")
    [previous] = aside(tmp_path, PREVIOUS_NAME, "damaged")
    assert last.read_bytes() == b"not a checkpoint" and previous.read_bytes() == b"PK\x03\x04 half a zip"
    assert any("training from the start" in m for m in messages)
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"damaged again")  # a second fault in the same second: a new name
    assert load(tmp_path)[0] is None
    assert len(aside(tmp_path, CHECKPOINT_NAME, "damaged")) == 2 and last.read_bytes() == b"not a checkpoint"


def test_foreign_checkpoint_is_moved_aside_and_the_next_tried(tmp_path):
    save_checkpoint(tmp_path, state(1))
    save_checkpoint(tmp_path, state(5, key={"stage": "other params", "processes": 1}))
    loaded, messages = load(tmp_path)
    assert loaded["step"] == 1
    [moved] = aside(tmp_path, CHECKPOINT_NAME, "foreign")
    assert torch.load(moved, weights_only=False)["step"] == 5
    assert any("other params or data" in m and str(moved) in m for m in messages)

    only_foreign = tmp_path / "b"
    save_checkpoint(only_foreign, state(3, key={"stage": "other data", "processes": 1}))
    assert load(only_foreign)[0] is None and len(aside(only_foreign, CHECKPOINT_NAME, "foreign")) == 1


def test_finished_run_resumes_under_another_number_of_processes_only(tmp_path):
    two = {**KEY, "processes": 2}
    save_checkpoint(tmp_path, state(4, key=two, finished=True, result={"steps": 4}))
    loaded, _ = load(tmp_path)
    assert loaded["step"] == 4 and loaded["result"] == {"steps": 4}  # a finished run: its recorded result

    unfinished = tmp_path / "unfinished"
    save_checkpoint(unfinished, state(2, key=two))
    assert load(unfinished)[0] is None and aside(unfinished, CHECKPOINT_NAME, "foreign")


def test_no_checkpoint_is_quiet(tmp_path):
    assert load(tmp_path / "none") == (None, [])
