"""What notebook 06 runs: :func:`preheat` (a kernel Voilà keeps in its pool loads the run's models before any
visitor arrives) and :func:`page` (the dashboard for the visitor who takes that kernel).

Served with a pool (``dashboard.pool`` > 0, see :mod:`.voila_app`), Voilà runs the notebook in each pooled
kernel ahead of time: :func:`preheat` loads and runs the default run's models once, then :func:`page` waits
in :func:`voila.utils.wait_for_request` until a visitor takes the kernel, so the page reads that visitor's
``?run=NAME``. Without a pool :func:`preheat` loads nothing and the served page loads the models in a background
thread instead; under papermill (stage 06, where ``RUN`` is set) it only builds what the page will load and no
earlier stage made (:func:`prepare_run`).
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import ipywidgets

from medxpert_utils.app.dashboard.controller import build_app
from medxpert_utils.app.dashboard.inputs import pick_run, run_problem
from medxpert_utils.assistant import Assistant
from medxpert_utils.core.errors import UserError

PREHEAT_ENV = "VOILA_PREHEAT"  # "True" in the kernels Voilà starts for its pool


def preheated() -> bool:
    """True in a kernel that Voilà started for its pool of preheated kernels."""
    return os.environ.get(PREHEAT_ENV, "False") == "True"


def preheat(run: str | None = None, model: str = "fine_tuned") -> Assistant | None:
    """In a pooled kernel: the default run's assistant with its models loaded and run once; else None.

    A run that is not ready, or a model that fails to load, leaves nothing warm (the visitor's first query
    then shows the problem as one line); the details go to the server log.
    """
    if run:  # under papermill (stage 06): build what the page loads that no earlier stage made
        prepare_run(run)
        return None
    if not preheated():
        return None
    try:
        run_dir = pick_run(None)
        if run_dir is None or run_problem(run_dir, model) is not None:
            return None
        assistant = Assistant(run_dir)
        assistant.warm_up(model)
        return assistant
    except (UserError, OSError):
        traceback.print_exc(file=sys.__stderr__)
        return None


def prepare_run(run: str) -> None:
    """Build the models the run's page loads that no earlier stage builds: a random-weights Whisper
    (``asr.model: random:<hub id>``, the rehearsal) is made once into ``models/whisper_base/``; the hybrid
    recogniser's Moonshine is converted once to ONNX (shared by every run, under the data folder)."""
    from medxpert_utils.core import config
    from medxpert_utils.models import published, whisper

    run_dir = pick_run(run)
    if run_dir is None or not (run_dir / "run.json").is_file():
        return  # the page says what to run first
    cfg = config.from_run(run_dir)
    if cfg.asr.backend == "whisper" and published.is_random(cfg.asr.model):
        whisper.prepare_model(cfg)
    if cfg.asr.backend == "hybrid":
        from medxpert_utils.speech import moonshine

        moonshine.prepare()


def page(run: str | None = None, warm: Assistant | None = None) -> ipywidgets.Widget:
    """The dashboard: for ``run`` (papermill's RUN), else the visitor's run (``?run=NAME``, ``MEDXPERT_RUN``,
    the newest). A pooled kernel first waits here for its visitor, then reuses ``warm`` when the visitor's run
    is the one it preheated; otherwise the models load in the background as the page opens."""
    if warm is not None and preheated():
        from voila.utils import wait_for_request

        wait_for_request()  # the visitor's request (URL, query string) arrives in os.environ
    warm_dir = Path(warm.run_dir).resolve() if warm is not None else None

    def assistant_for(run_dir: Path) -> Assistant:
        return warm if warm is not None and Path(run_dir).resolve() == warm_dir else Assistant(run_dir)

    # A warm assistant's warm_up returns at once; any other run's models load in the background.
    return build_app(run or None, assistant_factory=assistant_for, warm_up=not run)
