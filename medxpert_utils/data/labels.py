"""CheXpert-style rule labeler: the 14 CheXpert observations from a free-text chest radiograph report.

It follows the approach of the CheXpert labeler (Irvin et al., 2019) with regular expressions in place
of a dependency parse (docs/labeler.md has the conventions and how it measures on real reports):

0. Prepare the text: indication, history, comparison and technique sections are skipped (they say why the
   study was done, not what it shows); de-identification placeholders ("XXXX", "___") are dropped.
1. Split the report into sentences, and each sentence into clauses at contrastive words
   ("but", "however", "although", ...) and at a fresh "there is/are".
2. Find mentions with per-observation phrase tables (``MENTION_PHRASES`` in :mod:`.label_phrases`). Phrases
   that only look like a mention ("pericardial effusion", "mass effect", "rib lesion", "granulomatous
   infection", "lead fracture") are matched too and dropped. Matches do not overlap: the leftmost wins,
   longer phrases first, so "perihilar haziness" is Edema, not Lung Opacity.
3. Classify each mention by the cues in scope:
   - a history or hypothetical cue within four words drops the mention ("history of pneumonia", "could
     obscure a nodule", "correlate clinically for pneumonia", "nodules seen on the prior CT");
   - else a negation cue -> 0 ("no", "without", "free of", "negative for", "resolved", "not seen", ...);
   - else an uncertainty cue -> -1 ("may", "possible", "cannot exclude", "could represent", "suggestive of",
     "suspected", "questionable", "?");
   - else 1. "Likely", "probable", "presumed", "consistent with" and "compatible with" are not cues, and each
     named alternative of a differential ("A or B", "A versus B") is read as stated (docs/labeler.md).
   A cue before the mention reaches forward to the end of the clause unless a new finding starts
   (", the ...", "and there ...", ", small ..." unless the list goes on to "or"), so "no pneumothorax,
   effusion or consolidation" and "no consolidation, large effusion, or pneumothorax" negate every member;
   a cue after the mention ("... has resolved", "... cannot be excluded") reaches back to the previous
   comma. Negation beats uncertainty within one mention ("no consolidation to suggest pneumonia" ->
   Pneumonia 0). Phrases such as "no change in" or "no increase in" are not negations.
4. Normal statements give fixed values: "heart size is normal" / "normal heart size" / "heart size is at
   the upper limits of normal" -> Cardiomegaly 0, "cardiomediastinal silhouette is within normal limits" ->
   Enlarged Cardiomediastinum 0, "lungs are clear" -> Lung Opacity 0, "costophrenic angles are sharp" ->
   Pleural Effusion 0, "pulmonary vasculature is normal" -> Edema 0; "heart size is borderline" ->
   Cardiomegaly 1.
5. Aggregate per observation (CheXpert's rule): any positive -> 1, else any uncertain -> -1, else any
   negative -> 0, else None (unmentioned). "No Finding" is 1 when no observation other than Support
   Devices is 1 or -1, and 0 otherwise (CheXpert's rule); a blank report gets None everywhere.

Decisions (NegBio / ChestX-ray14 reading, measured on hand-labelled reports; docs/labeler.md): a finding
called "likely", "probable", "presumed", "consistent with" or "compatible with" is positive; each alternative
named in a differential is positive unless hedged; "borderline" heart size is cardiomegaly. Genuine hedges
("possible", "may", "cannot exclude", "questionable", "suspicious for", "suggestive of", "less likely", "?")
stay uncertain; "unlikely" is a negation, as in NegEx. Vascular congestion is not edema; "nodular" describes an
opacity and is not a lung lesion (a "nodule" is); infection described as old or granulomatous is not pneumonia.
Laterality words ("left", "right", "bilateral", "bibasilar") are never cues. Research labels only, with the
known error modes of rule labelers; not for clinical use.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medxpert_utils.data.label_phrases import (  # noqa: F401 - the tables stay importable from here
    CLAUSE_BREAKS,
    DIFFERENTIAL,
    DIFFERENTIAL_UNCERTAIN,
    IGNORE_AFTER,
    IGNORE_BEFORE,
    LATERALITY,
    LIST_ITEM_STOP,
    LIST_OR,
    MENTION_PHRASES,
    NEGATION_AFTER,
    NEGATION_BEFORE,
    NEGATION_EITHER,
    NORMAL_STATEMENTS,
    NOT_MENTIONS,
    NOT_NEGATIONS,
    SCOPE_STOP,
    SECTION_HEADING,
    SEVERITY,
    SEVERITY_WORDS,
    SHARED_PHRASES,
    SKIPPED_SECTIONS,
    STATEMENT_STOP,
    UNCERTAIN_AFTER,
    UNCERTAIN_BEFORE,
    UNCERTAIN_EITHER,
)
from medxpert_utils.data.label_scanner import PhraseScanner

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
    + rf"|(?P<neg_either>{_alternation(NEGATION_EITHER)})"
    + rf"|(?P<unc_after>{_alternation(UNCERTAIN_AFTER)})"
    + rf"|(?P<neg_after>{_alternation(NEGATION_AFTER)})"
    + rf"|(?P<ign_before>{_alternation(IGNORE_BEFORE)})"
    + rf"|(?P<ign_after>{_alternation(IGNORE_AFTER)})"
    + rf"|(?P<unc_before>{_alternation(UNCERTAIN_BEFORE)})"
    + rf"|(?P<neg_before>{_alternation(NEGATION_BEFORE)})"
    + rf"|(?P<brk>{_alternation(CLAUSE_BREAKS)})"
    + r")(?:(?<=\?)|(?<=;)|(?![\w-]))")
_SCOPE_STOP_RX = re.compile(SCOPE_STOP, re.IGNORECASE)
_LIST_ITEM_STOP_RX = re.compile(LIST_ITEM_STOP, re.IGNORECASE)
_LIST_OR_RX = re.compile(LIST_OR, re.IGNORECASE)
_NEAR = re.compile(r" ?(?:[\w/-]+ ){0,4}")  # how far a history / hypothetical cue reaches: four words
_DIFFERENTIAL_RX = re.compile(DIFFERENTIAL, re.IGNORECASE)
_FILLER = rf"(?:(?!{STATEMENT_STOP})[\w ,/&-]){{0,60}}?"
_STATEMENT_PATTERNS: tuple[str, ...] = tuple(
    rf"\b(?:(?:{anchor}){_FILLER} (?:(?:is|are|appears?|remains?|seems?|looks?) )?"
    rf"(?:(?:again|otherwise|overall|still|grossly|essentially|largely|now|stable and) )?(?:{predicate})"
    rf"|(?:{before})(?:-sized)? (?:[\w-]+ )?(?:{anchor}))(?![\w-])"
    for _, _, anchor, predicate, before in NORMAL_STATEMENTS
)
# One scanner: pattern 0 the mentions, 1 the cues, then one per normal statement.
_SCANNER = PhraseScanner((_MENTION_PATTERN, _CUE_PATTERN, *_STATEMENT_PATTERNS))
_STATEMENT_IDS = range(2, 2 + len(_STATEMENT_PATTERNS))
_TAIL_STOP = re.compile(r",|\b(?:with|and|or|plus|versus|vs|as well as)\b", re.IGNORECASE)
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n|\n(?=\s*(?:\d+[.)]|[-*\u2022])\s)")
_WHITESPACE = re.compile(r"\s+")
# De-identification placeholders ("XXXX" in Open-I, "___" in MIMIC-CXR) are dropped with the space before them,
# so that "costophrenic XXXX blunting" reads as "costophrenic blunting" and "seen on XXXX." still ends a sentence.
_PLACEHOLDER = re.compile(r"[ \t]*_{2,}")  # "XXXX" goes by str.replace, which is faster
_SKIPPED_HEADING = re.compile(rf"(?<![\w-])(?:{SKIPPED_SECTIONS}) ?$", re.IGNORECASE)  # searched up to a colon
_SECTION_END = re.compile(rf"{SECTION_HEADING}|\n[ \t]*\n")
_LIST_NUMBER = re.compile(r"(?:^|(?<=[\s:]))\(?\d{1,2}[.)]$")
# A sentence ends at . ! ? and a space after a word, a bracket, "%" or a space, except after common abbreviations
# ("vs.", "e.g.", "Dr.") and list numbers ("1."), and at a paragraph break (joined as "\n", which no phrase
# pattern crosses). The regex finds candidates; _sentence_spans checks the character before.
_SENTENCE_END = re.compile(r"[.!?]+ |\n")
_ABBREVIATION = re.compile(r"(?<!\w)(?:vs|e\.g|i\.e|dr|approx)$", re.IGNORECASE)
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
    """Sentences of a report as the labeler reads them: whitespace collapsed, de-identification placeholders
    dropped, indication / history / comparison / technique sections left out; paragraph breaks and numbered
    items end a sentence."""
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
    """The report as read (see :func:`split_sentences`; paragraphs joined by newlines) and its sentences' spans."""
    if ":" in text:
        text = _drop_skipped_sections(text)
    if "XXXX" in text:
        text = text.replace(" XXXX", "").replace("XXXX", "")
    if "__" in text:
        text = _PLACEHOLDER.sub("", text)
    blocks = (_WHITESPACE.sub(" ", block).strip() for block in _PARAGRAPH_BREAK.split(text))
    normalised = "\n".join(block for block in blocks if block)
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(normalised):
        end = match.end()
        if match.group() != "\n":
            stop = match.start()
            before = normalised[stop - 1] if stop else ""
            if not (before.isalnum() or before in "_)]% ") or _ABBREVIATION.search(normalised, max(stop - 7, 0), stop):
                continue
            if _LIST_NUMBER.search(normalised, max(start, stop - 4), end - 1):
                continue  # "1. Small effusion." is one sentence
        if normalised[start:end].strip():
            spans.append((start, end - 1 if normalised[end - 1] in " \n" else end))
        start = end
    if normalised[start:].strip():
        spans.append((start, len(normalised)))
    return normalised, spans


def _drop_skipped_sections(text: str) -> str:
    """``text`` without its indication, history, comparison and technique sections (see ``SKIPPED_SECTIONS``)."""
    parts, position = [], 0
    colon = text.find(":")
    while colon != -1:
        heading = _SKIPPED_HEADING.search(text, max(position, colon - 48), colon)
        if heading is None:
            colon = text.find(":", colon + 1)
            continue
        parts.append(text[position:heading.start()])
        following = _SECTION_END.search(text, colon + 1)
        position = following.start() if following else len(text)
        colon = text.find(":", position)
    parts.append(text[position:])
    return "".join(parts) if len(parts) > 1 else text


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

    # Differentials: consecutive mentions in one clause joined by "or" / "versus" (uncertain only when
    # DIFFERENTIAL_UNCERTAIN; by default each named alternative keeps the value its cues give).
    differential: set[int] = set()
    for i in range(len(phrases) - 1 if DIFFERENTIAL_UNCERTAIN else 0):
        (_, end_a, _), (start_b, _, _) = phrases[i], phrases[i + 1]
        if end_a <= start_b and clause_of(end_a) == clause_of(start_b) \
                and _DIFFERENTIAL_RX.match(text[end_a:start_b]):
            differential.update((i, i + 1))

    found: list[tuple[int, Mention]] = []
    for i, (start, end, label) in enumerate(phrases):
        clause = clause_of(start)
        clause_start, clause_end = breaks[clause], ends[clause]
        negated, uncertain, ignored = False, i in differential, False
        for cue_start, cue_end, kind in cues_by_clause.get(clause, ()):
            if not _reaches(text, kind, (cue_start, cue_end), (start, end), clause_end):
                continue
            if kind.startswith("neg"):
                negated = True
            elif kind.startswith("ign"):
                ignored = True
            else:
                uncertain = True
        if ignored:
            continue
        value = 0 if negated else -1 if uncertain else 1
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

    for (label, value, *_), matches in zip(NORMAL_STATEMENTS, statement_matches):
        for match in matches:
            if clause_of(match.start()) == clause_of(match.end() - 1):
                found.append((match.start(), Mention(label, value, sentence_of(match.start()),
                                                     _laterality(match.group()), None, match.group())))
    found.sort(key=lambda item: item[0])
    return [mention for _, mention in found]


def _reaches(text: str, kind: str, cue: tuple[int, int], mention: tuple[int, int], clause_end: int) -> bool:
    """Whether a cue of ``kind`` (a group name of the cue pattern) spanning ``cue`` applies to ``mention``."""
    (cue_start, cue_end), (start, end) = cue, mention
    if cue_end <= start and not kind.endswith("after"):
        if kind == "ign_before":
            return _NEAR.fullmatch(text, cue_end, start) is not None
        if _SCOPE_STOP_RX.search(text, cue_end, start):
            return False
        # ", small ..." starts a new finding, unless the list goes on to an "or" (one negated list).
        item_stop = _LIST_ITEM_STOP_RX.search(text, cue_end, start)
        return item_stop is None or _LIST_OR_RX.search(text, item_stop.end(), clause_end) is not None
    if cue_start >= end and not kind.endswith("before"):
        if "," in text[end:cue_start]:
            return False
        return kind != "ign_after" or _NEAR.fullmatch(text, end, cue_start) is not None
    return False


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
