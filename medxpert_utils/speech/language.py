"""The words a run's spoken queries are made of: the training reports, the labeler's phrases and the ways a
radiologist asks for a finding ("left pleural effusion?", "signs of pneumonia", "is there cardiomegaly").

:func:`corpus` gives those sentences normalised as a recogniser hears them (lower case, letters only, numbers
spelled out); :func:`words` splits text the same way, so a transcript and a typed query compare word for word.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

from medxpert_utils.data.label_phrases import MENTION_PHRASES
from medxpert_utils.data.labels import CHEXPERT_LABELS

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}
SIDES = ("left", "right", "bilateral")
ASKING = ("{f}", "{f}?", "signs of {f}", "is there {f}", "is there a {f}", "any {f}", "evidence of {f}", "no {f}",
          "findings of {f}", "show me {f}", "cases with {f}", "rule out {f}", "{s} {f}", "{s} {f}?", "is there {s} {f}",
          "is there a {s} {f}", "signs of {s} {f}", "small {f}", "large {f}", "moderate {f}", "small {s} {f}",
          "large {s} {f}", "{f} on the {s}", "enlarged heart", "normal chest", "normal chest x ray",
          "no acute findings", "no acute cardiopulmonary process", "clear lungs", "the lungs are clear")


def number_words(n: int) -> str:
    """0..999 in words ("forty two")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    return " ".join(_ONES[int(d)] for d in str(n))


def ordinal_words(n: int) -> str:
    """1 -> "first", 8 -> "eighth", 21 -> "twenty first", 40 -> "fortieth"."""
    *head, last = number_words(n).split()
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def normalise(text: str) -> str:
    """Lower-case words, as spoken: ``"L-sided 2 cm nodule, 3rd rib."`` -> ``"l sided two cm nodule third rib"``."""
    text = str(text).lower()
    text = re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", lambda m: ordinal_words(int(m.group(1))), text)
    text = re.sub(r"\d+(?:\.\d+)?", lambda m: " point ".join(number_words(int(p)) for p in m.group(0).split(".")),
                  text)
    text = re.sub(r"x-ray", "x ray", text)
    text = re.sub(r"[^a-z']+", " ", text).replace("'", "")
    return " ".join(text.split())


def words(text: str) -> list[str]:
    return normalise(text).split()


def literal_phrases(pattern: str) -> list[str]:
    """The plain phrases a labeler pattern spells out: simple ``(?:a|b)`` and ``x?`` forms expanded, patterns
    with wildcards or character classes skipped (``"pleural (?:effusion|fluid)"`` -> two phrases)."""
    if re.search(r"[\\\[\]{}*+.^$]", pattern):
        return []
    parts = re.split(r"(\(\?:[^()]*\)\??)", pattern)
    choices = []
    for part in parts:
        match = re.fullmatch(r"\(\?:([^()]*)\)(\?)?", part)
        if match:
            options = match.group(1).split("|") + ([""] if match.group(2) else [])
            choices.append(options)
        elif "(" in part or ")" in part or "|" in part:
            return []
        else:
            choices.append([re.sub(r"(\w)\?", "", part)])
    phrases = {" ".join("".join(combo).split()) for combo in itertools.product(*choices)}
    return sorted(p for p in phrases if p)


def finding_phrases() -> list[str]:
    """The finding names a query uses: the CheXpert labels and the labeler's literal mention phrases."""
    names = {normalise(label) for label in CHEXPERT_LABELS if label != "No Finding"}
    for patterns in MENTION_PHRASES.values():
        for pattern in patterns:
            names.update(normalise(p) for p in literal_phrases(pattern))
    names.update({"pleural effusion", "effusion", "pneumothorax", "pneumonia", "atelectasis", "consolidation",
                  "cardiomegaly", "edema", "pulmonary edema", "opacity", "nodule", "fracture", "rib fracture",
                  "lung lesion", "mass", "support devices"})
    return sorted(n for n in names if n)


def queries() -> list[str]:
    """Query sentences: every finding phrase in every way of asking for it, each side for the sided forms."""
    out = []
    for phrase in finding_phrases():
        for template in ASKING:
            sides = SIDES if "{s}" in template else ("",)
            out.extend(normalise(template.format(f=phrase, s=s)) for s in sides)
    return list(dict.fromkeys(out))


QUERY_WEIGHT = 3  # each query form counts three times: queries, not report sentences, are what is spoken


def corpus(reports: Iterable[str], query_weight: int = QUERY_WEIGHT) -> list[str]:
    """Training sentences for the language model: the reports split into sentences, then the queries
    (``query_weight`` times; measured in benchmarks/bench_asr.py)."""
    sentences = []
    for report in reports:
        for sentence in re.split(r"[.;:!?\n]+", str(report or "")):
            norm = normalise(sentence)
            if norm:
                sentences.append(norm)
    return sentences + queries() * query_weight
