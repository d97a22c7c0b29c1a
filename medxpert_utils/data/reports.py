"""Report text: de-identification placeholders out, sections (findings, impression) from full reports,
the manifest's ``report`` column and the key that groups identical reports.

Full reports look like MIMIC-CXR's free text (a "FINAL REPORT" line, then headings in capitals followed by a
colon, often on their own line: "INDICATION:", "COMPARISON:", "FINDINGS:", "IMPRESSION:") or like
Indiana University (IU X-ray) reports, whose headings run inline ("... normal. IMPRESSION: No acute
disease."). Placeholders are "___" in MIMIC-CXR and "XXXX" in IU X-ray.
"""

from __future__ import annotations

import re
from typing import Any

FINDINGS_HEADINGS: frozenset[str] = frozenset({"FINDINGS", "FINDING", "FINDINGS AND IMPRESSION",
                                               "FINDINGS/IMPRESSION", "FINDINGS AND IMPRESSIONS"})
IMPRESSION_HEADINGS: frozenset[str] = frozenset({"IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS",
                                                 "FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION",
                                                 "FINDINGS AND IMPRESSIONS"})
# Other headings end a section; these are recognised in any case, any other one only in capitals.
OTHER_HEADINGS: frozenset[str] = frozenset({
    "COMPARISON", "COMPARISONS", "INDICATION", "INDICATIONS", "CLINICAL INDICATION", "HISTORY",
    "CLINICAL HISTORY", "TECHNIQUE", "EXAMINATION", "EXAM", "REASON FOR EXAM", "REASON FOR EXAMINATION",
    "CLINICAL INFORMATION", "NOTIFICATION", "RECOMMENDATION", "RECOMMENDATIONS", "WET READ", "ADDENDUM",
    "PROCEDURE", "TYPE OF EXAMINATION", "REFERENCE EXAM", "STUDY", "MEDICAL CONDITION",
})

_PLACEHOLDER = re.compile(r"_{2,}|(?<![A-Za-z])X{2,}(?![A-Za-z])")
_WHITESPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?)])")
_REPEATED_PUNCT = re.compile(r"([,;:])(?:\s*[,;:])+|\.(?:\s*\.)+")
_DANGLING_PUNCT = re.compile(r"[,;:]+\s*(?=[.!?])")  # "notified by ___, ." -> "notified by."
_EMPTY_PARENS = re.compile(r"\(\s*\)")
# A heading: words and a colon at a line start or after a sentence end ("... normal. IMPRESSION: ...").
_HEADING = re.compile(r"(?:^|(?<=[.;!?]))[ \t]*(?P<name>[A-Za-z][A-Za-z /&()-]{1,60}?)[ \t]*:", re.MULTILINE)
_FINAL_REPORT = re.compile(r"^[ \t]*(?:FINAL|PRELIMINARY) REPORT[ \t]*$", re.MULTILINE | re.IGNORECASE)
_NOT_WORD = re.compile(r"[^\w\s]|_")


def _is_missing(text: Any) -> bool:
    if text is None or type(text).__name__ == "NAType":
        return True
    return isinstance(text, float) and text != text  # NaN


def clean_report(text: str | None) -> str:
    """Report text without de-identification placeholders ("XXXX", "___"), whitespace collapsed; None/NaN -> ""."""
    if _is_missing(text):
        return ""
    text = _PLACEHOLDER.sub(" ", str(text))
    text = _WHITESPACE.sub(" ", text)
    text = _EMPTY_PARENS.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _REPEATED_PUNCT.sub(lambda m: m.group()[0], text)
    text = _DANGLING_PUNCT.sub("", text)
    return _WHITESPACE.sub(" ", text).strip().lstrip(",;:.- ").strip()


def extract_sections(text: str | None) -> tuple[str, str]:
    """(findings, impression) of a full report, each cleaned; a missing section is "".

    Sections run from their heading to the next heading; repeated sections are joined. "FINDINGS AND
    IMPRESSION" fills both. A report without any heading is all findings (some reports are one paragraph).
    """
    if _is_missing(text) or not str(text).strip():
        return "", ""
    text = str(text)
    headings: list[tuple[int, int, str]] = [(m.start(), m.end(), "OTHER") for m in _FINAL_REPORT.finditer(text)]
    for match in _HEADING.finditer(text):
        name = _WHITESPACE.sub(" ", match.group("name")).strip()
        key = name.upper().replace("(S)", "S")  # "IMPRESSION(S)"
        if key in FINDINGS_HEADINGS or key in IMPRESSION_HEADINGS or key in OTHER_HEADINGS or name.isupper():
            headings.append((match.start("name"), match.end(), key))
    if not headings:
        return clean_report(text), ""
    headings.sort()
    findings: list[str] = []
    impression: list[str] = []
    for i, (_, end, key) in enumerate(headings):
        body = text[end:headings[i + 1][0] if i + 1 < len(headings) else len(text)]
        if key in FINDINGS_HEADINGS:
            findings.append(body)
        if key in IMPRESSION_HEADINGS:
            impression.append(body)
    return clean_report(" ".join(findings)), clean_report(" ".join(impression))


def report_text(findings: str | None, impression: str | None) -> str:
    """The manifest's ``report``: the impression, or the findings where the impression is missing or empty."""
    return clean_report(impression) or clean_report(findings)


def normalise_for_grouping(text: str | None) -> str:
    """Key of ``report_group``: cleaned, lowercased, punctuation removed, whitespace collapsed."""
    return _WHITESPACE.sub(" ", _NOT_WORD.sub(" ", clean_report(text).lower())).strip()
