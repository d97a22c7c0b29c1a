"""The CheXpert-style rule labeler on hand-written report sentences."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from medxpert_utils.data.labels import (
    CHEXPERT_LABELS,
    Mention,
    find_mentions,
    label_frame,
    label_report,
    positive_labels,
    split_sentences,
)

OBSERVATIONS = [name for name in CHEXPERT_LABELS if name != "No Finding"]

# (observation, sentence, expected value): for every observation a positive, a negation and an uncertainty.
CASES = [
    ("Enlarged Cardiomediastinum", "Widened mediastinum.", 1),
    ("Enlarged Cardiomediastinum", "Enlarged cardiomediastinal silhouette.", 1),
    ("Enlarged Cardiomediastinum", "No mediastinal widening.", 0),
    ("Enlarged Cardiomediastinum", "The cardiomediastinal silhouette is within normal limits.", 0),
    ("Enlarged Cardiomediastinum", "Possible mediastinal widening.", -1),
    ("Cardiomegaly", "Moderate cardiomegaly.", 1),
    ("Cardiomegaly", "The heart size is enlarged.", 1),
    ("Cardiomegaly", "Enlarged cardiac silhouette.", 1),
    ("Cardiomegaly", "No cardiomegaly.", 0),
    ("Cardiomegaly", "Heart size is normal.", 0),
    ("Cardiomegaly", "Normal heart size.", 0),
    ("Cardiomegaly", "The heart is not enlarged.", 0),
    ("Cardiomegaly", "Borderline cardiomegaly.", 1),  # was -1: borderline heart size is read as cardiomegaly
    ("Cardiomegaly", "Possible cardiomegaly.", -1),
    ("Cardiomegaly", "Heart size is top normal.", 0),  # was -1: the upper end of normal is normal
    ("Lung Opacity", "Patchy opacity in the right lower lobe.", 1),
    ("Lung Opacity", "Increased bibasilar haziness.", 1),
    ("Lung Opacity", "No focal airspace opacity.", 0),
    ("Lung Opacity", "The lungs are clear.", 0),
    ("Lung Opacity", "Possible subtle opacity at the left base.", -1),
    ("Lung Lesion", "A 1.5 cm nodule in the right upper lobe.", 1),
    ("Lung Lesion", "Left hilar mass.", 1),
    ("Lung Lesion", "No pulmonary nodules or masses.", 0),
    ("Lung Lesion", "Questionable nodule at the right base.", -1),
    ("Edema", "Mild pulmonary edema.", 1),
    ("Edema", "No pulmonary edema.", 0),
    ("Edema", "Findings may represent mild interstitial edema.", -1),
    ("Consolidation", "Right lower lobe consolidation.", 1),
    ("Consolidation", "There is no focal consolidation.", 0),
    ("Consolidation", "Consolidation cannot be excluded.", -1),
    ("Pneumonia", "Left lower lobe pneumonia.", 1),
    ("Pneumonia", "No evidence of pneumonia.", 0),
    ("Pneumonia", "Right basilar opacity concerning for pneumonia.", -1),
    ("Pneumonia", "Findings could represent infection.", -1),
    ("Atelectasis", "Bibasilar atelectasis.", 1),
    ("Atelectasis", "Right middle lobe collapse.", 1),
    ("Atelectasis", "No atelectasis.", 0),
    ("Atelectasis", "Possible atelectasis at the left base.", -1),  # was "Likely ...": now positive
    ("Pneumothorax", "Small right apical pneumothorax.", 1),
    ("Pneumothorax", "No pneumothorax.", 0),
    ("Pneumothorax", "The previously seen pneumothorax has resolved.", 0),
    ("Pneumothorax", "A tiny pneumothorax cannot be excluded.", -1),
    ("Pleural Effusion", "Small left pleural effusion.", 1),
    ("Pleural Effusion", "Blunting of the left costophrenic angle.", 1),
    ("Pleural Effusion", "No pleural effusions.", 0),
    ("Pleural Effusion", "The costophrenic angles are sharp.", 0),
    ("Pleural Effusion", "Possible small right effusion.", -1),
    ("Pleural Other", "Right pleural thickening.", 1),
    ("Pleural Other", "No pleural thickening.", 0),
    ("Pleural Other", "Possible calcified pleural plaque.", -1),
    ("Fracture", "Healed left rib fractures.", 1),
    ("Fracture", "No acute fracture.", 0),
    ("Fracture", "Questionable fracture of the right seventh rib.", -1),
    ("Support Devices", "Endotracheal tube terminates 5 cm above the carina.", 1),
    ("Support Devices", "Right PICC line tip in the SVC.", 1),
    ("Support Devices", "The endotracheal tube has been removed.", 0),
    ("Support Devices", "Questionable left chest wall pacemaker.", -1),  # was "Probable ...": now positive
]


@pytest.mark.parametrize(("observation", "sentence", "expected"), CASES)
def test_each_observation_positive_negative_uncertain(observation: str, sentence: str, expected: int) -> None:
    assert label_report(sentence)[observation] == expected


def test_cases_cover_every_observation_with_each_value() -> None:
    covered = {(observation, value) for observation, _, value in CASES}
    assert covered == {(name, value) for name in OBSERVATIONS for value in (1, 0, -1)}


@pytest.mark.parametrize(("sentence", "observation", "value", "laterality", "severity"), [
    ("Small left pleural effusion.", "Pleural Effusion", 1, "left", "small"),
    ("No right pneumothorax.", "Pneumothorax", 0, "right", None),
    ("Cannot exclude left lower lobe pneumonia.", "Pneumonia", -1, "left", None),
    ("Large right-sided pneumothorax.", "Pneumothorax", 1, "right", "large"),
    ("Bilateral pleural effusions.", "Pleural Effusion", 1, "bilateral", None),
    ("Bibasilar atelectasis.", "Atelectasis", 1, "bilateral", None),
    ("Moderate left and right pleural effusions.", "Pleural Effusion", 1, "bilateral", "moderate"),
    ("Pneumothorax on the left is unchanged.", "Pneumothorax", 1, "left", None),
    ("Mild to moderate cardiomegaly.", "Cardiomegaly", 1, None, "moderate"),
    ("Severe pulmonary edema.", "Edema", 1, None, "severe"),
    ("Heart size is mildly enlarged.", "Cardiomegaly", 1, None, "mild"),
])
def test_laterality_and_severity(sentence: str, observation: str, value: int, laterality: str | None,
                                 severity: str | None) -> None:
    assert label_report(sentence)[observation] == value
    (mention,) = [m for m in find_mentions(sentence) if m.label == observation]
    assert (mention.value, mention.laterality, mention.severity) == (value, laterality, severity)
    assert mention.sentence == sentence


def test_laterality_stays_with_its_own_finding() -> None:
    mentions = {m.label: m for m in find_mentions("Large right pneumothorax and small left pleural effusion.")}
    assert (mentions["Pneumothorax"].laterality, mentions["Pneumothorax"].severity) == ("right", "large")
    assert (mentions["Pleural Effusion"].laterality, mentions["Pleural Effusion"].severity) == ("left", "small")


@pytest.mark.parametrize("report", [
    "The right lung is clear. Left pneumothorax.",
    "Left lung is clear. There is a right pneumothorax.",
    "No left effusion. Right pneumothorax.",
])
def test_laterality_words_do_not_confuse(report: str) -> None:
    assert label_report(report)["Pneumothorax"] == 1


@pytest.mark.parametrize("report", [
    "No pneumothorax, effusion or consolidation.",
    "No pneumothorax, pleural effusion, or focal consolidation.",
    "There is no evidence of pneumothorax, effusion, consolidation or pulmonary edema.",
    "Without pneumothorax, effusion and consolidation.",
    "Free of pneumothorax, effusion or consolidation.",
])
def test_list_negation_negates_every_member(report: str) -> None:
    labels = label_report(report)
    assert (labels["Pneumothorax"], labels["Pleural Effusion"], labels["Consolidation"]) == (0, 0, 0)
    assert labels["No Finding"] == 1


@pytest.mark.parametrize("report", [
    "No pneumothorax, small left effusion.",
    "No pneumothorax. Left pleural effusion.",
    "There is no pneumothorax, but there is a small left effusion.",
    "No pneumothorax; moderate right effusion.",
    "No pneumothorax and there is a small effusion.",
])
def test_negation_stops_where_a_new_finding_starts(report: str) -> None:
    labels = label_report(report)
    assert (labels["Pneumothorax"], labels["Pleural Effusion"]) == (0, 1)


@pytest.mark.parametrize(("report", "observation", "expected"), [
    ("No change in the small left pleural effusion.", "Pleural Effusion", 1),
    ("No interval change in moderate cardiomegaly.", "Cardiomegaly", 1),
    ("No consolidation to suggest pneumonia.", "Pneumonia", 0),  # negation beats uncertainty
    ("Pneumonia is unlikely.", "Pneumonia", 0),
    ("Left lower lobe pneumonia, the effusion has resolved.", "Pneumonia", 1),  # a cue after reaches back
    ("Left lower lobe pneumonia, the effusion has resolved.", "Pleural Effusion", 0),  # to the comma only
    ("Pneumonia can not be excluded.", "Pneumonia", -1),
    ("Pneumonia?", "Pneumonia", -1),
    # Each alternative named in a differential is read as stated (was -1 for both; docs/labeler.md).
    ("Atelectasis versus pneumonia.", "Pneumonia", 1),
    ("Atelectasis versus pneumonia.", "Atelectasis", 1),
    ("Left basilar opacity, likely atelectasis.", "Lung Opacity", 1),
    ("Left basilar opacity, likely atelectasis.", "Atelectasis", 1),  # was -1: "likely" is positive
    ("Opacity which may represent pneumonia.", "Lung Opacity", 1),
    ("Small pericardial effusion.", "Pleural Effusion", None),
    ("Mass effect on the trachea.", "Lung Lesion", None),
    ("Perihilar haziness.", "Edema", 1),
    ("Perihilar haziness.", "Lung Opacity", None),
    ("Small left hydropneumothorax.", "Pneumothorax", 1),
    ("Small left hydropneumothorax.", "Pleural Effusion", 1),
    ("HEART SIZE IS NORMAL. NO PNEUMOTHORAX.", "Pneumothorax", 0),
    ("HEART SIZE IS NORMAL. NO PNEUMOTHORAX.", "Cardiomegaly", 0),
])
def test_cue_rules(report: str, observation: str, expected: int | None) -> None:
    assert label_report(report)[observation] == expected


# ------------------------------------------------------------------------------------------------
# Error classes found on real reports (docs/labeler.md). Sentences written for these tests.
# ------------------------------------------------------------------------------------------------


def _check(report: str, expected: dict[str, int | None]) -> None:
    labels = label_report(report)
    assert {name: labels[name] for name in expected} == expected, report


@pytest.mark.parametrize(("report", "expected"), [
    # A size word after a comma starts a new finding, unless the list goes on to "or".
    ("No lobar consolidation, moderate pleural effusion, or pneumothorax.",
     {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0}),
    ("The lungs are clear without consolidation, large effusion or pneumothorax.",
     {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0}),
    ("No consolidation, small right effusion.", {"Consolidation": 0, "Pleural Effusion": 1}),
    ("No cardiomegaly with small bilateral pleural effusions.", {"Cardiomegaly": 0, "Pleural Effusion": 1}),
    # An "or" behind a negation is a negated list, not a differential with what came before it.
    ("Mild cardiomegaly with no failure or pneumonia.", {"Cardiomegaly": 1, "Pneumonia": 0}),
    # Double negatives: a negated exclusion is uncertainty, a negated presence is negation.
    ("A small apical pneumothorax has not been excluded.", {"Pneumothorax": -1}),
    ("Effusion is not ruled out.", {"Pleural Effusion": -1}),
    ("The nodule is no longer seen.", {"Lung Lesion": 0}),
])
def test_negation_scope_classes(report: str, expected: dict[str, int | None]) -> None:
    _check(report, expected)


@pytest.mark.parametrize(("report", "expected"), [
    ("Pneumonia cannot be confidently excluded.", {"Pneumonia": -1}),
    ("Edema is difficult to exclude.", {"Edema": -1}),
    ("Tiny left pleural effusion suspected.", {"Pleural Effusion": -1}),
    ("Question small left pleural effusion.", {"Pleural Effusion": -1}),
    ("Streaky basilar opacity favoring atelectasis.", {"Atelectasis": -1, "Lung Opacity": 1}),
    ("In the appropriate clinical setting, this is compatible with pneumonia.", {"Pneumonia": -1}),
    ("Recommend CT to exclude an underlying mass.", {"Lung Lesion": -1}),
    ("Right basilar opacity may represent early pneumonia.", {"Pneumonia": -1, "Lung Opacity": 1}),
    ("Possible small left effusion.", {"Pleural Effusion": -1}),
    ("Questionable small left effusion.", {"Pleural Effusion": -1}),
    ("Maybe a small left effusion.", {"Pleural Effusion": -1}),
    ("Right basilar opacity, suspicious for pneumonia.", {"Pneumonia": -1, "Lung Opacity": 1}),
    ("Findings suggestive of mild interstitial edema.", {"Edema": -1}),
    ("Questionable tiny right apical pneumothorax.", {"Pneumothorax": -1}),
    ("Pneumonia is less likely.", {"Pneumonia": -1}),
    ("Atelectasis is favored, pneumonia less likely.", {"Atelectasis": 1, "Pneumonia": -1}),
])
def test_uncertainty_and_hedge_classes(report: str, expected: dict[str, int | None]) -> None:
    _check(report, expected)


# Convention (docs/labeler.md): a finding a radiologist calls probable / likely / presumed / consistent with /
# compatible with is positive, as in NegBio / ChestX-ray14. Before, "likely" and "probable" gave -1 (CheXpert).
@pytest.mark.parametrize(("report", "expected"), [
    ("Probable small left effusion.", {"Pleural Effusion": 1}),
    ("Small left effusion, probably loculated.", {"Pleural Effusion": 1}),
    ("Likely right middle lobe pneumonia.", {"Pneumonia": 1}),
    ("Left basilar opacity most likely representing atelectasis.", {"Atelectasis": 1, "Lung Opacity": 1}),
    ("The right basilar opacity is likely atelectatic.", {"Atelectasis": 1}),
    ("Pleural effusion is probable.", {"Pleural Effusion": 1}),
    ("Presumed postoperative pneumothorax at the right apex.", {"Pneumothorax": 1}),
    ("Bibasilar opacities compatible with edema.", {"Edema": 1}),
    ("Patchy opacity consistent with pneumonia.", {"Pneumonia": 1}),
    # ... but not when a real hedge or a negation reaches it.
    ("Pneumothorax is unlikely.", {"Pneumothorax": 0}),
    ("Likely no effusion.", {"Pleural Effusion": 0}),
    ("Possibly early pneumonia, likely atelectasis.", {"Pneumonia": -1, "Atelectasis": 1}),
    ("Opacity, likely atelectasis, though pneumonia cannot be excluded.", {"Atelectasis": 1, "Pneumonia": -1}),
])
def test_probable_and_likely_findings_are_positive(report: str, expected: dict[str, int | None]) -> None:
    _check(report, expected)


# Convention (docs/labeler.md): each alternative named in a differential is read as stated, so positive unless a
# cue reaches it (was -1 for every alternative, CheXpert's reading). Negated lists stay negated.
@pytest.mark.parametrize(("report", "expected"), [
    ("Left basilar atelectasis versus pneumonia.", {"Atelectasis": 1, "Pneumonia": 1}),
    ("Right base opacity, atelectasis vs. consolidation.", {"Atelectasis": 1, "Consolidation": 1}),
    ("Small left effusion and/or atelectasis.", {"Pleural Effusion": 1, "Atelectasis": 1}),
    ("Scarring or atelectasis at the lingula.", {"Atelectasis": 1}),
    ("Possible atelectasis versus pneumonia.", {"Atelectasis": -1, "Pneumonia": -1}),
    ("No effusion or pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 0}),
    ("Mild cardiomegaly with no edema or effusion.", {"Cardiomegaly": 1, "Edema": 0, "Pleural Effusion": 0}),
])
def test_differential_alternatives_are_read_as_stated(report: str, expected: dict[str, int | None]) -> None:
    _check(report, expected)


@pytest.mark.parametrize(("report", "expected"), [
    ("History of left lower lobe pneumonia. The lungs are clear.", {"Pneumonia": None, "Lung Opacity": 0}),
    ("Patient with a known history of lung cancer.", {"Lung Lesion": None}),
    ("Right hilar enlargement consistent with lung cancer.", {"Lung Lesion": 1}),
    ("Resolved pulmonary edema since yesterday.", {"Edema": 0}),
    ("The right effusion has resolved.", {"Pleural Effusion": 0}),
    ("No new consolidation.", {"Consolidation": 0}),
    ("Again seen is a small left pleural effusion.", {"Pleural Effusion": 1}),
    ("Chronic small left pleural effusion, unchanged.", {"Pleural Effusion": 1}),
    ("Pulmonary nodules were seen on the prior chest CT.", {"Lung Lesion": None}),
    ("Scattered calcifications from prior granulomatous infection.", {"Pneumonia": None}),
    ("Apical scarring from old tuberculous infection.", {"Pneumonia": None}),
])
def test_history_and_comparison_classes(report: str, expected: dict[str, int | None]) -> None:
    _check(report, expected)


@pytest.mark.parametrize(("report", "expected"), [
    ("Cough, to rule out pneumonia.", {"Pneumonia": -1}),
    ("Correlate clinically for early pneumonia.", {"Pneumonia": None}),
    ("Correlation with symptoms of infection is suggested.", {"Pneumonia": None}),
    ("Left basilar atelectasis versus pneumonia.", {"Atelectasis": 1, "Pneumonia": 1}),  # was -1 for both
    ("Patchy opacity consistent with aspiration pneumonitis.", {"Pneumonia": 1}),
])
def test_indication_and_differential_classes(report: str, expected: dict[str, int | None]) -> None:
    _check(report, expected)


@pytest.mark.parametrize(("report", "expected"), [
    ("A calcified granuloma projects over the left lower lobe.", {"Lung Lesion": None}),
    ("Ill-defined nodular opacity at the right base.", {"Lung Lesion": None, "Lung Opacity": 1}),
    ("Nodular densities consistent with old granulomatous disease.", {"Lung Lesion": None, "Pneumonia": None}),
    ("A 6 mm nodule in the right upper lobe.", {"Lung Lesion": 1}),
    ("Two small calcified nodules at the left base.", {"Lung Lesion": 1}),  # a calcified nodule is a nodule
    ("Masslike opacity in the right upper lobe.", {"Lung Lesion": 1}),
    ("Overlying bone could obscure a small nodule.", {"Lung Lesion": None}),
    ("Expansile lesion of the left sixth rib.", {"Lung Lesion": None}),
    ("Lucent lesion in the right humeral head.", {"Lung Lesion": None}),
    ("Large posterior mediastinal mass.", {"Lung Lesion": None}),
])
def test_granuloma_nodule_and_lesion_classes(report: str, expected: dict[str, int | None]) -> None:
    _check(report, expected)


@pytest.mark.parametrize(("report", "expected"), [
    # Was Edema 1: vascular congestion is a sign of raised venous pressure, not fluid in the lung.
    ("Pulmonary vascular congestion.", {"Edema": None}),
    ("Mild central vascular congestion without overt edema.", {"Edema": 0}),
    ("Vascular congestion and new mild interstitial edema.", {"Edema": 1}),
    ("Cephalization of the pulmonary vessels.", {"Edema": None}),
])
def test_vascular_congestion_is_not_edema(report: str, expected: dict[str, int | None]) -> None:
    _check(report, expected)


@pytest.mark.parametrize(("report", "expected"), [
    ("Fracture of a sternotomy wire.", {"Fracture": None}),
    ("Left chest pacemaker with a lead fracture.", {"Fracture": None, "Support Devices": 1}),
    ("Status post CABG with intact sternotomy wires. No acute fracture.", {"Fracture": 0}),
    ("The chest tube has been removed. No pneumothorax.", {"Support Devices": 0, "Pneumothorax": 0}),
    ("Postsurgical changes of the right hemithorax with a small residual effusion.", {"Pleural Effusion": 1}),
])
def test_post_surgical_and_device_classes(report: str, expected: dict[str, int | None]) -> None:
    _check(report, expected)


@pytest.mark.parametrize(("report", "expected"), [
    ("No XXXX of a right pleural effusion.", {"Pleural Effusion": 0}),
    ("Mild right costophrenic XXXX blunting is new.", {"Pleural Effusion": 1}),
    ("Heart size is XXXX mildly large.", {"Cardiomegaly": 1}),
    ("Compared to XXXX. Small left pleural effusion.", {"Pleural Effusion": 1}),
    ("Compared with ___, no pneumothorax.", {"Pneumothorax": 0}),
])
def test_deidentification_tokens(report: str, expected: dict[str, int | None]) -> None:
    _check(report, expected)


def test_placeholders_leave_sentences_apart() -> None:
    assert split_sentences("No effusion on XXXX. Small pneumothorax.") == ["No effusion on.", "Small pneumothorax."]
    assert label_report("No effusion on XXXX. Small pneumothorax.")["Pneumothorax"] == 1


@pytest.mark.parametrize(("report", "expected"), [
    ("INDICATION: History of pneumothorax.\nFINDINGS: No pneumothorax.", {"Pneumothorax": 0}),
    ("COMPARISON: Radiograph showing right lower lobe pneumonia.\n\nIMPRESSION: No acute process.",
     {"Pneumonia": None}),
    ("Clinical history: fever, evaluate for pneumonia.\n\nFindings: Right lower lobe pneumonia.", {"Pneumonia": 1}),
    ("Reason for exam: effusion?\n\nThe lungs are clear.", {"Pleural Effusion": None, "Lung Opacity": 0}),
    ("FINDINGS: Small left effusion.\n\nIMPRESSION: Small left effusion.", {"Pleural Effusion": 1}),
])
def test_sections_that_do_not_describe_the_study_are_skipped(report: str, expected: dict[str, int | None]) -> None:
    _check(report, expected)


@pytest.mark.parametrize(("report", "expected"), [
    ("Heart size is at the upper limits of normal for this projection.", 0),
    ("The cardiac silhouette is top normal in size.", 0),
    # Borderline heart size is read as cardiomegaly (was -1; docs/labeler.md); top normal stays normal.
    ("The heart remains borderline enlarged.", 1),
    ("Heart size appears borderline enlarged today.", 1),
    ("The cardiac silhouette is borderline in size.", 1),
    ("Borderline heart size.", 1),
    ("Borderline enlargement of the cardiac silhouette.", 1),
    ("Heart size is borderline.", 1),
    ("The heart size is borderline and the lungs are clear.", 1),
    ("Heart size is normal.", 0),
    ("The heart is again slightly large.", 1),
    ("There has been an interval increase in heart size.", 1),
])
def test_heart_size_wording(report: str, expected: int) -> None:
    assert label_report(report)["Cardiomegaly"] == expected


def test_unmentioned_is_none() -> None:
    labels = label_report("No pneumothorax.")
    assert [name for name in OBSERVATIONS if labels[name] is not None] == ["Pneumothorax"]


@pytest.mark.parametrize("report", ["", "   ", None, float("nan")])
def test_blank_report_is_all_none(report) -> None:
    assert label_report(report) == dict.fromkeys(CHEXPERT_LABELS)
    assert find_mentions(report) == []


@pytest.mark.parametrize(("report", "no_finding"), [
    ("No acute cardiopulmonary process.", 1),
    ("Heart size is normal. Lungs are clear. No pneumothorax.", 1),
    ("Endotracheal tube in standard position. Lungs are clear.", 1),  # Support Devices does not count
    ("Possible small left effusion.", 0),  # uncertain counts
    ("Mild cardiomegaly.", 0),
    ("No pneumothorax. Small left effusion.", 0),
])
def test_no_finding_rule(report: str, no_finding: int) -> None:
    assert label_report(report)["No Finding"] == no_finding


@pytest.mark.parametrize(("report", "expected"), [
    ("No pleural effusion. Small right pleural effusion.", 1),   # positive beats negative
    ("Small right pleural effusion. No left pleural effusion.", 1),
    ("Possible left pleural effusion. Small right pleural effusion.", 1),  # positive beats uncertain
    ("Small right pleural effusion. Possible left pleural effusion.", 1),
    ("No right pleural effusion. Possible left pleural effusion.", -1),  # uncertain beats negative
    ("Possible left pleural effusion. No right pleural effusion.", -1),
])
def test_aggregation_positive_beats_uncertain_beats_negative(report: str, expected: int) -> None:
    values = sorted(m.value for m in find_mentions(report) if m.label == "Pleural Effusion")
    assert len(values) == 2 and len(set(values)) == 2  # two different mentions are aggregated
    assert label_report(report)["Pleural Effusion"] == expected


def test_find_mentions_reports_sentence_and_phrase() -> None:
    report = "FINDINGS: No pneumothorax.\n\nIMPRESSION:\n 1. Moderate right pleural\n effusion.  2. Mild edema."
    mentions = find_mentions(report)
    assert [(m.label, m.value) for m in mentions] == [("Pneumothorax", 0), ("Pleural Effusion", 1), ("Edema", 1)]
    effusion = mentions[1]
    assert isinstance(effusion, Mention)
    assert effusion.sentence == "1. Moderate right pleural effusion."
    assert effusion.phrase == "pleural effusion"
    assert (effusion.laterality, effusion.severity) == ("right", "moderate")
    assert mentions[2].sentence == "2. Mild edema."


def test_split_sentences_keeps_decimals_and_abbreviations() -> None:
    assert split_sentences("A 1.5 cm nodule. Atelectasis vs. pneumonia.\n\nNo effusion") == [
        "A 1.5 cm nodule.", "Atelectasis vs. pneumonia.", "No effusion"]


def test_positive_labels_from_dict_and_row() -> None:
    labels = {"No Finding": 0, "Cardiomegaly": 1, "Edema": -1, "Pneumothorax": 0, "Pleural Effusion": 1,
              "Fracture": None}
    assert positive_labels(labels) == frozenset({"Cardiomegaly", "Pleural Effusion"})
    row = pd.Series({"Cardiomegaly": 1.0, "Edema": math.nan, "Pneumothorax": pd.NA, "Fracture": -1.0,
                     "study_id": "s1"})
    assert positive_labels(row) == frozenset({"Cardiomegaly"})
    frame_row = label_frame(["Small effusion. No pneumothorax."]).iloc[0]
    assert positive_labels(frame_row) == frozenset({"Pleural Effusion"})


def test_label_frame_columns_dtype_and_values() -> None:
    reports = ["Small left pleural effusion.", None, "No pneumothorax.", "Small left pleural effusion."]
    frame = label_frame(reports)
    assert list(frame.columns) == list(CHEXPERT_LABELS)
    assert all(str(dtype) == "Int8" for dtype in frame.dtypes)
    assert frame.shape == (4, 14)
    for i, report in enumerate(reports):
        expected = label_report(report)
        got = {name: (None if pd.isna(value) else int(value)) for name, value in frame.iloc[i].items()}
        assert got == expected
    assert frame["Pleural Effusion"].isna().tolist() == [False, True, True, False]
    assert frame.loc[2, "Pneumothorax"] == 0


def test_label_frame_keeps_series_index() -> None:
    reports = pd.Series(["Mild cardiomegaly.", "No pneumothorax."], index=[10, 3])
    frame = label_frame(reports)
    assert frame.index.tolist() == [10, 3]
    assert frame.loc[10, "Cardiomegaly"] == 1 and frame.loc[3, "Pneumothorax"] == 0
    assert frame.loc[3, "Cardiomegaly"] is pd.NA


def test_chexpert_labels_order() -> None:
    assert CHEXPERT_LABELS == (
        "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
        "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
        "Fracture", "Support Devices")


def test_keyed_scan_matches_plain_finditer() -> None:
    """The labeler tries its patterns only at words that can start a match; that must not change a match."""
    import random

    from medxpert_utils.data.labels import _SCANNER

    texts = [sentence for _, sentence, _ in CASES]
    vocabulary = " ".join(texts).replace(".", " . ").split() + ["?", ";", "r/o", "can", "not", "be", "excluded"]
    rng = random.Random(0)
    texts += [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(3, 20))) for _ in range(300)]
    for text in texts:
        scanned = _SCANNER.scan(text)
        for regex, matches in zip(_SCANNER.regexes, scanned):
            assert [m.span() for m in matches] == [m.span() for m in regex.finditer(text)], text
