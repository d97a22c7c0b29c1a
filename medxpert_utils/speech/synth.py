"""Spoken test queries synthesised with espeak-ng (Debian package ``espeak-ng``): the benchmark's queries, the
tests' recordings and the browser test's fake microphone. Not a recogniser's input at run time."""

from __future__ import annotations

import os
import shutil
import subprocess
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
