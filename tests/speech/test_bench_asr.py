"""The speech benchmark's own arithmetic: side and level swaps (a lost side counts unless asked about), and the
synthesiser's noise at the signal-to-noise ratio asked for."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from medxpert_utils.core.paths import PROJECT_ROOT
from medxpert_utils.speech.audio import load_audio
from medxpert_utils.speech.synth import Voice, speak

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
import bench_asr  # noqa: E402


def row(query: str, heard: str, asked: bool) -> dict:
    return {"query": query, "heard": heard, "asked": asked, "voice": "flite:slt", "condition": "normal"}


def test_side_figures_count_unasked_swaps_and_lost_sides():
    rows = [row("left pleural effusion", "left pleural effusion", False),  # right
            row("right upper lobe pneumonia", "right lower lobe pneumonia", False),  # swap
            row("moderate right pneumothorax", "moderate pneumothorax", False),  # lost side: a swap
            row("moderate right pneumothorax", "moderate pneumothorax", True),  # lost but asked: no swap
            row("left lung mass", "left lung mass", True),  # right, asked anyway
            row("cardiomegaly", "cardio medially", False)]  # no side word: not counted
    figures = bench_asr.side_figures(rows)
    assert figures["recordings"] == 5 and figures["swaps"] == 2 and figures["wrong_side_words"] == 3
    assert figures["asked"] == 0.4 and figures["asked_when_right"] == 0.5
    assert [r["heard"] for r in figures["swapped"]] == ["right lower lobe pneumonia", "moderate pneumothorax"]
    assert bench_asr.sides("Left upper lobe and right base") == ["left", "upper", "right"]


def test_query_sets_do_not_overlap():
    assert not set(bench_asr.IN_CORPUS) & set(bench_asr.OUT_OF_CORPUS)
    assert not set(bench_asr.DEV_QUERIES) & (set(bench_asr.IN_CORPUS) | set(bench_asr.OUT_OF_CORPUS))
    assert {v.engine for v in bench_asr.VOICES} == {"espeak-ng", "flite", "festival"}


def test_speak_adds_noise_at_the_ratio_asked(tmp_path):
    import wave

    def samples(path) -> np.ndarray:
        with wave.open(str(path)) as f:
            return np.frombuffer(f.readframes(f.getnframes()), "<i2").astype(np.float64), f.getframerate()

    voice = Voice("espeak-ng", "en-us")
    clean, rate = samples(speak("left pleural effusion", tmp_path / "clean.wav", voice, lead_seconds=0.5))
    noisy, _ = samples(speak("left pleural effusion", tmp_path / "noisy.wav", voice, snr_db=20, lead_seconds=0.5))
    assert len(noisy) == len(clean) and np.abs(clean[: int(0.45 * rate)]).max() == 0  # the lead is silence
    speech = clean[np.abs(clean) > 0.05 * np.abs(clean).max()]
    snr = 10 * np.log10(np.mean(speech ** 2) / np.mean((noisy - clean)[int(0.5 * rate):] ** 2))
    assert 19.5 < snr < 20.5
    assert load_audio(tmp_path / "noisy.wav").seconds == pytest.approx(len(noisy) / rate, abs=0.01)
    with pytest.raises(Exception, match="unknown synthesiser 'say'"):
        speak("x", tmp_path / "x.wav", Voice("say", "alex"))
