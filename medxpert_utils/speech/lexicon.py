"""Pronunciations for PocketSphinx: CMUdict (shipped with the ``pocketsphinx`` wheel), a curated list of
radiology words it lacks, and espeak-ng's phonemes mapped to the CMU phone set for any other missing word.

:func:`ipa_to_cmu` maps espeak-ng's IPA output (``espeak-ng -q --ipa``) to CMU phones by longest match;
:func:`pronounce` gives every pronunciation of a word, curated ones first. A word that none of the three
sources can pronounce is left out of the language model and counted (see :mod:`.sphinx`).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

# CMU phones (stress-free, as PocketSphinx's en-us model uses them).
PHONES = frozenset("AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W "
                   "Y Z ZH".split())

# Radiology words missing from CMUdict (or with several common readings), as radiologists say them.
CURATED: dict[str, tuple[str, ...]] = {
    "pneumothorax": ("N UW M OW TH AO R AE K S", "N UW M AH TH AO R AE K S"),
    "pneumothoraces": ("N UW M OW TH AO R AH S IY Z",),
    "hydropneumothorax": ("HH AY D R OW N UW M OW TH AO R AE K S",),
    "cardiomegaly": ("K AA R D IY OW M EH G AH L IY",),
    "atelectasis": ("AE T AH L EH K T AH S IH S", "AE T EH L EH K T AH S IH S"),
    "atelectatic": ("AE T AH L EH K T AE T IH K",),
    "cardiomediastinal": ("K AA R D IY OW M IY D IY AH S T AY N AH L",),
    "cardiomediastinum": ("K AA R D IY OW M IY D IY AH S T AY N AH M",),
    "mediastinal": ("M IY D IY AH S T AY N AH L",),
    "mediastinum": ("M IY D IY AH S T AY N AH M",),
    "cardiopulmonary": ("K AA R D IY OW P UH L M AH N EH R IY",),
    "costophrenic": ("K AA S T OW F R EH N IH K",),
    "lingula": ("L IH NG G Y AH L AH",),
    "lingular": ("L IH NG G Y AH L ER",),
    "hilar": ("HH AY L ER",),
    "perihilar": ("P EH R IY HH AY L ER",),
    "osseous": ("AA S IY AH S",),
    "effusion": ("IH F Y UW ZH AH N", "EH F Y UW ZH AH N"),
    "effusions": ("IH F Y UW ZH AH N Z", "EH F Y UW ZH AH N Z"),
    "opacity": ("OW P AE S AH T IY",),
    "opacities": ("OW P AE S AH T IY Z",),
    "opacification": ("OW P AE S AH F AH K EY SH AH N",),
    "consolidation": ("K AH N S AA L AH D EY SH AH N",),
    "consolidative": ("K AH N S AA L AH D EY T IH V",),
    "radiograph": ("R EY D IY OW G R AE F",),
    "radiographs": ("R EY D IY OW G R AE F S",),
    "pleural": ("P L UH R AH L",),
    "pulmonary": ("P UH L M AH N EH R IY",),
    "interstitial": ("IH N T ER S T IH SH AH L",),
    "vasculature": ("V AE S K Y AH L AH CH ER",),
    "enteric": ("EH N T EH R IH K",),
    "sternotomy": ("S T ER N AA T AH M IY",),
    "nodule": ("N AA JH UW L",),
    "nodules": ("N AA JH UW L Z",),
    "edema": ("IH D IY M AH",),
    "apical": ("EY P IH K AH L",),
    "basilar": ("B EY S AH L ER",),
    "bibasilar": ("B AY B EY S AH L ER",),
    "retrocardiac": ("R EH T R OW K AA R D IY AE K",),
    "subsegmental": ("S AH B S EH G M EH N T AH L",),
    "pacemaker": ("P EY S M EY K ER",),
    "unremarkable": ("AH N R IH M AA R K AH B AH L",),
    "cephalization": ("S EH F AH L AH Z EY SH AH N",),
    "hyperinflated": ("HH AY P ER IH N F L EY T IH D",),
    "hyperinflation": ("HH AY P ER IH N F L EY SH AH N",),
    "cardiomegalic": ("K AA R D IY OW M AH G AE L IH K",),
}

# espeak-ng IPA -> CMU phones, matched longest first. Stress and syllable marks are dropped before matching.
_IPA: dict[str, str] = {
    "tʃ": "CH", "dʒ": "JH", "eɪ": "EY", "aɪ": "AY", "aʊ": "AW", "ɔɪ": "OY", "oʊ": "OW", "əʊ": "OW",
    "ɪə": "IH R", "ɛə": "EH R", "ʊə": "UH R", "iə": "IY AH", "n̩": "AH N", "l̩": "AH L",
    "iː": "IY", "i": "IY", "ɪ": "IH", "ᵻ": "IH", "e": "EH", "ɛ": "EH", "æ": "AE", "a": "AE", "ɐ": "AH",
    "ɑː": "AA", "ɑ": "AA", "ɒ": "AA", "ɔː": "AO", "ɔ": "AO", "oː": "AO", "o": "OW", "ʊ": "UH", "uː": "UW",
    "u": "UW", "ʌ": "AH", "ə": "AH", "ɜː": "ER", "ɜ": "ER", "ɚ": "ER", "ɝ": "ER",
    "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "ɡ": "G", "g": "G", "f": "F", "v": "V", "θ": "TH",
    "ð": "DH", "s": "S", "z": "Z", "ʃ": "SH", "ʒ": "ZH", "h": "HH", "m": "M", "n": "N", "ŋ": "NG", "l": "L",
    "ɫ": "L", "ɹ": "R", "r": "R", "w": "W", "j": "Y", "ɾ": "T", "x": "K", "ʔ": "",
}
_IPA_KEYS = sorted(_IPA, key=len, reverse=True)
_DROP = re.compile(r"[ˈˌ.ː‿\u0329\u0303 -]")


def ipa_to_cmu(ipa: str) -> str:
    """CMU phones for espeak-ng's IPA of one word, e.g. ``nˈuːməθˌoːɹæks`` -> ``N UW M AH TH AO R AE K S``.

    Length marks matter only inside the table's long vowels, so they are matched first and dropped after.
    """
    text, out = ipa.strip(), []
    i = 0
    while i < len(text):
        for key in _IPA_KEYS:
            if text.startswith(key, i):
                if _IPA[key]:
                    out.append(_IPA[key])
                i += len(key)
                break
        else:
            if not _DROP.match(text[i]):
                raise ValueError(f"no CMU phone for IPA symbol {text[i]!r} in {ipa!r}")
            i += 1
    # Merge doubled phones across espeak's syllable joins (e.g. "t t" -> "t").
    phones = " ".join(out).split()
    merged = [p for j, p in enumerate(phones) if j == 0 or p != phones[j - 1]]
    return " ".join(merged)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak_ipa(words: Iterable[str], voice: str = "en-us") -> dict[str, str]:
    """espeak-ng's IPA for each word (one process for all; {} when espeak-ng is not installed)."""
    words = list(dict.fromkeys(words))
    if not words or not espeak_available():
        return {}
    proc = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", voice], input="\n".join(f"{w}." for w in words),
                          capture_output=True, text=True, timeout=120, check=False)
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    return dict(zip(words, lines)) if len(lines) == len(words) else {w: espeak_ipa_one(w, voice) for w in words}


def espeak_ipa_one(word: str, voice: str = "en-us") -> str:
    proc = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", voice, word], capture_output=True, text=True,
                          timeout=30, check=False)
    return proc.stdout.strip()


@functools.lru_cache(maxsize=2)
def cmudict(path: str | None = None) -> dict[str, tuple[str, ...]]:
    """CMUdict as shipped with pocketsphinx: word -> its pronunciations (variants ``word(2)`` folded in)."""
    if path is None:
        from pocketsphinx import get_model_path

        path = str(Path(get_model_path()) / "en-us" / "cmudict-en-us.dict")
    entries: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 2:
                continue
            word = re.sub(r"\(\d+\)$", "", parts[0])
            entries.setdefault(word, []).append(" ".join(p for p in parts[1:] if not p.startswith("#")))
    return {w: tuple(p) for w, p in entries.items()}


def pronunciations(words: Iterable[str], use_espeak: bool = True,
                   espeak_all: bool = False) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """Pronunciations for ``words`` and the words left without one.

    A word gets its curated readings, then CMUdict's; a word missing from CMUdict (or every word, with
    ``espeak_all``) also gets espeak-ng's reading, so a radiology word has both the textbook and the
    letter-to-sound reading. The language model uses ``espeak_all``: espeak-ng's reading of common words is one
    more accent the recogniser then accepts (measured in benchmarks/bench_asr.py).
    """
    cmu = cmudict()
    found: dict[str, list[str]] = {}
    unlisted = []
    for word in dict.fromkeys(words):
        prons = list(CURATED.get(word, ()))
        prons += [p for p in cmu.get(word, ()) if p not in prons]
        if prons:
            found[word] = prons
        if word not in cmu or espeak_all:
            unlisted.append(word)
    if unlisted and use_espeak:
        for word, ipa in espeak_ipa(unlisted).items():
            try:
                phones = ipa_to_cmu(ipa)
            except ValueError:
                continue
            if phones and phones not in found.get(word, []):
                found.setdefault(word, []).append(phones)
    return {w: tuple(p) for w, p in found.items()}, [w for w in dict.fromkeys(words) if w not in found]
