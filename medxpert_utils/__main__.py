"""``python -m medxpert_utils`` is the ``medxpert`` command."""

from medxpert_utils.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
