"""One finished run as an assistant: similar cases, a caption and a structured report for a query.

:class:`Assistant` is the one place where search, captioning and reporting meet. The ``medxpert`` CLI,
the dashboard and notebook 05 all go through it, so a query gets the same cases and the same report
whichever door it came in by. It keeps its own caches (one search engine per model, the captioner),
loaded on first use, so a dashboard session pays for loading models once. An image query is one
:class:`~medxpert_utils.assistant.query.QueryImage` (decoded once, its CLIP input and embedding kept),
whichever of the check, the search, the caption, the report and the heatmaps read it.

The flow for one query: image -> distinct reports, text -> images (``retrieval.search.SearchEngine``,
twice ``k`` hits fetched, then one case per study kept), the BLIP caption for an image when the run has
a captioner, then a reporter: Gemini when asked for, or when ``generator`` is auto and an API key is
set, else the offline retrieval reporter. Batch reports (notebook 05) leave the query's own study out
of the evidence, since the search corpus includes the test split. Research use only: every report
carries the not-for-clinical-use disclaimer.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from PIL import Image

from medxpert_utils.assistant.query import ImageQuery, QueryImage
from medxpert_utils.core import config, io, stages
from medxpert_utils.core.errors import (
    ImageLoadError,
    MissingModelError,
    QueryRejectedError,
    RunNotReadyError,
    UserError,
)
from medxpert_utils.core.progress import tqdm
from medxpert_utils.retrieval.explain import Explainer, selected_method
from medxpert_utils.retrieval.ood import QueryCheck, QueryChecker
from medxpert_utils.retrieval.search import Hit, SearchEngine, check_k

# Reports (and the labeler they use), captions, speech and the manifest load when first used: a search needs none
# of them, and a cold `medxpert search` would pay for importing them (tests/app/test_cold_imports.py).
if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from medxpert_utils.captions import Captioner
    from medxpert_utils.core.config import Config
    from medxpert_utils.data.images import ImageFacts
    from medxpert_utils.report.context import RetrievedCase
    from medxpert_utils.report.gemini import GeminiReporter
    from medxpert_utils.report.offline import RetrievalReporter
    from medxpert_utils.report.schema import DiagnosisReport, Finding
    from medxpert_utils.speech import Transcriber, Transcript
    from medxpert_utils.speech.audio import Audio

# A spoken query: a file path, the file's bytes or decoded audio.
AudioQuery: TypeAlias = "str | os.PathLike[str] | bytes | Audio"

log = logging.getLogger(__name__)

GENERATORS = ("auto", "offline", "gemini")
WARM_UP_QUERY = "no acute cardiopulmonary process"


def resolve_generator(cfg: Config, generator: str = "auto") -> str:
    """'offline' or 'gemini': an explicit choice wins, 'auto' defers to ``report.generator``, and an
    auto params value means Gemini exactly when an API key is in the environment."""
    from medxpert_utils.report.gemini import api_key_from_env

    if generator not in GENERATORS:
        raise UserError(f"unknown generator '{generator}' - choose auto, offline or gemini")
    choice = generator if generator != "auto" else cfg.report.generator
    if choice == "auto":
        return "gemini" if api_key_from_env() else "offline"
    if choice == "gemini" and not api_key_from_env():
        raise MissingModelError("generator gemini needs an API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the "
                                "environment, or use --generator offline")
    return choice


def has_captioner(cfg: Config) -> bool:
    """True when notebook 04 ran: the run has a fine-tuned captioner, or captioned with its base one."""
    return (cfg.paths.blip / "config.json").is_file() or cfg.paths.captions.is_file()


def safe_name(study_id: str) -> str:
    """A file-name-safe form of a study_id."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(study_id)) or "study"


@dataclass
class ReportBatch:
    """What :meth:`Assistant.generate_reports` produced."""

    reports: list[DiagnosisReport]
    metrics: dict[str, object]
    cases: dict[str, list] = field(default_factory=dict)  # query study_id -> evidence cases

    def table(self) -> pd.DataFrame:
        """One row per report: query, generator, severity, findings vs truth."""
        import pandas as pd

        rows = [{"study_id": r.query_study_id, "generator": r.generator, "severity": r.overall_severity,
                 "findings": ", ".join(sorted(r.present_names())) or "-",
                 "truth": ", ".join(self.metrics.get("truth", {}).get(r.query_study_id, [])) or "-",
                 "evidence": ", ".join(r.supporting_study_ids)} for r in self.reports]
        return pd.DataFrame(rows)


class Assistant:
    """Search, caption and diagnose against one finished run (a run name under ``outputs/`` or a folder)."""

    def __init__(self, run: str | os.PathLike | Config):
        self.cfg = run if hasattr(run, "paths") else config.from_run(run)
        self.run_dir = Path(self.cfg.run_dir)
        self.lock = threading.RLock()  # one model call at a time: a query waits for a warm-up still loading
        self._engines: dict[str, SearchEngine] = {}
        self._captioner: Captioner | None = None
        self._checkers: dict[str, QueryChecker] = {}
        self.last_check: QueryCheck | None = None  # the query check of the last diagnose call
        self._explainers: dict[str, Explainer] = {}
        self._transcriber: Transcriber | None = None
        self._last_query: tuple[object, QueryImage] | None = None  # (what was handed over, its query image)
        self._warm: set[str] = set()  # models warm_up has run for

    # --- the pieces ------------------------------------------------------------------------------
    def engine(self, model: str = "fine_tuned") -> SearchEngine:
        """The run's search engine for ``model`` (loaded once; CLIP loads on the first query)."""
        with self.lock:
            if model not in self._engines:
                self._engines[model] = SearchEngine.from_run(self.run_dir, model=model)
            return self._engines[model]

    def checker(self, model: str = "fine_tuned") -> QueryChecker:
        """The run's query check for ``model`` (loaded once; calibrated on first use when notebook 02 did not)."""
        with self.lock:
            if model not in self._checkers:
                self._checkers[model] = QueryChecker.from_run(self.cfg, model)
            return self._checkers[model]

    def check_query(self, *, image: ImageQuery | QueryImage | None = None, text: str | None = None,
                    model: str = "fine_tuned", facts: ImageFacts | None = None) -> QueryCheck:
        """Is the query like the run's corpus? (:mod:`medxpert_utils.retrieval.ood`)

        ``image``: a :class:`QueryImage`, or a path, bytes, file object, PIL image or array (wrapped once,
        :meth:`query`); its colour and DICOM tags are the query image's facts unless ``facts`` are given.
        ``text``: the vocabulary check.
        """
        if (image is None) == (text is None):
            raise UserError("pass either an image or a text query")
        checker = self.checker(model)
        if text is not None:
            return checker.check_text(text)
        query = self.query(image)
        return checker.check_vector(self._vector(query, model), facts if facts is not None else query.facts)

    def query(self, image: ImageQuery | QueryImage) -> QueryImage:
        """``image`` as a :class:`QueryImage`, decoded once; the image last wrapped gives the same query image again,
        so a check and a search handed the same object share one decode, one preprocessing and one embedding."""
        if isinstance(image, QueryImage):
            return image
        last = self._last_query
        if last is None or last[0] is not image:  # decoded outside the model lock: a warm-up may hold it
            last = self._last_query = (image, QueryImage.of(image))
        return last[1]

    def _vector(self, query: QueryImage, model: str) -> "np.ndarray":
        """The query image's ``model`` embedding, made from its CLIP input once and kept on the query image."""
        engine = self.engine(model)
        with self.lock:
            return query.embedding(model, lambda: engine.embed_pixels(query.pixel_values(model, engine.pixel_values)))

    def captioner(self) -> Captioner | None:
        """The run's captioner (loaded once), or None when notebook 04 did not run."""
        if not has_captioner(self.cfg):
            return None
        with self.lock:
            if self._captioner is None:
                from medxpert_utils.captions import Captioner

                self._captioner = Captioner.from_run(self.cfg)
            return self._captioner

    def reporter(self, generator: str = "auto", cache: bool = True) -> RetrievalReporter | GeminiReporter:
        """The reporter :func:`resolve_generator` picks, configured from params. ``cache=False`` keeps
        Gemini's answers (and so the user's question) out of the run folder."""
        from medxpert_utils.report.gemini import GeminiReporter
        from medxpert_utils.report.offline import RetrievalReporter

        offline = RetrievalReporter.from_config(self.cfg)
        if resolve_generator(self.cfg, generator) != "gemini":
            return offline
        return GeminiReporter(self.cfg.llm, fallback=offline, cache_dir=self.cfg.paths.llm_cache if cache else None)

    def transcribe(self, audio: AudioQuery, name: str | None = None) -> Transcript:
        """A spoken query as text with the run's recogniser (``asr.backend``; loaded once, outside the model lock)."""
        if self._transcriber is None:
            from medxpert_utils.speech import Transcriber

            self._transcriber = Transcriber(self.cfg)
        return self._transcriber.transcribe(audio, name=name)

    # --- one query, step by step (the dashboard shows each step) -----------------------------------
    def search(self, *, image: ImageQuery | QueryImage | None = None, text: str | None = None, k: int = 5,
               model: str = "fine_tuned") -> list[Hit]:
        """Ranked hits: an image query ranks distinct reports, a text query ranks images."""
        if (image is None) == (text is None):
            raise UserError("pass either an image or a text query")
        engine = self.engine(model)
        if image is not None:
            vector = self._vector(self.query(image), model)
            with self.lock:
                return engine.search_vectors(vector, k, target="reports")[0]
        with self.lock:
            return engine.search_text(text, k)

    def similar_cases(self, *, image: ImageQuery | QueryImage | None = None, text: str | None = None, k: int = 5,
                      model: str = "fine_tuned") -> list[RetrievedCase]:
        """The ``k`` most similar studies: twice ``k`` hits fetched, the best hit of each study kept."""
        from medxpert_utils.report.context import ReportContext

        return ReportContext.build(self.search(image=image, text=text, k=2 * k, model=model), k=k).cases

    def caption(self, image: ImageQuery | QueryImage) -> str:
        """The run's BLIP caption of ``image``; a one-line error when the run has no captioner."""
        model = self.captioner()
        if model is None:
            raise MissingModelError(f"this run has no captioning model - {stages.hint('04', self.cfg.run_name)}")
        query = self.query(image)
        with self.lock:
            return model.caption([query.image])[0]

    def caption_or_none(self, image: ImageQuery | QueryImage) -> str | None:
        """:meth:`caption`, or None (with a logged reason): a report does not need a caption."""
        try:
            return self.caption(image)
        except MissingModelError as exc:
            log.warning("no caption: %s", exc)
            return None

    def write_report(self, cases: list, *, image: ImageQuery | QueryImage | None = None, text: str | None = None,
                     question: str | None = None, caption: str | None = None, k: int | None = None,
                     generator: str = "auto", cache: bool = True) -> DiagnosisReport:
        """A structured report from already retrieved ``cases`` (hits or :class:`RetrievedCase`)."""
        from medxpert_utils.report.context import ReportContext

        reporter = self.reporter(generator, cache=cache)
        pixels = self.query(image).image if image is not None else None
        context = ReportContext.build(cases, query_text=text, question=question, caption=caption, image=pixels,
                                      query_name="uploaded image" if image is not None else None, k=k)
        with self.lock:
            return reporter.report(context)

    def warm_up(self, model: str = "fine_tuned") -> None:
        """Load what a first text and a first image query need and run each once, so neither waits for a load:
        CLIP (both towers), the query check, the reporter's tables, the heatmap explainer (its neutral text
        embedded) and the captioner when the run has one. Once per model: a second call returns at once."""
        from medxpert_utils.report.context import ReportContext
        from medxpert_utils.report.offline import RetrievalReporter

        with self.lock:
            if model in self._warm:
                return
            self.check_query(text=WARM_UP_QUERY, model=model)  # the query check's vocabulary
            cases = self.similar_cases(text=WARM_UP_QUERY, k=2, model=model)
            RetrievalReporter.from_config(self.cfg).report(ReportContext.build(cases, k=2))
            blank = QueryImage(Image.new("L", (64, 64)))
            self.check_query(image=blank, model=model)  # the vision tower and the image check's Gaussian
            self.explain(blank, WARM_UP_QUERY, model=model)
            if self.captioner() is not None:
                self.caption(blank)
            self._warm.add(model)

    # --- where: heatmaps of a text over an image ----------------------------------------------------
    def explainer(self, model: str = "fine_tuned") -> Explainer:
        """The run's heatmap maker for ``model``, sharing the search engine's CLIP (loaded once)."""
        with self.lock:
            if model not in self._explainers:
                try:
                    engine = self.engine(model)
                except RunNotReadyError:  # no search index yet (notebook 02): a heatmap needs only the model
                    self._explainers[model] = Explainer.from_run(self.run_dir, model)
                else:
                    clip_model, processor = engine.clip_model()
                    self._explainers[model] = Explainer(clip_model, processor, max_length=engine.max_length)
            return self._explainers[model]

    def explain(self, image: ImageQuery | QueryImage, text: str, model: str = "fine_tuned",
                method: str | None = None) -> "np.ndarray":
        """Similarity map of ``text`` over ``image`` (the image's size, higher = more similar); ``method``
        defaults to the one the run's grounding evaluation chose (``metrics/grounding.json``)."""
        query = self.query(image)
        explainer = self.explainer(model)
        with self.lock:
            pixels = query.pixel_values(model, explainer.pixel_values)
            return explainer.explain(query.image, text, method or selected_method(self.run_dir), pixel_values=pixels)

    @staticmethod
    def finding_phrases(report: DiagnosisReport) -> list[str]:
        """The phrases of ``report``'s present or uncertain findings ("left pleural effusion"), each once."""
        return list(dict.fromkeys(finding_phrase(f) for f in report.findings if f.status != "absent"))

    def explain_findings(self, image: ImageQuery | QueryImage, report: DiagnosisReport, model: str = "fine_tuned",
                         method: str | None = None) -> dict[str, "np.ndarray"]:
        """One map per present or uncertain finding of ``report``, keyed by its phrase ("left pleural effusion")."""
        phrases = self.finding_phrases(report)
        if not phrases:
            return {}
        query = self.query(image)
        explainer = self.explainer(model)
        with self.lock:
            pixels = query.pixel_values(model, explainer.pixel_values).repeat(len(phrases), 1, 1, 1)
            maps = explainer.maps([query.image] * len(phrases), phrases, method or selected_method(self.run_dir),
                                  pixel_values=pixels)
        return dict(zip(phrases, maps))

    # --- one query, whole (CLI) -----------------------------------------------------------------
    def diagnose(self, image: ImageQuery | QueryImage | None = None, text: str | None = None,
                 question: str | None = None, k: int | None = None, generator: str = "auto",
                 model: str = "fine_tuned", force: bool = False) -> DiagnosisReport:
        """A structured report for one image (query image, path, bytes, PIL image or array) or text query.

        ``question`` alone is used as the text query. ``k`` defaults to ``report.top_k``. A query the check
        (:meth:`check_query`) finds unlike the corpus raises :class:`QueryRejectedError` before any report is
        written (Gemini is not called) unless ``force``; :attr:`last_check` keeps the verdict either way.
        """
        return self.diagnose_with_cases(image=image, text=text, question=question, k=k, generator=generator,
                                        model=model, force=force)[0]

    def diagnose_with_cases(
            self, image: ImageQuery | QueryImage | None = None, text: str | None = None, question: str | None = None,
            k: int | None = None, generator: str = "auto", model: str = "fine_tuned",
            force: bool = False) -> tuple[DiagnosisReport, list[RetrievedCase]]:
        """:meth:`diagnose`, also returning the evidence cases (for galleries and HTML thumbnails)."""
        from medxpert_utils.report.context import ReportContext

        if text is not None and not str(text).strip():
            raise UserError("empty query - pass a non-empty text, e.g. 'signs of pneumonia'")
        if image is None and text is None:
            if not question or not question.strip():
                raise UserError("nothing to diagnose - pass an image or a text query (and optionally a question)")
            text = question
        if image is not None and text is not None:
            raise UserError("pass either an image or a text query, not both")
        k = check_k(k if k is not None else self.cfg.report.top_k)
        reporter = self.reporter(generator)  # fail on a missing key before any model loads
        self.last_check = None
        if image is not None:
            picture = self.query(image)  # decoded once: the check, the search, the caption and the report share it
            self._gate(self.check_query(image=picture, model=model), force)
            hits = self.search(image=picture, k=2 * k, model=model)
            context = ReportContext.build(hits, question=question, caption=self.caption_or_none(picture),
                                          image=picture.image, query_name=picture.name or "<image>", k=k)
        else:
            query = str(text).strip()
            self._gate(self.check_query(text=query, model=model), force)
            hits = self.search(text=query, k=2 * k, model=model)
            context = ReportContext.build(hits, query_text=query, question=question, k=k)
        return reporter.report(context), context.cases

    def _gate(self, check: QueryCheck, force: bool) -> None:
        self.last_check = check
        if not check.in_distribution and not force:
            raise QueryRejectedError(check.message(), check)

    # --- batch (notebook 05) --------------------------------------------------------------------
    def generate_reports(self, n_cases: int | None = None, generator: str = "auto", model: str = "fine_tuned",
                         split: str = "test", progress: bool = True) -> ReportBatch:
        """Reports for the first ``n_cases`` studies of ``split`` from their images (caption + retrieval,
        leave-one-out), written to ``reports/reports.jsonl``, ``reports/<study_id>.html`` and scored into
        ``metrics/reports.json``. Unreadable images are skipped and counted."""
        from medxpert_utils.data import manifest
        from medxpert_utils.data.labels import CHEXPERT_LABELS
        from medxpert_utils.report.context import ReportContext
        from medxpert_utils.report.render import render_html
        from medxpert_utils.report.scoring import REPORTS_FILE, score_reports

        cfg = self.cfg
        n_cases = n_cases or cfg.report.n_cases
        k = cfg.report.top_k
        frame = manifest.read(cfg.run_dir)
        rows = frame[frame["split"] == split].sort_values(["study_id", "image_path"]).drop_duplicates("study_id")
        rows = rows.head(n_cases)
        if rows.empty:
            raise UserError(f"no {split} studies in the manifest to report on - check data.split")
        reporter = self.reporter(generator)
        captions = _caption_lookup(cfg)
        live_captioner = self.captioner() if not captions else None
        reports: list[DiagnosisReport] = []
        cases: dict[str, list] = {}
        truth: dict[str, list[str]] = {}
        references: dict[str, str] = {}
        skipped = 0
        out_dir = cfg.paths.reports
        for row in tqdm(rows.to_dict("records"), desc="reports", disable=not progress, leave=False):
            sid, image_path = str(row["study_id"]), str(row["image_path"])
            try:
                query = QueryImage.of(image_path)
            except ImageLoadError as exc:
                log.warning("skipping %s: %s", sid, exc)
                skipped += 1
                continue
            caption = captions.get(image_path)
            if caption is None and live_captioner is not None:
                caption = live_captioner.caption([query.image])[0]
            hits = self.search(image=query, k=2 * k + 2, model=model)
            context = ReportContext.build(hits, caption=caption, image=query.image, query_name=Path(image_path).name,
                                          query_study_id=sid, exclude_study_ids=[sid], k=k)
            report = reporter.report(context)
            reports.append(report)
            cases[sid] = context.cases
            truth[sid] = [name for name in CHEXPERT_LABELS if _is_positive(row.get(name))]
            references[sid] = str(row.get("report") or "")
            io.write_text(out_dir / f"{safe_name(sid)}.html", render_html(report, context.cases))
        io.write_text(out_dir / REPORTS_FILE, "".join(r.model_dump_json() + "\n" for r in reports))
        metrics = score_reports(reports, truth, references, chexbert=cfg.eval.chexbert)
        metrics.update(split=split, n_requested=int(n_cases), n_skipped=skipped, top_k=k, model=model)
        io.write_json(cfg.paths.metrics / "reports.json", {key: v for key, v in metrics.items() if key != "truth"})
        return ReportBatch(reports, metrics, cases)


def _caption_lookup(cfg: Config) -> dict[str, str]:
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


def _is_positive(value: Any) -> bool:
    try:
        return int(value) == 1
    except (TypeError, ValueError):
        return False


def finding_phrase(finding: Finding) -> str:
    """A report finding as a short phrase: its location and observation ("left pleural effusion")."""
    name = str(finding.name).lower()
    location = (finding.location or "").strip().lower()
    return f"{location} {name}" if location and location not in name else name
