"""Scores of a batch of reports against the query studies' labels, and reading a run's saved reports."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from medxpert_utils.core import config, stages
from medxpert_utils.core.errors import UserError
from medxpert_utils.data.label_metrics import label_f1
from medxpert_utils.models.chexbert import chexbert_f1
from medxpert_utils.report.offline import GENERATOR as OFFLINE_GENERATOR
from medxpert_utils.report.schema import DiagnosisReport

REPORTS_FILE = "reports.jsonl"


def generator_family(generator: str) -> str:
    """'gemini:<model>', 'offline-retrieval' or 'offline-retrieval (fallback)' (reason dropped)."""
    if generator.startswith(f"{OFFLINE_GENERATOR} (fallback"):
        return f"{OFFLINE_GENERATOR} (fallback)"
    return generator


def score_reports(reports: Sequence[DiagnosisReport], truth: dict[str, list[str]],
                  references: dict[str, str] | None = None, chexbert: bool = False) -> dict[str, Any]:
    """CheXpert-label F1 (micro/macro, as CXR-RePaiR and X-REM report it) of each report's present findings
    against its query's ground-truth positive labels; counts by generator; fallbacks and their reasons; and
    CheXbert F1 of each impression against its query's reference report (``references``: study_id -> report)
    when ``chexbert`` is on, else the reason it is unavailable."""
    scored = [r for r in reports if r.query_study_id in truth]
    paired = [r for r in reports if r.query_study_id in (references or {})]
    f1 = label_f1([r.present_names() for r in scored], [truth[r.query_study_id] for r in scored])
    families = Counter(generator_family(r.generator) for r in reports)
    reasons = Counter(r.generator.split("(fallback: ", 1)[1].rstrip(")") for r in reports
                      if generator_family(r.generator).endswith("(fallback)"))
    return {
        "n_cases": len(reports),
        "label_f1_micro": f1["micro"],
        "label_f1_macro": f1["macro"],
        "label_f1_per_label": f1["per_label"],
        "definition": "CheXpert-label F1 of the report's present findings vs the query study's positive labels "
                      "(micro and macro over the 14 observations; macro over observations that occur)",
        "generators": dict(families),
        "fallbacks": int(sum(reasons.values())),
        "fallback_reasons": dict(reasons),
        "severity_counts": dict(Counter(r.overall_severity for r in reports)),
        "chexbert": chexbert_f1([r.impression for r in paired], [references[r.query_study_id] for r in paired],
                                chexbert),
        "truth": truth,
    }


def read_reports(run_or_cfg: Any) -> list[DiagnosisReport]:
    """The reports of a run's ``reports/reports.jsonl`` (notebook 05's batch)."""
    cfg = run_or_cfg if hasattr(run_or_cfg, "paths") else config.from_run(run_or_cfg)
    path = cfg.paths.reports / REPORTS_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing - {stages.hint('05', cfg.run_name)}")
    return [DiagnosisReport.model_validate_json(line)
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
