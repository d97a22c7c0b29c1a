"""The assistant layer: one :class:`Assistant` per finished run answers queries (search, caption, report)
for the CLI, the dashboard and notebook 05; a :class:`QueryImage` is one query image, decoded once."""

from medxpert_utils.assistant.assistant import Assistant, ReportBatch, resolve_generator
from medxpert_utils.assistant.query import ImageQuery, QueryImage

__all__ = ["Assistant", "ImageQuery", "QueryImage", "ReportBatch", "resolve_generator"]
