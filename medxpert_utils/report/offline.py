"""The offline, deterministic reporter: a similarity-weighted vote of the retrieved cases' labels.

Used without an API key and as the fallback when Gemini fails. For each CheXpert observation the
top-K cases vote with weight ``max(score, 0)`` normalised to sum to 1 (equal weights when every
score is <= 0): a positive label counts 1, an uncertain one 0.5. When the query has a caption, the
labeler's reading of it votes too, by default with the weight of one average case (1 / (K + 1), the
cases sharing the rest), so it can tip a finding the evidence half supports but not make one alone.
The observation is reported

- ``present`` when the positive-only vote reaches ``report.min_confidence``;
- ``uncertain`` when only the vote including uncertain labels reaches it;
- ``absent`` when cases that mention it negatively carry at least half the weight (and it is not
  reported otherwise; never for 'No Finding').

'No Finding' is dropped when any pathology is reported (support devices do not count, as in
CheXpert). Laterality and severity come from the supporting reports' mentions
(``data.labels.find_mentions``), the most weighted phrase winning. Overall severity and the
suggestions follow the rule tables below.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

from medxpert_utils.report import icd10
from medxpert_utils.report.context import ReportContext, RetrievedCase
from medxpert_utils.report.schema import OBSERVATIONS, DiagnosisReport, Finding

GENERATOR = "offline-retrieval"
NON_PATHOLOGY = {"No Finding", "Support Devices"}

# Overall severity rules, checked top to bottom; the first that matches wins.
#   critical: Pneumothorax present and described as large or tension
#   severe:   Pneumothorax present; or any present finding described as large/severe/extensive;
#             or three or more pathological findings present
#   moderate: Pneumonia, Consolidation, Edema, Pleural Effusion, Lung Lesion or Fracture present;
#             or two pathological findings present; or any finding described as moderate
#   mild:     any other pathological finding present, or uncertain findings only
#   normal:   otherwise (no finding, support devices only)
LARGE_WORDS = {"large", "severe", "extensive", "massive", "tension", "marked", "big"}
MODERATE_WORDS = {"moderate", "moderately"}
MODERATE_FINDINGS = {"Pneumonia", "Consolidation", "Edema", "Pleural Effusion", "Lung Lesion", "Fracture"}

# Suggestions: (observation, words in its severity/location that must appear or None, suggestion).
# The first matching row per observation is used; rows with a condition come before the default.
SUGGESTIONS: tuple[tuple[str, frozenset[str] | None, str], ...] = (
    ("Pneumothorax", frozenset({"large", "tension", "moderate"}),
     "Urgent clinical review: a large or tension pneumothorax may need decompression."),
    ("Pneumothorax", None,
     "Clinical review of the pneumothorax; repeat radiograph to document resolution or stability."),
    ("Lung Lesion", None, "Consider chest CT to characterise the lesion; compare with prior imaging."),
    ("Pneumonia", None,
     "Correlate with clinical signs of infection; follow-up radiograph after treatment to confirm resolution."),
    ("Consolidation", None,
     "Correlate clinically for infection or aspiration; follow-up radiograph to confirm resolution."),
    ("Pleural Effusion", frozenset({"large", "moderate"}),
     "Consider ultrasound to quantify the effusion and guide drainage if clinically indicated."),
    ("Pleural Effusion", None, "Follow-up imaging of the effusion; ultrasound if it enlarges."),
    ("Edema", None, "Correlate with cardiac function and fluid status (e.g. echocardiography, BNP)."),
    ("Cardiomegaly", None, "Correlate with cardiac history; echocardiography if cardiomegaly is new."),
    ("Enlarged Cardiomediastinum", None, "Compare with prior imaging; consider CT if mediastinal widening is new."),
    ("Fracture", None,
     "Review for associated injury (pneumothorax, contusion); dedicated rib views or CT if clinically indicated."),
    ("Atelectasis", None, "Encourage lung expansion; follow-up radiograph if atelectasis persists."),
    ("Lung Opacity", None, "Follow-up radiograph to confirm resolution; CT if the opacity persists."),
    ("Pleural Other", None, "Compare with prior imaging to assess stability of the pleural abnormality."),
    ("Support Devices", None, "Check the position of the support devices (tubes, lines, pacemaker leads)."),
)
UNCERTAIN_SUGGESTION = "Findings marked uncertain need confirmation by a radiologist."
NORMAL_SUGGESTION = "No follow-up imaging suggested by the retrieved cases."

# Question words -> observations the answer looks at (besides the labeler's own mentions).
QUESTION_TERMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"pneumonia|infect", ("Pneumonia", "Consolidation")),
    (r"consolidat", ("Consolidation", "Pneumonia")),
    (r"effusion|fluid", ("Pleural Effusion",)),
    (r"pneumothora|collapsed lung", ("Pneumothorax",)),
    (r"cardiomegaly|enlarged heart|heart (is )?(enlarged|big|large)|heart size", ("Cardiomegaly",)),
    (r"mediastin", ("Enlarged Cardiomediastinum",)),
    (r"edema|oedema|congestion|heart failure", ("Edema",)),
    (r"nodule|mass|lesion|tumou?r|cancer", ("Lung Lesion",)),
    (r"atelecta", ("Atelectasis",)),
    (r"opacit", ("Lung Opacity",)),
    (r"fractur|broken", ("Fracture",)),
    (r"pleura", ("Pleural Other", "Pleural Effusion")),
    (r"device|tube|line|catheter|pacemaker|wire", ("Support Devices",)),
    (r"normal|healthy|clear", ("No Finding",)),
)


class RetrievalReporter:
    """Deterministic report from retrieved cases (no network, no model)."""

    name = GENERATOR

    def __init__(self, min_confidence: float = 0.3, caption_weight: float | None = None):
        """``caption_weight``: share of the vote the caption's own labels get when the query has a caption
        (None: as much as one retrieved case of average weight, 1 / (K + 1); 0: captions are ignored)."""
        self.min_confidence = float(min_confidence)
        self.caption_weight = caption_weight

    @classmethod
    def from_config(cls, cfg) -> "RetrievalReporter":
        return cls(min_confidence=cfg.report.min_confidence, caption_weight=getattr(cfg.report, "caption_weight", None))

    def caption_share(self, n_cases: int, caption: str | None) -> float:
        if not caption or not caption.strip():
            return 0.0
        if self.caption_weight is None:
            return 1.0 / (n_cases + 1)
        return min(max(float(self.caption_weight), 0.0), 1.0) if n_cases else 1.0

    def votes(self, cases: list[RetrievedCase], caption: str | None = None) -> dict[str, dict[str, float]]:
        """Per observation: ``positive`` (label 1), ``combined`` (1, and -1 as half) and ``negative`` (label 0)
        votes of the cases, and of the caption (its labeler output) with :meth:`caption_share` of the weight."""
        from medxpert_utils.data.labels import label_report

        share = self.caption_share(len(cases), caption)
        weights = [w * (1.0 - share) for w in case_weights(cases)]
        said = label_report(caption) if share else {}
        out: dict[str, dict[str, float]] = {}
        for name in OBSERVATIONS:
            pos = sum(w for c, w in zip(cases, weights) if c.label(name) == 1) + share * (said.get(name) == 1)
            unc = sum(w for c, w in zip(cases, weights) if c.label(name) == -1) + share * (said.get(name) == -1)
            neg = sum(w for c, w in zip(cases, weights) if c.label(name) == 0) + share * (said.get(name) == 0)
            out[name] = {"positive": pos, "combined": pos + 0.5 * unc, "negative": neg}
        return out

    def report(self, context: ReportContext) -> DiagnosisReport:
        """Fill the report schema from the context's cases (and answer its question)."""
        cases = context.cases
        weights = dict(zip((c.study_id for c in cases), case_weights(cases)))
        votes = self.votes(cases, context.caption)
        findings: list[Finding] = []
        sentences: dict[str, str] = {}
        for name in OBSERVATIONS:
            vote = votes[name]
            if vote["positive"] >= self.min_confidence - 1e-9:
                status, confidence = "present", vote["combined"]
            elif vote["combined"] >= self.min_confidence - 1e-9:
                status, confidence = "uncertain", vote["combined"]
            elif vote["negative"] >= max(0.5, self.min_confidence) and name != "No Finding":
                # ('No Finding' is 0 whenever a case has any pathology: saying so adds nothing)
                status, confidence = "absent", vote["negative"]
            else:
                continue
            wanted = (0,) if status == "absent" else (1, -1)
            evidence = [c for c in cases if c.label(name) in wanted]
            location, severity, text = _describe(name, evidence, weights) if status != "absent" else (None, None, "")
            if name == "Pneumothorax" and re.search(r"\btension\b", text):
                severity = "tension"
            sentences[name] = text
            findings.append(Finding(name=name, status=status, location=location, severity=severity,
                                    evidence=[c.study_id for c in evidence], confidence=round(min(confidence, 1.0), 3)))
        findings = _resolve_no_finding(findings)
        severity = overall_severity(findings)
        report = DiagnosisReport(
            findings=findings,
            impression=impression(findings, len(cases)),
            overall_severity=severity,
            suggestions=suggestions(findings),
            icd10=icd10.codes_for_findings(findings, sentences),
            supporting_study_ids=[c.study_id for c in cases],
            generator=GENERATOR,
            question=context.question,
            caption=context.caption,
            query=context.query,
            query_study_id=context.query_study_id,
        )
        if context.question:
            report.answer = answer_question(context.question, report, votes)
        return report


def case_weights(cases: list[RetrievedCase]) -> list[float]:
    """Similarity weights ``max(score, 0)`` normalised to sum to 1 (equal weights when all are <= 0)."""
    if not cases:
        return []
    raw = [max(c.score, 0.0) for c in cases]
    total = sum(raw)
    if total <= 0:
        return [1.0 / len(cases)] * len(cases)
    return [r / total for r in raw]


def _describe(name: str, evidence: list[RetrievedCase],
              weights: dict[str, float]) -> tuple[str | None, str | None, str]:
    """Most weighted laterality and severity phrases for ``name`` in the supporting reports, and their sentences."""
    from medxpert_utils.data.labels import find_mentions

    lateral: dict[str, float] = defaultdict(float)
    severe: dict[str, float] = defaultdict(float)
    sentences: list[str] = []
    for case in evidence:
        for mention in find_mentions(case.report):
            if mention.label != name or mention.value == 0:
                continue
            weight = weights.get(case.study_id, 0.0) or 1e-6
            if mention.laterality:
                lateral[str(mention.laterality)] += weight
            if mention.severity:
                severe[str(mention.severity)] += weight
            if mention.sentence and mention.sentence not in sentences:
                sentences.append(mention.sentence)
    return _top(lateral), _top(severe), " ".join(sentences).lower()


def _top(counts: dict[str, float]) -> str | None:
    if not counts:
        return None
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]  # ties: alphabetical, for determinism


def _resolve_no_finding(findings: list[Finding]) -> list[Finding]:
    """'No Finding' cannot stand beside a pathology (present or uncertain)."""
    pathological = [f for f in findings if f.name not in NON_PATHOLOGY and f.status in ("present", "uncertain")]
    if pathological:
        return [f for f in findings if not (f.name == "No Finding" and f.status != "absent")]
    return findings


def _words(finding: Finding) -> set[str]:
    return set(re.findall(r"[a-z]+", f"{finding.severity or ''} {finding.location or ''}".lower()))


def overall_severity(findings: Iterable[Finding]) -> str:
    """Overall severity by the rule table in the module docstring."""
    findings = list(findings)
    present = [f for f in findings if f.status == "present"]
    pathological = [f for f in present if f.name not in NON_PATHOLOGY]
    for f in present:
        if f.name == "Pneumothorax" and _words(f) & {"large", "tension", "massive"}:
            return "critical"
    if any(f.name == "Pneumothorax" for f in present) or len(pathological) >= 3 \
            or any(_words(f) & LARGE_WORDS for f in pathological):
        return "severe"
    if any(f.name in MODERATE_FINDINGS for f in pathological) or len(pathological) == 2 \
            or any(_words(f) & MODERATE_WORDS for f in pathological):
        return "moderate"
    if pathological or any(f.status == "uncertain" and f.name not in NON_PATHOLOGY for f in findings):
        return "mild"
    return "normal"


def suggestions(findings: Iterable[Finding]) -> list[str]:
    """Suggestions from the rule table, one per present finding, in table order."""
    findings = list(findings)
    present = {f.name: f for f in findings if f.status == "present"}
    out: list[str] = []
    done: set[str] = set()
    for name, needs, text in SUGGESTIONS:
        finding = present.get(name)
        if finding is None or name in done:
            continue
        if needs is None or _words(finding) & needs:
            out.append(text)
            done.add(name)
    if any(f.status == "uncertain" for f in findings):
        out.append(UNCERTAIN_SUGGESTION)
    if not out:
        out.append(NORMAL_SUGGESTION)
    return out


def _phrase(f: Finding) -> str:
    words = [w for w in (f.severity, f.location) if w]
    return (" ".join(words) + " " if words else "") + f.name.lower()


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def impression(findings: list[Finding], n_cases: int) -> str:
    """One or two sentences on what the retrieved cases share."""
    if n_cases == 0:
        return "No similar cases were retrieved, so nothing can be summarised."
    present = [_phrase(f) for f in findings if f.status == "present" and f.name != "No Finding"]
    uncertain = [_phrase(f) for f in findings if f.status == "uncertain"]
    if not present and not uncertain:
        return f"The {n_cases} most similar cases show no acute cardiopulmonary abnormality."
    text = f"The {n_cases} most similar cases suggest {_join(present)}." if present else \
        f"The {n_cases} most similar cases show no definite abnormality."
    if uncertain:
        text += f" Possible {_join(uncertain)}."
    return text


def question_observations(question: str) -> list[str]:
    """Observations a question asks about: the labeler's mentions plus the QUESTION_TERMS table."""
    from medxpert_utils.data.labels import find_mentions

    names: list[str] = []
    for mention in find_mentions(question):
        if mention.label not in names:
            names.append(mention.label)
    lowered = question.lower()
    for pattern, observations in QUESTION_TERMS:
        if re.search(pattern, lowered):
            names.extend(o for o in observations if o not in names)
    if len(names) > 1 and "No Finding" in names and not re.search(r"normal|healthy|clear", lowered):
        names.remove("No Finding")
    return names


def answer_question(question: str, report: DiagnosisReport, votes: dict[str, dict[str, float]]) -> str:
    """A one-paragraph answer from the findings, citing the supporting study_ids."""
    asked = question_observations(question)
    if not asked:
        return ("The question names no CheXpert observation this offline reporter can check; "
                "the findings above summarise the retrieved evidence.")
    by_name = {f.name: f for f in report.findings}
    parts: list[str] = []
    verdict = "No"
    for name in asked:
        finding = by_name.get(name)
        if finding and finding.status == "present":
            verdict = "Yes"
            parts.append(f"{name} is supported by the retrieved cases (vote {finding.confidence:.2f}; "
                         f"evidence: {', '.join(finding.evidence)})")
        elif finding and finding.status == "uncertain":
            verdict = "Possibly" if verdict == "No" else verdict
            parts.append(f"{name} is uncertain (vote {finding.confidence:.2f}; "
                         f"evidence: {', '.join(finding.evidence)})")
        else:
            parts.append(f"{name} is not supported (vote {votes.get(name, {}).get('combined', 0.0):.2f})")
    return f"{verdict} - " + "; ".join(parts) + "."
