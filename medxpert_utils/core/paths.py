"""Where things live: the project root, run folders and the files inside a run.

Every path in the project comes from here, found from this file's location, so nothing
depends on the working directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def outputs_dir() -> Path:
    """Folder holding one sub-folder per run (``MEDXPERT_OUTPUTS`` overrides, e.g. in tests)."""
    return Path(os.environ.get("MEDXPERT_OUTPUTS", PROJECT_ROOT / "outputs")).resolve()


def data_dir() -> Path:
    """Shared dataset cache (``MEDXPERT_DATA`` overrides)."""
    return Path(os.environ.get("MEDXPERT_DATA", PROJECT_ROOT / "data")).resolve()


def resolve_run_dir(run: str | os.PathLike) -> Path:
    """A run name under ``outputs/`` or a path to a run folder -> absolute run folder.

    A value containing a path separator, or naming an existing folder, is a path;
    anything else is a name under :func:`outputs_dir`.
    """
    text = os.fspath(run)
    if not text.strip():
        raise ValueError("empty run name: pass a run name under outputs/ or a path to a run folder")
    candidate = Path(text).expanduser()
    if os.sep in text or "/" in text or text.startswith(".") or candidate.is_absolute():
        return candidate.resolve()
    return outputs_dir() / text


@dataclass(frozen=True)
class RunPaths:
    """The fixed layout of one run folder (docs/contracts.md, 'Run folder')."""

    root: Path

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def manifest(self) -> Path:
        return self.root / "data" / "manifest.parquet"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def clip_finetuned(self) -> Path:
        """``save_pretrained`` folder of the best fine-tuned CLIP checkpoint."""
        return self.root / "models" / "clip"

    @property
    def clip_base(self) -> Path:
        """Local copy of the zero-shot base model when it was built here (tiny profile)."""
        return self.root / "models" / "clip_base"

    @property
    def checkpoints(self) -> Path:
        """Resumable training state (model, optimizer, scheduler, RNG)."""
        return self.root / "checkpoints"

    @property
    def blip(self) -> Path:
        return self.root / "models" / "blip"

    @property
    def blip_base(self) -> Path:
        return self.root / "models" / "blip_base"

    @property
    def whisper_base(self) -> Path:
        """Whisper built here from a published configuration (``asr.model: random:<hub id>``)."""
        return self.root / "models" / "whisper_base"

    @property
    def captions(self) -> Path:
        return self.root / "captions.parquet"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def llm_cache(self) -> Path:
        return self.root / "cache" / "llm"

    def embeddings(self, model: str) -> Path:
        return self.root / "embeddings" / model

    def index(self, model: str) -> Path:
        return self.root / "index" / model

    def ensure(self) -> "RunPaths":
        for folder in (self.root, self.notebooks, self.data, self.figures, self.metrics, self.models):
            folder.mkdir(parents=True, exist_ok=True)
        return self
