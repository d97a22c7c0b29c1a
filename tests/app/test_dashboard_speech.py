"""Spoken questions in the dashboard, driven in Python: the record button's recording and an uploaded audio file
become an editable query and a search; words heard with low confidence are marked; an unsure side or level word is
asked about (a button per choice) before searching; bad audio and a refused microphone are one line on the page."""

from __future__ import annotations

import base64
import re

import pytest

from medxpert_utils.app import dashboard
from medxpert_utils.app.dashboard.recorder import decode_data_url
from medxpert_utils.core.errors import AudioError
from medxpert_utils.speech import Transcript
from medxpert_utils.speech.transcript import Question, Word
from tests.app.test_dashboard import FakeAssistant, _fabricate_run, _png, _text, _upload_value


def _heard(text: str, confidences: dict[int, float | None] | None = None, ask: tuple[Question, ...] = ()) -> Transcript:
    """A transcript of ``text``: every word heard with confidence 0.9 unless ``confidences`` says otherwise."""
    words = tuple(Word(w, (confidences or {}).get(i, 0.9)) for i, w in enumerate(text.split()))
    return Transcript(text, "hybrid", 1.5, 0.2, "en-us", words, ask)


class SpeakingAssistant(FakeAssistant):
    heard = _heard("left pleural effusion")

    def __init__(self, run_dir):
        super().__init__(run_dir)
        self.queue: list[Transcript] = []  # transcripts to hear first, one per recording (then ``heard``)

    def transcribe(self, audio, name=None):
        self.calls.append(("transcribe", bytes(audio[:4]), name))
        if audio == b"silence":
            raise AudioError(f"{name} is silent - check the microphone (is it muted?) and record the query again")
        return self.queue.pop(0) if self.queue else self.heard


def _board(run_dir):
    return dashboard.Dashboard(run_dir, assistant_factory=SpeakingAssistant).app.dashboard


def _record(board, content: bytes, mime: str = "audio/webm;codecs=opus") -> None:
    """What the browser's recorder sends: a data URL, then the count of recordings goes up."""
    board.recorder.data_url = f"data:{mime};base64,{base64.b64encode(content).decode()}"
    board.recorder.count += 1


def _searches(board) -> list[str | None]:
    """The text of each search the page ran."""
    return [call[-1] for call in board.assistant.calls if call[0] == "search"]


def _asked(board) -> tuple[str, list]:
    """The open question's prompt and its choice buttons (the question area must be showing)."""
    assert board.ask.layout.display == "" and "mx-ask" in board.ask._dom_classes
    prompt, *buttons = board.ask.children
    assert buttons and all("mx-ask-choice" in b._dom_classes for b in buttons)
    return _text(prompt), buttons


def _no_question(board) -> bool:
    return board.ask.layout.display == "none" and not board.ask.children and board.asking is None


SIDE = ("right", "left", "bilateral")


def test_a_recording_becomes_the_query_and_searches(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs))
    assert not board.recorder.disabled and board.recorder.max_seconds == 30
    _record(board, b"RIFFfake-webm")
    calls = board.assistant.calls
    assert calls[0] == ("transcribe", b"RIFF", "recording.webm")
    assert board.query.value == "left pleural effusion"  # editable: it is the query box's value
    assert ("search", "fine_tuned", 4, False, "left pleural effusion") in calls
    assert board.gallery.value.count('class="mx-card"') == 4 and board.error.value == ""
    assert "Heard (hybrid, 1.5 s" in _text(board.heard) and "left pleural effusion" in _text(board.heard)
    assert "mx-unsure" not in board.heard.value and board.ask.layout.display == "none" and not board.ask.children
    # the user corrects the transcript and searches again
    board.query.value = "right pleural effusion"
    board.search_button.click()
    assert calls[-2][:1] == ("search",) and calls[-2][-1] == "right pleural effusion"


def test_an_uploaded_audio_file_is_heard(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs))
    board.audio_upload.value = _upload_value(b"fLaC-data", name="question.flac")
    assert board.assistant.calls[0] == ("transcribe", b"fLaC", "question.flac")
    assert board.query.value == "left pleural effusion" and board.audio_upload.value == ()
    assert board.gallery.value.count('class="mx-card"') == 4


def test_bad_audio_is_one_line_and_nothing_is_searched(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs))
    board.query.value = "typed before"
    _record(board, b"silence")
    assert "recording.webm is silent - check the microphone" in _text(board.error)
    assert board.query.value == "typed before" and board.gallery.value == ""
    assert not any(call[0] == "search" for call in board.assistant.calls)


def test_a_refused_microphone_says_what_to_do(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs))
    board.recorder.error = "no microphone: NotAllowedError"
    assert "Recording failed (no microphone: NotAllowedError): allow the microphone" in _text(board.error)


def test_no_run_disables_the_record_button(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs, stages_ok=False))
    assert board.recorder.disabled and board.audio_upload.disabled


@pytest.mark.parametrize("url, message", [
    ("", "did not arrive"),
    ("data:audio/webm;base64,@@@not-base64", "arrived damaged"),
])
def test_a_damaged_recording_is_refused(url, message):
    with pytest.raises(AudioError, match=message):
        decode_data_url(url)


def test_data_url_names_the_container():
    assert decode_data_url("data:audio/ogg;codecs=opus;base64,T2dnUw==") == (b"OggS", "recording.ogg")
    assert decode_data_url("data:;base64,AAAA")[1] == "recording.webm"


# --- unsure words ----------------------------------------------------------------------------------


def test_words_heard_with_low_confidence_are_marked(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs))
    # 'pleural' below asr.min_confidence (0.5), 'small' without a measure; no side or level word: no question
    board.assistant.queue.append(_heard("small pleural effusion", {0: None, 1: 0.3, 2: 0.5}))
    _record(board, b"RIFFfake-webm")
    marked = re.findall(r'<mark class="mx-unsure" title="heard with low confidence">([^<]*)</mark>', board.heard.value)
    assert marked == ["pleural"]
    assert "small pleural effusion" in _text(board.heard) and _no_question(board)
    assert _searches(board) == ["small pleural effusion"]


def test_the_marking_threshold_is_the_runs_asr_min_confidence(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs, name="lenient", asr__min_confidence=0.2))
    assert board.min_confidence == 0.2
    board.assistant.queue.append(_heard("small <pleural> effusion", {1: 0.3}))
    _record(board, b"RIFFfake-webm")
    assert "mx-unsure" not in board.heard.value and "&lt;pleural&gt;" in board.heard.value  # escaped


def test_an_unsure_side_word_is_asked_before_searching(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs))
    board.assistant.queue.append(_heard("right upper lobe opacity", {0: 0.3},
                                        (Question(0, "right", SIDE, "low confidence"),)))
    _record(board, b"RIFFfake-webm")
    assert _searches(board) == [] and board.gallery.value == "" and board.error.value == ""
    assert board.query.value == "right upper lobe opacity"  # the heard text, editable
    assert re.findall(r'class="mx-unsure"[^>]*>([^<]*)<', board.heard.value) == ["right"]
    prompt, buttons = _asked(board)
    assert prompt == "Heard 'right' with low confidence: which side?"
    assert [b.description for b in buttons] == ["right", "left", "bilateral"]
    assert "Not searched yet" in _text(board.status)
    buttons[1].click()
    assert board.query.value == "left upper lobe opacity"
    assert _searches(board) == ["left upper lobe opacity"] and _no_question(board)
    assert board.gallery.value.count('class="mx-card"') == 4 and "matches for" in _text(board.status)
    buttons[0].click()  # a button of an answered question does nothing
    assert _searches(board) == ["left upper lobe opacity"]


def test_every_question_is_answered_before_searching(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs))
    board.assistant.queue.append(_heard("right lower lobe", ask=(
        Question(0, "right", SIDE, "low confidence"),
        Question(1, "lower", ("lower", "upper", "middle"), "heard differently"))))
    _record(board, b"RIFFfake-webm")
    prompt, first = _asked(board)
    assert prompt == "Heard 'right' with low confidence: which side? (1 of 2)"
    first[0].click()
    prompt, second = _asked(board)
    assert prompt == "Heard 'lower', but it may have been 'upper': which level? (2 of 2)"
    assert _searches(board) == []
    first[2].click()  # the first question's buttons are stale now
    assert _searches(board) == [] and _asked(board)[0].endswith("(2 of 2)")
    second[1].click()
    assert board.query.value == "right upper lobe" and _searches(board) == ["right upper lobe"]
    assert _no_question(board)


def test_a_maybe_missing_side_word_answered_none_searches_as_heard(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs))
    board.assistant.queue.append(_heard("moderate pneumothorax", ask=(
        Question(1, "", ("left", "right", "bilateral", ""), "maybe missing"),)))
    _record(board, b"RIFFfake-webm")
    prompt, buttons = _asked(board)
    assert prompt == "A side word may be missing after 'moderate': which side?"
    assert [b.description for b in buttons] == ["left", "right", "bilateral", "none"]
    assert _searches(board) == []
    buttons[-1].click()
    assert board.query.value == "moderate pneumothorax" and _searches(board) == ["moderate pneumothorax"]
    assert _no_question(board)


def test_a_new_recording_clears_the_open_question(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs))
    board.assistant.queue += [
        _heard("moderate pneumothorax", ask=(Question(1, "", ("left", "right", "bilateral", ""), "maybe missing"),)),
        _heard("right effusion", ask=(Question(0, "right", SIDE, "low confidence"),))]
    _record(board, b"RIFFfake-webm")
    _, stale = _asked(board)
    _record(board, b"RIFFagain")  # a second unsure recording replaces the first one's question
    prompt, _ = _asked(board)
    assert prompt == "Heard 'right' with low confidence: which side?" and board.query.value == "right effusion"
    stale[0].click()  # the first recording's question is gone: its buttons do nothing
    assert _searches(board) == [] and _asked(board)[0] == prompt and board.query.value == "right effusion"
    _record(board, b"RIFFthird")  # heard: left pleural effusion, nothing unsure
    assert _no_question(board) and "Not searched yet" not in _text(board.status)
    assert board.query.value == "left pleural effusion" and _searches(board) == ["left pleural effusion"]


@pytest.mark.parametrize("how", ["typing", "search", "upload"])
def test_typing_searching_or_uploading_clears_the_open_question(isolated_dirs, how):
    board = _board(_fabricate_run(isolated_dirs))
    board.assistant.queue.append(_heard("right effusion", ask=(Question(0, "right", SIDE, "low confidence"),)))
    _record(board, b"RIFFfake-webm")
    _asked(board)
    if how == "typing":
        board.query.value = "bilateral effusion"
        assert _searches(board) == []
    elif how == "search":
        board.search_button.click()
        assert _searches(board) == ["right effusion"]  # the heard text, as it stands in the query box
    else:
        board.upload.value = _upload_value(_png(3, 64))
        assert board.image is not None
    assert _no_question(board)
