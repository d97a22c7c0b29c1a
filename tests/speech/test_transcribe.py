"""The one speech-to-text entry: PocketSphinx on the run's language hears a synthesised query; Whisper fails the
way CLIP and BLIP do when it cannot load (never swapped for PocketSphinx); no words heard is one line."""

from __future__ import annotations

import pytest

from medxpert_utils.core import config, runs
from medxpert_utils.core.errors import AudioError, MissingModelError
from medxpert_utils.speech import Transcriber, transcribe
from medxpert_utils.speech.synth import synthesise
from medxpert_utils.speech.transcribe import Heard
from medxpert_utils.speech.transcript import Word
from tests.retrieval.test_embed import write_manifest


@pytest.fixture(scope="module")
def run_cfg(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("speech") / "run"
    cfg = runs.prepare(config.load("smoke", run=str(run_dir), overrides={"asr.backend": "pocketsphinx"}))
    write_manifest(cfg, 12, run_dir / "images")
    return cfg


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spoken")
    return {text: synthesise(text, folder / f"{text.replace(' ', '_')}.wav", voice="en-us+klatt4", speed=150,
                             lead_seconds=0.3)
            for text in ("left pleural effusion", "signs of pneumonia")}


def test_pocketsphinx_hears_the_runs_language(run_cfg, spoken):
    assert run_cfg.asr.backend == "pocketsphinx"
    transcriber = Transcriber(run_cfg)
    for text, path in spoken.items():
        heard = transcriber.transcribe(path)
        assert heard.text == text
        assert heard.backend == "pocketsphinx" and 1.0 < heard.seconds < 4.0 and heard.elapsed_s > 0
    models = list((run_cfg.run_dir / "asr").glob("*/lm.arpa"))
    assert len(models) == 1 and (models[0].parent / "words.dict").is_file()
    # a second recogniser for the same run reuses the language model it finds
    built = models[0].stat().st_mtime_ns
    assert transcribe(spoken["signs of pneumonia"].read_bytes(), run_cfg).text == "signs of pneumonia"
    assert models[0].stat().st_mtime_ns == built
    assert heard.to_dict()["backend"] == "pocketsphinx"
    # each word with its lattice posterior; PocketSphinx alone has no second hypothesis to check sides against
    assert [w.text for w in heard.words] == heard.text.split() and all(0 <= w.confidence <= 1 for w in heard.words)


def test_nothing_heard_is_one_line(run_cfg, spoken):
    transcriber = Transcriber(run_cfg)
    transcriber.engine = lambda audio: Heard([Word("  ", 0.5)], [])
    with pytest.raises(AudioError, match=r"no words recognised in .*left_pleural_effusion.wav \(\d\.\d s\) - speak"):
        transcriber.transcribe(spoken["left pleural effusion"])


def test_bad_audio_never_reaches_the_recogniser(run_cfg):
    transcriber = Transcriber(run_cfg)
    with pytest.raises(AudioError, match="is empty"):
        transcriber.transcribe(b"", name="query.wav")
    assert transcriber.engine is None


@pytest.mark.parametrize("model, message", [
    ("openai/whisper-tiny.en", "cannot load Whisper model 'openai/whisper-tiny.en': no network and not in the "
                               "Hugging Face cache"),
    ("./no/such/whisper", "Whisper model folder not found: ./no/such/whisper"),
])
def test_whisper_that_cannot_load_is_one_line_not_a_swap(run_cfg, spoken, model, message):
    cfg = config.load("smoke", run=str(run_cfg.run_dir), overrides={"asr.backend": "whisper", "asr.model": model})
    with pytest.raises(MissingModelError) as err:
        transcribe(spoken["signs of pneumonia"], cfg)
    assert message in str(err.value) and "asr.model" in str(err.value) and "\n" not in str(err.value)


def test_whisper_decodes_greedily_and_briefly_unless_told(run_cfg, spoken, monkeypatch):
    # transformers' ASR pipeline would search 5 beams for up to 256 tokens; a query box uses asr.num_beams (1) and
    # asr.max_new_tokens
    from types import SimpleNamespace

    import transformers

    from medxpert_utils.models import whisper

    calls = []

    def fake_pipeline(task, **kwargs):
        def run(inputs, generate_kwargs):
            calls.append(generate_kwargs)
            return {"text": " left pleural effusion "}
        return run

    monkeypatch.setattr(whisper, "load_whisper", lambda spec, device=None: (
        SimpleNamespace(device="cpu"), SimpleNamespace(tokenizer=None, feature_extractor=None)))
    monkeypatch.setattr(transformers, "pipeline", fake_pipeline)
    cfg = config.load("smoke", run=str(run_cfg.run_dir), overrides={"asr.backend": "whisper"})
    assert Transcriber(cfg).transcribe(spoken["left pleural effusion"]).text == "left pleural effusion"
    wide = config.load("smoke", run=str(run_cfg.run_dir), overrides={"asr.backend": "whisper", "asr.num_beams": 5,
                                                                     "asr.max_new_tokens": 40})
    Transcriber(wide).transcribe(spoken["left pleural effusion"])
    assert calls == [{"max_new_tokens": 96, "num_beams": 1}, {"max_new_tokens": 40, "num_beams": 5}]
