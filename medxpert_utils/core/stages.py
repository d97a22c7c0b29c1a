"""The stage registry: the one place that declares the notebook chain.

Each :class:`Stage` names its notebook, the stages it needs, the params it reads (dotted keys or prefixes), the
params it reads that cannot change its results (``volatile``: workers, inference batch sizes, time caps,
checkpoint cadence), the artefacts it writes under the run folder and the package function that does its work.
The chain and its scheduler, ``medxpert status``, the dashboard's readiness check, the ``require`` hints, sweeps
and the CLI all read this table; :mod:`medxpert_utils.core.keys` turns it into content-addressed keys.

``version`` is bumped when a stage's code changes its results (a rerun then redoes that stage and, through the
keys, everything downstream). ``run`` is a ``"module:function"`` reference, imported only when called, so this
module stays at the bottom of the package's layers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medxpert_utils.core.errors import RunNotReadyError, UserError
from medxpert_utils.core.paths import PROJECT_ROOT

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"

# Params that describe the run or steer the chain, read by no stage's computation.
GLOBAL_PARAMS: tuple[str, ...] = ("profile", "description", "stages", "parallel_notebooks")


@dataclass(frozen=True)
class Stage:
    """One step of the chain (see the module docstring)."""

    number: str
    slug: str
    title: str
    needs: tuple[str, ...]
    params: tuple[str, ...]
    volatile: tuple[str, ...]
    artefacts: tuple[str, ...]
    run_ref: str
    version: str
    optional_artefacts: tuple[str, ...] = ()
    # The data stage: its inputs are the images its manifest lists (by content), its output the manifest's
    # content hash (``output_hash``, a "module:function" of the file's path; default: the file's bytes) - the
    # manifest's, which takes image paths relative to their shared folder, so a dataset cached elsewhere keeps
    # its keys. Every other stage's output is its key.
    output_file: str | None = None
    output_hash: str | None = None
    source_files: str | None = None  # "module:function" of cfg: files listing the source's rows, by content
    reads_images: bool = False
    # Environment variables whose presence (never their value) changes the stage's results: an API key makes
    # report.generator "auto" write with Gemini instead of the offline reporter.
    presence_env: tuple[str, ...] = ()
    notebooks_dir: Path = NOTEBOOKS_DIR

    @property
    def name(self) -> str:
        """The notebook's file stem, e.g. ``01_clip_finetune`` (also the stage's key in ``run.json``)."""
        return f"{self.number}_{self.slug}"

    @property
    def notebook(self) -> Path:
        return self.notebooks_dir / f"{self.name}.ipynb"

    def run(self, cfg: object) -> object:
        """Import and call the stage's package function with ``cfg`` (what its notebook does)."""
        return resolve(self.run_ref)(cfg)


# Set (to "1") in the environment of a stage the chain was told to redo regardless (--force): the stage then reuses
# none of its own caches (a finished training checkpoint, a finished BLIP fine-tuning, saved embeddings).
FORCE_ENV = "MEDXPERT_FORCE"


def forced() -> bool:
    """True inside a stage that ``--force`` redoes: reuse nothing, compute everything again."""
    import os

    return os.environ.get(FORCE_ENV) == "1"


def resolve(ref: str) -> Callable[..., object]:
    module, _, attr = ref.partition(":")
    function: Callable[..., object] = getattr(importlib.import_module(module), attr)
    return function


STAGES: tuple[Stage, ...] = (
    Stage(
        "00", "data_prep", "Data preparation", needs=(),
        params=("data", "seed"),
        volatile=("data.download",),
        artefacts=("data/manifest.parquet",),
        optional_artefacts=("figures/label_prevalence.png", "figures/report_lengths.png", "figures/sample_grid.png"),
        run_ref="medxpert_utils.data.stage:run", version="data-v2",
        output_file="data/manifest.parquet", output_hash="medxpert_utils.data.manifest:file_content_hash",
        reads_images=True, source_files="medxpert_utils.data.sources:source_files",
    ),
    Stage(
        "01", "clip_finetune", "Contrastive CLIP fine-tuning", needs=("00",),
        params=("clip", "train", "seed", "device"),
        volatile=("device", "train.num_workers", "train.image_cache_mb", "train.checkpoint_every_steps",
                  "train.resume", "train.max_minutes"),
        artefacts=("models/clip", "metrics/train.json"),
        optional_artefacts=("figures/training_curves.png",),
        run_ref="medxpert_utils.training.stage:run", version="clip-train-v1",
    ),
    Stage(
        "02", "embed_index", "Embed and index", needs=("00", "01"),
        params=("clip", "embed", "index", "query_check", "train.mixed_precision", "device"),
        volatile=("device", "embed.batch_size", "embed.num_workers"),
        artefacts=("embeddings/zero_shot", "embeddings/fine_tuned", "index/zero_shot", "index/fine_tuned"),
        run_ref="medxpert_utils.retrieval.embedding:run_stage", version="embed-v2",
    ),
    Stage(
        "03", "retrieval_eval", "Retrieval evaluation", needs=("02",),
        params=("eval", "embed.eval_split", "query_check", "seed", "device"),
        volatile=("device", "eval.chexbert"),
        artefacts=("metrics/retrieval.json", "metrics/retrieval_table.csv", "metrics/classification.json"),
        optional_artefacts=("metrics/grounding.json",),
        run_ref="medxpert_utils.retrieval.evaluation:run_stage", version="eval-v1",
    ),
    Stage(
        "04", "blip_captions", "BLIP captions", needs=("00",),
        params=("captions", "eval.chexbert", "seed", "device"),
        volatile=("device", "captions.max_minutes"),
        artefacts=("captions.parquet", "metrics/captions.json"),
        optional_artefacts=("models/blip",),
        run_ref="medxpert_utils.captions.stage:run", version="captions-v1",
    ),
    Stage(
        "05", "diagnosis_reports", "Diagnosis reports", needs=("02", "04"),
        params=("report", "llm", "eval.chexbert", "seed", "device"),
        volatile=("device", "llm.base_url", "llm.timeout_s", "llm.max_retries", "llm.backoff_s", "llm.cache"),
        artefacts=("reports/reports.jsonl", "metrics/reports.json"),
        run_ref="medxpert_utils.assistant.batch:run_stage", version="reports-v1",
        presence_env=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    ),
    Stage(
        "06", "dashboard", "Dashboard", needs=("03", "05"),
        params=("dashboard", "asr"),
        volatile=("dashboard.pool", "dashboard.max_sessions", "dashboard.idle_timeout_s",
                  "dashboard.open_idle_timeout_s", "dashboard.refill_delay_s"),
        artefacts=(),
        optional_artefacts=("models/whisper_base",),  # asr.model: random:<hub id> (the rehearsal) builds it here
        run_ref="medxpert_utils.app.dashboard:run_stage", version="dashboard-v1",
    ),
)



Registry = Sequence[Stage]


def get(stage: str | Stage, registry: Registry = STAGES) -> Stage:
    """A stage by number (``"1"``, ``"01"``), notebook stem (``"01_clip_finetune"``) or itself."""
    if isinstance(stage, Stage):
        return stage
    text = str(stage).strip()
    number = text.zfill(2) if text.isdigit() else text[:2]
    for s in registry:
        if text == s.name or number == s.number:
            return s
    raise UserError(f"no stage '{stage}' - choose one of {', '.join(s.number for s in registry)}")


def numbers(registry: Registry = STAGES) -> list[str]:
    return [s.number for s in registry]


def downstream(stage: str | Stage, registry: Registry = STAGES) -> list[Stage]:
    """Every stage that reads ``stage``'s artefacts, directly or through others, in chain order."""
    first = get(stage, registry).number
    found = {first}
    for s in registry:  # a registry lists stages after the ones they need
        if any(n in found for n in s.needs):
            found.add(s.number)
    return [s for s in registry if s.number in found and s.number != first]


def upstream(stage: str | Stage, registry: Registry = STAGES) -> list[Stage]:
    """Every stage ``stage`` reads from, directly or through others, in chain order."""
    by_number = {s.number: s for s in registry}
    todo, found = list(get(stage, registry).needs), set()
    while todo:
        number = todo.pop()
        if number not in found:
            found.add(number)
            todo.extend(by_number[number].needs)
    return [s for s in registry if s.number in found]


def waits_for(selected: Iterable[str | Stage], registry: Registry = STAGES) -> dict[str, set[str]]:
    """For each selected stage, the selected stages it must wait for: its needs, closed over the chain (a stage
    that needs an unselected one waits for what that one needed, as far as it was selected)."""
    by_number = {s.number: s for s in registry}
    chosen = [get(s, registry).number for s in selected]
    chosen_set = set(chosen)
    out: dict[str, set[str]] = {}
    for number in chosen:
        found: set[str] = set()
        todo = list(by_number[number].needs)
        while todo:
            need = todo.pop()
            if need in chosen_set:
                found.add(need)
            else:
                todo.extend(by_number[need].needs)
        out[number] = found
    return out


def select(start: str | None = None, only: Sequence[str] | str | None = None, until: str | None = None,
           allowed: Sequence[str] | None = None, registry: Registry = STAGES) -> list[Stage]:
    """Stages from ``start`` to ``until`` (inclusive), or exactly ``only``; ``allowed`` comes from params."""
    known = numbers(registry)

    def norm(value: str, flag: str) -> str:
        value = str(value).zfill(2)
        if value not in known:
            raise UserError(f"{flag} {value}: no such stage - choose one of {', '.join(known)}")
        return value

    chosen = list(registry)
    if only:
        wanted = {norm(o, "--only") for o in ([only] if isinstance(only, str) else only)}
        chosen = [s for s in chosen if s.number in wanted]
    else:
        if start:
            first = norm(start, "--from")
            chosen = [s for s in chosen if s.number >= first]
        if until:
            last = norm(until, "--until")
            chosen = [s for s in chosen if s.number <= last]
    if allowed:
        keep = {str(a).zfill(2) for a in allowed}
        chosen = [s for s in chosen if s.number in keep]
    return chosen


def rerun_command(stage: str | Stage, run: str | None = None, force: bool = False) -> str:
    """The command that (re)makes ``stage`` in ``run``: ``./run_all.sh --run R --until NN`` or ``--force NN``."""
    s = get(stage)
    where = f" --run {run}" if run else ""
    return f"./run_all.sh{where} --force {s.number}" if force else f"./run_all.sh{where} --until {s.number}"


def hint(stage: str | Stage, run: str | None = None, force: bool = False) -> str:
    """``run 02_embed_index first (./run_all.sh --run R --until 02)``: what error messages append."""
    s = get(stage)
    verb = "rerun" if force else "run"
    return f"{verb} {s.name}{'' if force else ' first'} ({rerun_command(s, run, force)})"


def producer(artefact: str | Path, run_dir: Path | None = None) -> Stage:
    """The stage that writes ``artefact`` (a path under the run folder, or relative to it)."""
    path = Path(artefact)
    if run_dir is not None and path.is_absolute():
        try:
            path = path.relative_to(run_dir)
        except ValueError:
            pass
    text = path.as_posix()
    best: tuple[int, Stage] | None = None
    for s in STAGES:
        for declared in (*s.artefacts, *s.optional_artefacts):
            # the artefact itself, a file inside it, or a folder that holds it (embeddings/ holds embeddings/<model>)
            if text == declared or text.startswith(declared + "/") or declared.startswith(text + "/"):
                if best is None or len(declared) > best[0]:
                    best = (len(declared), s)
    if best is None:
        raise KeyError(f"no stage declares {text}")
    return best[1]


def missing(what: str, stage: str | Stage, run: str | None = None) -> RunNotReadyError:
    """The one-line error for something ``stage`` makes that is not there yet."""
    return RunNotReadyError(f"{what} - {hint(stage, run)}")


def require(run_dir: str | Path, stage: str | Stage, artefacts: Iterable[str] | None = None) -> None:
    """Fail with one line (naming the stage to run) when ``stage``'s artefacts are missing from ``run_dir``.

    ``artefacts`` (paths relative to the run folder) narrows the check; default: every required artefact.
    """
    s = get(stage)
    run_dir = Path(run_dir)
    for relative in (artefacts if artefacts is not None else s.artefacts):
        if not (run_dir / relative).exists():
            raise missing(f"{run_dir / relative} is missing", s, run_dir.name)
