"""Atomic writes: a reader never sees a half-written file (temp file in the same folder + rename)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` when the block succeeds.

    ``suffix`` keeps libraries that insist on an extension (``np.save`` adds ``.npy``) happy.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: str | os.PathLike, text: str) -> Path:
    return write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    return write_text(target, json.dumps(obj, indent=indent, sort_keys=False, default=json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_parquet(target: str | os.PathLike, frame) -> Path:
    with atomic_path(target, suffix=".parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(target)


def write_npy(target: str | os.PathLike, array) -> Path:
    import numpy as np

    with atomic_path(target, suffix=".npy") as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
    return Path(target)


def json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
