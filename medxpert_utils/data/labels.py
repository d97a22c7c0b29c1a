"""CheXpert-style rule labeler: the 14 CheXpert observations from a free-text chest radiograph report.

It follows the approach of the CheXpert labeler (Irvin et al., 2019) with regular expressions in place
of a dependency parse:

1. Split the report into sentences, and each sentence into clauses at contrastive words
   ("but", "however", "although", ...) and at a fresh "there is/are".
2. Find mentions with per-observation phrase tables (``MENTION_PHRASES`` in :mod:`.label_phrases`). Phrases that only look like a
   mention ("pericardial effusion", "mass effect") are matched too and dropped. Matches do not overlap:
   the leftmost wins, longer phrases first, so "perihilar haziness" is Edema, not Lung Opacity.
3. Classify each mention by the cues in scope:
   - a negation cue -> 0 ("no", "without", "free of", "negative for", "has resolved", "not seen", ...);
   - else an uncertainty cue, or a differential "A or B" / "A versus B" -> -1 ("may", "possible",
     "likely", "cannot exclude", "cannot be excluded", "could represent", "suggestive of", "?");
   - else 1.
   A cue before the mention reaches forward to the end of the clause unless a new finding starts
   (", small ...", ", the ...", "and there ..."), so "no pneumothorax, effusion or consolidation" negates all
   three; a cue after the mention ("... has resolved", "... cannot be excluded") reaches back to the
   previous comma. Negation beats uncertainty within one mention ("no consolidation to suggest
   pneumonia" -> Pneumonia 0). Phrases such as "no change in" or "no increase in" are not negations.
4. Normal statements give fixed values: "heart size is normal" / "normal heart size" -> Cardiomegaly 0,
   "cardiomediastinal silhouette is within normal limits" -> Enlarged Cardiomediastinum 0, "lungs are
   clear" -> Lung Opacity 0, "costophrenic angles are sharp" -> Pleural Effusion 0, "pulmonary
   vasculature is normal" -> Edema 0; "heart size is top normal / borderline" -> Cardiomegaly -1.
5. Aggregate per observation (CheXpert's rule): any positive -> 1, else any uncertain -> -1, else any
   negative -> 0, else None (unmentioned). "No Finding" is 1 when no observation other than Support
   Devices is 1 or -1, and 0 otherwise (CheXpert's rule); a blank report gets None everywhere.

Decisions: "likely", "probably" and "suggestive of" are uncertainty cues, as in CheXpert; "unlikely" is a
negation, as in NegEx. Laterality words ("left", "right", "bilateral", "bibasilar") are never cues.
Research labels only, with the known error modes of rule labelers; not for clinical use.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from medxpert_utils.data.label_phrases import (  # noqa: F401 - the tables stay importable from here
    CLAUSE_BREAKS,
    MENTION_PHRASES,
    NEGATION_AFTER,
    NEGATION_BEFORE,
    NORMAL_STATEMENTS,
    NOT_MENTIONS,
    NOT_NEGATIONS,
    SEVERITY_WORDS,
    SHARED_PHRASES,
    UNCERTAIN_AFTER,
    UNCERTAIN_BEFORE,
    UNCERTAIN_EITHER,
    DIFFERENTIAL,
    LATERALITY,
    SCOPE_STOP,
    SEVERITY,
    STATEMENT_STOP,
)

if TYPE_CHECKING:
    import pandas as pd

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# Observations that do not count against "No Finding" (CheXpert).
NO_FINDING_EXEMPT: frozenset[str] = frozenset({"No Finding", "Support Devices"})

# ---------------------------------------------------------------------------------------------------
# Compiled once at import
# ---------------------------------------------------------------------------------------------------


class _PhraseScanner:
    """Case-insensitive patterns, each tried only at the words that can start one of its matches.

    Python's ``re`` tries every alternative of a phrase table at every position, which made the tables
    the labeler's bottleneck. Here the first letters of each word are looked up against each pattern's
    possible starts, read from the parsed pattern (:func:`_start_keys`); one pass over the words serves
    every pattern. A pattern whose starts cannot be read is scanned everywhere with ``finditer``.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = list(patterns)
        self.regexes = [re.compile(pattern, re.IGNORECASE) for pattern in patterns]
        self.keys = [_start_keys(pattern) for pattern in patterns]
        self._candidates: dict[str, tuple[int, ...]] = {}  # word start -> patterns to try (<= 4 letters)

    def scan(self, text: str, skip: Iterable[int] = ()) -> list[list[re.Match[str]]]:
        """Per pattern, its non-overlapping matches left to right (as ``finditer``); ``skip``: pattern indexes."""
        skip = set(skip)
        found: list[list[re.Match[str]]] = [[] for _ in self.regexes]
        ends = [0] * len(self.regexes)
        for i, keys in enumerate(self.keys):
            if keys is None and i not in skip:
                found[i] = list(self.regexes[i].finditer(text))
        for word in _WORD_START.finditer(text):
            key = word.group().lower()
            ids = self._candidates.get(key)
            if ids is None:
                ids = self._candidates[key] = tuple(
                    i for i, keys in enumerate(self.keys)
                    if keys is not None and any(key[:j] in keys for j in range(1, len(key) + 1)))
            position = word.start()
            for i in ids:
                if position >= ends[i] and i not in skip:
                    match = self.regexes[i].match(text, position)
                    if match:
                        ends[i] = match.end()
                        found[i].append(match)
        return found


_WORD_START = re.compile(r"(?<![A-Za-z])[A-Za-z]{1,4}|[?;]")


def _start_keys(pattern: str, n: int = 4) -> frozenset[str] | None:
    """The lowercase first ``n`` letters any match can start with (a superset), or None if unknown."""
    try:
        from re import _constants, _parser  # Python >= 3.11; elsewhere every position is scanned
        states = _extend({("", False)}, _parser.parse(pattern, re.IGNORECASE), n, _constants)
    except Exception:  # noqa: BLE001 - an unexpected parse tree only costs speed
        return None
    if states is None or any(prefix == "" for prefix, _ in states):
        return None
    return frozenset(prefix for prefix, _ in states)


def _extend(states: set, items: Any, n: int, c: Any) -> set | None:
    """Extend (prefix, closed) states over the parsed items; a non-letter closes a prefix."""
    for op, av in items:
        open_ = {s for s in states if not s[1] and len(s[0]) < n}
        if not open_:
            return states
        if op is c.LITERAL:
            new: set | None = {_add(prefix, chr(av)) for prefix, _ in open_}
        elif op is c.IN:
            chars = _charset(av, c)
            new = None if chars is None else {_add(prefix, ch) for prefix, _ in open_ for ch in chars}
        elif op in (c.AT, c.ASSERT, c.ASSERT_NOT):  # zero width: ignoring it keeps a superset
            continue
        elif op is c.SUBPATTERN:
            new = _extend(open_, av[-1], n, c)
        elif op is c.BRANCH:
            new = set()
            for branch in av[1]:
                part = _extend(open_, branch, n, c)
                if part is None:
                    return None
                new |= part
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT):
            low, _, sub = av
            new = set() if low > 0 else set(open_)
            current: set | None = open_
            for _ in range(n):
                current = _extend(current, sub, n, c)
                if current is None:
                    return None
                new |= current
        else:
            return None
        if new is None:
            return None
        states = (states - open_) | new
    return states


def _add(prefix: str, char: str) -> tuple[str, bool]:
    char = char.lower()
    if "a" <= char <= "z":
        return prefix + char, False
    return (prefix or char), True


def _charset(items: Any, c: Any) -> set[str] | None:
    chars: set[str] = set()
    for op, av in items:
        if op is c.LITERAL:
            chars.add(chr(av))
        elif op is c.RANGE and av[1] - av[0] < 64:
            chars.update(chr(code) for code in range(av[0], av[1] + 1))
        else:
            return None
    return chars


def _alternation(phrases: Iterable[str]) -> str:
    return "|".join(f"(?:{p})" for p in phrases)


_MENTION_GROUPS: dict[str, tuple[str, ...]] = {"x": ()}  # group name -> observations ("x": not a mention)
_mention_parts = [rf"(?P<x>{_alternation(NOT_MENTIONS)})"]
for _i, (_phrase, _labels) in enumerate(SHARED_PHRASES.items()):
    _MENTION_GROUPS[f"s{_i}"] = _labels
    _mention_parts.append(rf"(?P<s{_i}>{_phrase})")
# Specific observations before general ones, so a tie at one position goes to the more specific.
for _i, _label in enumerate(sorted(MENTION_PHRASES, key=lambda name: name == "Lung Opacity")):
    _MENTION_GROUPS[f"m{_i}"] = (_label,)
    _ordered = sorted(MENTION_PHRASES[_label], key=len, reverse=True)
    _mention_parts.append(rf"(?P<m{_i}>{_alternation(_ordered)})")
_MENTION_PATTERN = r"\b(?:" + "|".join(_mention_parts) + r")(?![\w-])"

# Order matters where cues start at the same word: "not excluded" is uncertainty, not negation.
_CUE_PATTERN = (
    r"(?:(?<![\w-])|(?=[?;]))(?:"
    + rf"(?P<pseudo>{_alternation(NOT_NEGATIONS)})"
    + rf"|(?P<unc_either>{_alternation(UNCERTAIN_EITHER)})"
    + rf"|(?P<unc_after>{_alternation(UNCERTAIN_AFTER)})"
    + rf"|(?P<neg_after>{_alternation(NEGATION_AFTER)})"
    + rf"|(?P<unc_before>{_alternation(UNCERTAIN_BEFORE)})"
    + rf"|(?P<neg_before>{_alternation(NEGATION_BEFORE)})"
    + rf"|(?P<brk>{_alternation(CLAUSE_BREAKS)})"
    + r")(?:(?<=\?)|(?<=;)|(?![\w-]))")
_SCOPE_STOP_RX = re.compile(SCOPE_STOP, re.IGNORECASE)
_DIFFERENTIAL_RX = re.compile(DIFFERENTIAL, re.IGNORECASE)
_FILLER = rf"(?:(?!{STATEMENT_STOP})[\w ,/&-]){{0,60}}?"
_STATEMENT_PATTERNS: tuple[str, ...] = tuple(
    rf"\b(?:(?:{anchor}){_FILLER} (?:(?:is|are|appears?|remains?|seems?|looks?) )?"
    rf"(?:(?:again|otherwise|overall|still|grossly|essentially|largely|now|stable and) )?(?:{predicate})"
    rf"|(?:{predicate})(?:-sized)? (?:[\w-]+ )?(?:{anchor}))(?![\w-])"
    for _, _, anchor, predicate in NORMAL_STATEMENTS
)
# One scanner: pattern 0 the mentions, 1 the cues, then one per normal statement.
_SCANNER = _PhraseScanner((_MENTION_PATTERN, _CUE_PATTERN, *_STATEMENT_PATTERNS))
_STATEMENT_IDS = range(2, 2 + len(_STATEMENT_PATTERNS))
_TAIL_STOP = re.compile(r",|\b(?:with|and|or|plus|versus|vs|as well as)\b", re.IGNORECASE)
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n|\n(?=\s*(?:\d+[.)]|[-*\u2022])\s)")
_WHITESPACE = re.compile(r"\s+")
_LIST_NUMBER = re.compile(r"(?:^|(?<=[\s:]))\(?\d{1,2}[.)]$")
# A sentence ends at . ! ? and a space, except after common abbreviations ("vs.", "e.g.", "Dr."), and at a
# paragraph break (joined as "\n", which no phrase pattern crosses).
_SENTENCE_END = re.compile(r"(?<!\bvs)(?<!\be\.g)(?<!\bi\.e)(?<!\bdr)(?<!\bapprox)(?<=[\w)\]%])[.!?]+ |\n",
                           re.IGNORECASE)
# Normal statements need one of these words; sentences without them skip the statement patterns.
_STATEMENT_HINT = re.compile(r"\b(?:normal|within|unremarkable|not|clear|sharp|preserved|well|top|upper|high|"
                             r"borderline)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Mention:
    """One mention of an observation: its value (1 / 0 / -1), the sentence it came from, and the laterality
    ("left", "right", "bilateral" or None) and severity ("small", "mild", "moderate", "large", "severe" or
    None) written beside it; ``phrase`` is the matched text."""

    label: str
    value: int
    sentence: str
    laterality: str | None = None
    severity: str | None = None
    phrase: str = ""


def split_sentences(text: str) -> list[str]:
    """Sentences of a report, whitespace collapsed; paragraph breaks and numbered items end a sentence."""
    normalised, spans = _sentence_spans(text)
    return [normalised[a:b] for a, b in spans]


def find_mentions(text: str | None) -> list[Mention]:
    """Every mention of a CheXpert observation in ``text``, in reading order (see the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        return []
    return _mentions(*_sentence_spans(text))


def label_report(text: str | None) -> dict[str, int | None]:
    """The 14 CheXpert observations of one report: 1 positive, 0 negative, -1 uncertain, None unmentioned.

    Mentions aggregate as in CheXpert: positive beats uncertain beats negative. "No Finding" is 1 when no
    observation other than Support Devices is positive or uncertain, else 0; a blank report is all None.
    """
    labels: dict[str, int | None] = dict.fromkeys(CHEXPERT_LABELS)
    if not isinstance(text, str) or not text.strip():
        return labels
    for mention in find_mentions(text):
        labels[mention.label] = _combine(labels[mention.label], mention.value)
    labels["No Finding"] = 0 if any(
        labels[name] in (1, -1) for name in CHEXPERT_LABELS if name not in NO_FINDING_EXEMPT) else 1
    return labels


def label_frame(reports: Iterable[str | None]) -> pd.DataFrame:
    """Labels of many reports as a DataFrame: the 14 columns in manifest order, nullable Int8, pd.NA unmentioned.

    A pandas Series keeps its index, so ``frame[CHEXPERT_LABELS] = label_frame(frame.report)`` aligns.
    Identical reports are labelled once.
    """
    import numpy as np
    import pandas as pd

    index = reports.index if isinstance(reports, pd.Series) else None
    cache: dict[Any, tuple[int | None, ...]] = {}
    rows: list[tuple[int | None, ...]] = []
    for text in reports:
        key = text if isinstance(text, str) else None
        if key not in cache:
            labels = label_report(key)
            cache[key] = tuple(labels[name] for name in CHEXPERT_LABELS)
        rows.append(cache[key])
    table = np.array([[-2 if v is None else v for v in row] for row in rows], dtype=np.int8).reshape(
        len(rows), len(CHEXPERT_LABELS))
    columns = {name: pd.arrays.IntegerArray(np.where(table[:, j] == -2, 0, table[:, j]).astype(np.int8),
                                            table[:, j] == -2)
               for j, name in enumerate(CHEXPERT_LABELS)}
    return pd.DataFrame(columns, index=index)


def positive_labels(labels: Mapping[str, Any]) -> frozenset[str]:
    """Names of the observations whose value is 1 (a dict, or a manifest row with NaN / pd.NA / None)."""
    positive = set()
    for name in CHEXPERT_LABELS:
        try:
            value = float(labels.get(name))  # type: ignore[arg-type]
        except (TypeError, ValueError):  # None, pd.NA, missing
            continue
        if value == 1.0:
            positive.add(name)
    return frozenset(positive)


# ---------------------------------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------------------------------


def _combine(current: int | None, new: int) -> int:
    """CheXpert aggregation: positive beats uncertain beats negative."""
    if current is None:
        return new
    rank = {1: 2, -1: 1, 0: 0}
    return current if rank[current] >= rank[new] else new


def _sentence_spans(text: str) -> tuple[str, list[tuple[int, int]]]:
    """The report with whitespace collapsed (paragraphs joined by newlines) and its sentences' spans."""
    blocks = (_WHITESPACE.sub(" ", block).strip() for block in _PARAGRAPH_BREAK.split(text))
    normalised = "\n".join(block for block in blocks if block)
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(normalised):
        end = match.end()
        if match.group() != "\n" and _LIST_NUMBER.search(normalised, start, end - 1):
            continue  # "1. Small effusion." is one sentence
        if normalised[start:end].strip():
            spans.append((start, end - 1 if normalised[end - 1] in " \n" else end))
        start = end
    if normalised[start:].strip():
        spans.append((start, len(normalised)))
    return normalised, spans


def _mentions(text: str, spans: list[tuple[int, int]]) -> list[Mention]:
    """Mentions in whitespace-normalised ``text``; a sentence start also starts a clause."""
    mention_matches, cue_matches, *statement_matches = _SCANNER.scan(
        text, skip=() if _STATEMENT_HINT.search(text) else _STATEMENT_IDS)
    phrases: list[tuple[int, int, str]] = []  # (start, end, observation)
    for match in mention_matches:
        for label in _MENTION_GROUPS[match.lastgroup]:  # type: ignore[index]
            phrases.append((match.start(), match.end(), label))

    sentence_starts = [start for start, _ in spans]
    breaks = list(sentence_starts)
    cues: list[tuple[int, int, str]] = []
    for match in cue_matches:
        if match.lastgroup == "brk":
            breaks.append(match.start())
        elif match.lastgroup != "pseudo":
            cues.append((match.start(), match.end(), match.lastgroup))  # type: ignore[arg-type]
    breaks.sort()
    ends = breaks[1:] + [len(text)]

    def clause_of(position: int) -> int:
        return bisect_right(breaks, position) - 1

    def sentence_of(position: int) -> str:
        start, end = spans[max(bisect_right(sentence_starts, position) - 1, 0)]
        return text[start:end]

    cues_by_clause: dict[int, list[tuple[int, int, str]]] = {}
    for cue in cues:
        cues_by_clause.setdefault(clause_of(cue[0]), []).append(cue)

    # Differentials: consecutive mentions in one clause joined by "or" / "versus".
    differential: set[int] = set()
    for i in range(len(phrases) - 1):
        (_, end_a, _), (start_b, _, _) = phrases[i], phrases[i + 1]
        if end_a <= start_b and clause_of(end_a) == clause_of(start_b) \
                and _DIFFERENTIAL_RX.match(text[end_a:start_b]):
            differential.update((i, i + 1))

    found: list[tuple[int, Mention]] = []
    for i, (start, end, label) in enumerate(phrases):
        clause = clause_of(start)
        negated, uncertain = False, i in differential
        for cue_start, cue_end, kind in cues_by_clause.get(clause, ()):
            if cue_end <= start and not kind.endswith("after"):
                if _SCOPE_STOP_RX.search(text, cue_end, start):
                    continue
            elif cue_start >= end and not kind.endswith("before"):
                if "," in text[end:cue_start]:
                    continue
            else:
                continue
            if kind.startswith("neg"):
                negated = True
            else:
                uncertain = True
        value = 0 if negated else -1 if uncertain else 1
        clause_start, clause_end = breaks[clause], ends[clause]
        before = max(phrases[i - 1][1], clause_start) if i > 0 and phrases[i - 1][1] <= start else clause_start
        after = min(phrases[i + 1][0], clause_end) if i + 1 < len(phrases) and phrases[i + 1][0] >= end \
            else clause_end
        # The mention's own words: back to the previous comma or mention, on until a comma or a conjunction.
        head = text[before:start]
        head = head[head.rfind(",") + 1:]
        tail = _TAIL_STOP.split(text[end:after], maxsplit=1)[0]
        local = head + text[start:end] + tail
        # Else the side named earlier in the clause: "left lower lobe opacity, likely atelectasis".
        laterality = _laterality(local) or _laterality(text[clause_start:start])
        found.append((start, Mention(label, value, sentence_of(start), laterality, _severity(local, len(head)),
                                     text[start:end])))

    for (label, value, _, _), matches in zip(NORMAL_STATEMENTS, statement_matches):
        for match in matches:
            if clause_of(match.start()) == clause_of(match.end() - 1):
                found.append((match.start(), Mention(label, value, sentence_of(match.start()),
                                                     _laterality(match.group()), None, match.group())))
    found.sort(key=lambda item: item[0])
    return [mention for _, mention in found]


def _laterality(text: str) -> str | None:
    sides = set()
    for match in LATERALITY.finditer(text):
        sides.add(match.lastgroup)
    if not sides:
        return None
    if "both" in sides or {"left", "right"} <= sides:
        return "bilateral"
    return "left" if "left" in sides else "right"


def _severity(text: str, mention_offset: int) -> str | None:
    """The severity word nearest the mention ("mild to moderate cardiomegaly" -> moderate)."""
    best: tuple[int, str] | None = None
    for match in SEVERITY.finditer(text):
        distance = abs(match.start() - mention_offset)
        if best is None or distance <= best[0]:
            best = (distance, SEVERITY_WORDS[match.group().lower()])
    return best[1] if best else None
