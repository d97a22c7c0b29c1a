"""The diagnosis report schema, its Gemini-facing twin, and how reports render."""

import json

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from medxpert_utils.core.notices import DISCLAIMER
from medxpert_utils.report import DiagnosisReport, render_html, render_text
from medxpert_utils.report.schema import OBSERVATIONS, Finding, Icd10Code, LLMReport, from_llm, llm_schema


def _report(**kw):
    base = dict(findings=[Finding(name="Pleural Effusion", status="present", location="right", severity="small",
                                  evidence=["s1"], confidence=0.7)],
                impression="Right effusion.", overall_severity="moderate", suggestions=["Ultrasound."],
                icd10=[Icd10Code(code="J90", description="Pleural effusion, not elsewhere classified")],
                supporting_study_ids=["s1", "s2"], generator="offline-retrieval")
    base.update(kw)
    return DiagnosisReport(**base)


def test_disclaimer_is_always_there_and_round_trips():
    report = _report()
    assert report.disclaimer == DISCLAIMER
    again = DiagnosisReport.model_validate_json(report.model_dump_json())
    assert again == report
    assert json.loads(report.model_dump_json())["disclaimer"] == DISCLAIMER


def test_only_chexpert_names_statuses_and_severities():
    with pytest.raises(ValidationError):
        Finding(name="Pulmonary Fibrosis", status="present")
    with pytest.raises(ValidationError):
        Finding(name="Edema", status="maybe")
    with pytest.raises(ValidationError):
        _report(overall_severity="terrible")
    with pytest.raises(ValidationError):
        Finding(name="Edema", status="present", confidence=1.5)
    assert len(OBSERVATIONS) == 14


def test_llm_schema_is_simple_enough_for_gemini():
    schema = llm_schema()
    text = json.dumps(schema)
    assert "additionalProperties" not in text  # not in Gemini's response_schema subset
    finding = schema["$defs"]["LLMFinding"]["properties"]
    assert finding["name"]["enum"] == list(OBSERVATIONS)
    assert "disclaimer" not in schema["properties"] and "generator" not in schema["properties"]


def test_llm_schema_converts_with_google_genai():
    from google import genai
    from google.genai import _transformers

    client = genai.Client(api_key="test-key-not-used", vertexai=False)
    converted = _transformers.t_schema(client, LLMReport).model_dump(exclude_none=True)
    assert converted["properties"]["findings"]["items"]["properties"]["name"]["enum"] == list(OBSERVATIONS)


def test_from_llm_keeps_findings_and_adds_our_fields():
    llm = LLMReport(findings=[{"name": "Cardiomegaly", "status": "present", "evidence": ["s1"]}], impression="x",
                    overall_severity="mild", suggestions=[], icd10_codes=["I51.7"], answer=None, extra_key="ignored")
    report = from_llm(llm, "gemini:m", ["s1"], [Icd10Code(code="I51.7", description="Cardiomegaly")], question="q")
    assert report.generator == "gemini:m" and report.question == "q" and report.disclaimer == DISCLAIMER
    assert report.present_names() == {"Cardiomegaly"}


def test_text_rendering_puts_the_disclaimer_first_and_lists_everything():
    text = render_text(_report(question="effusion?", answer="Yes - s1"))
    lines = text.splitlines()
    assert DISCLAIMER in lines[0] and DISCLAIMER in lines[-1]
    for part in ("Pleural Effusion: present (right, small)", "J90", "Yes - s1", "offline-retrieval", "s1, s2"):
        assert part in text


def test_html_escapes_and_inlines_small_thumbnails(tmp_path):
    path = tmp_path / "case.png"
    Image.fromarray((np.arange(256 * 256) % 251).reshape(256, 256).astype("uint8")).save(path)
    report = _report(impression="<script>alert(1)</script>")
    page = render_html(report, hits=[{"rank": 1, "score": 0.9, "study_id": "s1", "report": "Small right effusion.",
                                      "image_path": str(path), "labels": {"Pleural Effusion": 1}},
                                     {"rank": 2, "score": 0.5, "study_id": "s2", "report": "x",
                                      "image_path": str(tmp_path / "missing.png"), "labels": {}}])
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert page.count(DISCLAIMER) == 2
    assert page.count("data:image/png;base64,") == 1  # the missing image is left out, not an error
    assert "J90" in page and "Pleural Effusion" in page and "sev-moderate" in page
    assert len(page) < 60_000  # thumbnails are small
