"""Structured diagnosis reports (research only): schema, prompt, Gemini and offline reporters, ICD-10-CM.

``diagnose(run, image=..., text=..., question=...)`` is the one entry point the CLI and the
dashboard use; ``generate_reports(cfg)`` is notebook 05's batch. Every report carries
``medxpert_utils.DISCLAIMER``.
"""

from medxpert_utils.report.generate import diagnose, diagnose_with_hits, generate_reports, read_reports, score_reports
from medxpert_utils.report.render import render_html, render_text
from medxpert_utils.report.schema import DiagnosisReport, Finding, Icd10Code

__all__ = [
    "DiagnosisReport", "Finding", "Icd10Code", "diagnose", "diagnose_with_hits", "generate_reports", "read_reports",
    "render_html", "render_text", "score_reports",
]
