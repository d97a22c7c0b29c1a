"""``medxpert search --audio`` and ``medxpert diagnose --audio``: a synthesised spoken query is transcribed, the
JSON carries the transcript, and bad audio is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medxpert_utils.app.cli import main
from medxpert_utils.report.schema import DiagnosisReport
from medxpert_utils.speech.audio import to_wav
from medxpert_utils.speech.synth import synthesise
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


def test_search_audio_json_carries_the_transcript(run, query_wav, capsys):
    assert main(["search", "--run", str(run), "--audio", str(query_wav), "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["query", "transcript", "query_check", "hits"]
    transcript = out["transcript"]
    assert transcript["text"] == out["query"] == "left pleural effusion"
    assert transcript["backend"] == "pocketsphinx" and 1.0 < transcript["seconds"] < 4.0
    assert set(transcript) == {"text", "backend", "seconds", "elapsed_s", "model"}
    # the same hits as the typed query
    assert main(["search", "--run", str(run), "--text", "left pleural effusion", "-k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"] == out["hits"]


def test_search_audio_table_says_what_was_heard(run, query_wav, capsys):
    assert main(["search", "--run", str(run), "--audio", str(query_wav), "-k", "2"]) == 0
    captured = capsys.readouterr()
    assert "heard (pocketsphinx, " in captured.err and "left pleural effusion" in captured.err
    assert captured.out.strip()


def test_diagnose_audio_json_is_the_report_plus_the_transcript(run, query_wav, capsys):
    assert main(["diagnose", "--run", str(run), "--audio", str(query_wav), "--generator", "offline", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == set(DiagnosisReport.model_fields) | {"transcript"}
    assert data["transcript"]["text"] == "left pleural effusion"
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
