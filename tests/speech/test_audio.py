"""Reading spoken queries: every container a browser or a recorder writes, any rate and channel count, and one
clear line for each kind of unusable file."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from medxpert_utils.core.errors import AudioError
from medxpert_utils.speech.audio import RATE, load_audio, to_wav


def _tone(seconds: float, rate: int, channels: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = amplitude * np.sin(2 * np.pi * 440 * t)
    return np.repeat(mono[None, :], channels, axis=0).astype(np.float32)  # (channels, samples)


def _encode(fmt: str, codec: str, samples: np.ndarray, rate: int) -> bytes:
    """``samples`` (channels, n) encoded with PyAV, as a recorder would write them."""
    buf = io.BytesIO()
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    with av.open(buf, mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout, options={"strict": "-2"})
        sample_fmt = stream.codec_context.format.name
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, samples.shape[1], frame_size):
            chunk = samples[:, start:start + frame_size]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            for converted in av.AudioResampler(format=sample_fmt, layout=layout, rate=rate).resample(frame):
                for packet in stream.encode(converted):
                    out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, codec, rate, channels", [
    ("wav", "pcm_s16le", 22050, 1),
    ("wav", "pcm_s16le", 44100, 2),
    ("flac", "flac", 48000, 2),
    ("ogg", "vorbis", 44100, 2),
    ("ogg", "libopus", 48000, 1),
    ("webm", "libopus", 48000, 2),  # what Chrome's MediaRecorder writes
])
def test_formats_rates_and_channels_become_16k_mono(fmt, codec, rate, channels):
    data = _encode(fmt, codec, _tone(1.0, rate, channels), rate)
    audio = load_audio(data, name=f"query.{fmt}")
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.seconds == pytest.approx(1.0, abs=0.1)
    assert 0.3 < float(np.abs(audio.samples).max()) <= 1.0
    # still a 440 Hz tone after resampling: the spectrum's peak is at 440 Hz
    spectrum = np.abs(np.fft.rfft(audio.samples[: RATE // 2]))
    assert np.fft.rfftfreq(RATE // 2, 1 / RATE)[spectrum.argmax()] == pytest.approx(440, abs=10)


def test_a_path_reads_like_bytes(tmp_path):
    path = tmp_path / "q.wav"
    path.write_bytes(to_wav(_tone(0.5, RATE, 1)[0]))
    assert load_audio(path).seconds == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("make, limits, expected", [
    (lambda: b"", {}, "is empty (0 bytes)"),
    (lambda: to_wav(np.zeros(RATE)), {}, "is silent - check the microphone"),
    (lambda: b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4, {}, "is not a readable audio file"),
    (lambda: b"\x89PNG\r\n\x1a\n" + bytes(500), {}, "is not a readable audio file"),
    (lambda: to_wav(_tone(3.0, RATE, 1)[0]), {"max_seconds": 2.0}, "more than the 2 s limit (params asr.max_seconds)"),
    (lambda: to_wav(_tone(1.0, RATE, 1)[0]), {"max_mb": 0.01}, "more than the 0.01 MB limit (params asr.max_mb)"),
])
def test_bad_audio_is_one_clear_line(make, limits, expected):
    with pytest.raises(AudioError) as err:
        load_audio(make(), name="query.wav", **limits)
    message = str(err.value)
    assert expected in message and "\n" not in message and message.startswith("query.wav")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(AudioError, match="audio file not found: .*nope.wav"):
        load_audio(tmp_path / "nope.wav")


def test_truncated_recording_reads_what_is_there():
    """A recording cut off mid-file (a browser tab closed while uploading) is read up to the cut, not refused."""
    data = to_wav(_tone(1.0, RATE, 1)[0])
    audio = load_audio(data[: len(data) // 2])
    assert audio.seconds == pytest.approx(0.5, abs=0.05)
