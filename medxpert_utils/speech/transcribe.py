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
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medxpert_utils.core.errors import AudioError, UserError
from medxpert_utils.speech.audio import RATE, Audio, load_audio

if TYPE_CHECKING:
    from medxpert_utils.core.config import Config

BACKENDS = ("pocketsphinx", "whisper")
PAD_SECONDS = 0.3  # quiet lead-in and tail: PocketSphinx misses a first word that starts on the first frame


@dataclass(frozen=True)
class Transcript:
    """What was heard: the text, the backend (and model) that heard it, the audio's length and the time it took."""

    text: str
    backend: str
    seconds: float  # length of the audio
    elapsed_s: float  # transcription time (decoding the file included)
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class Transcriber:
    """One run's recogniser, loaded on first use and kept (the assistant and the benchmark hold one)."""

    def __init__(self, cfg: Config):
        backend = cfg.asr.backend
        if backend not in BACKENDS:
            raise UserError(f"unknown asr.backend '{backend}' - choose pocketsphinx or whisper")
        self.cfg, self.backend = cfg, backend
        self.engine: Callable[[Audio], str] | None = None
        self.lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.cfg.asr.model if self.backend == "whisper" else "en-us + run language model"

    def load(self) -> Callable[[Audio], str]:
        with self.lock:
            if self.engine is None:
                self.engine = _whisper(self.cfg) if self.backend == "whisper" else _sphinx(self.cfg)
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
        text = " ".join(engine(audio).split())
        elapsed = reading + time.perf_counter() - t1
        if not text:
            raise AudioError(f"no words recognised in {audio.name} ({audio.seconds:.1f} s) - speak the query clearly, "
                             "close to the microphone, or type it")
        return Transcript(text, self.backend, audio.seconds, elapsed, self.model_name)


def transcribe(audio: str | os.PathLike | bytes | Audio, cfg: Config) -> Transcript:
    """Transcribe ``audio`` (a path, bytes or a decoded :class:`Audio`) with the backend ``cfg`` names."""
    return Transcriber(cfg).transcribe(audio)


def _sphinx(cfg: Config) -> Callable[[Audio], str]:
    from medxpert_utils.data import manifest
    from medxpert_utils.speech.sphinx import recognizer_for

    frame = manifest.read(cfg.run_dir)
    train = frame[frame["split"] == "train"]
    reports = [str(t) for col in ("findings", "impression") for t in train[col].dropna() if str(t).strip()]
    recognizer = recognizer_for(reports, cfg.run_dir / "asr")
    rng = np.random.default_rng(0)
    lead = (rng.standard_normal(int(PAD_SECONDS * RATE)) * 1e-3).astype(np.float32)

    def run(audio: Audio) -> str:
        padded = np.concatenate([lead, audio.samples, lead])
        return recognizer.transcribe(Audio(padded, audio.name).pcm16())

    return run


def _whisper(cfg: Config) -> Callable[[Audio], str]:
    from transformers import pipeline

    from medxpert_utils.models.whisper import load_whisper, prepare_model

    model, processor = load_whisper(prepare_model(cfg), device=cfg.device)
    pipe = pipeline("automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
                    feature_extractor=processor.feature_extractor, device=model.device)
    # The model's generation config holds the rest (start, no timestamps, suppressed ids). Length and beams are
    # explicit: the pipeline's own default is 5 beams and 256 tokens, 2-3x the time of greedy on a CPU.
    kwargs = {"max_new_tokens": cfg.asr.max_new_tokens, "num_beams": cfg.asr.num_beams}

    def run(audio: Audio) -> str:
        return str(pipe({"raw": audio.samples, "sampling_rate": RATE}, generate_kwargs=kwargs)["text"])

    return run
