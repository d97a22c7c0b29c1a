"""Speech to text for spoken queries: one entry, :func:`transcribe`, two backends chosen by ``asr.backend``.

- ``pocketsphinx`` (offline; the demo and smoke profiles): PocketSphinx's English acoustic model with a trigram
  language model of the run's own language (its training reports, the labeler's phrases, ways of asking; see
  :mod:`.sphinx`), built once under ``<run>/asr/``.
- ``whisper`` (real profiles): ``asr.model`` (a hub id such as ``openai/whisper-small.en`` or a
  ``save_pretrained`` folder) through transformers' automatic-speech-recognition pipeline, loaded by
  :func:`~medxpert_utils.models.pretrained.load_pretrained` with the one-line hub errors CLIP and BLIP give.

The backend is never swapped: a Whisper model that cannot load is an error naming the fix, not a quiet fall back
to PocketSphinx. Audio problems (empty, silent, corrupt, too long, too large) are one
:class:`~medxpert_utils.core.errors.AudioError` line (see :mod:`.audio`), and so is a recording in which no word
was recognised.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from medxpert_utils.core.errors import AudioError, UserError
from medxpert_utils.speech.audio import RATE, Audio, load_audio
from medxpert_utils.speech.transcript import Transcript, Word, questions

if TYPE_CHECKING:
    from medxpert_utils.core.config import Config

BACKENDS = ("pocketsphinx", "hybrid", "whisper")
PAD_SECONDS = 0.3  # quiet lead-in and tail: PocketSphinx misses a first word that starts on the first frame


class Heard(NamedTuple):
    """An engine's answer: the transcript's words with their confidences, and a second hypothesis of the same audio
    (normalised words; empty where the backend has none) against which side and level words are checked."""

    words: list[Word]
    other: list[str]


class Transcriber:
    """One run's recogniser, loaded on first use and kept (the assistant and the benchmark hold one)."""

    def __init__(self, cfg: Config):
        backend = cfg.asr.backend
        if backend not in BACKENDS:
            raise UserError(f"unknown asr.backend '{backend}' - choose {', '.join(BACKENDS)}")
        self.cfg, self.backend = cfg, backend
        self.engine: Callable[[Audio], Heard] | None = None
        self.lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return {"whisper": self.cfg.asr.model, "hybrid": "moonshine base-en + en-us with the run language model"}.get(
            self.backend, "en-us + run language model")

    def load(self) -> Callable[[Audio], Heard]:
        with self.lock:
            if self.engine is None:
                self.engine = {"whisper": _whisper, "hybrid": _hybrid, "pocketsphinx": _sphinx}[self.backend](self.cfg)
            return self.engine

    def read(self, source: str | os.PathLike | bytes, name: str | None = None) -> Audio:
        asr = self.cfg.asr
        return load_audio(source, max_seconds=asr.max_seconds, max_mb=asr.max_mb, name=name)

    def transcribe(self, source: str | os.PathLike | bytes | Audio, name: str | None = None) -> Transcript:
        t0 = time.perf_counter()
        audio = source if isinstance(source, Audio) else self.read(source, name)  # bad audio stops here
        reading = time.perf_counter() - t0
        engine = self.load()  # loading the recogniser (once per run) is not transcription time
        t1 = time.perf_counter()
        heard = engine(audio)
        words = [w for w in heard.words if w.text.strip()]
        text = " ".join(w.text for w in words)
        elapsed = reading + time.perf_counter() - t1
        if not text:
            raise AudioError(f"no words recognised in {audio.name} ({audio.seconds:.1f} s) - speak the query clearly, "
                             "close to the microphone, or type it")
        return Transcript(text, self.backend, audio.seconds, elapsed, self.model_name, tuple(words),
                          questions(words, heard.other, self.cfg.asr.min_confidence))


def transcribe(audio: str | os.PathLike | bytes | Audio, cfg: Config) -> Transcript:
    """Transcribe ``audio`` (a path, bytes or a decoded :class:`Audio`) with the backend ``cfg`` names."""
    return Transcriber(cfg).transcribe(audio)


def _reports(cfg: Config) -> list[str]:
    from medxpert_utils.data import manifest

    frame = manifest.read(cfg.run_dir)
    train = frame[frame["split"] == "train"]
    return [str(t) for col in ("findings", "impression") for t in train[col].dropna() if str(t).strip()]


def _padded(audio: Audio) -> bytes:
    lead = (np.random.default_rng(0).standard_normal(int(PAD_SECONDS * RATE)) * 1e-3).astype(np.float32)
    return Audio(np.concatenate([lead, audio.samples, lead]), audio.name).pcm16()


def _sphinx(cfg: Config) -> Callable[[Audio], Heard]:
    from medxpert_utils.speech.sphinx import recognizer_for

    recognizer = recognizer_for(_reports(cfg), cfg.run_dir / "asr")
    return lambda audio: Heard(recognizer.words(_padded(audio)), [])


def _hybrid(cfg: Config) -> Callable[[Audio], Heard]:
    from medxpert_utils.speech import language
    from medxpert_utils.speech.hybrid import combine, first_words
    from medxpert_utils.speech.moonshine import Moonshine
    from medxpert_utils.speech.sphinx import BiasedRecognizer

    first = Moonshine()
    second = BiasedRecognizer(language.corpus(_reports(cfg)), cfg.run_dir / "asr")

    def run(audio: Audio) -> Heard:
        written = first.transcribe(audio.samples)
        words = second.words(_padded(audio), second.hints(written))
        ones = first_words(written)
        return Heard(combine(words, ones), [w.text for w in ones])

    return run


def _whisper(cfg: Config) -> Callable[[Audio], Heard]:
    from transformers import pipeline

    from medxpert_utils.models.whisper import load_whisper, prepare_model

    model, processor = load_whisper(prepare_model(cfg), device=cfg.device)
    pipe = pipeline("automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
                    feature_extractor=processor.feature_extractor, device=model.device)
    # The model's generation config holds the rest (start, no timestamps, suppressed ids). Length and beams are
    # explicit: the pipeline's own default is 5 beams and 256 tokens, 2-3x the time of greedy on a CPU.
    kwargs = {"max_new_tokens": cfg.asr.max_new_tokens, "num_beams": cfg.asr.num_beams}

    def run(audio: Audio) -> Heard:
        text = str(pipe({"raw": audio.samples, "sampling_rate": RATE}, generate_kwargs=kwargs)["text"])
        return Heard([Word(w, None) for w in text.split()], [])

    return run
