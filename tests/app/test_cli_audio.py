"""``medxpert search --audio`` and ``medxpert diagnose --audio``: a synthesised spoken query is transcribed, the
JSON carries the transcript (each word with its confidence), an unsure side word stops the command with one line
naming the queries it may have been, and bad audio is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medxpert_utils.app.cli import main
from medxpert_utils.assistant import Assistant
from medxpert_utils.report.schema import DiagnosisReport
from medxpert_utils.speech import BACKENDS
from medxpert_utils.speech.audio import to_wav
from medxpert_utils.speech.synth import synthesise
from medxpert_utils.speech.transcript import Question, Transcript, Word
from tests.retrieval.test_embed import make_indexed_run

pytestmark = pytest.mark.slow  # builds tiny CLIP models


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_indexed_run(tmp_path_factory.mktemp("cli_audio") / "run").run_dir


@pytest.fixture(scope="module")
def query_wav(tmp_path_factory):
    return synthesise("left pleural effusion", tmp_path_factory.mktemp("audio") / "query.wav", voice="en-us+klatt4",
                      speed=150, lead_seconds=0.3)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("medxpert: error: ") and "\n" not in err and "Traceback" not in err
    return err


def _words_match_the_text(transcript: dict) -> None:
    """The transcript's ``words``: one {text, confidence} per word of its text, the confidence 0..1 or None."""
    words = transcript["words"]
    assert isinstance(words, list) and all(set(w) == {"text", "confidence"} for w in words)
    assert [w["text"] for w in words] == transcript["text"].split()
    assert all(w["confidence"] is None or 0 <= w["confidence"] <= 1 for w in words)
    assert isinstance(transcript["ask"], list)


def test_search_audio_json_carries_the_transcript(run, query_wav, capsys):
    assert main(["search", "--run", str(run), "--audio", str(query_wav), "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["query", "transcript", "query_check", "hits"]
    transcript = out["transcript"]
    assert transcript["text"] == out["query"] == "left pleural effusion"
    assert transcript["backend"] in BACKENDS and 1.0 < transcript["seconds"] < 4.0
    assert set(transcript) == {"text", "backend", "seconds", "elapsed_s", "model", "words", "ask"}
    _words_match_the_text(transcript)
    assert transcript["ask"] == []  # an unsure side word would have stopped the command
    # the same hits as the typed query
    assert main(["search", "--run", str(run), "--text", "left pleural effusion", "-k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"] == out["hits"]


def test_search_audio_table_says_what_was_heard(run, query_wav, capsys):
    assert main(["search", "--run", str(run), "--audio", str(query_wav), "-k", "2"]) == 0
    captured = capsys.readouterr()
    heard = captured.err.strip().splitlines()[0]
    assert heard.startswith("heard (") and heard.replace("?", "").endswith(": left pleural effusion")
    assert captured.out.strip()


def test_diagnose_audio_json_is_the_report_plus_the_transcript(run, query_wav, capsys):
    assert main(["diagnose", "--run", str(run), "--audio", str(query_wav), "--generator", "offline", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == set(DiagnosisReport.model_fields) | {"transcript"}
    assert data["transcript"]["text"] == "left pleural effusion"
    _words_match_the_text(data["transcript"])
    DiagnosisReport.model_validate({k: v for k, v in data.items() if k != "transcript"})


@pytest.mark.parametrize("content, message", [
    (b"", "is empty (0 bytes)"),
    (to_wav(np.zeros(16000)), "is silent"),
    (b"not audio at all" * 20, "is not a readable audio file"),
    (to_wav(np.tile([0.3, -0.3], 16000 * 16)), "more than the 30 s limit (params asr.max_seconds)"),
])
def test_bad_audio_is_one_line(run, tmp_path, capsys, content, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    for command in ("search", "diagnose"):
        assert main([command, "--run", str(run), "--audio", str(path)]) == 2
        assert message in _one_line_error(capsys)


def test_missing_audio_file(run, tmp_path, capsys):
    assert main(["search", "--run", str(run), "--audio", str(tmp_path / "nope.wav")]) == 2
    assert "audio file not found" in _one_line_error(capsys)


def test_audio_and_text_are_exclusive(run, query_wav, capsys):
    with pytest.raises(SystemExit):
        main(["search", "--run", str(run), "--audio", str(query_wav), "--text", "x"])
    assert "not allowed with argument" in capsys.readouterr().err


def _hearing(monkeypatch, transcript: Transcript) -> None:
    monkeypatch.setattr(Assistant, "transcribe", lambda self, audio, name=None: transcript)


def _transcript(text: str, confidences: dict[int, float], ask: tuple[Question, ...] = ()) -> Transcript:
    words = tuple(Word(w, confidences.get(i, 0.9)) for i, w in enumerate(text.split()))
    return Transcript(text, "hybrid", 1.5, 0.2, "moonshine", words, ask)


@pytest.mark.parametrize("command", ["search", "diagnose"])
def test_an_unsure_side_word_stops_with_the_queries_it_may_be(run, query_wav, capsys, monkeypatch, command):
    missing = Question(1, "", ("left", "right", ""), "maybe missing")
    _hearing(monkeypatch, _transcript("moderate pneumothorax", {}, (missing,)))
    assert main([command, "--run", str(run), "--audio", str(query_wav), "--json"]) == 2
    assert _one_line_error(capsys) == (
        "medxpert: error: heard 'moderate pneumothorax' but a side word may be missing (left, right or none?) - rerun "
        "with --text and the query you meant: 'moderate left pneumothorax', 'moderate right pneumothorax', "
        "'moderate pneumothorax'")


def test_a_side_word_heard_with_low_confidence_stops_too(run, query_wav, capsys, monkeypatch):
    low = Question(0, "right", ("right", "left", "bilateral"), "low confidence")
    level = Question(1, "lower", ("lower", "upper", "middle"), "heard differently")
    _hearing(monkeypatch, _transcript("right lower lobe opacity", {0: 0.3}, (low, level)))
    assert main(["search", "--run", str(run), "--audio", str(query_wav)]) == 2
    err = _one_line_error(capsys)
    assert ("heard 'right lower lobe opacity' but 'right' was heard with low confidence (right, left or bilateral?); "
            "also unsure: 'lower' - rerun with --text") in err
    assert err.endswith("'right lower lobe opacity', 'left lower lobe opacity', 'bilateral lower lobe opacity'")


def test_low_confidence_words_are_marked_on_the_heard_line(run, query_wav, capsys, monkeypatch):
    _hearing(monkeypatch, _transcript("left pleural effusion", {1: 0.2}))
    assert main(["search", "--run", str(run), "--audio", str(query_wav), "-k", "2"]) == 0
    captured = capsys.readouterr()
    assert "s of audio): left pleural? effusion" in captured.err and captured.out.strip()
