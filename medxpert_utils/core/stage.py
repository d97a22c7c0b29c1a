"""The shared command line of stages that also run on their own, e.g. under ``accelerate launch -m``
(training and embedding), and the ``--set KEY=VALUE`` parsing the ``medxpert`` command shares."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from medxpert_utils.core import config
from medxpert_utils.core.errors import UserError


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``--set train.lr=1e-5`` pairs -> dict; values are parsed as YAML (numbers, lists, booleans)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set train.lr=1e-5")
        key, value = pair.split("=", 1)
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-5" as a string; people mean the number
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def stage_main(name: str, description: str, argv: Sequence[str] | None,
               run: Callable[[Any, argparse.Namespace], None],
               add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """The command line of a stage that also runs under ``accelerate launch -m`` (``train``, ``embed``).

    ``--params``, ``--run``, ``--set``, ``--no-progress`` and ``--debug`` plus the stage's own
    arguments; ``run(cfg, args)`` does the work. User mistakes print one line and exit 2.
    """
    parser = argparse.ArgumentParser(prog=f"python -m medxpert_utils.{name}", description=description)
    parser.add_argument("--params", default="params/demo.yaml", help="params YAML or profile name")
    parser.add_argument("--run", help="run name under outputs/ or a path (default: the profile's name)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a param, e.g. --set train.epochs=1")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(config.load(args.params, args.run or None, parse_overrides(args.set)), args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"medxpert {name}: error: {exc}", file=sys.stderr)
        return 2
    return 0
