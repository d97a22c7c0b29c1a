"""``python -m medxpert_utils`` is the ``medxpert`` command."""

from medxpert_utils.cli import main

raise SystemExit(main())
