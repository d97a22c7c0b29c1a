"""Stage 05, diagnosis reports (notebook ``05_diagnosis_reports``): a report for each of the first
``report.n_cases`` test studies, written and scored by :meth:`Assistant.generate_reports`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medxpert_utils.assistant.assistant import Assistant, ReportBatch, resolve_generator
from medxpert_utils.core.config import Config
from medxpert_utils.viz import plots


@dataclass(frozen=True)
class ReportStageResult:
    """What :func:`run_stage` did, for notebook 05 to show."""

    batch: ReportBatch  # the reports, their metrics (metrics/reports.json) and evidence cases
    generator: str  # "gemini" or "offline", as resolved from report.generator and the environment
    used_captions: bool  # True when stage 04's captions.parquet was there to give the reporter
    figures: dict[str, Path]  # name -> PNG under figures/


def run_stage(cfg: Config) -> ReportStageResult:
    """Write ``reports/reports.jsonl``, one HTML page per report and ``metrics/reports.json``, and draw the
    reports' per-observation label F1 into ``figures/report_label_f1.png``. Reads stages 00 and 02; stage 04's
    captions when present (else the run's captioner, if any, captions live)."""
    import matplotlib.pyplot as plt

    generator = resolve_generator(cfg)
    used_captions = cfg.paths.captions.is_file()
    batch = Assistant(cfg).generate_reports()
    figure = cfg.paths.figures / "report_label_f1.png"
    plt.close(plots.label_f1_bars({"reports": batch.metrics["label_f1_per_label"]}, figure,
                                  "Report CheXpert-label F1 per observation"))
    return ReportStageResult(batch, generator, used_captions, {"report_label_f1": figure})
