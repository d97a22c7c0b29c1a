"""The offline retrieval reporter on hand-made retrieval results."""

import random

import pytest

from medxpert_utils.core.notices import DISCLAIMER
from medxpert_utils.report.context import ReportContext, RetrievedCase
from medxpert_utils.report.offline import (
    NORMAL_SUGGESTION,
    UNCERTAIN_SUGGESTION,
    RetrievalReporter,
    case_weights,
    overall_severity,
    question_observations,
)
from medxpert_utils.report.schema import Finding


def hit(rank, score, sid, report, **labels):
    return {"rank": rank, "score": score, "study_id": sid, "report": report, "image_path": f"/x/{sid}.png",
            "labels": {k.replace("_", " "): v for k, v in labels.items()}}


PNEUMOTHORAX = [
    hit(1, 0.9, "s1", "Large right pneumothorax. Small left pleural effusion.", Pneumothorax=1, Pleural_Effusion=1),
    hit(2, 0.8, "s2", "Right pneumothorax, large.", Pneumothorax=1, Pleural_Effusion=0),
    hit(3, 0.1, "s3", "No acute cardiopulmonary process.", No_Finding=1, Pneumothorax=0),
]


def by_name(report):
    return {f.name: f for f in report.findings}


def test_weighted_vote_reports_present_findings_with_evidence_and_phrases():
    report = RetrievalReporter(0.3).report(ReportContext.build(PNEUMOTHORAX))
    found = by_name(report)
    ptx = found["Pneumothorax"]
    assert ptx.status == "present" and ptx.evidence == ["s1", "s2"]
    assert ptx.confidence == pytest.approx((0.9 + 0.8) / 1.8, abs=1e-3)
    assert ptx.location == "right" and ptx.severity == "large"
    eff = found["Pleural Effusion"]
    assert eff.status == "present" and eff.evidence == ["s1"] and eff.location == "left" and eff.severity == "small"
    assert eff.confidence == pytest.approx(0.5, abs=1e-3)
    assert "No Finding" not in found  # cannot stand beside a pathology
    assert report.overall_severity == "critical"
    assert report.suggestions[0].startswith("Urgent clinical review")
    assert [c.code for c in report.icd10] == ["J93.9", "J90"]
    assert report.supporting_study_ids == ["s1", "s2", "s3"]
    assert report.generator == "offline-retrieval" and report.disclaimer == DISCLAIMER


def test_threshold_decides_what_is_reported():
    strict = by_name(RetrievalReporter(0.6).report(ReportContext.build(PNEUMOTHORAX)))
    assert strict["Pneumothorax"].status == "present"
    assert "Pleural Effusion" not in strict or strict["Pleural Effusion"].status != "present"


def test_uncertain_labels_count_half_and_give_uncertain_findings():
    hits = [hit(1, 0.5, "a", "Possible pneumonia.", Pneumonia=-1),
            hit(2, 0.5, "b", "Possible pneumonia.", Pneumonia=-1)]
    found = by_name(RetrievalReporter(0.3).report(ReportContext.build(hits)))
    assert found["Pneumonia"].status == "uncertain"
    assert found["Pneumonia"].confidence == pytest.approx(0.5)
    assert not by_name(RetrievalReporter(0.6).report(ReportContext.build(hits))).get("Pneumonia")
    report = RetrievalReporter(0.3).report(ReportContext.build(hits))
    assert report.overall_severity == "mild" and UNCERTAIN_SUGGESTION in report.suggestions


def test_negated_findings_are_reported_absent():
    hits = [hit(1, 0.7, "a", "No pneumothorax.", Pneumothorax=0, No_Finding=1),
            hit(2, 0.6, "b", "No pneumothorax.", Pneumothorax=0, No_Finding=1)]
    report = RetrievalReporter(0.3).report(ReportContext.build(hits))
    found = by_name(report)
    assert found["Pneumothorax"].status == "absent" and found["No Finding"].status == "present"
    assert report.overall_severity == "normal" and report.suggestions == [NORMAL_SUGGESTION]
    assert report.icd10 == []


def test_rule_table_suggestions():
    hits = [hit(1, 0.9, "a", "Right upper lobe nodule. Pacemaker in place.", Lung_Lesion=1, Support_Devices=1)]
    report = RetrievalReporter(0.3).report(ReportContext.build(hits))
    text = " ".join(report.suggestions)
    assert "chest CT to characterise the lesion" in text and "position of the support devices" in text
    assert {c.code for c in report.icd10} == {"R91.1", "Z95.0"}
    assert report.overall_severity == "moderate"


def test_deterministic_whatever_the_hit_order():
    reporter = RetrievalReporter(0.3)
    first = reporter.report(ReportContext.build(PNEUMOTHORAX, question="signs of pneumonia?")).model_dump_json()
    shuffled = PNEUMOTHORAX[:]
    random.Random(1).shuffle(shuffled)
    assert reporter.report(ReportContext.build(shuffled, question="signs of pneumonia?")).model_dump_json() == first


def test_answers_the_question_with_evidence():
    reporter = RetrievalReporter(0.3)
    no = reporter.report(ReportContext.build(PNEUMOTHORAX, question="signs of pneumonia?"))
    assert no.question == "signs of pneumonia?" and no.answer.startswith("No")
    assert "Pneumonia" in no.answer and "Consolidation" in no.answer
    yes = reporter.report(ReportContext.build(PNEUMOTHORAX, question="Is there a pneumothorax?"))
    assert yes.answer.startswith("Yes") and "s1, s2" in yes.answer
    other = reporter.report(ReportContext.build(PNEUMOTHORAX, question="what time is it?"))
    assert "names no CheXpert observation" in other.answer
    assert question_observations("any pleural effusion or fluid?")[0] == "Pleural Effusion"


def test_leave_one_out_dedup_and_k():
    hits = PNEUMOTHORAX + [hit(4, 0.05, "s1", "dup of s1 (second image)", Pneumothorax=1)]
    context = ReportContext.build(hits, exclude_study_ids=["s2"], k=2, query_study_id="s2")
    assert context.study_ids == ["s1", "s3"] and [c.rank for c in context.cases] == [1, 2]
    report = RetrievalReporter(0.3).report(context)
    assert "s2" not in report.supporting_study_ids and report.query_study_id == "s2"


def test_weights_are_normalised_and_survive_non_positive_scores():
    cases = [RetrievedCase(1, -0.2, "a", ""), RetrievedCase(2, -0.5, "b", "")]
    assert case_weights(cases) == [0.5, 0.5]
    assert sum(case_weights([RetrievedCase(1, 0.3, "a", ""), RetrievedCase(2, 0.1, "b", "")])) == pytest.approx(1)
    assert case_weights([]) == []


def test_no_cases_gives_an_empty_but_valid_report():
    report = RetrievalReporter().report(ReportContext.build([]))
    assert report.findings == [] and "No similar cases" in report.impression and report.disclaimer == DISCLAIMER


def test_missing_labels_are_tolerated():
    import pandas as pd

    case = RetrievedCase.from_hit(hit(1, 0.4, "a", "x", Edema=pd.NA, Cardiomegaly=float("nan"), Atelectasis=1))
    assert case.label("Edema") is None and case.label("Cardiomegaly") is None and case.label("Atelectasis") == 1


@pytest.mark.parametrize("findings, expected", [
    ([], "normal"),
    ([Finding(name="Support Devices", status="present")], "normal"),
    ([Finding(name="Cardiomegaly", status="present")], "mild"),
    ([Finding(name="Pleural Effusion", status="present", severity="small")], "moderate"),
    ([Finding(name="Cardiomegaly", status="present"), Finding(name="Atelectasis", status="present")], "moderate"),
    ([Finding(name="Pleural Effusion", status="present", severity="large")], "severe"),
    ([Finding(name="Pneumothorax", status="present", severity="small")], "severe"),
    ([Finding(name="Pneumothorax", status="present", severity="tension")], "critical"),
])
def test_overall_severity_rules(findings, expected):
    assert overall_severity(findings) == expected


def test_score_reports_counts_generators_and_fallbacks():
    from medxpert_utils.report.schema import DiagnosisReport
    from medxpert_utils.report.scoring import score_reports

    reports = [DiagnosisReport(generator="gemini:m", query_study_id="a",
                               findings=[Finding(name="Edema", status="present")]),
               DiagnosisReport(generator="offline-retrieval (fallback: timeout after 60s)", query_study_id="b"),
               DiagnosisReport(generator="offline-retrieval (fallback: timeout after 60s)", query_study_id="c",
                               findings=[Finding(name="Edema", status="uncertain")])]
    result = score_reports(reports, {"a": ["Edema"], "b": [], "c": ["Edema"]})
    assert result["generators"] == {"gemini:m": 1, "offline-retrieval (fallback)": 2}
    assert result["fallbacks"] == 2 and result["fallback_reasons"] == {"timeout after 60s": 2}
    assert result["label_f1_micro"] == pytest.approx(2 / 3)  # uncertain is not present: c is a miss


def test_the_caption_votes_like_one_more_case_by_default():
    hits = [hit(1, 0.5, "a", "Small right pleural effusion.", Pleural_Effusion=1),
            hit(2, 0.5, "b", "No acute process.", No_Finding=1),
            hit(3, 0.5, "c", "No acute process.", No_Finding=1),
            hit(4, 0.5, "d", "No acute process.", No_Finding=1)]
    without = by_name(RetrievalReporter(0.3).report(ReportContext.build(hits)))
    assert "Pleural Effusion" not in without  # 1 of 4 cases: 0.25 < 0.3
    context = ReportContext.build(hits, caption="Small right pleural effusion.")
    found = by_name(RetrievalReporter(0.3).report(context))
    assert found["Pleural Effusion"].status == "present" and found["Pleural Effusion"].evidence == ["a"]
    assert found["Pleural Effusion"].confidence == pytest.approx(0.25 * 0.8 + 0.2)  # caption: 1 / (4 + 1)
    alone = ReportContext.build(hits[1:], caption="Small right pleural effusion.")
    assert "Pleural Effusion" not in by_name(RetrievalReporter(0.3).report(alone))  # one voter of four cannot
    assert by_name(RetrievalReporter(0.3, caption_weight=0.5).report(alone))["Pleural Effusion"].evidence == []
    assert "Pleural Effusion" not in by_name(RetrievalReporter(0.3, caption_weight=0.0).report(context))
