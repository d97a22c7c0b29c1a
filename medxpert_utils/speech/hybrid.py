"""The ``hybrid`` offline recogniser: two recognisers that fail in opposite ways, combined.

- Moonshine base (:mod:`.moonshine`) hears everyday words ("mass in the upper part of the left lung") and
  misspells medical ones ("plural effusion", "new methorax").
- PocketSphinx with the run's language model (:mod:`.sphinx`) hears the run's medical words and cannot hear a word
  its reports never use.

Three steps per query:

1. Moonshine transcribes the audio; each word has a probability (its least likely token).
2. PocketSphinx decodes the audio again with the run's language plus Moonshine's likely words as a few more
   sentences (:class:`~.sphinx.BiasedRecognizer`), so its acoustics choose between them and the run's words.
3. :func:`combine` aligns the two transcripts word by word. Where they differ, Moonshine's words replace
   PocketSphinx's when Moonshine is sure of every one and PocketSphinx is unsure of its own (or heard nothing there).

Moonshine's transcript is also the second hypothesis that side and level words are checked against
(:func:`~.transcript.questions`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from medxpert_utils.speech import language
from medxpert_utils.speech.transcript import Word

# Tuned on benchmarks/bench_asr.py's development queries (an earlier list; see DEV_QUERIES there):
FIRST_SURE = 0.7  # Moonshine is sure of a word at this probability...
SECOND_UNSURE = 0.6  # ...and PocketSphinx unsure of its words below this mean posterior


def first_words(words: Sequence[Word]) -> list[Word]:
    """Moonshine's words normalised as the run's language is ("3rd" -> "third"), each keeping its probability."""
    return [Word(w, word.confidence) for word in words for w in language.words(word.text)]


def combine(second: Sequence[Word], first: Sequence[Word], first_sure: float = FIRST_SURE,
            second_unsure: float = SECOND_UNSURE) -> list[Word]:
    """PocketSphinx's words (``second``), with the spans where Moonshine (``first``) was sure and PocketSphinx was
    not taken from Moonshine."""
    a, b = [w.text for w in second], [w.text for w in first]
    out: list[Word] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        mine, theirs = list(second[i1:i2]), list(first[j1:j2])
        if tag == "equal":
            out += [Word(w.text, max(w.confidence or 0.0, t.confidence or 0.0)) for w, t in zip(mine, theirs)]
            continue
        sure = bool(theirs) and all((t.confidence or 0.0) >= first_sure for t in theirs)
        unsure = not mine or sum(w.confidence or 0.0 for w in mine) / len(mine) < second_unsure
        out += theirs if sure and unsure else mine
    return out
