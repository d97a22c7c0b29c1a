"""The assistant layer: one :class:`Assistant` per finished run answers queries (search, caption, report)
for the CLI, the dashboard and notebook 05."""

from medxpert_utils.assistant.assistant import Assistant, ReportBatch, resolve_generator

__all__ = ["Assistant", "ReportBatch", "resolve_generator"]
