"""What a recogniser heard: the text, each word with its confidence, and the questions to ask before searching.

Side and level words (left, right, bilateral; upper, middle, lower) decide which cases a query finds, and a
recogniser that swaps one ("right upper lobe" heard as "right lower lobe") sends the search to the wrong cases
without a sign. :func:`questions` marks each place where such a word may be wrong: heard with low confidence,
heard differently by a second hypothesis, or heard by a second hypothesis and missing from the transcript. The
dashboard then asks ("left or right?") instead of searching with a guess; the CLI stops with one line naming the
choices.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from medxpert_utils.speech.language import SIDES

LEVELS = ("upper", "middle", "lower")
GROUPS = (SIDES, LEVELS)
LOBES = ("lobe", "lobes")  # said after a level word ("upper lobe"), whose loss would go unnoticed
# Words that sound like a side or level word, as a general recogniser may spell them ("Wright knew Mithorex").
SOUNDS_LIKE = {"write": "right", "wright": "right", "rite": "right", "lift": "left", "lefts": "left",
               "lover": "lower", "flower": "lower"}


def group_of(word: str) -> tuple[str, ...] | None:
    """The side or level group ``word`` belongs to (``None`` for any other word)."""
    return next((group for group in GROUPS if word in group), None)


@dataclass(frozen=True)
class Word:
    text: str
    confidence: float | None  # 0..1, how sure the recogniser is; None where the backend gives no measure

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "confidence": None if self.confidence is None else round(self.confidence, 3)}


@dataclass(frozen=True)
class Question:
    """A side or level word to confirm: at word ``position`` the recogniser heard ``heard`` ("" where a side word
    may be missing); ``choices`` are what to offer, the heard one first ("" for none)."""

    position: int
    heard: str
    choices: tuple[str, ...]
    reason: str  # "low confidence", "heard differently", "maybe missing"

    def to_dict(self) -> dict[str, Any]:
        return {"position": self.position, "heard": self.heard, "choices": list(self.choices), "reason": self.reason}

    def apply(self, words: Sequence[str], choice: str) -> list[str]:
        """``words`` with ``choice`` at this question's place (replacing the heard word, or inserted)."""
        if choice not in self.choices:
            raise ValueError(f"'{choice}' is not one of {list(self.choices)}")
        out = list(words)
        if self.heard:
            out[self.position: self.position + 1] = [choice] if choice else []
        elif choice:
            out.insert(self.position, choice)
        return out


@dataclass(frozen=True)
class Transcript:
    """What was heard: the text, the backend (and model) that heard it, the audio's length, the time it took, each
    word with its confidence, and the side or level words to confirm before searching (``ask``)."""

    text: str
    backend: str
    seconds: float  # length of the audio
    elapsed_s: float  # transcription time (decoding the file included)
    model: str = ""
    words: tuple[Word, ...] = field(default=())
    ask: tuple[Question, ...] = field(default=())

    @property
    def unsure(self) -> bool:
        return bool(self.ask)

    def low_confidence(self, threshold: float) -> list[int]:
        """Positions of the words heard with confidence below ``threshold``."""
        return [i for i, w in enumerate(self.words) if w.confidence is not None and w.confidence < threshold]

    def choose(self, answers: Sequence[str]) -> Transcript:
        """The transcript with one answer per question applied (the questions answered, so none left)."""
        if len(answers) != len(self.ask):
            raise ValueError(f"{len(self.ask)} questions, {len(answers)} answers")
        words = self.text.split()
        # apply from the last position back, so earlier positions stay valid
        for question, answer in sorted(zip(self.ask, answers), key=lambda qa: qa[0].position, reverse=True):
            words = question.apply(words, answer)
        return replace(self, text=" ".join(words), words=tuple(Word(w, 1.0) for w in words), ask=())

    def alternatives(self) -> list[str]:
        """Each query the questions allow (the first question's choices, others as heard), for a one-line message."""
        if not self.ask:
            return [self.text]
        first = self.ask[0]
        return [" ".join(first.apply(self.text.split(), c)) for c in first.choices]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "backend": self.backend, "seconds": round(self.seconds, 3),
                "elapsed_s": round(self.elapsed_s, 3), "model": self.model,
                "words": [w.to_dict() for w in self.words], "ask": [q.to_dict() for q in self.ask]}


def _canonical(word: str) -> str:
    return SOUNDS_LIKE.get(word, word)


def questions(words: Sequence[Word], other: Sequence[str] = (), min_confidence: float = 0.5) -> tuple[Question, ...]:
    """Where a side or level word in ``words`` (the transcript) may be wrong.

    - a side or level word heard with confidence below ``min_confidence``;
    - a side or level word the transcript has more often than ``other`` (a second hypothesis of the same audio,
      normalised words) has it: perhaps never said ("heard once"; "" among the choices drops it);
    - ``other`` has a side or level word the transcript lacks: each of the transcript's words of that group is
      asked about ("heard differently"), or, where the transcript has none of the group, the place the other
      hypothesis puts it ("maybe missing").
    """
    texts = [w.text for w in words]
    found: dict[int, Question] = {}
    for i, word in enumerate(words):
        group = group_of(word.text)
        if group and word.confidence is not None and word.confidence < min_confidence:
            found[i] = Question(i, word.text, _ordered(word.text, group), "low confidence")
    alt = [_canonical(w) for w in other]
    if alt:
        for i, text in enumerate(texts):  # heard more often than the other hypothesis heard it: perhaps not said
            group = group_of(text)
            if group and i not in found and texts[: i + 1].count(text) > alt.count(text):
                rivals = [w for w in dict.fromkeys(alt) if w in group and w not in texts]
                found[i] = (Question(i, text, _ordered(text, group, rivals), "heard differently") if rivals else
                            Question(i, text, (*_ordered(text, group), ""), "heard once"))
    for group in GROUPS:
        extra = [w for w in dict.fromkeys(alt) if w in group and w not in texts]
        if not extra:
            continue
        mine = [i for i, t in enumerate(texts) if t in group]
        for i in mine:
            if i not in found:
                found[i] = Question(i, texts[i], _ordered(texts[i], group, extra), "heard differently")
        if not mine:
            at = _position(texts, alt, alt.index(extra[0]))
            found[-1 - at] = Question(at, "", (*_ordered(extra[0], group), ""), "maybe missing")
    for i, text in enumerate(texts):  # "the lobe": a level word lost before it
        if text in LOBES and not (i and group_of(texts[i - 1])) and not any(q.position == i for q in found.values()):
            found[-1 - i] = Question(i, "", (*LEVELS, ""), "maybe missing")
    return tuple(sorted(found.values(), key=lambda q: (q.position, q.heard == "")))


def _position(texts: Sequence[str], alt: Sequence[str], j: int) -> int:
    """Where in ``texts`` the ``j``-th word of ``alt`` would go, by a word alignment of the two."""
    for _tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=texts, b=alt, autojunk=False).get_opcodes():
        if j1 <= j < j2:
            return i1 + min(j - j1, i2 - i1)
    return len(texts)


def _ordered(heard: str, group: tuple[str, ...], rivals: Sequence[str] = ()) -> tuple[str, ...]:
    rest = [w for w in (*rivals, *group) if w != heard]
    return (heard, *dict.fromkeys(rest))
