"""``python -m medxpert_utils.app.dashboard [--run NAME] [--port N]`` serves the dashboard with Voilà."""

from medxpert_utils.app.dashboard.server import main

if __name__ == "__main__":
    raise SystemExit(main())
