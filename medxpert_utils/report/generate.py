"""Reports for a run: :func:`diagnose` for one query (CLI, dashboard) and :func:`generate_reports`
for a batch of test cases (notebook 05), plus their scoring.

Both retrieve through ``search.SearchEngine`` (image -> distinct reports, text -> images), give the
top-K cases, the BLIP caption (image queries, when the run has a captioner) and the question to a
reporter: Gemini when asked for or when ``generator`` is auto and an API key is set, else the
offline retrieval reporter. Batch queries leave their own study out of the evidence, since the
search corpus includes the test split.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from medxpert_utils import io
from medxpert_utils.errors import MissingModelError, UserError
from medxpert_utils.report.context import ReportContext
from medxpert_utils.report.gemini import GeminiReporter, api_key_from_env
from medxpert_utils.report.offline import GENERATOR as OFFLINE_GENERATOR
from medxpert_utils.report.offline import RetrievalReporter
from medxpert_utils.report.render import render_html
from medxpert_utils.report.schema import DiagnosisReport

log = logging.getLogger(__name__)

GENERATORS = ("auto", "offline", "gemini")
_LOCK = threading.Lock()
_ENGINES: dict[tuple[str, str], Any] = {}
_CAPTIONERS: dict[str, Any] = {}


def resolve_generator(cfg, generator: str = "auto") -> str:
    """'offline' or 'gemini': an explicit choice wins, 'auto' defers to ``report.generator``, and an
    auto params value means Gemini exactly when an API key is in the environment."""
    if generator not in GENERATORS:
        raise UserError(f"unknown generator '{generator}' - choose auto, offline or gemini")
    choice = generator if generator != "auto" else cfg.report.generator
    if choice == "auto":
        return "gemini" if api_key_from_env() else "offline"
    if choice == "gemini" and not api_key_from_env():
        raise MissingModelError("generator gemini needs an API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the "
                                "environment, or use --generator offline")
    return choice


def make_reporter(cfg, generator: str = "auto") -> RetrievalReporter | GeminiReporter:
    """The reporter :func:`resolve_generator` picks, configured from params."""
    if resolve_generator(cfg, generator) == "gemini":
        return GeminiReporter.from_config(cfg)
    return RetrievalReporter.from_config(cfg)


def search_engine(run_dir: Path, model: str = "fine_tuned"):
    """A cached ``SearchEngine`` per (run, model): the dashboard calls diagnose repeatedly."""
    from medxpert_utils.search import SearchEngine

    key = (str(Path(run_dir).resolve()), model)
    with _LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = SearchEngine.from_run(run_dir, model=model)
        return _ENGINES[key]


def has_captioner(cfg) -> bool:
    """True when notebook 04 ran: the run has a fine-tuned captioner, or captioned with its base one."""
    return (cfg.paths.blip / "config.json").is_file() or cfg.paths.captions.is_file()


def captioner(cfg):
    """The run's captioner (cached), or None when the run has none."""
    from medxpert_utils.captions import Captioner

    if not has_captioner(cfg):
        return None
    key = str(cfg.run_dir.resolve())
    with _LOCK:
        if key not in _CAPTIONERS:
            _CAPTIONERS[key] = Captioner.from_run(cfg)
        return _CAPTIONERS[key]


def clear_caches() -> None:
    """Forget cached engines and captioners (after a run folder was rebuilt)."""
    with _LOCK:
        _ENGINES.clear()
        _CAPTIONERS.clear()


def _caption_or_none(cfg, image) -> str | None:
    try:
        model = captioner(cfg)
        return model.caption([image])[0] if model is not None else None
    except MissingModelError as exc:  # the report does not need a caption; say why there is none
        log.warning("no caption: %s", exc)
        return None


def diagnose(run: str | os.PathLike, image: Any = None, text: str | None = None, question: str | None = None,
             k: int | None = None, generator: str = "auto", model: str = "fine_tuned") -> DiagnosisReport:
    """A structured report for one image (path, bytes or PIL image) or text query of a finished run.

    ``question`` alone is used as the text query. ``k`` defaults to ``report.top_k``. Research use only:
    the report carries the disclaimer.
    """
    report, _ = diagnose_with_hits(run, image=image, text=text, question=question, k=k, generator=generator,
                                   model=model)
    return report


def diagnose_with_hits(run: str | os.PathLike, image: Any = None, text: str | None = None,
                       question: str | None = None, k: int | None = None, generator: str = "auto",
                       model: str = "fine_tuned") -> tuple[DiagnosisReport, list]:
    """:func:`diagnose`, also returning the retrieved cases (for galleries and HTML thumbnails)."""
    from medxpert_utils import config
    from medxpert_utils.search import check_k, to_image

    cfg = config.from_run(run)
    if text is not None and not str(text).strip():
        raise UserError("empty query - pass a non-empty text, e.g. 'signs of pneumonia'")
    if image is None and text is None:
        if not question or not question.strip():
            raise UserError("nothing to diagnose - pass an image or a text query (and optionally a question)")
        text = question
    if image is not None and text is not None:
        raise UserError("pass either an image or a text query, not both")
    k = check_k(k if k is not None else cfg.report.top_k)
    reporter = make_reporter(cfg, generator)  # fail on a missing key before any model loads
    engine = search_engine(cfg.run_dir, model)
    if image is not None:
        name = Path(image).name if isinstance(image, (str, os.PathLike)) else getattr(image, "name", None) or "<image>"
        pil = to_image(image)
        hits = engine.search_image(pil, 2 * k)
        context = ReportContext.build(hits, question=question, caption=_caption_or_none(cfg, pil), image=pil,
                                      query_name=str(name), k=k)
    else:
        hits = engine.search_text(str(text).strip(), 2 * k)
        context = ReportContext.build(hits, query_text=str(text).strip(), question=question, k=k)
    return reporter.report(context), context.cases


# --- batch (notebook 05) -----------------------------------------------------------------------

@dataclass
class ReportBatch:
    """What :func:`generate_reports` produced."""

    reports: list[DiagnosisReport]
    metrics: dict[str, Any]
    cases: dict[str, list] = field(default_factory=dict)  # query study_id -> evidence cases

    def table(self):
        """One row per report: query, generator, severity, findings vs truth."""
        import pandas as pd

        rows = [{"study_id": r.query_study_id, "generator": r.generator, "severity": r.overall_severity,
                 "findings": ", ".join(sorted(r.present_names())) or "-",
                 "truth": ", ".join(self.metrics.get("truth", {}).get(r.query_study_id, [])) or "-",
                 "evidence": ", ".join(r.supporting_study_ids)} for r in self.reports]
        return pd.DataFrame(rows)


def safe_name(study_id: str) -> str:
    """A file-name-safe form of a study_id."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(study_id)) or "study"


def _caption_lookup(cfg) -> dict[str, str]:
    """image_path -> caption from notebook 04's ``captions.parquet`` (fine-tuned captioner preferred)."""
    import pandas as pd

    if not cfg.paths.captions.is_file():
        return {}
    frame = pd.read_parquet(cfg.paths.captions)
    if frame.empty:
        return {}
    best = "fine_tuned" if (frame["model"] == "fine_tuned").any() else frame["model"].iloc[0]
    chosen = frame[frame["model"] == best]
    return dict(zip(chosen["image_path"].astype(str), chosen["caption"].astype(str)))


def generate_reports(cfg, n_cases: int | None = None, generator: str = "auto", model: str = "fine_tuned",
                     split: str = "test", progress: bool = True) -> ReportBatch:
    """Reports for the first ``n_cases`` studies of ``split`` from their images (caption + retrieval,
    leave-one-out), written to ``reports/reports.jsonl``, ``reports/<study_id>.html`` and scored into
    ``metrics/reports.json``. Unreadable images are skipped and counted."""
    from medxpert_utils.progress import tqdm

    from medxpert_utils.data import manifest
    from medxpert_utils.data.labels import CHEXPERT_LABELS
    from medxpert_utils.errors import ImageLoadError
    from medxpert_utils.search import to_image

    n_cases = n_cases or cfg.report.n_cases
    k = cfg.report.top_k
    frame = manifest.read(cfg.run_dir)
    rows = frame[frame["split"] == split].sort_values(["study_id", "image_path"]).drop_duplicates("study_id")
    rows = rows.head(n_cases)
    if rows.empty:
        raise UserError(f"no {split} studies in the manifest to report on - check data.split")
    reporter = make_reporter(cfg, generator)
    engine = search_engine(cfg.run_dir, model)
    captions = _caption_lookup(cfg)
    live_captioner = captioner(cfg) if not captions else None
    reports: list[DiagnosisReport] = []
    cases: dict[str, list] = {}
    truth: dict[str, list[str]] = {}
    skipped = 0
    out_dir = cfg.paths.reports
    for row in tqdm(rows.to_dict("records"), desc="reports", disable=not progress, leave=False):
        sid, image_path = str(row["study_id"]), str(row["image_path"])
        try:
            pil = to_image(image_path)
        except ImageLoadError as exc:
            log.warning("skipping %s: %s", sid, exc)
            skipped += 1
            continue
        caption = captions.get(image_path)
        if caption is None and live_captioner is not None:
            caption = live_captioner.caption([pil])[0]
        hits = engine.search_image(pil, 2 * k + 2)
        context = ReportContext.build(hits, caption=caption, image=pil, query_name=Path(image_path).name,
                                      query_study_id=sid, exclude_study_ids=[sid], k=k)
        report = reporter.report(context)
        reports.append(report)
        cases[sid] = context.cases
        truth[sid] = [name for name in CHEXPERT_LABELS if _is_positive(row.get(name))]
        io.write_text(out_dir / f"{safe_name(sid)}.html", render_html(report, context.cases))
    io.write_text(out_dir / "reports.jsonl", "".join(r.model_dump_json() + "\n" for r in reports))
    metrics = score_reports(reports, truth)
    metrics.update(split=split, n_requested=int(n_cases), n_skipped=skipped, top_k=k, model=model)
    io.write_json(cfg.paths.metrics / "reports.json", {key: v for key, v in metrics.items() if key != "truth"})
    return ReportBatch(reports, metrics, cases)


def _is_positive(value: Any) -> bool:
    try:
        return int(value) == 1
    except (TypeError, ValueError):
        return False


def generator_family(generator: str) -> str:
    """'gemini:<model>', 'offline-retrieval' or 'offline-retrieval (fallback)' (reason dropped)."""
    if generator.startswith(f"{OFFLINE_GENERATOR} (fallback"):
        return f"{OFFLINE_GENERATOR} (fallback)"
    return generator


def score_reports(reports: Sequence[DiagnosisReport], truth: dict[str, list[str]]) -> dict[str, Any]:
    """CheXpert-label F1 (micro/macro, as CXR-RePaiR and X-REM report it) of each report's present findings
    against its query's ground-truth positive labels; counts by generator; fallbacks and their reasons."""
    from collections import Counter

    from medxpert_utils.captions import label_f1

    scored = [r for r in reports if r.query_study_id in truth]
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
        "truth": truth,
    }


def read_reports(run_or_cfg) -> list[DiagnosisReport]:
    """The reports of ``reports/reports.jsonl``."""
    from medxpert_utils import config

    cfg = run_or_cfg if hasattr(run_or_cfg, "paths") else config.from_run(run_or_cfg)
    path = cfg.paths.reports / "reports.jsonl"
    if not path.is_file():
        raise UserError(f"{path} is missing - run notebook 05 first")
    return [DiagnosisReport.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
