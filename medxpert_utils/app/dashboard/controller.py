"""The Voilà dashboard (notebook 06): upload a chest X-ray or type a query, see similar cases and a report.

:func:`build_app` returns the whole app as one ipywidgets tree, built from small functions that each
return a widget and wired with ``observe``/``on_click``; tests drive it without a server. It reads a
finished run and never trains or embeds a corpus: the models load on the first query, or in a
background thread as soon as a served page opens. Every callback reports through widgets in the page (a
status line, an error line and an ``Output``), never through a traceback. Uploads stay in memory unless
``dashboard.save_uploads`` is set, and nothing from a DICOM header is shown or stored.

The page's controls are built in :mod:`.widgets`, what it takes in (the run, uploads) is read by
:mod:`.inputs`, what it renders (HTML, PNG, CSV) lives in :mod:`.render`, and every query goes to the
run's :class:`~medxpert_utils.assistant.Assistant`, as the CLI's do. :mod:`.server` serves notebook 06
with Voilà (``python -m medxpert_utils.app.dashboard``).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from PIL import Image

from medxpert_utils.app.dashboard.inputs import (
    display_run,
    gemini_available,
    pick_run,
    query_image,
    read_upload,
    run_options,
    run_problem,
)
from medxpert_utils.app.dashboard.recorder import Recorder
from medxpert_utils.app.dashboard.render import (
    download_link,
    gallery_html,
    hits_csv,
    query_check_html,
    question_prompt,
    report_html,
    to_json,
    transcript_html,
)
from medxpert_utils.app.dashboard.widgets import (
    action_button,
    ask_box,
    ask_choice,
    ask_prompt,
    audio_upload_button,
    gemini_checkbox,
    header,
    image_view,
    k_slider,
    model_toggle,
    query_box,
    random_banner,
    run_picker,
    section,
    status_line,
    upload_button,
)
from medxpert_utils.assistant import Assistant, QueryImage
from medxpert_utils.core import config, io
from medxpert_utils.core.errors import UserError
from medxpert_utils.speech.transcript import Transcript
from medxpert_utils.viz.html import esc, png_bytes

MAX_QUERY_CHARS = 2000


class Dashboard:
    """Holds the widgets and the state of one page; ``.app`` is the widget tree to display."""

    def __init__(self, run_dir: str | os.PathLike | None = None, assistant_factory: Callable[[Path], Any] = Assistant,
                 environ: dict[str, str] | None = None, warm_up: bool = False):
        self.assistant_factory, self.warm_up = assistant_factory, warm_up
        self.warm_thread: threading.Thread | None = None
        self.environ = os.environ if environ is None else environ
        self.assistant: Any = None
        self.run_dir: Path | None = None
        self.upload_query: QueryImage | None = None  # the uploaded image, decoded once (pixels, facts, its PNG)
        self.check: Any = None
        self.hits: list = []
        self.report: Any = None
        self.timings: dict[str, float] = {}
        self.max_upload_mb, self.save_uploads = 20.0, False
        self.min_confidence = config.AsrParams().min_confidence  # the run's asr.min_confidence once it is read
        self.asking: Transcript | None = None  # a transcript with side or level words to confirm before searching
        self.answers: list[str] = []  # the answers so far, one per question of self.asking
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
        self.recorder = Recorder()
        self.audio_upload = audio_upload_button()
        self.heard = widgets.HTML()
        self.ask = ask_box()
        self.k = k_slider(5)
        self.model = model_toggle()
        self.gemini, self.gemini_note = gemini_checkbox(gemini_available(self.environ))
        self.search_button = action_button("Search", "primary", "search")
        self.progress, self.status, self.error = status_line()
        self.query_image = image_view()
        # Heatmaps over the query image: the typed question and each finding of the report (one toggle each).
        self.heat_choice = widgets.ToggleButtons(options=[HEAT_OFF], value=HEAT_OFF, description="Show where",
                                                 style={"button_width": "auto", "description_width": "80px"})
        self.heat_choice.layout.display = "none"
        self.heat_choice.add_class("mx-heat-choice")
        self.heat_note = widgets.HTML()
        self.heatmaps: dict[str, Any] = {}
        self.heat_model = "fine_tuned"
        self.caption = widgets.HTML()
        self.gallery = widgets.HTML()
        self.report_view = widgets.HTML()
        self.check_view = widgets.HTML()  # the query check's banner when the query is unlike the run's images
        self.show_hits_button = action_button("Show the similar cases anyway", icon="eye")
        self.show_hits_button.layout.display = "none"
        self.downloads = widgets.HTML()
        self.log = widgets.Output(layout=widgets.Layout(max_height="160px", overflow="auto"))
        self.image_section = section("Query image", self.query_image, self.heat_choice, self.heat_note, self.caption)
        self.report_section = section("Diagnosis report (research only)", self.check_view, self.show_hits_button,
                                      self.report_view, self.downloads)
        self.gallery_section = section("Similar cases", self.gallery)

        self.runs.observe(self._on_run_change, names="value")
        self.upload.observe(self._on_upload, names="value")
        self.search_button.on_click(self._on_search)
        self.clear_button.on_click(self._on_clear)
        self.show_hits_button.on_click(self._on_show_hits)
        self.query.observe(self._on_query_edit, names="value")
        self.heat_choice.observe(lambda change: self._guard(lambda: self.show_heatmap(change["new"])), names="value")
        self.recorder.observe(self._on_recording, names="count")
        self.recorder.observe(self._on_recorder_error, names="error")
        self.audio_upload.observe(self._on_audio_upload, names="value")

        details = widgets.Accordion(children=[self.log], titles=("Log",), selected_index=None)
        self.app = widgets.VBox([
            self.title,
            widgets.HBox([self.runs, self.run_message]),
            widgets.HBox([self.upload, self.clear_button]),
            widgets.HBox([self.recorder, self.audio_upload, self.heard]),
            self.ask,
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

    @property
    def image(self) -> Image.Image | None:
        """The uploaded image's grey pixels (None without an upload)."""
        return self.upload_query.image if self.upload_query is not None else None

    # run selection
    def set_run(self, run_dir: Path | None) -> None:
        """Switch to ``run_dir``: a new assistant, params, and a message instead of controls when it is not ready."""
        self.run_dir = Path(run_dir) if run_dir else None
        self.assistant = None
        self.clear_questions()
        self._clear_results(keep_image=False)
        self._set_error("")
        problem = run_problem(self.run_dir, self.model.value)
        random_weights: dict[str, str] = {}
        if problem is None and self.run_dir is not None:
            try:
                cfg = config.from_run(self.run_dir)
                params, random_weights = cfg.params, cfg.random_weights()
                board = params.dashboard
                self.k.value = board.default_k
                self.max_upload_mb, self.save_uploads = board.max_upload_mb, board.save_uploads
                # Gemini is offered whenever a key is set; it starts ticked unless the run chose offline reports.
                self.gemini.value = not self.gemini.disabled and params.report.generator != "offline"
                self.recorder.max_seconds = params.asr.max_seconds
                self.min_confidence = cfg.asr.min_confidence
            except UserError as exc:
                problem = str(exc)
        shown = display_run(self.run_dir) if self.run_dir is not None else ""
        self.run_message.value = (f'<span class="mx-error mx-run-problem">{esc(problem)}</span>' if problem else
                                  f'<span class="mx-note">{esc(shown)}</span>' + random_banner(random_weights))
        if problem is None and self.run_dir is not None:
            self.assistant = self.assistant_factory(self.run_dir)
        for control in (self.upload, self.clear_button, self.query, self.k, self.model, self.search_button,
                        self.recorder, self.audio_upload):
            control.disabled = problem is not None
        self.status.value = "" if problem else _READY
        if problem is None and self.warm_up and hasattr(self.assistant, "warm_up"):
            self._start_warm_up()

    def _start_warm_up(self) -> None:
        """Load the models in a background thread; the page stays usable and a query waits for it."""
        assistant, model = self.assistant, self.model.value
        self.status.value = '<span class="mx-note mx-warming">Loading the models in the background ...</span>'

        def work() -> None:
            try:
                assistant.warm_up(model)
            except Exception:  # the first query shows the problem as a one-line message
                traceback.print_exc(file=sys.__stderr__)
            if self.assistant is assistant and "mx-warming" in self.status.value:
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
        """Validate and decode an upload (once: pixels and facts), show it, then search, caption and report on it."""
        self.clear_questions()
        self._set_error("")
        try:
            upload = read_upload(value, self.max_upload_mb)
            query = query_image(upload, self.max_upload_mb) if upload else None
        except UserError as exc:
            self.upload_query = None
            self._clear_results(keep_image=False)
            self._set_error(str(exc))
            return
        finally:
            self.upload.value = ()  # the widget keeps no copy of the file; re-uploading the same file works
        if query is None:
            return
        self.upload_query = query
        self.query_image.value = query.png()
        self.image_section.layout.display = ""
        if self.save_uploads and self.run_dir is not None:
            png = query.png(max(query.size))  # pixels only: no DICOM header, no file name
            io.write_bytes(self.run_dir / "uploads" / f"{hashlib.sha256(png).hexdigest()[:16]}.png", png)
        self.analyse()

    # spoken questions
    def _on_recording(self, _change: dict) -> None:
        self.clear_questions()  # a new recording answers them, even one that fails to decode
        with self.log:
            self._guard(lambda: self.hear(*self.recorder.audio()))

    def _on_recorder_error(self, change: dict) -> None:
        if change["new"]:
            self._set_error(f"Recording failed ({change['new']}): allow the microphone, or upload an audio file.")

    def _on_audio_upload(self, change: dict) -> None:
        if not change["new"]:
            return
        self.clear_questions()
        with self.log:
            try:
                self._guard(lambda: self._hear_upload(change["new"]))
            finally:
                self.audio_upload.value = ()

    def _hear_upload(self, value: Sequence[dict] | dict) -> None:
        files = [value] if isinstance(value, dict) else list(value or ())
        if files:
            item = files[-1]
            content = item.get("content", b"")
            self.hear(content.tobytes() if isinstance(content, memoryview) else bytes(content),
                      str(item.get("name") or "audio"))

    def hear(self, audio: bytes, name: str) -> None:
        """Transcribe a spoken question into the query box (editable), then search with it; where a side or level
        word is unsure (``transcript.ask``), ask which one was meant first and search once every question is
        answered."""
        self.clear_questions()
        self._set_error("")
        self.heard.value = ""
        if self.assistant is None:
            self._set_error(run_problem(self.run_dir, self.model.value) or "No run selected.")
            return
        self.status.value = '<span class="mx-working">Transcribing ...</span>'
        try:
            transcript = self.assistant.transcribe(audio, name=name)
        finally:
            self.status.value = ""
        self.query.value = transcript.text
        self.timings = {}
        then = ("answer the question below, or edit the query and press Search" if transcript.ask else
                "edit the query and press Search to correct it")
        self.heard.value = (f'<span class="mx-note mx-heard">Heard ({esc(transcript.backend)}, '
                            f'{transcript.seconds:.1f} s, transcribed in {transcript.elapsed_s:.2f} s): '
                            f'<b class="mx-transcript">{transcript_html(transcript, self.min_confidence)}</b> - '
                            f'{esc(then)}.</span>')
        if transcript.ask:
            self._clear_results(keep_image=self.upload_query is not None)  # no stale results under the question
            self.asking, self.answers = transcript, []
            self._ask_next()
            return
        self.analyse()

    def _ask_next(self) -> None:
        """Show the first unanswered question of ``self.asking`` with one button per choice."""
        asking = self.asking
        assert asking is not None
        index, questions = len(self.answers), asking.ask
        question = questions[index]
        count = f" ({index + 1} of {len(questions)})" if len(questions) > 1 else ""
        buttons = []
        for choice in question.choices:
            button = ask_choice(choice)
            button.on_click(lambda _button, t=asking, i=index, c=choice: self._on_answer(t, i, c))
            buttons.append(button)
        self.ask.children = (ask_prompt(question_prompt(question, asking.text.split()) + count), *buttons)
        self.ask.layout.display = ""
        self.status.value = '<span class="mx-note mx-asking">Not searched yet: answer the question above.</span>'

    def _on_answer(self, asking: Transcript, index: int, choice: str) -> None:
        if asking is not self.asking or index != len(self.answers):
            return  # a button of a question already answered or dropped
        with self.log:
            self._guard(lambda: self.answer(choice))

    def answer(self, choice: str) -> None:
        """Answer the open question; once every question is answered, the chosen words become the query and the
        search runs."""
        if self.asking is None:
            return
        self.answers.append(choice)
        if len(self.answers) < len(self.asking.ask):
            self._ask_next()
            return
        chosen = self.asking.choose(self.answers)
        self.clear_questions()
        self.query.value = chosen.text
        self.analyse()

    def clear_questions(self) -> None:
        """Drop the questions still open (a new query, upload or recording replaces what they were about)."""
        if self.asking is None and not self.ask.children:
            return
        self.asking, self.answers = None, []
        self.ask.children = ()
        self.ask.layout.display = "none"
        if "mx-asking" in self.status.value:
            self.status.value = ""

    def _on_query_edit(self, _change: dict) -> None:
        self._set_error("")
        self.clear_questions()

    def _on_search(self, _button: widgets.Button | None = None) -> None:
        self.clear_questions()
        with self.log:
            self._guard(self.analyse)

    def _on_clear(self, _button: widgets.Button | None = None) -> None:
        with self.log:
            self._guard(self.clear_image)

    def clear_image(self) -> None:
        """Forget the uploaded image and its results; the next search uses the text."""
        self.upload_query = None
        self._clear_results(keep_image=False)
        self._set_error("")

    # the work
    def analyse(self) -> None:
        """Search with the loaded image (the text is then the question) or with the text; caption; report."""
        text = self.query.value.strip()
        if self.assistant is None:
            self._set_error(run_problem(self.run_dir, self.model.value) or "No run selected.")
            return
        if self.upload_query is None and not text:
            self._set_error("Empty query: type a question or description, or upload a chest X-ray.")
            return
        if len(text) > MAX_QUERY_CHARS:
            self._set_error(f"The query is {len(text)} characters long; keep it under {MAX_QUERY_CHARS}.")
            return
        self._set_error("")
        self._clear_results(keep_image=self.upload_query is not None)
        image, model, k = self.upload_query, self.model.value, int(self.k.value)
        generator = "gemini" if (self.gemini.value and not self.gemini.disabled) else "offline"
        steps = ["Checking the query", "Searching", *(["Captioning"] if image is not None else []),
                 "Writing the report", *(["Locating findings"] if image is not None else [])]
        self.timings, done = {}, ""
        self._busy(True, len(steps))
        try:
            t0 = time.perf_counter()
            self._step("Checking the query")
            self.check = check = (self.assistant.check_query(image=image, model=model)
                                  if image is not None else self.assistant.check_query(text=text, model=model))
            self.timings["check"] = time.perf_counter() - t0
            t_search = time.perf_counter()
            self._step("Searching")
            hits = self.assistant.similar_cases(image=image, text=None if image is not None else text, k=k, model=model)
            self.timings["search"] = time.perf_counter() - t_search
            self.hits = hits
            self.gallery.value = gallery_html(hits, self.run_dir)
            if not check.in_distribution:  # no caption, no report (Gemini is never asked); the cases on request
                self.check_view.value = query_check_html(check)
                self.show_hits_button.layout.display = ""
                self.report_section.layout.display = ""
                self.timings["total"] = time.perf_counter() - t0
                done = ('<span class="mx-done mx-not-answered">Not answered: the query is unlike this run\'s '
                        'radiographs</span>')
                return
            self.gallery_section.layout.display = ""
            caption = None
            if image is not None:
                t1 = time.perf_counter()
                self._step("Captioning")
                try:
                    caption = self.assistant.caption(image)
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
            if image is not None:
                t3 = time.perf_counter()
                self._step("Locating findings")
                self.locate(image, text, self.report, model)
                self.timings["heatmaps"] = time.perf_counter() - t3
            self.timings["total"] = time.perf_counter() - t0
            what = "the image" if image is not None else f"'{text[:60]}'"
            parts = ", ".join(f"{step} {secs:.2f} s" for step, secs in self.timings.items() if step != "total")
            done = (f'<span class="mx-done">{len(hits)} matches for {esc(what)} in {self.timings["total"]:.2f} s'
                    f'</span> <span class="mx-note">({parts})</span>')
        finally:
            self._busy(False)
            self.status.value = done  # empty when a step failed: its message is on the error line

    def locate(self, image: QueryImage, text: str, report: Any, model: str) -> None:
        """Heatmaps over the query image for the typed text and each finding of the report (one toggle each):
        the typed text's is computed and shown at once, a finding's when its toggle is first chosen."""
        maps: dict[str, Any] = {}
        try:
            if text:
                maps[f"{HEAT_QUERY}{text[:40]}"] = self.assistant.explain(image, text, model=model)
        except UserError as exc:
            self.heat_note.value = f'<p class="mx-note">No heatmap: {esc(exc)}</p>'
            return
        findings = [p for p in (self.assistant.finding_phrases(report) if report is not None else []) if p not in maps]
        self.heatmaps, self.heat_model = maps, model
        if not maps and not findings:
            self.heat_note.value = '<p class="mx-note">No heatmap: no query text and no finding in the report.</p>'
            return
        first = next(iter(maps), HEAT_OFF)
        self.heat_choice.options = [HEAT_OFF, *maps, *findings]
        self.heat_choice.layout.display = ""
        self.heat_choice.value = first
        self.show_heatmap(first)

    def show_heatmap(self, choice: str) -> None:
        """Show the query image with the chosen heatmap blended on top (or plain, for 'off'); a finding's map is
        computed the first time its toggle is chosen, then kept."""
        from medxpert_utils.retrieval.explain import normalise
        from medxpert_utils.viz.plots import heatmap_overlay

        query = self.upload_query
        if query is None:
            return
        if choice != HEAT_OFF and choice not in self.heatmaps and choice in self.heat_choice.options:
            try:
                self.heatmaps[choice] = self.assistant.explain(query, choice, model=self.heat_model)
            except UserError as exc:
                self.query_image.value = query.png()
                self.heat_note.value = f'<p class="mx-note">No heatmap: {esc(exc)}</p>'
                return
        heat = self.heatmaps.get(choice)
        if heat is None:
            self.query_image.value = query.png()
            self.heat_note.value = ""
            return
        self.query_image.value = png_bytes(Image.fromarray(heatmap_overlay(query.image, normalise(heat))))
        self.heat_note.value = (f'<p class="mx-note mx-heat">Heatmap: where the model matches '
                                f'<b>{esc(choice.removeprefix(HEAT_QUERY))}</b> (red: most similar). '
                                'Research only, not a finding.</p>')

    def _make_report(self, hits: list, image: QueryImage | None, text: str, k: int, generator: str, model: str,
                     caption: str | None) -> Any:
        # With an image the text is a question about it; a text query is also a question when it ends with '?'.
        question = (text or None) if image is not None else (text if text.endswith("?") else None)
        # No response cache: it would keep the user's question in the run folder.
        kwargs = dict(image=image, text=None if image is not None else text, question=question, k=k, caption=caption,
                      cache=False)
        if generator == "gemini":
            try:
                report = self.assistant.write_report(hits, generator="gemini", **kwargs)
            except Exception as exc:  # any Gemini failure: say so, keep going with the offline reporter
                self._set_error(f"Gemini failed ({_one_line(exc)}); the offline reporter wrote this report instead.")
            else:
                if "fallback" in str(getattr(report, "generator", "")):  # the Gemini reporter fell back itself
                    self._set_error(f"Gemini failed; the report comes from {report.generator}.")
                return report
        return self.assistant.write_report(hits, generator="offline", **kwargs)

    def _on_show_hits(self, _button: widgets.Button | None = None) -> None:
        self.gallery_section.layout.display = ""
        self.show_hits_button.layout.display = "none"

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
        for control in (self.search_button, self.upload, self.clear_button, self.runs, self.recorder,
                        self.audio_upload):
            control.disabled = busy
        self.progress.max, self.progress.value = max(steps, 1), 0
        self.progress.layout.visibility = "visible" if busy else "hidden"
        if not busy and self.assistant is None:
            self.search_button.disabled = self.upload.disabled = self.recorder.disabled = True

    def _step(self, label: str) -> None:
        self.status.value = f'<span class="mx-working">{esc(label)} ...</span>'
        self.progress.value = min(self.progress.value + 1, self.progress.max)

    def _clear_results(self, keep_image: bool) -> None:
        self.hits, self.report, self.check = [], None, None
        for view in (self.caption, self.gallery, self.report_view, self.downloads, self.check_view,
                     self.heat_note):
            view.value = ""
        self.show_hits_button.layout.display = "none"
        self.heatmaps = {}
        self.heat_choice.options = [HEAT_OFF]
        self.heat_choice.layout.display = "none"
        if keep_image and self.upload_query is not None:
            self.query_image.value = self.upload_query.png()
        self.report_section.layout.display = self.gallery_section.layout.display = "none"
        if not keep_image:
            self.image_section.layout.display = "none"


HEAT_OFF = "off"
HEAT_QUERY = "query: "
_READY = '<span class="mx-note mx-ready">Ready: upload an X-ray or type a query.</span>'


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def build_app(run_dir: str | os.PathLike | None = None, assistant_factory: Callable[[Path], Any] = Assistant,
              warm_up: bool = False) -> widgets.Widget:
    """The dashboard as one widget; ``run_dir`` None picks the run from the URL, ``MEDXPERT_RUN`` or the latest.

    ``warm_up`` loads the models in a background thread right away (the served page does; a papermill
    run of the notebook does not). The returned widget's ``.dashboard`` attribute is the
    :class:`Dashboard` holding its controls.
    """
    return Dashboard(run_dir, assistant_factory=assistant_factory, warm_up=warm_up).app


