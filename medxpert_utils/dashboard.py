"""The Voilà dashboard (notebook 06): upload a chest X-ray or type a query, see similar cases and a report.

:func:`build_app` returns the whole app as one ipywidgets tree, built from small functions that each
return a widget and wired with ``observe``/``on_click``; tests drive it without a server. It reads a
finished run and never trains or embeds a corpus: the models load on the first query, or in a
background thread as soon as a served page opens. Every callback reports through widgets in the page (a status line, an error line and an
``Output``), never through a traceback. Uploads stay in memory unless ``dashboard.save_uploads`` is set,
and nothing from a DICOM header is shown or stored.

``python -m medxpert_utils.dashboard [--run NAME] [--port N]`` serves notebook 06 with Voilà. What the
page renders (HTML, PNG, CSV) lives in :mod:`medxpert_utils.dashboard_render`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import parse_qs

import ipywidgets as widgets
from PIL import Image

from medxpert_utils import DISCLAIMER
from medxpert_utils.dashboard_render import (CSS, download_link, esc, gallery_html, hits_csv, png_bytes, report_html,
                                             to_json)
from medxpert_utils.errors import UserError
from medxpert_utils.paths import PROJECT_ROOT, RunPaths, outputs_dir, resolve_run_dir

NOTEBOOK = PROJECT_ROOT / "notebooks" / "06_dashboard.ipynb"
ACCEPT = ".png,.jpg,.jpeg,.dcm,.dicom"
MAX_QUERY_CHARS = 2000
MODELS = (("fine-tuned", "fine_tuned"), ("zero-shot", "zero_shot"))
KEY_ENV = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# --- run selection -----------------------------------------------------------------------------

def pick_run(run: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> Path | None:
    """The run to show: ``run`` (papermill's RUN), else ``?run=NAME`` in the page URL, else
    ``MEDXPERT_RUN``, else the newest finished run under ``outputs/`` (None when there is none).

    Voilà hands the URL's query string to the page's kernel as the ``QUERY_STRING`` environment
    variable. A name from the URL must be a plain run name under ``outputs/`` (no paths), since
    anyone who can open the page can type it.
    """
    from medxpert_utils import runs

    environ = os.environ if environ is None else environ
    if run:
        return resolve_run_dir(run)
    name = parse_qs(environ.get("QUERY_STRING", "")).get("run", [""])[0].strip()
    if name:
        if not _RUN_NAME.fullmatch(name):
            raise UserError(f"?run={name!r} is not a run name - use the name of a folder under outputs/, e.g. ?run=demo")
        return outputs_dir() / name
    if environ.get("MEDXPERT_RUN", "").strip():
        return resolve_run_dir(environ["MEDXPERT_RUN"].strip())
    finished = [r for r in runs.list_runs() if r["finished"]]
    return Path(finished[0]["path"]) if finished else None


def display_run(run_dir: Path) -> str:
    """``outputs/<name>`` for runs under the outputs folder, else the path."""
    try:
        return f"outputs/{Path(run_dir).resolve().relative_to(outputs_dir())}"
    except ValueError:
        return str(run_dir)


def run_problem(run_dir: Path | None, model: str = "fine_tuned") -> str | None:
    """One line saying what to run first when ``run_dir`` cannot feed the dashboard, else None."""
    from medxpert_utils import runs

    if run_dir is None:
        return f"No finished run under {outputs_dir()}: run ./run_all.sh first (or pick a run above)."
    run_dir = Path(run_dir)
    shown = display_run(run_dir)
    if not (run_dir / "run.json").is_file():
        return f"Run ./run_all.sh first: {shown} is missing (no run.json)."
    paths = RunPaths(run_dir)
    stages = runs.read(run_dir).get("stages", {})
    # What the page reads, and the notebook that writes it (captions are optional: the page says when absent).
    needs = ((paths.manifest, "00_data_prep"), (paths.index(model), "02_embed_index"),
             (paths.embeddings(model), "02_embed_index"))
    for path, stage in needs:
        status = stages.get(stage, {}).get("status")
        if not path.exists() or status not in (None, "ok"):
            note = f" ({stage} {status})" if status not in (None, "ok") else ""
            return (f"Run ./run_all.sh first: {shown} is missing {stage}{note} "
                    f"(./run_all.sh --run {run_dir.name} --from {stage[:2]}).")
    return None


def run_options(selected: Path | None) -> list[tuple[str, str]]:
    """Dropdown options (label, run folder) for the runs under ``outputs/``, plus ``selected``."""
    from medxpert_utils import runs

    options = []
    for row in runs.list_runs():
        state = "finished" if row["finished"] else "unfinished"
        options.append((f"{row['run']} ({row['profile']}, {state})", str(Path(row["path"]).resolve())))
    if selected is not None and str(Path(selected).resolve()) not in {v for _, v in options}:
        options.insert(0, (display_run(selected), str(Path(selected).resolve())))
    return options


# --- uploads -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Upload:
    name: str
    content: bytes


def read_upload(value: Sequence[dict] | dict, max_mb: float) -> Upload | None:
    """The file in a ``FileUpload.value`` (None when empty); raises UserError when it is too large."""
    files = [value] if isinstance(value, dict) else list(value or ())
    if not files:
        return None
    item = files[-1]
    content = item.get("content", b"")
    content = content.tobytes() if isinstance(content, memoryview) else bytes(content)
    name = str(item.get("name") or "upload")
    if not content:
        raise UserError(f"{name} is empty - upload a chest X-ray (PNG, JPEG or DICOM)")
    if len(content) > max_mb * 1024 * 1024:
        raise UserError(f"{name} is {len(content) / 2**20:.1f} MB, more than the {max_mb:g} MB limit "
                        f"(params dashboard.max_upload_mb) - upload a smaller image")
    return Upload(name, content)


def decode_upload(upload: Upload, max_mb: float) -> Image.Image:
    """Decode an upload to a grayscale PIL image (DICOM windowed, pixel data only); ImageLoadError if unreadable."""
    from medxpert_utils.data.images import load_image

    return load_image(upload.content, name=upload.name, max_bytes=int(max_mb * 1024 * 1024))


# --- what the page calls: search, caption, report -----------------------------------------------

class Backend:
    """The run's search engine, captioner and reporters, the same pieces ``report.diagnose`` uses, called
    step by step so the page can show progress and the gallery shows exactly the report's evidence."""

    def __init__(self, run_dir: Path):
        from medxpert_utils import config

        self.run_dir = Path(run_dir)
        self.cfg = config.from_run(self.run_dir)
        self.lock = threading.RLock()  # one step at a time: a query waits for a warm-up still loading models

    def warm_up(self, model: str = "fine_tuned") -> None:
        """Load CLIP, the captioner and the reporter's tables and run each once, so the first query is fast."""
        from medxpert_utils.report import icd10
        from medxpert_utils.report.context import ReportContext
        from medxpert_utils.report.generate import captioner, search_engine
        from medxpert_utils.report.offline import RetrievalReporter

        with self.lock:
            hits = search_engine(self.run_dir, model).search_text("no acute cardiopulmonary process", 2)
            RetrievalReporter.from_config(self.cfg).report(ReportContext.build(hits, k=2))
            icd10.describe("J90")  # loads the ICD-10-CM tables (seconds), which only reports with findings need
            blip = captioner(self.cfg)
            if blip is not None:
                blip.caption([Image.new("L", (64, 64))])

    def search(self, model: str, k: int, image: Image.Image | None = None, text: str | None = None) -> list:
        """Top ``k`` distinct studies (twice as many hits are fetched, then one per study kept, as diagnose does)."""
        from medxpert_utils.report.context import ReportContext
        from medxpert_utils.report.generate import search_engine

        with self.lock:
            engine = search_engine(self.run_dir, model)  # cached per (run, model); loads CLIP on first use
            hits = engine.search_image(image, 2 * k) if image is not None else engine.search_text(text, 2 * k)
        return ReportContext.build(hits, k=k).cases

    def caption(self, image: Image.Image) -> str:
        from medxpert_utils.errors import MissingModelError
        from medxpert_utils.report.generate import captioner

        with self.lock:
            model = captioner(self.cfg)
            if model is None:
                raise MissingModelError("this run has no captioning model (notebook 04_blip_captions did not run)")
            return model.caption([image])[0]

    def report(self, *, hits: Sequence[Any], image: Image.Image | None, text: str | None, question: str | None,
               k: int, generator: str, model: str, caption: str | None) -> Any:
        from medxpert_utils.report.context import ReportContext
        from medxpert_utils.report.gemini import GeminiReporter
        from medxpert_utils.report.offline import RetrievalReporter

        context = ReportContext.build(hits, query_text=text, question=question, caption=caption, image=image,
                                      query_name="uploaded image" if image is not None else None, k=k)
        offline = RetrievalReporter.from_config(self.cfg)
        # No response cache here: it would keep the user's question in the run folder.
        reporter = GeminiReporter(self.cfg.llm, fallback=offline, cache_dir=None) if generator == "gemini" else offline
        with self.lock:
            return reporter.report(context)


def gemini_available(environ: dict[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return any(environ.get(name, "").strip() for name in KEY_ENV)


# --- widgets -------------------------------------------------------------------------------------

def header() -> widgets.HTML:
    """The page's styles and the not-for-clinical-use notice, first thing on the page."""
    return widgets.HTML(f'{CSS}<p class="mx-banner mx-disclaimer">{esc(DISCLAIMER)}</p>')


def run_picker(options: list[tuple[str, str]], value: str | None) -> widgets.Dropdown:
    return widgets.Dropdown(options=options, value=value if value in {v for _, v in options} else None,
                            description="Run", layout=widgets.Layout(width="480px"))


def upload_button() -> widgets.FileUpload:
    return widgets.FileUpload(accept=ACCEPT, multiple=False, description="Upload X-ray",
                              tooltip="PNG, JPEG or DICOM chest X-ray")


def query_box() -> widgets.Textarea:
    return widgets.Textarea(placeholder="Free-text query, or a question (ending in ?) about the query or the uploaded "
                                        "image, e.g. 'signs of pneumonia?'",
                            description="Query", layout=widgets.Layout(width="480px", height="60px"))


def k_slider(default: int) -> widgets.IntSlider:
    return widgets.IntSlider(value=default, min=1, max=50, description="Top K", continuous_update=False)


def model_toggle() -> widgets.ToggleButtons:
    return widgets.ToggleButtons(options=MODELS, value="fine_tuned", description="CLIP",
                                 style={"button_width": "90px", "description_width": "50px"})


def gemini_checkbox(available: bool) -> tuple[widgets.Checkbox, widgets.HTML]:
    box = widgets.Checkbox(value=available, disabled=not available, description="Use Gemini for the report", indent=False)
    note = ("" if available else "No GEMINI_API_KEY / GOOGLE_API_KEY set: the offline retrieval reporter writes the report.")
    return box, widgets.HTML(f'<span class="mx-note">{esc(note)}</span>')


def action_button(label: str, style: str = "", icon: str = "") -> widgets.Button:
    return widgets.Button(description=label, button_style=style, icon=icon)


def status_line() -> tuple[widgets.IntProgress, widgets.HTML, widgets.HTML]:
    progress = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="200px", visibility="hidden"))
    return progress, widgets.HTML(), widgets.HTML()


def image_view() -> widgets.Image:
    return widgets.Image(format="png", layout=widgets.Layout(max_width="320px"))


def section(title: str, *children: widgets.Widget) -> widgets.VBox:
    return widgets.VBox([widgets.HTML(f"<h3 style='margin:6px 0 2px'>{esc(title)}</h3>"), *children])


# --- the app -------------------------------------------------------------------------------------

class Dashboard:
    """Holds the widgets and the state of one page; ``.app`` is the widget tree to display."""

    def __init__(self, run_dir: str | os.PathLike | None = None, backend_factory: Callable[[Path], Any] = Backend,
                 environ: dict[str, str] | None = None, warm_up: bool = False):
        self.backend_factory, self.warm_up = backend_factory, warm_up
        self.warm_thread: threading.Thread | None = None
        self.environ = os.environ if environ is None else environ
        self.backend: Any = None
        self.run_dir: Path | None = None
        self.image: Image.Image | None = None
        self.hits: list = []
        self.report: Any = None
        self.timings: dict[str, float] = {}
        self.max_upload_mb, self.save_uploads = 20.0, False
        pick_error = None
        try:
            selected = pick_run(run_dir, self.environ)
        except UserError as exc:
            selected, pick_error = None, str(exc)

        self.title = header()
        self.runs = run_picker(run_options(selected), str(Path(selected).resolve()) if selected else None)
        self.run_message = widgets.HTML()
        self.upload = upload_button()
        self.clear_button = action_button("Clear image", icon="times")
        self.query = query_box()
        self.k = k_slider(5)
        self.model = model_toggle()
        self.gemini, self.gemini_note = gemini_checkbox(gemini_available(self.environ))
        self.search_button = action_button("Search", "primary", "search")
        self.progress, self.status, self.error = status_line()
        self.query_image = image_view()
        self.caption = widgets.HTML()
        self.gallery = widgets.HTML()
        self.report_view = widgets.HTML()
        self.downloads = widgets.HTML()
        self.log = widgets.Output(layout=widgets.Layout(max_height="160px", overflow="auto"))
        self.image_section = section("Query image", self.query_image, self.caption)
        self.report_section = section("Diagnosis report (research only)", self.report_view, self.downloads)
        self.gallery_section = section("Similar cases", self.gallery)

        self.runs.observe(self._on_run_change, names="value")
        self.upload.observe(self._on_upload, names="value")
        self.search_button.on_click(self._on_search)
        self.clear_button.on_click(self._on_clear)
        self.query.observe(lambda change: self._set_error(""), names="value")

        details = widgets.Accordion(children=[self.log], titles=("Log",), selected_index=None)
        self.app = widgets.VBox([
            self.title,
            widgets.HBox([self.runs, self.run_message]),
            widgets.HBox([self.upload, self.clear_button]),
            self.query,
            widgets.HBox([self.k, self.model]),
            widgets.HBox([self.gemini, self.gemini_note]),
            widgets.HBox([self.search_button, self.progress, self.status]),
            self.error,
            widgets.HBox([self.image_section, self.report_section],
                         layout=widgets.Layout(align_items="flex-start", grid_gap="24px")),
            self.gallery_section,
            details,
        ], layout=widgets.Layout(padding="4px"))
        self.app.dashboard = self  # tests and notebooks reach the controls through the returned widget
        self.set_run(Path(self.runs.value) if self.runs.value else selected)
        if pick_error:
            self.run_message.value = f'<span class="mx-error">{esc(pick_error)}</span>'

    # run selection
    def set_run(self, run_dir: Path | None) -> None:
        """Switch to ``run_dir``: new backend, params, and a message instead of controls when it is not ready."""
        self.run_dir = Path(run_dir) if run_dir else None
        self.backend = None
        self._clear_results(keep_image=False)
        self._set_error("")
        problem = run_problem(self.run_dir, self.model.value)
        if problem is None:
            try:
                from medxpert_utils import config

                params = config.from_run(self.run_dir).params
                board = params.dashboard
                self.k.value = board.default_k
                self.max_upload_mb, self.save_uploads = board.max_upload_mb, board.save_uploads
                # Gemini is offered whenever a key is set; it starts ticked unless the run chose offline reports.
                self.gemini.value = not self.gemini.disabled and params.report.generator != "offline"
            except UserError as exc:
                problem = str(exc)
        self.run_message.value = (f'<span class="mx-error mx-run-problem">{esc(problem)}</span>' if problem else
                                  f'<span class="mx-note">{esc(display_run(self.run_dir))}</span>')
        if problem is None:
            self.backend = self.backend_factory(self.run_dir)
        for control in (self.upload, self.clear_button, self.query, self.k, self.model, self.search_button):
            control.disabled = problem is not None
        self.status.value = "" if problem else _READY
        if problem is None and self.warm_up and hasattr(self.backend, "warm_up"):
            self._start_warm_up()

    def _start_warm_up(self) -> None:
        """Load the models in a background thread; the page stays usable and a query waits for it."""
        backend, model = self.backend, self.model.value
        self.status.value = '<span class="mx-note mx-warming">Loading the models in the background ...</span>'

        def work() -> None:
            try:
                backend.warm_up(model)
            except Exception:  # the first query shows the problem as a one-line message
                traceback.print_exc(file=sys.__stderr__)
            if self.backend is backend and "mx-warming" in self.status.value:
                self.status.value = _READY

        self.warm_thread = threading.Thread(target=work, name="medxpert-warm-up", daemon=True)
        self.warm_thread.start()

    def _on_run_change(self, change: dict) -> None:
        with self.log:
            self._guard(lambda: self.set_run(Path(change["new"]) if change["new"] else None))

    # inputs
    def _on_upload(self, change: dict) -> None:
        if not change["new"]:
            return  # our own reset below
        with self.log:
            self._guard(lambda: self.load_upload(change["new"]))

    def load_upload(self, value: Sequence[dict] | dict) -> None:
        """Validate and decode an upload, show it, then search, caption and report on it."""
        self._set_error("")
        try:
            upload = read_upload(value, self.max_upload_mb)
            image = decode_upload(upload, self.max_upload_mb) if upload else None
        except UserError as exc:
            self.image = None
            self._clear_results(keep_image=False)
            self._set_error(str(exc))
            return
        finally:
            self.upload.value = ()  # the widget keeps no copy of the file; re-uploading the same file works
        if image is None:
            return
        self.image = image
        self.query_image.value = png_bytes(image)
        self.image_section.layout.display = ""
        if self.save_uploads and self.run_dir is not None:
            from medxpert_utils import io

            png = png_bytes(image, max(image.size))  # pixels only: no DICOM header, no file name
            io.write_bytes(self.run_dir / "uploads" / f"{hashlib.sha256(png).hexdigest()[:16]}.png", png)
        self.analyse()

    def _on_search(self, _button: widgets.Button | None = None) -> None:
        with self.log:
            self._guard(self.analyse)

    def _on_clear(self, _button: widgets.Button | None = None) -> None:
        with self.log:
            self._guard(self.clear_image)

    def clear_image(self) -> None:
        """Forget the uploaded image and its results; the next search uses the text."""
        self.image = None
        self._clear_results(keep_image=False)
        self._set_error("")

    # the work
    def analyse(self) -> None:
        """Search with the loaded image (the text is then the question) or with the text; caption; report."""
        text = self.query.value.strip()
        if self.backend is None:
            self._set_error(run_problem(self.run_dir, self.model.value) or "No run selected.")
            return
        if self.image is None and not text:
            self._set_error("Empty query: type a question or description, or upload a chest X-ray.")
            return
        if len(text) > MAX_QUERY_CHARS:
            self._set_error(f"The query is {len(text)} characters long; keep it under {MAX_QUERY_CHARS}.")
            return
        self._set_error("")
        self._clear_results(keep_image=self.image is not None)
        image, model, k = self.image, self.model.value, int(self.k.value)
        generator = "gemini" if (self.gemini.value and not self.gemini.disabled) else "offline"
        steps = ["Searching", *(["Captioning"] if image is not None else []), "Writing the report"]
        self.timings, done = {}, ""
        self._busy(True, len(steps))
        try:
            t0 = time.perf_counter()
            self._step("Searching")
            hits = self.backend.search(model, k, image=image, text=None if image is not None else text)
            self.timings["search"] = time.perf_counter() - t0
            self.hits = hits
            self.gallery.value = gallery_html(hits, self.run_dir)
            self.gallery_section.layout.display = ""
            caption = None
            if image is not None:
                t1 = time.perf_counter()
                self._step("Captioning")
                try:
                    caption = self.backend.caption(image)
                    self.caption.value = f'<p><b>Caption:</b> <span class="mx-caption">{esc(caption)}</span></p>'
                except UserError as exc:
                    self.caption.value = f'<p class="mx-note">No caption: {esc(exc)}</p>'
                self.timings["caption"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            self._step("Writing the report")
            self.report = self._make_report(hits, image, text, k, generator, model, caption)
            self.timings["report"] = time.perf_counter() - t2
            self.report_view.value = report_html(self.report, hits)
            self.downloads.value = self._download_links(hits, self.report)
            self.report_section.layout.display = ""
            self.timings["total"] = time.perf_counter() - t0
            what = "the image" if image is not None else f"'{text[:60]}'"
            parts = ", ".join(f"{step} {secs:.2f} s" for step, secs in self.timings.items() if step != "total")
            done = (f'<span class="mx-done">{len(hits)} matches for {esc(what)} in {self.timings["total"]:.2f} s'
                    f'</span> <span class="mx-note">({parts})</span>')
        finally:
            self._busy(False)
            self.status.value = done  # empty when a step failed: its message is on the error line

    def _make_report(self, hits: list, image: Image.Image | None, text: str, k: int, generator: str, model: str,
                     caption: str | None) -> Any:
        # With an image the text is a question about it; a text query is also a question when it ends with '?'.
        question = (text or None) if image is not None else (text if text.endswith("?") else None)
        kwargs = dict(hits=hits, image=image, text=None if image is not None else text, question=question, k=k,
                      model=model, caption=caption)
        if generator == "gemini":
            try:
                report = self.backend.report(generator="gemini", **kwargs)
            except Exception as exc:  # any Gemini failure: say so, keep going with the offline reporter
                self._set_error(f"Gemini failed ({_one_line(exc)}); the offline reporter wrote this report instead.")
            else:
                if "fallback" in str(getattr(report, "generator", "")):  # the Gemini reporter fell back itself
                    self._set_error(f"Gemini failed; the report comes from {report.generator}.")
                return report
        return self.backend.report(generator="offline", **kwargs)

    def _download_links(self, hits: list, report: Any) -> str:
        payload = to_json(report)
        return ("<p>" + download_link(payload, "medxpert_report.json", "application/json", "Download report (JSON)")
                + download_link(hits_csv(hits), "medxpert_hits.csv", "text/csv", "Download matches (CSV)") + "</p>")

    # page state helpers
    def _guard(self, action: Callable[[], None]) -> None:
        """Run a callback; user errors become the page's error line, bugs a short line (traceback to the server log)."""
        try:
            action()
        except UserError as exc:
            self._set_error(str(exc))
        except Exception as exc:  # a bug: keep the page alive, tell the user, log the details for the operator
            traceback.print_exc(file=sys.__stderr__)
            self._set_error(f"Something went wrong: {_one_line(exc)}. The dashboard is still running; "
                            "details are in the server log.")

    def _set_error(self, message: str) -> None:
        self.error.value = f'<p class="mx-error mx-message">{esc(message)}</p>' if message else ""

    def _busy(self, busy: bool, steps: int = 1) -> None:
        for control in (self.search_button, self.upload, self.clear_button, self.runs):
            control.disabled = busy
        self.progress.max, self.progress.value = max(steps, 1), 0
        self.progress.layout.visibility = "visible" if busy else "hidden"
        if not busy and self.backend is None:
            self.search_button.disabled = self.upload.disabled = True

    def _step(self, label: str) -> None:
        self.status.value = f'<span class="mx-working">{esc(label)} ...</span>'
        self.progress.value = min(self.progress.value + 1, self.progress.max)

    def _clear_results(self, keep_image: bool) -> None:
        self.hits, self.report = [], None
        for view in (self.caption, self.gallery, self.report_view, self.downloads):
            view.value = ""
        self.report_section.layout.display = self.gallery_section.layout.display = "none"
        if not keep_image:
            self.image_section.layout.display = "none"


_READY = '<span class="mx-note mx-ready">Ready: upload an X-ray or type a query.</span>'


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def build_app(run_dir: str | os.PathLike | None = None, backend_factory: Callable[[Path], Any] = Backend,
              warm_up: bool = False) -> widgets.Widget:
    """The dashboard as one widget; ``run_dir`` None picks the run from the URL, ``MEDXPERT_RUN`` or the latest.

    ``warm_up`` loads the models in a background thread right away (the served page does; a papermill
    run of the notebook does not). The returned widget's ``.dashboard`` attribute is the
    :class:`Dashboard` holding its controls.
    """
    return Dashboard(run_dir, backend_factory=backend_factory, warm_up=warm_up).app


# --- serving -------------------------------------------------------------------------------------

def free_port(start: int = 8866, host: str = "127.0.0.1") -> int:
    """The first port from ``start`` that nothing listens on."""
    for port in range(start, start + 100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex((host, port)) != 0:
                return port
    raise UserError(f"no free port in {start}-{start + 99}: pass --port")


def voila_command(port: int, notebook: Path = NOTEBOOK) -> list[str]:
    """The Voilà command serving the dashboard on 127.0.0.1 only (code cells hidden, no tracebacks)."""
    return [sys.executable, "-m", "voila", "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
            "--VoilaConfiguration.show_tracebacks=False", "--VoilaConfiguration.strip_sources=True", str(notebook)]


def serve(run: str | None = None, port: int | None = None) -> int:
    """Serve notebook 06 with Voilà on 127.0.0.1 and print its URL; returns Voilà's exit code."""
    env = dict(os.environ)
    if run:
        run_dir = resolve_run_dir(run)
        problem = run_problem(run_dir)
        if problem:
            raise UserError(problem)
        env["MEDXPERT_RUN"] = str(run_dir)
    port = port or free_port()
    print(f"MedXpert dashboard: http://127.0.0.1:{port}/  (Ctrl+C stops it)", flush=True)
    process = subprocess.Popen(voila_command(port), cwd=PROJECT_ROOT, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medxpert_utils.dashboard", description="Serve the MedXpert dashboard.")
    parser.add_argument("--run", help="run name under outputs/ or a path (default: the latest finished run)")
    parser.add_argument("--port", type=int, help="port on 127.0.0.1 (default: the first free from 8866)")
    args = parser.parse_args(argv)
    try:
        return serve(args.run, args.port)
    except UserError as exc:
        print(f"medxpert dashboard: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
