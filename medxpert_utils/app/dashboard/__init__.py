"""The Voilà dashboard (notebook 06): ``build_app(run_dir)`` returns the page as one widget."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medxpert_utils.app.dashboard.controller import Dashboard, build_app
from medxpert_utils.app.dashboard.warm import page, preheat

if TYPE_CHECKING:
    import ipywidgets

    from medxpert_utils.core.config import Config

__all__ = ["Dashboard", "build_app", "page", "preheat", "run_stage"]


def run_stage(cfg: Config) -> ipywidgets.Widget:
    """The dashboard stage: build what the page loads that no earlier stage made (:func:`.warm.prepare_run`), then
    the page on the run, as Voilà will serve it (models load on first query)."""
    from medxpert_utils.app.dashboard.warm import prepare_run

    prepare_run(str(cfg.run_dir))
    return build_app(cfg.run_dir, warm_up=False)
