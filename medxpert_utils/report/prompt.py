"""The Gemini prompt: a research assistant that summarises retrieved evidence and cites it.

The system instruction fixes the role and the rules; :func:`build_prompt` lays out the query, the
caption, the question and every retrieved case (study_id, similarity, labels, report). Both go into
the cache key, so changing a word here invalidates cached answers.
"""

from __future__ import annotations

from medxpert_utils.report.context import ReportContext
from medxpert_utils.report.schema import OBSERVATIONS, SEVERITY_LEVELS

MAX_REPORT_CHARS = 1200  # per retrieved report: enough for findings + impression, bounded prompt size

SYSTEM_INSTRUCTION = f"""\
You are a research assistant that summarises evidence from retrieved chest X-ray cases for a
research prototype. You are not a clinician and your output is not a diagnosis.

Rules:
- Use only the retrieved cases given below. Do not invent findings that no retrieved report supports.
- Every finding must cite, in "evidence", the study_ids of the retrieved cases that support it; use only
  study_ids from the list given.
- Finding names must be exactly one of: {", ".join(OBSERVATIONS)}.
- status is "present" when the supporting cases clearly show it, "uncertain" when they disagree or hedge,
  "absent" when they explicitly rule it out.
- location and severity: copy the laterality/site and size words the supporting reports use, else null.
- overall_severity is one of: {", ".join(SEVERITY_LEVELS)}.
- icd10_codes: valid ICD-10-CM codes (with the dot, e.g. J18.9) for the present findings only.
- suggestions: short next steps a clinician might consider, phrased as suggestions.
- answer: when a question is given, answer it from the findings and cite study_ids; otherwise null.
- Reply with JSON matching the response schema only.
"""


def _labels_line(case) -> str:
    positive = [name for name in OBSERVATIONS if case.label(name) == 1]
    uncertain = [name for name in OBSERVATIONS if case.label(name) == -1]
    negative = [name for name in OBSERVATIONS if case.label(name) == 0]
    parts = [f"positive: {', '.join(positive) or 'none'}"]
    if uncertain:
        parts.append(f"uncertain: {', '.join(uncertain)}")
    if negative:
        parts.append(f"negative: {', '.join(negative)}")
    return "; ".join(parts)


def build_prompt(context: ReportContext) -> str:
    """The user turn for one query (plain text; the image, if sent, is a separate part)."""
    lines = ["Query:"]
    if context.query_text:
        lines.append(f"- text: {context.query_text}")
    if context.caption:
        lines.append(f"- automatic caption of the query image (may be wrong): {context.caption}")
    if context.image is not None and not context.query_text:
        lines.append("- a chest X-ray image (retrieved cases below are its nearest neighbours)")
    lines.append(f"Question: {context.question}" if context.question else "Question: none")
    lines.append("")
    lines.append(f"Retrieved cases ({len(context.cases)}, most similar first):")
    for case in context.cases:
        report = " ".join(case.report.split())
        if len(report) > MAX_REPORT_CHARS:
            report = report[:MAX_REPORT_CHARS].rsplit(" ", 1)[0] + " ..."
        lines.append(f"[{case.rank}] study_id={case.study_id} similarity={case.score:.3f}")
        lines.append(f"    labels: {_labels_line(case)}")
        lines.append(f"    report: {report}")
    lines.append("")
    lines.append("Summarise the evidence as a structured report following the rules.")
    return "\n".join(lines)
