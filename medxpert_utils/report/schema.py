"""The diagnosis report: one pydantic model, whatever produced it (Gemini or the offline reporter).

:class:`DiagnosisReport` is what the CLI prints as JSON, what ``reports/reports.jsonl`` holds one
per line and what the dashboard renders. :class:`LLMReport` is the slimmer model Gemini is asked to
fill (its JSON schema is sent as ``response_schema``): simple types only, no disclaimer or generator
(we add those), ICD-10-CM codes without descriptions (the official description is looked up, so the
model cannot invent one). :func:`from_llm` converts a validated :class:`LLMReport`.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from medxpert_utils.core.notices import DISCLAIMER

ObservationName = Literal[
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
]
"""The 14 CheXpert observations (manifest order); the only names a finding may have."""

OBSERVATIONS: tuple[str, ...] = get_args(ObservationName)

FindingStatus = Literal["present", "absent", "uncertain"]

OverallSeverity = Literal["normal", "mild", "moderate", "severe", "critical"]
"""How urgent the whole picture looks, on one small scale:

- ``normal``: nothing pathological (no finding, or support devices only);
- ``mild``: findings that rarely need action soon (e.g. small atelectasis, mild cardiomegaly, uncertain findings only);
- ``moderate``: findings that need follow-up (effusion, consolidation, pneumonia, lesion, fracture, edema);
- ``severe``: a pneumothorax, a large/severe finding, or several pathological findings together;
- ``critical``: a large or tension pneumothorax - needs review now.
"""

SEVERITY_LEVELS: tuple[str, ...] = get_args(OverallSeverity)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Finding(_Model):
    """One CheXpert observation and what the evidence says about it."""

    name: ObservationName = Field(..., description="CheXpert observation name.")
    status: FindingStatus = Field(..., description="present, absent or uncertain.")
    location: str | None = Field(None, description="Laterality or site, e.g. 'right', 'left', 'bilateral', "
                                                   "'right lower lobe'.")
    severity: str | None = Field(None, description="Size or severity phrase from the evidence, e.g. 'small', "
                                                   "'moderate', 'large'.")
    evidence: list[str] = Field(default_factory=list, description="study_ids of the retrieved cases supporting "
                                                                  "this finding.")
    confidence: float | None = Field(None, ge=0, le=1, description="Support for the finding in [0, 1] "
                                                                   "(offline: weighted vote).")


class Icd10Code(_Model):
    """An ICD-10-CM code with its official description (from simple_icd_10_cm)."""

    code: str = Field(..., description="ICD-10-CM code with its dot, e.g. 'J18.9'.")
    description: str = Field(..., description="Official ICD-10-CM description of the code.")


class DiagnosisReport(_Model):
    """A structured, research-only summary of the evidence for one query (docs/contracts.md, 'Diagnosis report')."""

    findings: list[Finding] = Field(default_factory=list, description="Observations with status and evidence.")
    impression: str = Field("", description="One or two sentences summarising the findings.")
    overall_severity: OverallSeverity = Field("normal", description="See OverallSeverity.")
    suggestions: list[str] = Field(default_factory=list, description="Next steps a clinician might consider "
                                                                     "(research only).")
    icd10: list[Icd10Code] = Field(default_factory=list, description="ICD-10-CM codes of the present findings.")
    supporting_study_ids: list[str] = Field(default_factory=list, description="study_ids of the retrieved cases "
                                                                              "given as evidence.")
    generator: str = Field(..., description="What produced the report: 'offline-retrieval', 'gemini:<model>' or "
                                            "'offline-retrieval (fallback: <reason>)'.")
    question: str | None = Field(None, description="The free-text question asked, if any.")
    answer: str | None = Field(None, description="Answer to the question, drawn from the findings and evidence.")
    caption: str | None = Field(None, description="BLIP caption of the query image, if one was made.")
    query: str | None = Field(None, description="The text query, or the image's file name.")
    query_study_id: str | None = Field(None, description="study_id of the query when it comes from the dataset "
                                                         "(notebook 05).")
    disclaimer: str = Field(DISCLAIMER, description="Not-for-clinical-use notice; always present.")

    def present(self) -> list[Finding]:
        """Findings with status 'present'."""
        return [f for f in self.findings if f.status == "present"]

    def present_names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.present())


# --- what Gemini fills --------------------------------------------------------------------------

class _LLMModel(BaseModel):
    # Extra keys are ignored, not forbidden: "additionalProperties" is not part of the schema subset
    # Gemini's response_schema accepts.
    model_config = ConfigDict(extra="ignore")


class LLMFinding(_LLMModel):
    name: ObservationName = Field(..., description="One of the 14 CheXpert observation names, exactly as listed.")
    status: FindingStatus = Field(..., description="present, absent or uncertain, as the evidence supports.")
    location: str | None = Field(None, description="Laterality or site named in the evidence, else null.")
    severity: str | None = Field(None, description="Size/severity phrase used in the evidence, else null.")
    evidence: list[str] = Field(..., description="study_ids of the retrieved cases that support this finding.")
    confidence: float | None = Field(None, ge=0, le=1, description="Your confidence in [0, 1].")


class LLMReport(_LLMModel):
    findings: list[LLMFinding] = Field(..., description="Only findings supported by the retrieved cases.")
    impression: str = Field(..., description="One or two sentences summarising the evidence (not a diagnosis).")
    overall_severity: OverallSeverity = Field(..., description="normal, mild, moderate, severe or critical.")
    suggestions: list[str] = Field(..., description="Short next steps a clinician might consider.")
    icd10_codes: list[str] = Field(..., description="ICD-10-CM codes (with the dot) of the present findings.")
    answer: str | None = Field(None, description="Answer to the question, citing study_ids; null when no question.")


def llm_schema() -> dict:
    """JSON schema of :class:`LLMReport` (part of the cache key of Gemini responses)."""
    return LLMReport.model_json_schema()


def from_llm(llm: LLMReport, generator: str, supporting_study_ids: list[str], icd10: list[Icd10Code],
             **extra) -> DiagnosisReport:
    """A :class:`DiagnosisReport` from a validated Gemini answer (ICD-10 descriptions looked up by the caller)."""
    return DiagnosisReport(
        findings=[Finding(**f.model_dump()) for f in llm.findings],
        impression=llm.impression,
        overall_severity=llm.overall_severity,
        suggestions=list(llm.suggestions),
        icd10=icd10,
        supporting_study_ids=list(supporting_study_ids),
        generator=generator,
        answer=llm.answer,
        **extra,
    )
