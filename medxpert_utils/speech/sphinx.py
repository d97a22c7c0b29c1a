"""The offline recogniser: PocketSphinx's English acoustic model (shipped with the ``pocketsphinx`` wheel) with
a trigram language model and a dictionary built from the run's own language (see :mod:`.language`).

:func:`build_model` writes ``asr/<key>/lm.arpa`` and ``asr/<key>/words.dict`` under the run folder once per
corpus (the key is a hash of the sentences and the pronunciations), so a dashboard or CLI call pays for it once.
:class:`SphinxRecognizer` decodes 16 kHz audio with it.
"""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass
from pathlib import Path

from medxpert_utils.core import io as mxio
from medxpert_utils.speech import language, lexicon

# Tuned on 48 queries in four espeak-ng voices (three of them also in benchmarks/bench_asr.py, so not held out): a
# language weight of 13 (PocketSphinx's default is 6.5) and little backoff mass trust the run's language more than
# the acoustics of synthetic speech (WER 18% -> 14% on those voices); beams wider than the defaults cost little.
DECODER_OPTIONS = {"lw": 13.0, "beam": 1e-60, "wbeam": 1e-40, "pbeam": 1e-60}
DISCOUNT = 0.1  # probability mass each n-gram order leaves to the one below (ArpaBoLM's absolute discounting)


@dataclass(frozen=True)
class LanguageModel:
    folder: Path
    vocabulary: int
    unpronounceable: tuple[str, ...]  # words left out: no CMUdict, curated or espeak-ng pronunciation

    @property
    def lm(self) -> Path:
        return self.folder / "lm.arpa"

    @property
    def dictionary(self) -> Path:
        return self.folder / "words.dict"


def build_model(sentences: list[str], root: Path, discount: float = DISCOUNT) -> LanguageModel:
    """ARPA trigram LM and pronunciation dictionary for ``sentences`` under ``root/<key>/`` (reused when present)."""
    vocab = sorted({w for s in sentences for w in s.split()})
    prons, missing = lexicon.pronunciations(vocab, espeak_all=True)
    dropped = set(missing)
    kept = [s for s in sentences if s and not dropped.intersection(s.split())]
    key = hashlib.sha256(("\n".join(kept) + f"\0{discount}\0" + repr(sorted(prons.items()))).encode()).hexdigest()[:16]
    folder = Path(root) / key
    model = LanguageModel(folder, len(prons), tuple(missing))
    if model.lm.is_file() and model.dictionary.is_file():
        return model
    from pocketsphinx.lm import ArpaBoLM

    builder = ArpaBoLM(text="\n".join(kept) + "\n", add_start=True, discount_mass=discount)
    builder.compute()
    buf = io.StringIO()
    builder.write(buf)
    lines = []
    for word in sorted(prons):
        for i, phones in enumerate(prons[word]):
            lines.append(f"{word if i == 0 else f'{word}({i + 1})'} {phones}")
    mxio.write_text(model.dictionary, "\n".join(lines) + "\n")
    mxio.write_text(model.lm, buf.getvalue())
    return model


class SphinxRecognizer:
    """A PocketSphinx decoder over one language model; ``transcribe`` takes 16-bit 16 kHz mono PCM."""

    def __init__(self, model: LanguageModel):
        from pocketsphinx import Config, Decoder, get_model_path

        config = Config(hmm=str(Path(get_model_path()) / "en-us" / "en-us"), lm=str(model.lm),
                        dict=str(model.dictionary), samprate=16000, loglevel="FATAL", **DECODER_OPTIONS)
        self.model = model
        self.decoder = Decoder(config)
        self.lock = threading.Lock()  # one utterance at a time per decoder

    def transcribe(self, pcm16: bytes) -> str:
        with self.lock:
            self.decoder.start_utt()
            self.decoder.process_raw(pcm16, full_utt=True)
            self.decoder.end_utt()
            hyp = self.decoder.hyp()
        text = hyp.hypstr if hyp is not None else ""
        return " ".join(w for w in text.split() if not w.startswith(("<", "[", "++")))


def recognizer_for(reports: list[str], root: Path) -> SphinxRecognizer:
    """A recogniser for a run's language: the reports (and the labeler's phrases and query forms)."""
    return SphinxRecognizer(build_model(language.corpus(reports), root))
