"""The offline recogniser's acoustics: PocketSphinx's English acoustic model (shipped with the ``pocketsphinx``
wheel) with a trigram language model and a dictionary built from the run's own language (see :mod:`.language`).

:func:`build_model` writes ``asr/<key>/lm.arpa`` and ``asr/<key>/words.dict`` under the run folder once per
corpus (the key is a hash of the sentences and the pronunciations), so a dashboard or CLI call pays for it once.
:class:`SphinxRecognizer` decodes 16 kHz audio with it; each word comes with its posterior probability in the
decoder's lattice, its confidence.

:class:`BiasedRecognizer` is the second pass of the ``hybrid`` backend: for each query it adds a first
recogniser's words (Moonshine's: everyday words the run's reports never use) to the run's language as a few more
sentences (:func:`arpa`, from counts kept in memory), so PocketSphinx's acoustics choose between those words and the
run's medical ones.
"""

from __future__ import annotations

import hashlib
import io
import math
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from medxpert_utils.core import io as mxio
from medxpert_utils.speech import language, lexicon
from medxpert_utils.speech.transcript import Word

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


def _config(lm: Path, dictionary: Path, **options):
    from pocketsphinx import Config, get_model_path

    return Config(hmm=str(Path(get_model_path()) / "en-us" / "en-us"), lm=str(lm), dict=str(dictionary),
                  samprate=16000, loglevel="FATAL", **{**DECODER_OPTIONS, **options})


def _words(decoder) -> list[Word]:
    """The best path's words with their lattice posteriors (fillers and silences left out)."""
    if decoder.hyp() is None:
        return []
    out = []
    for seg in decoder.seg():
        word = seg.word.split("(")[0]
        if word.startswith(("<", "[", "++")):
            continue
        out.append(Word(word, min(1.0, max(0.0, float(seg.prob)))))  # the lattice posterior, already linear
    return out


class SphinxRecognizer:
    """A PocketSphinx decoder over one language model; ``transcribe`` takes 16-bit 16 kHz mono PCM."""

    def __init__(self, model: LanguageModel):
        from pocketsphinx import Decoder

        self.model = model
        self.decoder = Decoder(_config(model.lm, model.dictionary))
        self.lock = threading.Lock()  # one utterance at a time per decoder

    def words(self, pcm16: bytes) -> list[Word]:
        with self.lock:
            self.decoder.start_utt()
            self.decoder.process_raw(pcm16, full_utt=True)
            self.decoder.end_utt()
            return _words(self.decoder)

    def transcribe(self, pcm16: bytes) -> str:
        return " ".join(w.text for w in self.words(pcm16))


def recognizer_for(reports: list[str], root: Path) -> SphinxRecognizer:
    """A recogniser for a run's language: the reports (and the labeler's phrases and query forms)."""
    return SphinxRecognizer(build_model(language.corpus(reports), root))


# --- the hybrid backend's second pass -------------------------------------------------------------------------

Grams = tuple[Counter, Counter, Counter]


def count(sentences: Iterable[str], weight: int = 1, starts: bool = True, ends: bool = True) -> Grams:
    """Unigram, bigram and trigram counts of ``sentences``, times ``weight``; each sentence after ``<s>`` and before
    ``</s>`` unless ``starts`` / ``ends`` is false (a piece of a sentence)."""
    one: Counter = Counter()
    two: Counter = Counter()
    three: Counter = Counter()
    for sentence, n in Counter(s for s in sentences if s.split()).items():
        words = ["<s>"] * starts + sentence.split() + ["</s>"] * ends
        n *= weight
        for i, w in enumerate(words):
            one[w] += n
            if i + 1 < len(words):
                two[w, words[i + 1]] += n
                if i + 2 < len(words):
                    three[w, words[i + 1], words[i + 2]] += n
    return one, two, three


def arpa(grams: Grams, discount: float = DISCOUNT) -> str:
    """An ARPA trigram model of ``grams`` with absolute discounting: each order keeps ``1 - discount`` of its mass
    and leaves ``discount`` to the order below, as pocketsphinx's ArpaBoLM computes it (a test holds them equal)."""
    one, two, three = grams
    keep, total = 1.0 - discount, sum(one.values())
    p1 = {w: c * keep / total for w, c in one.items()}
    follow2: dict[str, float] = {}
    for (w1, w2) in two:
        follow2[w1] = follow2.get(w1, 0.0) + p1[w2]
    p2 = {(w1, w2): c * keep / one[w1] for (w1, w2), c in two.items()}
    follow3: dict[tuple[str, str], float] = {}
    for (w1, w2, w3) in three:
        follow3[w1, w2] = follow3.get((w1, w2), 0.0) + p2[w2, w3]
    log10 = math.log(10.0)

    def lg(x: float) -> str:
        return f"{math.log(x) / log10:6.4f}"

    lines = ["\\data\\", f"ngram 1={len(one)}", f"ngram 2={len(two)}", f"ngram 3={len(three)}", "", "\\1-grams:"]
    lines += [f"{lg(p1[w])} {w} {lg(discount / (1.0 - follow2.get(w, 0.0)))}" for w in sorted(one)]
    lines += ["", "\\2-grams:"]
    lines += [f"{lg(p2[g])} {g[0]} {g[1]} {lg(discount / (1.0 - follow3.get(g, 0.0)))}" for g in sorted(two)]
    lines += ["", "\\3-grams:"]
    lines += [f"{lg(c * keep / two[g[0], g[1]])} {' '.join(g)}" for g, c in sorted(three.items())]
    return "\n".join([*lines, "", "\\end\\", ""])


def merge(base: Grams, extra: Grams) -> Grams:
    return tuple(b + e for b, e in zip(base, extra))  # type: ignore[return-value]


# Tuned on benchmarks/bench_asr.py's development queries (an earlier list; see DEV_QUERIES there), WER 23% -> 16%:
# each first-pass word run counts as this many sentences: enough for PocketSphinx to hear an everyday word the
# reports lack, few enough that the run's medical words still win where Moonshine misspells them ("plural
# effusion");
HINT_WEIGHT = 3
# a first-pass word less likely than this breaks its run (a medical word Moonshine mishears comes out unlikely);
HINT_MIN_PROB = 0.5
# and the language weight is lower than the run-language-only decoder's: with the hints in the language model,
# the acoustics may decide more.
HINT_LW = 10.0


class Hint(NamedTuple):
    text: str  # normalised words the first pass was sure of
    starts: bool  # the first pass's transcript starts with them
    ends: bool  # ... ends with them


class BiasedRecognizer:
    """PocketSphinx over the run's language plus, per utterance, a first recogniser's words."""

    def __init__(self, sentences: Sequence[str], root: Path, weight: int = HINT_WEIGHT,
                 min_prob: float = HINT_MIN_PROB):
        from pocketsphinx import Decoder

        self.base = build_model(list(sentences), root)
        self.grams = count(s for s in sentences if s and not set(self.base.unpronounceable).intersection(s.split()))
        self.known = {line.split()[0].split("(")[0] for line in self.base.dictionary.read_text().splitlines()
                      if line.strip()}
        self.weight, self.min_prob = weight, min_prob
        self.decoder = Decoder(_config(self.base.lm, self.base.dictionary, lw=HINT_LW))
        self.scratch = tempfile.TemporaryDirectory(prefix="medxpert-asr-")  # removed with the recogniser
        self.lock = threading.Lock()

    def hints(self, words: Sequence[Word]) -> list[Hint]:
        """The first pass's runs of likely words, normalised (an unlikely word ends a run and is left out); a run
        starts or ends the sentence only where the first pass's transcript does."""
        runs: list[list[int]] = [[]]
        for i, word in enumerate(words):
            if (word.confidence or 0.0) < self.min_prob:
                runs.append([])
            else:
                runs[-1].append(i)
        out = []
        for run in runs:
            text = language.normalise(" ".join(words[i].text for i in run))
            if text:
                out.append(Hint(text, run[0] == 0, run[-1] == len(words) - 1))
        return out

    def words(self, pcm16: bytes, hints: Sequence[Hint]) -> list[Word]:
        with self.lock:
            new = sorted({w for h in hints for w in h.text.split()} - self.known)
            prons, _ = lexicon.pronunciations(new, espeak_all=True) if new else ({}, [])
            for word, variants in prons.items():
                for i, phones in enumerate(variants):
                    self.decoder.add_word(word if i == 0 else f"{word}({i + 1})", phones, False)
                self.known.add(word)
            usable = [h for h in hints if self.known.issuperset(h.text.split())]
            if usable:
                grams = self.grams
                for hint in usable:
                    grams = merge(grams, count([hint.text], self.weight, hint.starts, hint.ends))
                path = Path(self.scratch.name) / "utterance.arpa"
                path.write_text(arpa(grams))
                self.decoder.add_lm_file("utterance", str(path))
                self.decoder.activate_search("utterance")
            else:
                self.decoder.activate_search()
            self.decoder.start_utt()
            self.decoder.process_raw(pcm16, full_utt=True)
            self.decoder.end_utt()
            return _words(self.decoder)
