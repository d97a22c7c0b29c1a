"""Loading and saving Hugging Face models the one way the project does it, for CLIP and BLIP alike.

:func:`load_pretrained` reads a model and its processor with ``from_pretrained`` from a hub id or
a ``save_pretrained`` folder and turns every way that can fail (missing folder, incomplete folder,
unknown or gated hub repository, no network and no cache) into a one-line
:class:`MissingModelError` saying what to do; random weights are never substituted.
:func:`save_pretrained` writes model and processor atomically; :func:`reuse_or_build` keeps an
offline tiny base model while what it was built from stays the same.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medxpert_utils.core import io, stages
from medxpert_utils.core.config import RANDOM_PREFIX
from medxpert_utils.core.errors import MissingModelError, UserError

TINY = "tiny"


@dataclass(frozen=True)
class ModelKind:
    """What the error messages of one model family say: its name, its params key and where it is made."""

    name: str  # "CLIP"
    param: str  # "clip.model"
    example: str  # a hub id to suggest
    builder: str  # the function that builds the tiny model and the folder it writes
    offline_tiny: str  # the offline alternative, e.g. "offline tiny CLIP"
    stage: str = ""  # the registry stage that builds or fine-tunes it, e.g. "01" (core.stages words the hints)
    notebook: str = ""  # where it comes from when no stage makes it, e.g. "a Whisper download (save_pretrained)"

    def source(self) -> str:
        """The stage (or other source) the model comes from, for messages: ``01_clip_finetune``."""
        return stages.get(self.stage).name if self.stage else self.notebook

    def remedy(self, folder: Path | None = None, rebuild: bool = False) -> str:
        """What to run to make the model: the registry's hint (with the run of ``<run>/models/<name>``), or
        "run <notebook>" for a model no stage makes."""
        if not self.stage:
            return f"{'rerun' if rebuild else 'run'} {self.notebook}"
        run = folder.parent.parent.name if folder is not None and folder.parent.name == "models" else None
        return stages.hint(self.stage, run, force=rebuild)


def looks_like_path(spec: str) -> bool:
    """A spec that can only mean a folder (absolute, ./relative, ~, or deeper than hub's org/name)."""
    return (Path(spec).is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1
            or (os.sep != "/" and os.sep in spec))


def hub_error_kind(exc: BaseException) -> str:
    """Classify a from_pretrained failure by walking the exception chain: 'gated', 'missing_repo' or 'offline'."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, GatedRepoError):
            return "gated"
        if isinstance(seen, RepositoryNotFoundError):
            return "missing_repo"
        seen = seen.__cause__ or seen.__context__
    return "offline"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-call weight loading/saving bars (notebooks show one bar per epoch instead)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_pretrained(spec: str | os.PathLike, model_cls: Any, processor_cls: Any, kind: ModelKind,
                    device: Any = None) -> tuple[Any, Any]:
    """``model_cls`` and ``processor_cls`` from ``spec`` (eval mode, float32, on ``device``)."""
    import torch

    from medxpert_utils.core import runtime

    text = os.fspath(spec).strip()
    if text == TINY or text.startswith(RANDOM_PREFIX):
        raise UserError(f"{kind.param} '{text}' is not a model to load: it is built from the training reports by "
                        f"{kind.builder} ({kind.source()}) - load that folder")
    path = Path(text).expanduser()
    local = path.is_dir()
    if not local and (path.exists() or looks_like_path(text)):
        raise MissingModelError(f"{kind.name} model folder not found: {text} - {kind.remedy(path)} to create it, "
                                f"or set {kind.param} to a Hugging Face hub id such as {kind.example}")
    source = str(path) if local else text
    try:
        with quiet_transformers():
            model = model_cls.from_pretrained(source, dtype=torch.float32)
            processor = processor_cls.from_pretrained(source)
    except OSError as exc:
        if local:
            raise MissingModelError(f"cannot load {kind.name} model from {source}: not a complete save_pretrained "
                                    f"folder ({str(exc).splitlines()[0][:160]}) - {kind.remedy(path, rebuild=True)} "
                                    f"or point {kind.param} at a saved {kind.name}") from None
        reason = hub_error_kind(exc)
        if reason == "missing_repo":
            raise MissingModelError(f"cannot load {kind.name} model '{text}': no such model on the Hugging Face hub "
                                    f"- check {kind.param} (e.g. {kind.example})") from None
        if reason == "gated":
            raise MissingModelError(f"cannot load {kind.name} model '{text}': the hub repository is gated - accept "
                                    f"its terms and log in with `hf auth login`, or set {kind.param} to a local "
                                    "folder") from None
        raise MissingModelError(f"cannot load {kind.name} model '{text}': no network and not in the Hugging Face "
                                "cache - download it once with network (or set HF_HOME to a cache that has it), set "
                                f"{kind.param} to a local folder, or use the demo profile "
                                f"({kind.offline_tiny})") from None
    dev = device if isinstance(device, torch.device) else runtime.get_device(device or "auto")
    model.to(dev).eval()
    return model, processor


def save_pretrained(model: Any, processor: Any, out_dir: str | os.PathLike) -> Path:
    """``save_pretrained`` model and processor into ``out_dir`` atomically (a reader never sees half a model)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with quiet_transformers():
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
        _replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _replace_dir(src: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.replace(target, old)
    os.replace(src, target)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def read_record(out: Path, record_path: Path) -> Any:
    """The JSON record kept beside the model saved in ``out`` (its key, what training it took), or None
    when the model or the record is missing or unreadable."""
    if not (out / "config.json").is_file() or not record_path.is_file():
        return None
    try:
        return io.read_json(record_path)
    except ValueError:
        return None


def reuse_or_build(out: Path, key_path: Path, key: dict[str, Any], build: Callable[[], Any]) -> str:
    """``out`` as it is when ``key_path`` records the same ``key``; else ``build()`` it and record the key."""
    if read_record(out, key_path) == key:
        return str(out)
    build()
    io.write_json(key_path, key)
    return str(out)
