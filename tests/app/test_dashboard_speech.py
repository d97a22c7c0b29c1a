"""Spoken questions in the dashboard, driven in Python: the record button's recording and an uploaded audio file
become an editable query and a search; bad audio and a refused microphone are one line on the page."""

from __future__ import annotations

import base64

import pytest

from medxpert_utils.app import dashboard
from medxpert_utils.app.dashboard.recorder import decode_data_url
from medxpert_utils.core.errors import AudioError
from medxpert_utils.speech import Transcript
from tests.app.test_dashboard import FakeAssistant, _fabricate_run, _text, _upload_value


class SpeakingAssistant(FakeAssistant):
    heard = "left pleural effusion"

    def transcribe(self, audio, name=None):
        self.calls.append(("transcribe", bytes(audio[:4]), name))
        if audio == b"silence":
            raise AudioError(f"{name} is silent - check the microphone (is it muted?) and record the query again")
        return Transcript(self.heard, "pocketsphinx", 1.5, 0.2, "en-us")


def _board(run_dir):
    return dashboard.Dashboard(run_dir, assistant_factory=SpeakingAssistant).app.dashboard


def _record(board, content: bytes, mime: str = "audio/webm;codecs=opus") -> None:
    """What the browser's recorder sends: a data URL, then the count of recordings goes up."""
    board.recorder.data_url = f"data:{mime};base64,{base64.b64encode(content).decode()}"
    board.recorder.count += 1


def test_a_recording_becomes_the_query_and_searches(isolated_dirs):
    board = _board(_fabricate_run(isolated_dirs))
    assert not board.recorder.disabled and board.recorder.max_seconds == 30
    _record(board, b"RIFFfake-webm")
    calls = board.assistant.calls
    assert calls[0] == ("transcribe", b"RIFF", "recording.webm")
    assert board.query.value == "left pleural effusion"  # editable: it is the query box's value
    assert ("search", "fine_tuned", 4, False, "left pleural effusion") in calls
    assert board.gallery.value.count('class="mx-card"') == 4 and board.error.value == ""
    assert "Heard (pocketsphinx, 1.5 s" in _text(board.heard) and "left pleural effusion" in _text(board.heard)
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
