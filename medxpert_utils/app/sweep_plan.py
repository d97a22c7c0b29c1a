"""Parameter sweeps, the plan: a sweep file's schema, its combinations and their run names, validated
before anything runs (:mod:`medxpert_utils.app.sweep` runs them).

A sweep file (``params/sweeps/<name>.yaml``) names a base profile, overrides applied to every
run, and either a ``grid`` (cartesian product of dotted keys) or a ``list`` of override dicts.
Each combination runs into ``outputs/<sweep>/<sweep>__<combo>/`` so the sweep's
``sweep.json``, ``comparison.csv`` and executed ``07_compare_runs.ipynb`` sit beside its runs.
Every combination is validated before anything runs; a combination already finished with the
same resolved params is skipped, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medxpert_utils.core import keys
from medxpert_utils.core.config import Config, ConfigError, load
from medxpert_utils.core.errors import UserError
from medxpert_utils.core.paths import PROJECT_ROOT, outputs_dir
from medxpert_utils.core.stages import STAGES, Registry, select

MAX_NAME_CHARS = 100
COMPARE_NOTEBOOK = "07_compare_runs.ipynb"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_SEP = "__"


class SweepError(UserError, ValueError):
    """A sweep file is wrong; the message names the key or combination and the fix."""


class SweepSpec(BaseModel):
    """The validated contents of a sweep YAML."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = Field(None, description="Sweep name: folder under outputs/ and run-name prefix "
                                               "(default: file stem).")
    description: str = Field("", description="One line on what the sweep compares.")
    base: str = Field(..., description="Base params YAML (profile) every combination starts from.")
    overrides: dict[str, Any] = Field(default_factory=dict,
                                      description="Dotted overrides applied to every combination.")
    grid: dict[str, list[Any]] | None = Field(None, description="Cartesian product of dotted keys -> values.")
    list_: list[dict[str, Any]] | None = Field(None, alias="list",
                                               description="Explicit combinations (dotted overrides each).")
    until: str | None = Field(None, description="Default last notebook number of each run, e.g. '03'.")
    parallel: int = Field(1, ge=1, description="Runs at once (1: sequential).")

    @field_validator("until", mode="before")
    @classmethod
    def _until_text(cls, value: Any) -> Any:
        # YAML reads an unquoted 03 as the integer 3.
        return None if value is None else str(value).zfill(2)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or _UNSAFE.search(value)):
            raise ValueError("use letters, digits, '.', '_', '+' or '-' only (it names a folder)")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> "SweepSpec":
        if (self.grid is None) == (self.list_ is None):
            raise ValueError("give exactly one of 'grid' (cartesian product) or 'list' (explicit combinations)")
        if self.grid is not None:
            if not self.grid:
                raise ValueError("'grid' is empty - list at least one dotted key with its values")
            for key, values in self.grid.items():
                if not values:
                    raise ValueError(f"grid key '{key}' has no values")
                seen = [json.dumps(v, sort_keys=True, default=str) for v in values]
                if len(set(seen)) != len(seen):
                    raise ValueError(f"grid key '{key}' lists a value twice")
        if self.list_ is not None:
            if not self.list_:
                raise ValueError("'list' is empty - give at least one combination")
            seen = [json.dumps(c, sort_keys=True, default=str) for c in self.list_]
            for i, blob in enumerate(seen):
                if blob in seen[:i]:
                    raise ValueError(f"list entries {seen.index(blob) + 1} and {i + 1} are the same combination")
        return self


@dataclass(frozen=True)
class Combination:
    """One run of a sweep: its folder name and its own dotted overrides (the sweep's are added on top)."""

    name: str
    overrides: dict[str, Any]
    sweep: str = ""

    @property
    def run_dir(self) -> Path:
        return sweep_dir(self.sweep) / self.name


@dataclass
class Sweep:
    """A loaded sweep file: spec, resolved name and source path."""

    spec: SweepSpec
    name: str
    path: Path
    combinations: list[Combination] = field(default_factory=list)

    def overrides_for(self, combo: Combination) -> dict[str, Any]:
        """Sweep-wide overrides, then the combination's own (which win)."""
        return {**self.spec.overrides, **combo.overrides}


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-4`` (no dot) as a float, as people write learning rates."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def sweep_dir(name: str) -> Path:
    """Folder of a sweep under ``outputs/``."""
    return outputs_dir() / name


def resolve_sweep_path(path: str | os.PathLike) -> Path:
    """A sweep file as given, else relative to the project root, else a name under params/sweeps/."""
    candidate = Path(path).expanduser()
    for option in (candidate, PROJECT_ROOT / candidate, PROJECT_ROOT / "params" / "sweeps" / f"{path}.yaml"):
        if option.is_file():
            return option.resolve()
    raise SweepError(f"sweep file not found: {path} - pass a YAML under params/sweeps/ "
                     "(e.g. params/sweeps/demo_grid.yaml)")


def load_sweep(sweep_file: str | os.PathLike | Sweep) -> Sweep:
    """Read and validate a sweep file (unknown keys fail naming the key) and expand its combinations."""
    if isinstance(sweep_file, Sweep):
        return sweep_file
    path = resolve_sweep_path(sweep_file)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except yaml.YAMLError as exc:
        raise SweepError(f"{path.name}: not valid YAML ({exc.__class__.__name__}) - fix the file's syntax") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path.name}: expected a mapping with base, grid or list, ... at the top level")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise SweepError(_pydantic_message(path.name, exc)) from None
    sweep = Sweep(spec, spec.name or _sanitise(path.stem), path)
    sweep.combinations = _combinations(sweep)
    return sweep


def expand(sweep_file: str | os.PathLike | Sweep) -> list[Combination]:
    """The sweep's combinations in a deterministic order, each with its run-folder name.

    A grid expands like ``itertools.product`` over its keys in file order (the last key varies
    fastest); a list keeps its order.
    """
    return list(load_sweep(sweep_file).combinations)


def _combinations(sweep: Sweep) -> list[Combination]:
    spec = sweep.spec
    if spec.grid is not None:
        grid_keys = list(spec.grid)
        combos: list[Mapping[str, Any]] = [dict(zip(grid_keys, values))
                                           for values in itertools.product(*(spec.grid[k] for k in grid_keys))]
    else:
        combos = [dict(c) for c in spec.list_ or []]
    names = combination_names(sweep.name, combos)
    return [Combination(n, dict(c), sweep.name) for n, c in zip(names, combos)]


def combination_names(sweep: str, combos: list[Mapping[str, Any]]) -> list[str]:
    """Readable, unique, file-safe run names: ``<sweep>__<key>=<value>__...``.

    A key is shown by its last dotted segment unless another key of the sweep shares it. Names
    that collide after sanitising, or pass :data:`MAX_NAME_CHARS`, get a short hash of the
    combination appended.
    """
    all_keys = list(dict.fromkeys(k for c in combos for k in c))
    last = {k: k.rsplit(".", 1)[-1] for k in all_keys}
    shown = {k: (last[k] if list(last.values()).count(last[k]) == 1 else k) for k in all_keys}
    names = []
    for combo in combos:
        parts = [f"{_sanitise(shown[k])}={_sanitise(_format_value(v))}" for k, v in combo.items()]
        names.append(_SEP.join([sweep, *parts]) if parts else f"{sweep}{_SEP}base")
    counts = {n: names.count(n) for n in names}
    out = []
    for name, combo in zip(names, combos):
        digest = hashlib.sha256(json.dumps(combo, sort_keys=True, default=str).encode()).hexdigest()[:8]
        if counts[name] > 1 or len(name) > MAX_NAME_CHARS:
            name = f"{name[:MAX_NAME_CHARS - len(digest) - 1].rstrip('_.-=')}-{digest}"
        out.append(name)
    return out


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same float: 0.0005, 1e-05
    if isinstance(value, (list, tuple)):
        return "-".join(_format_value(v) for v in value) or "empty"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _sanitise(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-") or "x"


def _pydantic_message(source: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(f.alias or n for n, f in SweepSpec.model_fields.items())
        return f"sweep {source}: unknown key '{key}' - allowed keys: {allowed}"
    if err["type"] == "missing":
        return f"sweep {source}: missing required key '{key}' (e.g. base: params/demo.yaml)"
    msg = err["msg"].removeprefix("Value error, ")
    if not err["loc"]:
        return f"sweep {source}: {msg}"
    return f"sweep {source}: bad value for '{key}': {msg} (got {err.get('input')!r})"


# --------------------------------------------------------------------------- planning


@dataclass
class PlannedRun:
    """A combination resolved against its base profile: Config, params hash and the notebooks it runs."""

    combo: Combination
    overrides: dict[str, Any]
    cfg: Config
    stages: list[str]

    @property
    def params_hash(self) -> str:
        return self.cfg.params_hash()


def plan(sweep: Sweep, until: str | None = None, registry: Registry = STAGES) -> list[PlannedRun]:
    """Validate every combination with ``config.load`` and the stage selection, before anything runs."""
    planned = []
    for combo in sweep.combinations:
        overrides = sweep.overrides_for(combo)
        try:
            cfg = load(sweep.spec.base, combo.run_dir, overrides)
        except ConfigError as exc:
            raise SweepError(f"sweep {sweep.name}, combination {combo.name}: {exc}") from None
        stages = select(until=until, allowed=cfg.params.stages, registry=registry)
        if not stages:
            raise SweepError(f"sweep {sweep.name}: no notebook selected for {combo.name} - "
                             "check until and the params' stages")
        planned.append(PlannedRun(combo, overrides, cfg, [s.name for s in stages]))
    return planned


def fresh_stages(cfg: Config, registry: Registry = STAGES) -> set[str]:
    """Stages of a combination's run folder that are up to date for its params (:func:`keys.evaluate`)."""
    return {s.name for s in keys.evaluate(cfg, registry=registry).stages if s.state == "fresh"}
