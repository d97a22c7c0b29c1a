"""Spoken test queries: the benchmark's queries, the tests' recordings and the browser test's fake microphone. Not
a recogniser's input at run time.

:func:`synthesise` speaks with espeak-ng (Debian package ``espeak-ng``). :func:`speak` speaks with any of three
synthesisers, each a Debian package: espeak-ng, flite (voices slt, rms, awb, kal16) and Festival with its HTS voice
(``festival`` and ``festvox-us-slt-hts``); at another tempo (sox's pitch-keeping ``tempo`` effect, Debian ``sox``)
and with white noise at a signal-to-noise ratio, as the benchmark needs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from medxpert_utils.core import io
from medxpert_utils.core.errors import UserError

VOICES = (("en-us", 150), ("en-us+f3", 170), ("en-us+m3", 140), ("en-us+klatt4", 160))


def synthesise(text: str, out: str | os.PathLike, voice: str = "en-us", speed: int = 160,
               lead_seconds: float = 0.0) -> Path:
    """Write ``text`` spoken by espeak-ng ``voice`` at ``speed`` words per minute to the WAV ``out``
    (``lead_seconds`` of silence first, as a microphone picks up before the speaker starts)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UserError("espeak-ng is not installed - apt-get install espeak-ng (./run_all.sh --test installs it)")
    with io.atomic_path(out, suffix=".wav") as tmp:
        proc = subprocess.run([exe, "-v", voice, "-s", str(int(speed)), "-w", str(tmp), text], capture_output=True,
                              timeout=60, check=False)
        if proc.returncode != 0 or not tmp.is_file() or tmp.stat().st_size <= 44:
            raise UserError(f"espeak-ng failed for voice {voice}: {proc.stderr.decode(errors='replace').strip()[:200]}")
        if lead_seconds > 0:
            tmp.write_bytes(_with_lead(tmp.read_bytes(), lead_seconds))
    return Path(out)


def _with_lead(wav: bytes, seconds: float) -> bytes:
    import io as stdio
    import wave

    import numpy as np

    with wave.open(stdio.BytesIO(wav)) as src:
        rate, frames = src.getframerate(), src.readframes(src.getnframes())
    samples = np.frombuffer(frames, "<i2")
    samples = np.concatenate([np.zeros(int(rate * seconds), "<i2"), samples])
    buf = stdio.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buf.getvalue()


@dataclass(frozen=True)
class Voice:
    engine: str  # espeak-ng, flite or festival
    name: str  # the engine's voice: en-us+klatt4, slt, cmu_us_slt_arctic_hts ...

    @property
    def label(self) -> str:
        return f"{self.engine}:{self.name}"


_PACKAGES = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival festvox-us-slt-hts", "sox": "sox"}


def _exe(name: str) -> str:
    exe = shutil.which("text2wave" if name == "festival" else name)
    if exe is None:
        raise UserError(f"{name} is not installed - apt-get install {_PACKAGES[name]}")
    return exe


def speak(text: str, out: str | os.PathLike, voice: Voice, tempo: float = 1.0, snr_db: float | None = None,
          lead_seconds: float = 0.3, seed: int = 0) -> Path:
    """Write ``text`` spoken by ``voice`` to the WAV ``out``: ``tempo`` times as fast, with white noise at
    ``snr_db`` dB below the speech (none when None), after ``lead_seconds`` of silence."""
    import io as stdio
    import wave

    import numpy as np

    with io.atomic_path(out, suffix=".wav") as tmp:
        raw = tmp.with_name(tmp.name + ".raw.wav")
        try:
            if voice.engine == "espeak-ng":
                cmd, stdin = [_exe("espeak-ng"), "-v", voice.name, "-w", str(raw), text], None
            elif voice.engine == "flite":
                cmd, stdin = [_exe("flite"), "-voice", voice.name, "-t", text, "-o", str(raw)], None
            elif voice.engine == "festival":
                cmd, stdin = [_exe("festival"), "-eval", f"(voice_{voice.name})", "-o", str(raw)], text.encode()
            else:
                raise UserError(f"unknown synthesiser '{voice.engine}' - use espeak-ng, flite or festival")
            proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=120, check=False)
            if proc.returncode != 0 or not raw.is_file() or raw.stat().st_size <= 44:
                raise UserError(f"{voice.label} failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
            if tempo != 1.0:
                stretched = raw.with_name(raw.name + ".tempo.wav")
                subprocess.run([_exe("sox"), str(raw), str(stretched), "tempo", "-s", f"{tempo:g}"], check=True,
                               capture_output=True, timeout=60)
                stretched.replace(raw)
            with wave.open(str(raw)) as src:
                rate, width = src.getframerate(), src.getsampwidth()
                samples = np.frombuffer(src.readframes(src.getnframes()), "<i2").astype(np.float64)
            if width != 2:
                raise UserError(f"{voice.label} wrote {8 * width}-bit audio; 16-bit expected")
        finally:
            raw.unlink(missing_ok=True)
        if snr_db is not None:
            power = float(np.mean(samples[np.abs(samples) > 0.05 * np.abs(samples).max()] ** 2))
            noise = np.random.default_rng(seed).standard_normal(len(samples)) * np.sqrt(power / 10 ** (snr_db / 10))
            samples = samples + noise
        samples = np.concatenate([np.zeros(int(rate * lead_seconds)), samples])
        buf = stdio.BytesIO()
        with wave.open(buf, "wb") as dst:
            dst.setnchannels(1)
            dst.setsampwidth(2)
            dst.setframerate(rate)
            dst.writeframes(np.clip(samples, -32768, 32767).astype("<i2").tobytes())
        tmp.write_bytes(buf.getvalue())
    return Path(out)
