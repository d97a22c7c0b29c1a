"""The dashboard driven in Python, without a server: run selection, uploads, queries, report, downloads.

Most tests use a fabricated run folder and a stand-in assistant (similar cases/caption/report) so they check the
page logic alone in milliseconds; ``test_smoke_run_end_to_end`` drives the real assistant on the smoke run.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medxpert_utils.app import dashboard
from medxpert_utils.app.dashboard import inputs, server
from medxpert_utils.app.dashboard import render as dashboard_render
from medxpert_utils.assistant import QueryImage
from medxpert_utils.core import config, runs
from medxpert_utils.core.errors import UserError
from medxpert_utils.core.notices import DISCLAIMER
from medxpert_utils.report.schema import DiagnosisReport, Finding, Icd10Code
from medxpert_utils.retrieval.ood import QueryCheck, gate_reason
from medxpert_utils.viz import html as viz_html


def _png(seed: int = 0, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def _fabricate_run(outputs: Path, name: str = "fab", stages_ok: bool = True, with_index: bool = True,
                   default_k: int = 4, **overrides) -> Path:
    """A run folder with what the dashboard checks for (run.json, manifest, index, embeddings, images)."""
    overrides = {"dashboard.default_k": default_k, **{k.replace("__", "."): v for k, v in overrides.items()}}
    cfg = runs.prepare(config.load("params/smoke.yaml", outputs / name, overrides))
    cfg.paths.manifest.parent.mkdir(parents=True, exist_ok=True)
    cfg.paths.manifest.write_bytes(b"")
    if with_index:
        for model in ("fine_tuned", "zero_shot"):
            cfg.paths.index(model).mkdir(parents=True)
            cfg.paths.embeddings(model).mkdir(parents=True)
    images = cfg.run_dir / "images"
    images.mkdir()
    for i in range(12):
        (images / f"s{i}.png").write_bytes(_png(i))
    for stage in ("00_data_prep", "01_clip_finetune", "02_embed_index"):
        runs.record_stage(cfg.run_dir, stage, status="ok" if stages_ok else "failed")
    runs.update(cfg.run_dir, updated=runs.now())
    return cfg.run_dir


class FakeHit:
    def __init__(self, rank: int, run_dir: Path):
        self.rank, self.score, self.study_id = rank, 1.0 - rank / 10, f"s{rank}"
        self.report = f"Case {rank}: small right pleural effusion <b>not bold</b>."
        self.image_path = str(run_dir / "images" / f"s{rank}.png")
        self.labels = {"Pleural Effusion": 1, "Pneumothorax": 0}

    def to_dict(self) -> dict:
        return dict(rank=self.rank, score=self.score, study_id=self.study_id, report=self.report,
                    image_path=self.image_path, labels=self.labels)


class FakeAssistant:
    """Records calls; fails the way the real modules do on request."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.calls = run_dir, []

    warm_gate = threading.Event()  # the background warm-up waits for this (set: no waiting)
    warm_gate.set()

    def warm_up(self, model):
        assert self.warm_gate.wait(10)
        self.calls.append(("warm_up", model))

    def check_query(self, *, image=None, text=None, model="fine_tuned", facts=None):
        """The real gates on the upload's facts; a black image or a question about France is unlike the corpus."""
        if text is not None:
            far = "france" in text.lower()
            return QueryCheck(not far, float(far), 0.5, "words in no report" if far else "known words", "text")
        query = QueryImage.of(image)  # the page hands over the upload's query image
        gate = gate_reason(facts or query.facts, 0.06)
        far = float(np.asarray(query.image).mean() < 10)
        return QueryCheck(gate is None and not far, far, 0.5, gate or ("unlike the training images" if far else "ok"))

    def similar_cases(self, *, image=None, text=None, k=5, model="fine_tuned"):
        self.calls.append(("search", model, k, image is not None, text))
        return [FakeHit(rank, self.run_dir) for rank in range(1, k + 1)]

    def caption(self, image):
        self.calls.append(("caption", QueryImage.of(image).size))
        return "right pleural effusion"

    def explain(self, image, text, model="fine_tuned", method=None):
        self.calls.append(("explain", text))
        w, h = QueryImage.of(image).size
        ramp = np.linspace(0, 1, w, dtype=np.float32)  # a question's map is hottest at the right edge, a finding's
        return np.tile(ramp if text.endswith("?") else ramp[::-1], (h, 1))  # at the left

    @staticmethod
    def finding_phrases(report):
        return [f"{f.location} {f.name.lower()}" for f in report.findings if f.status != "absent"]

    def write_report(self, hits, *, image=None, text=None, question=None, caption=None, k=None, generator="auto",
                     cache=True):
        assert not cache  # the page never keeps the user's question in the run folder
        self.calls.append(("report", generator, question, caption))
        if generator == "gemini":
            raise RuntimeError("503 Service Unavailable from the Gemini API\nlong trace")
        ids = [h.study_id for h in hits]
        return DiagnosisReport(
            findings=[Finding(name="Pleural Effusion", status="present", location="right", severity="small",
                              evidence=ids[:2], confidence=0.8)],
            impression="Small right pleural effusion.", overall_severity="moderate",
            suggestions=["Compare with prior imaging."],
            icd10=[Icd10Code(code="J90", description="Pleural effusion, NEC")],
            supporting_study_ids=ids, generator="offline-retrieval", question=question,
            answer="Yes" if question else None, caption=caption)


def _board(run_dir: Path | None, **environ) -> dashboard.Dashboard:
    app = dashboard.build_app(run_dir, assistant_factory=FakeAssistant) if not environ else None
    if environ:
        app = dashboard.Dashboard(run_dir, assistant_factory=FakeAssistant, environ=environ).app
    assert app.dashboard.app is app
    return app.dashboard


def _upload_value(content: bytes, name: str = "xray.png") -> tuple[dict, ...]:
    return ({"name": name, "type": "image/png", "size": len(content), "content": memoryview(content),
             "last_modified": datetime(2024, 1, 1, tzinfo=UTC)},)


def _text(widget) -> str:
    """What the page shows for an HTML widget: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", widget.value))


def _decode_link(html_text: str, filename: str) -> bytes:
    match = re.search(rf'download="{re.escape(filename)}" href="data:[^;]+;base64,([^"]+)"', html_text)
    assert match, f"no download link for {filename}"
    return base64.b64decode(match.group(1))


# --- run selection ---------------------------------------------------------------------------------

def test_pick_run_order_query_string_env_latest(isolated_dirs, monkeypatch):
    old = _fabricate_run(isolated_dirs, "old")
    new = _fabricate_run(isolated_dirs, "new")
    unfinished = _fabricate_run(isolated_dirs, "broken", stages_ok=False)
    runs.update(unfinished, updated="9999")  # newest, but not finished: never picked by default
    assert inputs.pick_run(None, {}) == new
    assert inputs.pick_run(None, {"MEDXPERT_RUN": "old"}) == old
    assert inputs.pick_run(None, {"QUERY_STRING": "run=old&x=1", "MEDXPERT_RUN": "new"}) == old
    assert inputs.pick_run("new", {"QUERY_STRING": "run=old"}) == new  # papermill's RUN wins
    with pytest.raises(UserError, match="not a run name"):
        inputs.pick_run(None, {"QUERY_STRING": "run=../../etc"})


def test_no_run_and_missing_stage_messages(isolated_dirs):
    board = _board(None)
    assert "run ./run_all.sh first" in board.run_message.value
    assert board.search_button.disabled and board.upload.disabled

    partial = _fabricate_run(isolated_dirs, "partial", with_index=False)
    board = _board(partial)
    assert ("outputs/partial is missing index/fine_tuned: run 02_embed_index first "
            "(./run_all.sh --run partial --until 02)") in board.run_message.value
    assert board.assistant is None and board.search_button.disabled

    board = _board(isolated_dirs / "nope")
    assert "outputs/nope is missing" in board.run_message.value


def test_a_run_with_random_weights_says_so_above_everything(isolated_dirs):
    rehearsal = _fabricate_run(isolated_dirs, "rehearsal", clip__model="random:openai/clip-vit-base-patch32",
                               asr__backend="whisper", asr__model="random:openai/whisper-small.en")
    board = _board(rehearsal)
    shown = _text(board.run_message)
    assert "Random weights: this run's models (openai/clip-vit-base-patch32, openai/whisper-small.en)" in shown
    assert "mean nothing" in shown and not board.search_button.disabled
    plain = _board(_fabricate_run(isolated_dirs, "plain"))
    assert "Random weights" not in _text(plain.run_message)
    labels = dict(plain.runs.options)
    assert "rehearsal (smoke, random weights, " in next(k for k in labels if k.startswith("rehearsal"))
    assert "random weights" not in next(k for k in labels if k.startswith("plain"))


def test_run_picker_lists_runs_and_switches(isolated_dirs):
    first = _fabricate_run(isolated_dirs, "first", default_k=3)
    second = _fabricate_run(isolated_dirs, "second", default_k=7)
    _fabricate_run(isolated_dirs, "partial", with_index=False)
    board = _board(first)
    labels = [label for label, _ in board.runs.options]
    assert {label.split()[0] for label in labels} == {"first", "second", "partial"}
    assert board.runs.value == str(first.resolve()) and board.k.value == 3
    board.runs.value = str(second.resolve())
    assert board.run_dir == second.resolve() and board.k.value == 7 and not board.search_button.disabled
    board.runs.value = str((isolated_dirs / "partial").resolve())
    assert "run 02_embed_index first" in board.run_message.value and board.search_button.disabled
    # runs recorded without stage keys (or with stale ones) are marked in the picker
    assert all("stale" in label for label, _ in board.runs.options if "finished" in label)


def test_query_string_picks_run_and_bad_name_is_a_message(isolated_dirs):
    _fabricate_run(isolated_dirs, "a")
    b = _fabricate_run(isolated_dirs, "b")
    runs.update(isolated_dirs / "a", updated="9999")
    board = _board(None, QUERY_STRING="run=b")
    assert board.run_dir == b.resolve()
    board = _board(None, QUERY_STRING="run=../secret")
    assert "not a run name" in board.run_message.value


# --- queries ---------------------------------------------------------------------------------------

def test_text_query_shows_k_cards_report_and_downloads(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs))
    board.k.value = 6
    board.query.value = "signs of pleural effusion?"
    board.search_button.click()
    assert board.error.value == ""
    assert board.gallery.value.count('class="mx-card"') == 6
    assert "<b>not bold</b>" not in board.gallery.value  # report text is escaped
    assert 'src="data:image/png;base64,' in board.gallery.value  # thumbnails inline
    assert "Pleural Effusion" in board.report_view.value and "J90" in board.report_view.value
    assert DISCLAIMER in board.report_view.value and DISCLAIMER in board.title.value
    assert 'href="#mx-hit-s1"' in board.report_view.value and 'id="mx-hit-s1"' in board.gallery.value
    assert "offline-retrieval" in board.report_view.value
    assert "6 matches" in board.status.value and board.progress.layout.visibility == "hidden"
    report = json.loads(_decode_link(board.downloads.value, "medxpert_report.json"))
    assert report["findings"][0]["name"] == "Pleural Effusion" and report["disclaimer"] == DISCLAIMER
    rows = list(csv.DictReader(io.StringIO(_decode_link(board.downloads.value, "medxpert_hits.csv").decode())))
    assert [r["study_id"] for r in rows] == [f"s{i}" for i in range(1, 7)] and rows[0]["Pleural Effusion"] == "1"
    assert board.assistant.calls[0] == ("search", "fine_tuned", 6, False, "signs of pleural effusion?")


def test_empty_query_message_and_recovery(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs))
    board.query.value = "   "
    board.search_button.click()
    assert "Empty query" in board.error.value and board.gallery.value == ""
    board.query.value = "cardiomegaly"
    board.search_button.click()
    assert board.error.value == "" and board.gallery.value.count('class="mx-card"') == 4


def test_upload_corrupt_then_good(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs))
    board.upload.value = _upload_value(b"\x89PNG\r\n\x1a\nthis is not really a png", "broken.png")
    assert "cannot read image 'broken.png'" in _text(board.error)
    assert board.gallery.value == "" and board.image is None and board.upload.value == ()
    assert "Traceback" not in board.error.value

    board.query.value = "is there an effusion?"
    board.upload.value = _upload_value(_png(3, 64))
    assert board.error.value == ""
    assert board.image is not None and bytes(board.query_image.value).startswith(b"\x89PNG")
    assert board.image_section.layout.display == ""
    assert "right pleural effusion" in board.caption.value
    assert board.gallery.value.count('class="mx-card"') == 4
    assert "Question:" in board.report_view.value and "is there an effusion?" in board.report_view.value
    search, caption, report = [c for c in board.assistant.calls if c[0] in ("search", "caption", "report")][-3:]
    assert search[3] is True and search[4] is None  # searched by image; the text became the question
    assert report == ("report", "offline", "is there an effusion?", "right pleural effusion")
    assert set(board.timings) == {"check", "search", "caption", "report", "heatmaps", "total"}

    board.clear_button.click()
    assert board.image is None and board.gallery.value == "" and board.image_section.layout.display == "none"


@pytest.mark.parametrize("content, name, reason", [
    (None, "grace_hopper.jpg", "a colour image"),
    (np.zeros((64, 64), np.uint8), "black.png", "unlike the training images"),
])
def test_an_unlike_upload_shows_a_banner_not_a_report(isolated_dirs, content, name, reason):
    import matplotlib.cbook as cbook

    data = (open(cbook.get_sample_data(name, asfileobj=False), "rb").read() if content is None
            else _encode(Image.fromarray(content)))
    board = _board(_fabricate_run(isolated_dirs))
    board.query.value = "is there an effusion?"
    board.upload.value = _upload_value(data, name)
    assert board.error.value == "" and board.image is not None
    assert "Not answered" in _text(board.check_view) and reason in _text(board.check_view)
    assert board.report_view.value == "" and board.downloads.value == "" and board.caption.value == ""
    assert not any(call[0] in ("report", "caption") for call in board.assistant.calls)  # no report, no Gemini
    assert board.report_section.layout.display == "" and board.gallery_section.layout.display == "none"
    assert "Not answered" in board.status.value
    board.show_hits_button.click()  # the cases, on request
    assert board.gallery_section.layout.display == "" and board.gallery.value.count('class="mx-card"') == 4
    board.clear_button.click()
    board.query.value = "small right pleural effusion"
    board.search_button.click()  # a good query afterwards: the report again, no banner
    assert board.check_view.value == "" and "Pleural Effusion" in board.report_view.value


def test_a_text_query_unlike_the_reports_gets_the_banner(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs))
    board.query.value = "What is the capital of France?"
    board.search_button.click()
    assert "Not answered: this query" in _text(board.check_view) and board.report_view.value == ""


def _encode(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_too_large_and_not_an_image(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs))
    board.max_upload_mb = 0.001
    board.upload.value = _upload_value(_png(1, 256))
    assert "MB limit" in board.error.value and board.image is None
    board.max_upload_mb = 20
    board.upload.value = _upload_value(b"patient notes, not an image", "notes.txt")
    assert "a text file" in board.error.value


def test_dicom_upload_is_shown_without_its_header(isolated_dirs, monkeypatch):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = generate_uid()
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName, ds.PatientID = "Doe^Jane", "P-12345"
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = np.tile(np.arange(32, dtype=np.uint16) * 100, (32, 1)).tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    board = _board(_fabricate_run(isolated_dirs))
    reads, real_read = [], pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **kw: reads.append(1) or real_read(*a, **kw))
    encodes, real_png = [], viz_html.png_bytes
    monkeypatch.setattr(viz_html, "png_bytes", lambda image, max_side=384: encodes.append(max_side)
                        or real_png(image, max_side))
    board.query.value = "is there an effusion?"
    board.upload.value = _upload_value(buffer.getvalue(), "study.dcm")
    assert board.error.value == "" and board.image is not None
    assert reads == [1]  # one parse for the picture, the check's facts, the search, caption, report and heatmaps
    assert board.upload_query.facts.dicom and "Pleural Effusion" in board.report_view.value
    board.heat_choice.value = "off"
    board.search_button.click()  # asked again: the same query image, its display PNG kept
    board.heat_choice.value = "off"
    assert bytes(board.query_image.value) == board.upload_query.png() and encodes.count(384) == 1 and reads == [1]
    shown = np.asarray(Image.open(io.BytesIO(bytes(board.query_image.value))))
    assert shown[0, 0] > shown[0, -1]  # MONOCHROME1: low values shown bright
    page = "".join(w.value for w in (board.caption, board.gallery, board.report_view, board.status, board.downloads))
    assert "Doe" not in page and "P-12345" not in page
    assert not (board.run_dir / "uploads").exists()  # save_uploads is off by default


def test_save_uploads_keeps_pixels_only(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs))
    board.save_uploads = True
    board.upload.value = _upload_value(_png(5, 40), "Doe_Jane_P12345.png")
    saved = list((board.run_dir / "uploads").iterdir())
    assert len(saved) == 1 and "Doe" not in saved[0].name and saved[0].suffix == ".png"
    assert np.array_equal(np.asarray(Image.open(saved[0])), np.asarray(Image.open(io.BytesIO(_png(5, 40)))))


def test_gemini_checkbox_and_failure_falls_back(isolated_dirs):
    run_dir = _fabricate_run(isolated_dirs)
    board = _board(run_dir, MEDXPERT_UNUSED="1")
    assert board.gemini.disabled and not board.gemini.value and "offline" in board.gemini_note.value
    board = _board(run_dir, GEMINI_API_KEY="test-key")
    assert not board.gemini.disabled and board.gemini.value
    board.query.value = "pneumothorax?"
    board.search_button.click()
    assert "Gemini failed (RuntimeError: 503 Service Unavailable from the Gemini API)" in _text(board.error)
    assert "long trace" not in board.error.value
    assert "Pleural Effusion" in board.report_view.value  # the offline report is shown
    assert [c[1] for c in board.assistant.calls if c[0] == "report"] == ["gemini", "offline"]
    offline_run = _fabricate_run(isolated_dirs, "offline_run", report__generator="offline")
    board = _board(offline_run, GEMINI_API_KEY="test-key")
    assert not board.gemini.disabled and not board.gemini.value  # offered, but the run chose offline reports


def test_a_bug_in_a_step_is_one_line_and_the_app_keeps_working(isolated_dirs, capfd):
    board = _board(_fabricate_run(isolated_dirs))
    original = board.assistant.similar_cases
    board.assistant.similar_cases = lambda *a, **kw: (_ for _ in ()).throw(KeyError("boom"))
    board.query.value = "effusion"
    board.search_button.click()
    assert "Something went wrong: KeyError" in board.error.value and "Traceback" not in board.error.value
    assert "KeyError: 'boom'" in capfd.readouterr().err  # the traceback goes to the server log
    assert not board.search_button.disabled and not board.upload.disabled
    board.assistant.similar_cases = original
    board.search_button.click()
    assert board.error.value == "" and board.gallery.value.count('class="mx-card"') == 4


def test_warm_up_runs_in_the_background_and_says_when_ready(isolated_dirs, monkeypatch):
    run_dir = _fabricate_run(isolated_dirs)
    gate = threading.Event()
    monkeypatch.setattr(FakeAssistant, "warm_gate", gate)
    board = dashboard.Dashboard(run_dir, assistant_factory=FakeAssistant, warm_up=True)
    assert "Loading the models in the background" in board.status.value and board.assistant.calls == []
    gate.set()
    board.warm_thread.join(10)
    assert board.assistant.calls == [("warm_up", "fine_tuned")] and "Ready" in board.status.value
    assert dashboard.build_app(run_dir, assistant_factory=FakeAssistant).dashboard.warm_thread is None  # off by default


def test_model_toggle_is_passed_to_search(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs))
    board.model.value = "zero_shot"
    board.query.value = "edema"
    board.search_button.click()
    assert board.assistant.calls[0][1] == "zero_shot"


# --- pure helpers ----------------------------------------------------------------------------------

def test_read_upload_formats_and_limits():
    assert inputs.read_upload((), 1) is None
    up = inputs.read_upload(_upload_value(b"abc", "a.png"), 1)
    assert up == inputs.Upload("a.png", b"abc")
    assert inputs.read_upload({"name": "b.dcm", "content": b"xyz"}, 1).content == b"xyz"
    with pytest.raises(UserError, match="empty"):
        inputs.read_upload(_upload_value(b""), 1)
    with pytest.raises(UserError, match="2.0 MB, more than the 1 MB limit"):
        inputs.read_upload(_upload_value(b"x" * 2 * 2**20), 1)


def test_png_bytes_shrinks_and_scales_16_bit():
    big = Image.fromarray(np.tile(np.arange(1000, dtype=np.uint16) * 60, (500, 1)))
    shown = Image.open(io.BytesIO(viz_html.png_bytes(big, 200)))
    assert max(shown.size) == 200 and shown.mode == "L"
    arr = np.asarray(shown)
    assert arr.min() <= 2 and arr.max() >= 250 and 100 < arr[0, 100] < 155  # scaled, not clipped


def test_download_link_and_csv_round_trip():
    link = dashboard_render.download_link('{"a": "é"}', 'r".json', "application/json", "Get <it>")
    assert 'download="r&quot;.json"' in link and "Get &lt;it&gt;" in link
    payload = base64.b64decode(re.search(r"base64,([^\"]+)", link).group(1)).decode()
    assert json.loads(payload) == {"a": "é"}
    text = dashboard_render.hits_csv([{"rank": 1, "score": 0.5, "study_id": "x", "report": 'a, "b"\nc',
                                "image_path": "p.png", "labels": {"Edema": 1}}])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["report"] == 'a, "b"\nc' and rows[0]["Edema"] == "1" and rows[0]["score"] == "0.5000"


def test_evidence_links_only_whole_study_ids():
    html = dashboard_render.report_html({"findings": [{"name": "Edema", "status": "present",
                                                       "evidence": ["s1", "s10"]}],
                                         "generator": "offline-retrieval"},
                                        [{"study_id": "s1"}, {"study_id": "s10"}])
    assert 'href="#mx-hit-s1">s1<' in html and 'href="#mx-hit-s10">s10<' in html
    assert DISCLAIMER in html


def test_voila_command_is_local_only():
    cmd = server.voila_command(9999)
    assert "--Voila.ip=127.0.0.1" in cmd and "--port=9999" in cmd and cmd[-1].endswith("06_dashboard.ipynb")


# --- the real modules on the smoke run -------------------------------------------------------------

@pytest.mark.slow
def test_smoke_run_end_to_end(smoke_run, monkeypatch):
    monkeypatch.setenv("MEDXPERT_OUTPUTS", str(smoke_run.parent))
    board = dashboard.build_app(smoke_run).dashboard
    assert board.run_message.value and "mx-run-problem" not in board.run_message.value
    board.k.value = 3
    board.query.value = "pleural effusion"
    board.search_button.click()
    assert board.error.value == "", board.error.value
    assert board.gallery.value.count('class="mx-card"') == 3
    assert DISCLAIMER in board.report_view.value
    board.query.value = ""
    image_path = dashboard_render.resolve_image_path(board.hits[0].image_path, smoke_run)
    board.upload.value = _upload_value(Path(image_path).read_bytes())
    assert board.error.value == "", board.error.value
    assert "Caption:" in board.caption.value and board.gallery.value.count('class="mx-card"') == 3
    print("timings (s):", {k: round(v, 3) for k, v in board.timings.items()})


@pytest.mark.slow
def test_smoke_run_gemini_failure_then_success(smoke_run, monkeypatch):
    from tests.fake_gemini import FakeGemini, error

    monkeypatch.setenv("MEDXPERT_OUTPUTS", str(smoke_run.parent))
    monkeypatch.setenv("GEMINI_API_KEY", "dashboard-test-key")
    board = dashboard.build_app(smoke_run).dashboard
    assert not board.gemini.disabled and board.gemini.value
    llm = board.assistant.cfg.params.llm
    llm.max_retries, llm.backoff_s = 1, 0.0
    board.query.value = "pneumothorax?"
    with FakeGemini(script=[error(500)]) as server:
        llm.base_url = server.base_url
        board.search_button.click()
    assert "Gemini failed" in _text(board.error) and "dashboard-test-key" not in board.error.value
    assert "offline-retrieval (fallback" in board.report_view.value and DISCLAIMER in board.report_view.value
    with FakeGemini() as server:  # answers with a valid report built from the prompt's cases
        llm.base_url = server.base_url
        board.search_button.click()
        assert server.requests and server.requests[-1].headers.get("x-goog-api-key") == "dashboard-test-key"
    assert board.error.value == "" and "gemini:" in board.report_view.value
    assert not (smoke_run / "cache" / "llm").exists() or not any((smoke_run / "cache" / "llm").iterdir())


def test_serve_refuses_a_run_that_is_not_ready(isolated_dirs, capsys):
    _fabricate_run(isolated_dirs, "partial", with_index=False)
    assert server.main(["--run", "partial", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "outputs/partial is missing index/fine_tuned: run 02_embed_index first" in err and "Traceback" not in err


def test_free_port_skips_a_busy_port():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert server.free_port(port) != port


def test_upload_shows_a_heatmap_per_query_and_finding(isolated_dirs):
    """With an image: one toggle for the typed question and one per finding; each blends its map on the image."""
    board = _board(_fabricate_run(isolated_dirs))
    board.query.value = "is there an effusion?"
    board.upload.value = _upload_value(_png(3, 64))
    assert board.heat_choice.layout.display == ""
    assert list(board.heat_choice.options) == ["off", "query: is there an effusion?", "right pleural effusion"]
    assert ("explain", "is there an effusion?") in board.assistant.calls
    assert ("explain", "right pleural effusion") not in board.assistant.calls  # a finding's map waits for its toggle
    plain = np.asarray(board.image.convert("RGB")).astype(int)

    def shown() -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(bytes(board.query_image.value))).convert("RGB")).astype(int)

    def warmth(picture: np.ndarray, columns: slice) -> float:  # red minus blue: 0 on a grey image
        return float((picture[:, columns, 0] - picture[:, columns, 2]).mean())

    query_map = shown()  # the fake query map is hottest at the right edge: red there, none at the left
    assert warmth(query_map, slice(-4, None)) > 20 and abs(warmth(query_map, slice(0, 4))) < 5
    assert "is there an effusion?" in _text(board.heat_note) and "Research only" in _text(board.heat_note)
    board.heat_choice.value = "right pleural effusion"
    finding_map = shown()
    assert warmth(finding_map, slice(0, 4)) > 20 and "right pleural effusion" in _text(board.heat_note)
    board.heat_choice.value = "off"
    assert np.abs(shown() - plain).max() <= 1 and board.heat_note.value == ""
    board.heat_choice.value = "right pleural effusion"  # chosen again: the kept map, not a second computation
    assert np.array_equal(shown(), finding_map)
    assert board.assistant.calls.count(("explain", "right pleural effusion")) == 1

    board.clear_button.click()
    assert board.heatmaps == {} and board.heat_choice.layout.display == "none"
    board.query.value = "pleural effusion"  # a text query has no query image: no heatmap
    before = len(board.assistant.calls)
    board.search_button.click()
    assert board.heat_choice.layout.display == "none"
    assert not any(c[0] == "explain" for c in board.assistant.calls[before:])
