"""Content-addressed stage keys and the run's status (``medxpert status``), computed from the registry.

A stage's key is :func:`digest` of three things: the values of the params it declares (volatile ones left out),
what it reads (its upstream stages' outputs) and its ``version``. An upstream output is the stage's key, except for
the data stage, whose output is the content hash of the manifest it wrote; the manifest holds each image's content
hash, so pixels enter every key downstream of it. The data stage's own inputs are the images its manifest lists,
re-hashed only where a file's size or modification time changed (:mod:`medxpert_utils.core.hashing`), and, for the
``csv`` source, the CSV file.

A stage is *fresh* when the key recorded in ``run.json`` when it last succeeded equals its current key and its
artefacts are there; *stale* when the keys differ (the reasons say which param changed from what to what, which
input changed, or that the code's version moved); *missing* when it never succeeded or an artefact is gone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

from pydantic import BaseModel

from medxpert_utils.core import hashing, runs
from medxpert_utils.core.config import Config, Params
from medxpert_utils.core.stages import GLOBAL_PARAMS, STAGES, Registry, Stage, get, resolve, upstream

JSONValue = Union[str, int, float, bool, None, list["JSONValue"], dict[str, "JSONValue"]]  # noqa: UP007 (recursive)
State = Literal["fresh", "stale", "missing"]
KEY_LENGTH = 16
MANIFEST = "data/manifest.parquet"  # where the data stage's images are listed


# --- params ---------------------------------------------------------------------------------------------------

def _section(annotation: object) -> type[BaseModel] | None:
    """The params section class a field holds, if it is one (sections nest; everything else is a value)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def param_fields(model: type[BaseModel] = Params, prefix: str = "") -> list[str]:
    """Every leaf param of the schema as a dotted key (``train.label_aware.label_weight``)."""
    out: list[str] = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        child = _section(info.annotation)
        out.extend(param_fields(child, dotted + ".") if child is not None else [dotted])
    return out


def flatten(params: Mapping[str, JSONValue], model: type[BaseModel] = Params, prefix: str = "") -> dict[str, JSONValue]:
    """Resolved params (``Config.to_dict()``) as ``{dotted leaf: value}``, following the schema's sections."""
    out: dict[str, JSONValue] = {}
    for name, info in model.model_fields.items():
        value = params.get(name)
        child = _section(info.annotation)
        if child is not None and isinstance(value, dict):
            out.update(flatten(value, child, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def _matches(dotted: str, patterns: Iterable[str]) -> bool:
    return any(dotted == p or dotted.startswith(p + ".") for p in patterns)


def declared_values(stage: Stage, flat: Mapping[str, JSONValue],
                    without: Sequence[str] = ()) -> dict[str, JSONValue]:
    """The values of the params ``stage`` declares, volatile ones (and ``without``) left out."""
    s = stage
    skip = (*s.volatile, *without)
    return {k: v for k, v in sorted(flat.items()) if _matches(k, s.params) and not _matches(k, skip)}


def undeclared(fields: Iterable[str] | None = None, registry: Registry = STAGES) -> list[str]:
    """Params no stage declares (as a param or as volatile) and that are not global: each is a registry bug."""
    return [f for f in (fields if fields is not None else param_fields())
            if not _matches(f, GLOBAL_PARAMS) and not any(_matches(f, (*s.params, *s.volatile)) for s in registry)]


# --- the key --------------------------------------------------------------------------------------------------

def digest(version: str, values: Mapping[str, JSONValue], inputs: Mapping[str, JSONValue]) -> str:
    """The one key function: sha256 over a version string, param values and input keys or content hashes."""
    blob = json.dumps({"version": version, "params": dict(values), "inputs": dict(inputs)}, sort_keys=True,
                      default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]


@dataclass
class StageStatus:
    """Where one stage stands: its state, current key (None while an input is still to be remade) and why."""

    stage: Stage
    state: State
    key: str | None
    recorded_key: str | None
    reasons: list[str]
    values: dict[str, JSONValue] = field(default_factory=dict)
    inputs: dict[str, JSONValue] = field(default_factory=dict)
    output: str | None = None

    @property
    def name(self) -> str:
        return self.stage.name

    def to_json(self) -> dict[str, JSONValue]:
        return {"name": self.name, "state": self.state, "key": self.key, "recorded_key": self.recorded_key,
                "reasons": list(self.reasons)}


@dataclass
class RunStatus:
    run: str
    run_dir: Path
    stages: list[StageStatus]

    def __getitem__(self, stage: str) -> StageStatus:
        wanted = str(stage)[:2].zfill(2)
        return next(s for s in self.stages if s.stage.number == wanted or s.name == stage)

    @property
    def fresh(self) -> bool:
        return all(s.state == "fresh" for s in self.stages)

    def to_json(self) -> dict[str, JSONValue]:
        return {"run": self.run, "run_dir": str(self.run_dir), "fresh": self.fresh,
                "stages": [s.to_json() for s in self.stages]}


# --- inputs of the data stage ---------------------------------------------------------------------------------

@dataclass
class ImageScan:
    """The data stage's images as they are on disk: a fingerprint of their content hashes, the ones that differ
    from the manifest's ``image_sha256``, and how many there are."""

    fingerprint: str | None
    changed: list[str]
    total: int


def scan_images(run_dir: Path) -> ImageScan:
    """The images the run's manifest lists, hashed as they are on disk now (cached by size and mtime): the data
    stage's inputs. The chain scans once and passes the scan to each :func:`evaluate` (``scan``) until the data
    stage reruns; over hundreds of thousands of images even a cached scan takes seconds."""
    path = run_dir / MANIFEST
    if not path.is_file():
        return ImageScan(None, [], 0)
    import pandas as pd

    try:
        frame = pd.read_parquet(path, columns=["image_path", "image_sha256"])
    except (OSError, ValueError, KeyError):  # a manifest from before content hashes, or a damaged one
        return ImageScan(None, [], 0)
    paths = frame["image_path"].astype(str).tolist()
    recorded = frame["image_sha256"].astype(str).tolist()
    current = hashing.current_sha256(paths)
    changed = [p for p, was, now in zip(paths, recorded, current) if (now or "") != was]
    digest_ = hashlib.sha256()
    for p, now in zip(paths, current):
        digest_.update(f"{os.path.basename(p)}\x1f{now}\x1e".encode())
    return ImageScan(digest_.hexdigest()[:KEY_LENGTH], changed, len(paths))


def _source_inputs(cfg: Config, stage: Stage) -> dict[str, JSONValue]:
    """The content of the files that list the data source's rows (``stage.source_files``), e.g. the CSV."""
    if stage.source_files is None:
        return {}
    found = resolve(stage.source_files)(cfg)
    paths = [Path(str(p)) for p in found] if isinstance(found, (list, tuple)) else []
    if not paths:
        return {}
    return {"source files": [hashing.sha256_file(p) if p.is_file() else None for p in paths]}


def _env_inputs(stage: Stage) -> dict[str, JSONValue]:
    """Whether any of ``stage.presence_env`` is set (a bool: a secret's value never enters a key or run.json)."""
    if not stage.presence_env:
        return {}
    return {f"{'/'.join(stage.presence_env)} set": any(os.environ.get(v, "").strip() for v in stage.presence_env)}


# --- status ---------------------------------------------------------------------------------------------------

def _show(value: JSONValue) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _diff(old: Mapping[str, JSONValue], new: Mapping[str, JSONValue]) -> list[str]:
    reasons = []
    for k in sorted(set(old) | set(new)):
        if k not in old:
            reasons.append(f"{k}: (not recorded) -> {_show(new[k])}")
        elif k not in new:
            reasons.append(f"{k}: {_show(old[k])} -> (no longer read)")
        elif old[k] != new[k]:
            reasons.append(f"{k}: {_show(old[k])} -> {_show(new[k])}")
    return reasons


def _input_reasons(old: Mapping[str, JSONValue], new: Mapping[str, JSONValue], images: ImageScan,
                   names: Mapping[str, str]) -> list[str]:
    reasons = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) == new.get(k):
            continue
        if k == "images" and images.changed:
            example = images.changed[0]
            reasons.append(f"images changed on disk: {len(images.changed)} of {images.total} (e.g. {example})")
        elif k in names:
            reasons.append(f"input {names[k]} changed")
        elif k.endswith(" set"):
            reasons.append(f"{k}: {_show(old.get(k))} -> {_show(new.get(k))}")
        else:
            reasons.append(f"input {k} changed")
    return reasons


def evaluate(cfg: Config, recorded: Mapping[str, JSONValue] | None = None, registry: Registry = STAGES,
             flat: Mapping[str, JSONValue] | None = None, deep: bool = True,
             scan: ImageScan | None = None) -> RunStatus:
    """Every stage's state for ``cfg`` (its params, its run folder), reading ``run.json`` and the artefacts.

    Runs nothing. A stage whose input is still to be remade (the data stage, when stale) is stale or missing with
    that reason and no key. ``recorded`` stands for run.json's content and ``flat`` for the params as
    :func:`flatten` gives them (both default to the run's). ``deep=False`` trusts what was recorded about the
    data stage's files (its images and the manifest it wrote) instead of re-checking them: a glance that costs no
    file reads, for the dashboard's run picker.
    """
    run_dir = cfg.run_dir
    info = runs.read(run_dir) if recorded is None else dict(recorded)
    records = _mapping(info.get("stages"))
    flat = flatten(cfg.to_dict()) if flat is None else flat
    outputs: dict[str, str | None] = {}
    images = ImageScan(None, [], 0)
    out: list[StageStatus] = []
    names = {s.number: s.name for s in registry}
    for stage in registry:
        record = _mapping(records.get(stage.name))
        recorded_key = str(record["key"]) if record.get("key") else None
        ok = record.get("status") == "ok" and recorded_key is not None
        values = declared_values(stage, flat)
        pending = [n for n in stage.needs if outputs.get(n) is None]
        inputs: dict[str, JSONValue] = {n: outputs.get(n) for n in stage.needs}
        if stage.reads_images:
            if deep:
                images = scan if scan is not None else scan_images(run_dir)
                inputs.update({"images": images.fingerprint, **_source_inputs(cfg, stage)})
            else:
                recorded_inputs = _mapping(record.get("inputs"))
                inputs.update({k: v for k, v in recorded_inputs.items() if k not in stage.needs and k not in names})
        inputs.update(_env_inputs(stage))
        absent = [a for a in stage.artefacts if not (run_dir / a).exists()]
        if pending:
            waiting = ", ".join(names[n] for n in pending)
            own = _diff(_mapping(record.get("params")), values) if ok else []
            status = StageStatus(stage, "stale" if ok else "missing", None, recorded_key,
                                 [*own, f"waits for {waiting} to be remade"], values, inputs)
        else:
            key = digest(stage.version, values, inputs)
            if not ok:
                why = ["never finished in this run" if not record else f"last attempt {record.get('status')}"]
                if record.get("status") == "ok":
                    why = ["no stage key recorded (made before stage keys)"]
                status = StageStatus(stage, "missing", key, recorded_key, why, values, inputs)
            elif absent:
                status = StageStatus(stage, "missing", key, recorded_key,
                                     [f"artefact missing: {a}" for a in absent], values, inputs)
            elif recorded_key != key:
                reasons = _diff(_mapping(record.get("params")), values)
                reasons += _input_reasons(_mapping(record.get("inputs")), inputs, images, names)
                if record.get("version") != stage.version:
                    reasons.append(f"code version {record.get('version')} -> {stage.version}")
                status = StageStatus(stage, "stale", key, recorded_key, reasons or ["key changed"],
                                     values, inputs)
            else:
                status = StageStatus(stage, "fresh", key, key, [], values, inputs)
        status.output = _output(stage, status, run_dir) if deep or stage.output_file is None else (
            str(record["output"]) if status.state == "fresh" and record.get("output") else None)
        outputs[stage.number] = status.output
        out.append(status)
    return RunStatus(cfg.run_name, run_dir, out)


def _mapping(value: object) -> dict[str, JSONValue]:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def _output(stage: Stage, status: StageStatus, run_dir: Path) -> str | None:
    """What downstream keys take from ``stage``: the content hash of its ``output_file`` (the data stage's
    manifest; known only while the stage is fresh), else the stage's key."""
    if stage.output_file is None:
        return status.key
    return _output_file_hash(stage, run_dir) if status.state == "fresh" else None


def _output_file_hash(stage: Stage, run_dir: Path) -> str | None:
    """The content hash of ``stage.output_file`` in ``run_dir`` (None while it is not there)."""
    assert stage.output_file is not None
    path = run_dir / stage.output_file
    if not path.is_file():
        return None
    if stage.output_hash is None:
        return hashing.sha256_file(path)[:KEY_LENGTH]
    return str(resolve(stage.output_hash)(path))[:KEY_LENGTH]


def stage_key(cfg: Config, stage: str | Stage, without: Sequence[str] = (), registry: Registry = STAGES) -> str:
    """The key of ``stage`` from what is on disk now, whatever ``run.json`` recorded: what a stage's own resumable
    sub-steps check (a training checkpoint, the embedding cache), so that a notebook run by hand gets the same key
    as the chain. ``without`` leaves params out: e.g. the training without the loss comparison notebook 01 adds.
    """
    target = get(stage, registry)
    flat = flatten(cfg.to_dict())
    outputs: dict[str, JSONValue] = {}
    for s in (*upstream(target, registry), target):
        inputs: dict[str, JSONValue] = {n: outputs.get(n) for n in s.needs}
        if s.reads_images and s is target:
            inputs.update({"images": scan_images(cfg.run_dir).fingerprint, **_source_inputs(cfg, s)})
        inputs.update(_env_inputs(s))
        if s is target:
            return digest(s.version, declared_values(s, flat, without), inputs)
        if s.output_file is not None:
            outputs[s.number] = _output_file_hash(s, cfg.run_dir)
        else:
            outputs[s.number] = digest(s.version, declared_values(s, flat), inputs)
    raise AssertionError("unreachable")


def record_success(cfg: Config, stage: str | Stage, registry: Registry = STAGES, scan: ImageScan | None = None,
                   **fields: JSONValue) -> StageStatus:
    """After ``stage`` succeeded: write its key, param values, inputs, version and output to ``run.json``; returns
    the stage's status as recorded (``scan``: the images as the data stage left them, see :func:`scan_images`)."""
    s = get(stage, registry)
    status = evaluate(cfg, registry=registry, scan=scan)[s.number]
    if status.key is None:  # run alone (--only) while an input it reads is still to be remade: no key to record
        runs.record_stage(cfg.run_dir, s.name, status="ok", error=None, key=None, **fields)
        return status
    output = status.key if s.output_file is None else _output_file_hash(s, cfg.run_dir)
    runs.record_stage(cfg.run_dir, s.name, status="ok", error=None, key=status.key, params=status.values,
                      inputs=status.inputs, version=s.version, output=output, **fields)
    return dataclasses.replace(status, state="fresh", recorded_key=status.key, reasons=[], output=output)


def format_status(status: RunStatus) -> str:
    """``medxpert status`` as text: one line per stage, its reasons indented below it."""
    marks = {"fresh": "fresh  ", "stale": "stale  ", "missing": "missing"}  # one width
    lines = [f"run '{status.run}' ({status.run_dir})"]
    for s in status.stages:
        key = f"  key {s.key}" if s.key else ""
        lines.append(f"  {marks[s.state]}  {s.name}{key}")
        lines.extend(f"             - {reason}" for reason in s.reasons)
    todo = [s.stage.number for s in status.stages if s.state != "fresh"]
    lines.append("every stage is up to date" if not todo else f"a rerun redoes {', '.join(todo)}")
    return "\n".join(lines)


def run_state(run_dir: Path, deep: bool = True) -> Literal["fresh", "stale", "unknown"]:
    """``fresh`` when every stage of a run is up to date for the params it recorded and the data on disk, else
    ``stale`` (``unknown`` when its run.json cannot be read): the dashboard's run picker marks stale runs."""
    from medxpert_utils.core.config import from_run
    from medxpert_utils.core.errors import UserError

    try:
        status = evaluate(from_run(run_dir), deep=deep)
    except (UserError, OSError, ValueError, KeyError):
        return "unknown"
    return "fresh" if status.fresh else "stale"
