"""Report cleaning, section extraction, the manifest's report text and the grouping key."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from medxpert_utils.data.reports import clean_report, extract_sections, normalise_for_grouping, report_text

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.  Clips project over the left lung,
 potentially within the breast. The imaged upper abdomen is unremarkable.

 IMPRESSION:

 No acute cardiopulmonary process.  Dr. ___ was notified by ___ at 4:55 PM.
"""

IU_REPORT = ("COMPARISON: None. INDICATION: XXXX-year-old male, chest pain. FINDINGS: The heart is normal in size. "
             "The XXXX are normal. The lungs are clear. IMPRESSION: No acute disease.")


def test_mimic_style_sections() -> None:
    findings, impression = extract_sections(MIMIC_REPORT)
    assert findings == (
        "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular opacities that most "
        "likely represent nipple shadows. The cardiomediastinal silhouette is normal. Clips project over the left "
        "lung, potentially within the breast. The imaged upper abdomen is unremarkable.")
    assert impression == "No acute cardiopulmonary process. Dr. was notified by at 4:55 PM."


def test_iu_style_inline_sections() -> None:
    findings, impression = extract_sections(IU_REPORT)
    assert findings == "The heart is normal in size. The are normal. The lungs are clear."
    assert impression == "No acute disease."


@pytest.mark.parametrize(("text", "expected"), [
    ("Findings: Small left effusion.\nImpression: Effusion.", ("Small left effusion.", "Effusion.")),
    ("FINDINGS: Clear lungs.\nCONCLUSION: Normal chest.", ("Clear lungs.", "Normal chest.")),
    ("INDICATION: Cough.\nFINDINGS: Clear lungs.", ("Clear lungs.", "")),
    ("HISTORY: Cough.\nIMPRESSION: Normal chest.", ("", "Normal chest.")),
    ("FINDINGS AND IMPRESSION: Clear lungs.", ("Clear lungs.", "Clear lungs.")),
    ("FINDINGS: Clear lungs.\nRECOMMENDATION(S): Follow-up.\nIMPRESSION: Normal.", ("Clear lungs.", "Normal.")),
    ("FINDINGS: Clear lungs.\nWET READ: ___ 4:55 PM\nIMPRESSION: Normal.", ("Clear lungs.", "Normal.")),
    ("INDICATION: Cough.\nCOMPARISON: ___.", ("", "")),
    ("The lungs are clear. No effusion.", ("The lungs are clear. No effusion.", "")),  # no headings at all
    ("", ("", "")),
    (None, ("", "")),
])
def test_extract_sections_variants(text, expected: tuple[str, str]) -> None:
    assert extract_sections(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("The XXXX are normal.", "The are normal."),
    ("XXXX-year-old male.", "year-old male."),
    ("Dr. ___ was notified at ___ by ___ , XXXX XXXX.", "Dr. was notified at by."),
    ("Findings were discussed with ____.", "Findings were discussed with."),
    ("  Heart size   normal.\n\n Lungs\tclear. ", "Heart size normal. Lungs clear."),
    ("Stable (___) opacity.", "Stable opacity."),
    ("Rib XII is intact.", "Rib XII is intact."),  # not a placeholder
    (None, ""),
    (math.nan, ""),
    (pd.NA, ""),
])
def test_clean_report(text, expected: str) -> None:
    assert clean_report(text) == expected


@pytest.mark.parametrize(("findings", "impression", "expected"), [
    ("Clear lungs.", "Normal chest.", "Normal chest."),
    ("Clear lungs.", "", "Clear lungs."),
    ("Clear lungs.", "   ", "Clear lungs."),
    ("Clear lungs.", None, "Clear lungs."),
    ("Clear lungs.", math.nan, "Clear lungs."),
    ("Clear lungs.", "___", "Clear lungs."),  # an impression that is only a placeholder is empty
    (None, None, ""),
])
def test_report_text_prefers_impression(findings, impression, expected: str) -> None:
    assert report_text(findings, impression) == expected


@pytest.mark.parametrize(("a", "b"), [
    ("No acute cardiopulmonary process.", "no acute cardiopulmonary process"),
    ("No acute  cardiopulmonary\nprocess.", "NO ACUTE CARDIOPULMONARY PROCESS!"),
    ("Heart size normal; lungs clear.", "Heart size normal, lungs clear"),
    ("Left-sided effusion.", "left sided effusion"),
    ("The XXXX are normal.", "The are normal."),
])
def test_grouping_key_equal(a: str, b: str) -> None:
    assert normalise_for_grouping(a) == normalise_for_grouping(b)


@pytest.mark.parametrize(("a", "b"), [
    ("No pneumothorax.", "No pneumothorax or effusion."),
    ("Small left effusion.", "Small right effusion."),
    ("1.5 cm nodule.", "15 cm nodule."),
])
def test_grouping_key_different(a: str, b: str) -> None:
    assert normalise_for_grouping(a) != normalise_for_grouping(b)


def test_grouping_key_form() -> None:
    assert normalise_for_grouping("  No acute\tcardiopulmonary process (stable). ") == \
        "no acute cardiopulmonary process stable"
    assert normalise_for_grouping(None) == ""
