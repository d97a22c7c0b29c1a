"""The Voilà dashboard (notebook 06): ``build_app(run_dir)`` returns the page as one widget."""

from medxpert_utils.app.dashboard.controller import Dashboard, build_app

__all__ = ["Dashboard", "build_app"]
