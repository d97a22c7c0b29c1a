"""What the dashboard takes in: which run to show (argument, URL, environment or the newest), whether it
is ready, uploaded files (size-checked, decoded once into a query image) and whether a Gemini key is set."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from medxpert_utils.assistant import QueryImage
from medxpert_utils.core import keys, runs, stages
from medxpert_utils.core.errors import UserError
from medxpert_utils.core.paths import outputs_dir, resolve_run_dir

KEY_ENV = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def pick_run(run: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The run to show: ``run`` (papermill's RUN), else ``?run=NAME`` in the page URL, else
    ``MEDXPERT_RUN``, else the newest finished run under ``outputs/`` (None when there is none).

    Voilà hands the URL's query string to the page's kernel as the ``QUERY_STRING`` environment
    variable. A name from the URL must be a plain run name under ``outputs/`` (no paths), since
    anyone who can open the page can type it.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    if run:
        return resolve_run_dir(run)
    name = parse_qs(env.get("QUERY_STRING", "")).get("run", [""])[0].strip()
    if name:
        if not _RUN_NAME.fullmatch(name):
            raise UserError(f"?run={name!r} is not a run name - use the name of a folder under outputs/, "
                            "e.g. ?run=demo")
        return outputs_dir() / name
    if env.get("MEDXPERT_RUN", "").strip():
        return resolve_run_dir(env["MEDXPERT_RUN"].strip())
    finished = [r for r in runs.list_runs() if r["finished"]]
    return Path(finished[0]["path"]) if finished else None


def display_run(run_dir: Path) -> str:
    """``outputs/<name>`` for runs under the outputs folder, else the path."""
    try:
        return f"outputs/{Path(run_dir).resolve().relative_to(outputs_dir())}"
    except ValueError:
        return str(run_dir)


def run_problem(run_dir: Path | None, model: str = "fine_tuned") -> str | None:
    """One line saying what to run first when ``run_dir`` cannot feed the dashboard, else None."""
    if run_dir is None:
        return f"No finished run under {outputs_dir()}: run ./run_all.sh first (or pick a run above)."
    run_dir = Path(run_dir)
    shown = display_run(run_dir)
    if not (run_dir / "run.json").is_file():
        return f"Run ./run_all.sh first: {shown} is missing (no run.json)."
    recorded = runs.read(run_dir).get("stages", {})
    # What the page reads (captions are optional: the page says when absent); the registry says who writes it.
    for relative in ("data/manifest.parquet", f"index/{model}", f"embeddings/{model}"):
        stage = stages.producer(relative)
        status = recorded.get(stage.name, {}).get("status")
        if not (run_dir / relative).exists() or status not in (None, "ok"):
            note = f" ({stage.name} {status})" if status not in (None, "ok") else ""
            return f"{shown} is missing {relative}{note}: {stages.hint(stage, run_dir.name)}."
    return None


def run_options(selected: Path | None) -> list[tuple[str, str]]:
    """Dropdown options (label, run folder) for the runs under ``outputs/``, plus ``selected``; a run whose
    stages are not all up to date for its own params and code (:func:`keys.run_state`, a glance that reads no
    image: ``medxpert status`` also re-checks the images' content) is marked stale."""
    options = []
    for row in runs.list_runs():
        state = "finished" if row["finished"] else "unfinished"
        if row["finished"] and keys.run_state(Path(row["path"]), deep=False) != "fresh":
            state = "finished, stale"
        weights = ", random weights" if row.get("random_weights") else ""
        options.append((f"{row['run']} ({row['profile']}{weights}, {state})", str(Path(row["path"]).resolve())))
    if selected is not None and str(Path(selected).resolve()) not in {v for _, v in options}:
        options.insert(0, (display_run(selected), str(Path(selected).resolve())))
    return options


# --- uploads -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Upload:
    name: str
    content: bytes


def read_upload(value: Sequence[dict] | dict, max_mb: float) -> Upload | None:
    """The file in a ``FileUpload.value`` (None when empty); raises UserError when it is too large."""
    files = [value] if isinstance(value, dict) else list(value or ())
    if not files:
        return None
    item = files[-1]
    content = item.get("content", b"")
    content = content.tobytes() if isinstance(content, memoryview) else bytes(content)
    name = str(item.get("name") or "upload")
    if not content:
        raise UserError(f"{name} is empty - upload a chest X-ray (PNG, JPEG or DICOM)")
    if len(content) > max_mb * 1024 * 1024:
        raise UserError(f"{name} is {len(content) / 2**20:.1f} MB, more than the {max_mb:g} MB limit "
                        f"(params dashboard.max_upload_mb) - upload a smaller image")
    return Upload(name, content)


def query_image(upload: Upload, max_mb: float) -> QueryImage:
    """An upload as the query image, decoded once: grey pixels (DICOM windowed, pixel data only) and the facts
    the query check reads; ImageLoadError (one line) if unreadable."""
    return QueryImage.of(upload.content, name=upload.name, max_bytes=int(max_mb * 1024 * 1024))


def gemini_available(environ: Mapping[str, str] | None = None) -> bool:
    """True when a Gemini API key is set in the environment (the page then offers Gemini reports)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    return any(env.get(name, "").strip() for name in KEY_ENV)
