"""Spoken queries: audio in (:mod:`.audio`), the run's language (:mod:`.language`), pronunciations
(:mod:`.lexicon`), the offline PocketSphinx recogniser (:mod:`.sphinx`) and the one entry, :func:`transcribe`."""

from medxpert_utils.speech.audio import Audio, load_audio
from medxpert_utils.speech.transcribe import BACKENDS, Transcriber, Transcript, transcribe

__all__ = ["Audio", "load_audio", "BACKENDS", "Transcriber", "Transcript", "transcribe"]
