"""The hybrid recogniser's parts: Moonshine's tokenizer and ONNX copies, the biased language model (the same
numbers as pocketsphinx's own builder), the combination of the two transcripts, and the whole recogniser hearing
everyday and medical words on a run."""

from __future__ import annotations

import math
import re

import pytest

from medxpert_utils.core import config, runs
from medxpert_utils.core.errors import UserError
from medxpert_utils.speech import Transcriber, moonshine, sphinx
from medxpert_utils.speech.hybrid import combine, first_words
from medxpert_utils.speech.synth import synthesise
from medxpert_utils.speech.transcript import Word
from tests.retrieval.test_embed import write_manifest


def W(text: str, *probs: float) -> list[Word]:
    words = text.split()
    return [Word(w, p) for w, p in zip(words, probs or [0.9] * len(words))]


def test_combine_takes_the_first_pass_where_it_is_sure_and_the_second_is_not():
    # PocketSphinx lost "upper part of the" (it never saw those words); Moonshine was sure of them
    second = W("mass in the left lung", 0.9, 0.9, 0.9, 0.9, 0.9)
    first = W("mass in the upper part of the left lung", 0.9, 0.9, 0.9, 0.95, 0.9, 0.9, 0.9, 0.9, 0.9)
    assert " ".join(w.text for w in combine(second, first)) == "mass in the upper part of the left lung"
    # Moonshine misspells the medical word (unsure): PocketSphinx's stays
    second = W("left pleural effusion", 0.9, 0.5, 0.9)
    first = W("left plural effusion", 0.9, 0.4, 0.9)
    assert [w.text for w in combine(second, first)] == ["left", "pleural", "effusion"]
    # both sure and different: PocketSphinx (the run's language) wins
    assert [w.text for w in combine(W("pleural", 0.9), W("plural", 0.99))] == ["pleural"]
    # agreeing words keep the higher confidence
    assert [w.confidence for w in combine(W("left lung", 0.3, 0.9), W("left lung", 0.8, 0.2))] == [0.8, 0.9]


def test_first_pass_words_are_normalised_like_the_runs_language():
    words = first_words([Word("Left", 0.9), Word("3rd", 0.8), Word("X-ray.", 0.7)])
    assert [(w.text, w.confidence) for w in words] == [("left", 0.9), ("third", 0.8), ("x", 0.7), ("ray", 0.7)]


def test_the_arpa_writer_gives_pocketsphinx_builders_numbers():
    import io

    from pocketsphinx.lm import ArpaBoLM

    sentences = ["left pleural effusion", "small left pleural effusion", "no pleural effusion", "left lung is clear",
                 "left pleural effusion"]
    builder = ArpaBoLM(text="\n".join(sentences) + "\n", add_start=True, discount_mass=0.1)
    builder.compute()
    buf = io.StringIO()
    builder.write(buf)

    def entries(text: str) -> dict[tuple[str, ...], tuple[float, ...]]:
        """(words) -> (log10 probability[, log10 backoff]) of each n-gram in an ARPA file."""
        out, n = {}, 0
        for line in text.splitlines():
            if match := re.fullmatch(r"\\(\d)-grams:", line.strip()):
                n = int(match.group(1))
            elif n and len(parts := line.split()) >= n + 1:
                out[tuple(parts[1:1 + n])] = tuple(float(x) for x in [parts[0], *parts[1 + n:]])
        return out

    ours, theirs = entries(sphinx.arpa(sphinx.count(sentences))), entries(buf.getvalue())
    assert ours.keys() == theirs.keys() and len(ours) > 20
    for key, values in theirs.items():
        assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(ours[key], values)), key
    # weighted counts are repeated sentences
    assert sphinx.count(["a b"], weight=3)[1][("a", "b")] == 3 == sphinx.count(["a b"] * 3)[1][("a", "b")]


def test_moonshine_tokenizer_and_onnx_copies(tmp_path):
    tokens = moonshine.read_tokens(moonshine.wheel_models() / "tokenizer.bin")
    assert len(tokens) == 32000 and tokens[1] == b"<s>" and tokens[2] == b"</s>"
    assert tokens[3] == b"\x00" and tokens[3 + 0x41] == b"A"  # byte fallback tokens
    folder = moonshine.prepare(cache=tmp_path)
    made = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.onnx")}
    assert set(made) == {"encoder_model.onnx", "decoder_model_merged.onnx"}
    assert moonshine.prepare(cache=tmp_path) == folder  # reused, not rewritten
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.onnx")} == made
    assert not list(tmp_path.rglob("*.tmp*"))


def test_moonshine_missing_is_one_line(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"needs the moonshine_cpp package .* pip install moonshine_cpp, or set "
                                        r"asr.backend: pocketsphinx"):
        moonshine.wheel_models()


@pytest.fixture(scope="module")
def run_cfg(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("hybrid") / "run"
    cfg = runs.prepare(config.load("smoke", run=str(run_dir)))
    write_manifest(cfg, 12, run_dir / "images")
    return cfg


def test_hybrid_hears_everyday_and_medical_words(run_cfg, tmp_path):
    assert run_cfg.asr.backend == "hybrid"
    transcriber = Transcriber(run_cfg)
    for text in ("left pleural effusion", "is there fluid in the left chest"):
        path = synthesise(text, tmp_path / f"{len(text)}.wav", voice="en-us+klatt4", speed=150, lead_seconds=0.3)
        heard = transcriber.transcribe(path)
        assert heard.text == text, heard
        assert heard.backend == "hybrid" and [w.text for w in heard.words] == text.split()
        assert all(0.0 <= w.confidence <= 1.0 for w in heard.words) and heard.ask == ()
    # PocketSphinx with the run's language alone mishears the question ("is there fluid is a left chest")
    alone = config.load("smoke", run=str(run_cfg.run_dir), overrides={"asr.backend": "pocketsphinx"})
    assert Transcriber(alone).transcribe(path).text != "is there fluid in the left chest"
