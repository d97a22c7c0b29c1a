"""Reading a spoken query: any container and codec FFmpeg knows (WAV, FLAC, OGG/Vorbis or Opus, WebM/Opus as
browsers record, MP3...), any sample rate, mono or stereo, decoded with PyAV and resampled to 16 kHz mono float32.

Every way a file can be unusable is one :class:`~medxpert_utils.core.errors.AudioError` line that says what to
do: empty, larger than ``asr.max_mb``, not audio (corrupt or another kind of file), longer than
``asr.max_seconds``, or silent.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medxpert_utils.core.errors import AudioError

RATE = 16000
SILENCE_PEAK = 1e-3  # a peak amplitude (full scale 1.0) below this is silence: nothing a recogniser can hear
_FORMATS = "WAV, FLAC, OGG or WebM/Opus"


@dataclass(frozen=True)
class Audio:
    """A decoded query: 16 kHz mono float32 samples in [-1, 1]."""

    samples: np.ndarray
    name: str

    @property
    def seconds(self) -> float:
        return len(self.samples) / RATE

    def pcm16(self) -> bytes:
        """Little-endian 16-bit PCM, what PocketSphinx reads."""
        return (np.clip(self.samples, -1, 1) * 32767).astype("<i2").tobytes()


def read_bytes(source: str | os.PathLike | bytes, name: str | None = None) -> tuple[bytes, str]:
    """The bytes of ``source`` (a path or the file's content) and a name for messages."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), name or "the audio"
    path = Path(source)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path} - give the path of a {_FORMATS} recording")
    return path.read_bytes(), name or str(path)


def load_audio(source: str | os.PathLike | bytes, max_seconds: float = 30.0, max_mb: float = 10.0,
               name: str | None = None) -> Audio:
    """Decode ``source`` (a path or bytes) to 16 kHz mono; AudioError when it cannot be a spoken query."""
    data, name = read_bytes(source, name)
    if not data:
        raise AudioError(f"{name} is empty (0 bytes) - record or choose a {_FORMATS} file with the spoken query")
    if len(data) > max_mb * 2**20:
        raise AudioError(f"{name} is {len(data) / 2**20:.1f} MB, more than the {max_mb:g} MB limit (params "
                         "asr.max_mb) - send a shorter recording")
    samples = _decode(data, name, max_seconds)
    seconds = len(samples) / RATE
    if seconds > max_seconds:
        raise AudioError(f"{name} is {seconds:.1f} s long, more than the {max_seconds:g} s limit (params "
                         "asr.max_seconds) - speak a shorter query")
    if seconds < 0.1:
        raise AudioError(f"{name} holds no sound ({seconds:.2f} s) - record the query again")
    if float(np.max(np.abs(samples))) < SILENCE_PEAK:
        raise AudioError(f"{name} is silent - check the microphone (is it muted?) and record the query again")
    return Audio(samples, name)


def _decode(data: bytes, name: str, max_seconds: float) -> np.ndarray:
    import av

    chunks: list[np.ndarray] = []
    limit = int((max_seconds + 1) * RATE)  # stop decoding soon after the limit: a long file is refused anyway
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            streams = container.streams.audio
            if not streams:
                raise AudioError(f"{name} is not a readable audio file (no audio track) - send a {_FORMATS} recording")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
            total = 0
            for frame in container.decode(streams[0]):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    total += len(chunk)
                if total > limit:
                    break
            else:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError, EOFError) as exc:
        raise AudioError(f"{name} is not a readable audio file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:120] if str(exc) else 'unknown format'}) - send a {_FORMATS} "
                         "recording") from None
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32)


def to_wav(samples: np.ndarray, rate: int = RATE) -> bytes:
    """16-bit mono WAV bytes of float samples in [-1, 1] (the tests' silent, too long and tone recordings)."""
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()
