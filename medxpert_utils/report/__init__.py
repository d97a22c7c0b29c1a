"""Structured diagnosis reports (research only): schema, context, prompt, Gemini and offline reporters,
ICD-10-CM codes, rendering and scoring. The package knows nothing of search or captioning: the
assistant layer retrieves the cases and hands them over in a ``ReportContext``. Every report carries
the not-for-clinical-use disclaimer.
"""

from medxpert_utils.report.render import render_html, render_text
from medxpert_utils.report.schema import DiagnosisReport, Finding, Icd10Code
from medxpert_utils.report.scoring import read_reports, score_reports

__all__ = ["DiagnosisReport", "Finding", "Icd10Code", "read_reports", "render_html", "render_text", "score_reports"]
