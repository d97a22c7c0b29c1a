"""The ICD-10-CM table, validated in full against simple_icd_10_cm."""

import warnings

import pytest

from medxpert_utils.report import icd10
from medxpert_utils.report.schema import OBSERVATIONS, Finding

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import simple_icd_10_cm as cm


def test_table_covers_every_observation_and_only_those():
    assert set(icd10.MAPPING) == set(OBSERVATIONS)


@pytest.mark.parametrize("code", icd10.all_codes())
def test_every_code_is_valid_with_the_official_description(code):
    assert cm.is_valid_item(code), code
    assert icd10.is_valid(code)
    entry = icd10.to_icd10(code)
    assert entry.code == code
    assert entry.description == cm.get_description(code)


def test_every_pathology_has_a_code_and_no_finding_has_none():
    for name in OBSERVATIONS:
        code = icd10.code_for(name)
        if name == "No Finding":
            assert code is None
        else:
            assert code is not None and icd10.is_valid(code), name


@pytest.mark.parametrize("name, context, expected", [
    ("Pneumothorax", "", "J93.9"),
    ("Pneumothorax", "large tension pneumothorax", "J93.0"),
    ("Fracture", "left", "S22.32XA"),
    ("Fracture", "right", "S22.31XA"),
    ("Fracture", "multiple left rib fractures", "S22.49XA"),
    ("Fracture", "bilateral", "S22.43XA"),
    ("Support Devices", "dual-lead pacemaker in place", "Z95.0"),
    ("Support Devices", "endotracheal tube", "Z97.8"),
    ("Lung Lesion", "right upper lobe nodule", "R91.1"),
    ("Lung Lesion", "multiple nodules", "R91.8"),
    ("Edema", "acute pulmonary edema", "J81.0"),
    ("Edema", "mild", "J81.1"),
])
def test_variants_follow_the_context(name, context, expected):
    assert icd10.code_for(name, context) == expected


def test_validation_rejects_junk_blocks_and_chapters():
    for bad in ("ZZ9.99", "J18.99", "", "J09-J18", "10", "pneumonia", "I51.7; DROP"):
        assert not icd10.is_valid(bad), bad
    assert icd10.is_valid("j18.9") and icd10.normalise("j189") == "J18.9"
    with pytest.raises(ValueError):
        icd10.describe("ZZ9.99")


def test_codes_for_findings_skip_absent_and_deduplicate():
    findings = [Finding(name="Consolidation", status="present"), Finding(name="Lung Opacity", status="present"),
                Finding(name="Pneumonia", status="absent"), Finding(name="Cardiomegaly", status="uncertain"),
                Finding(name="Fracture", status="present", location="left")]
    codes = [c.code for c in icd10.codes_for_findings(findings)]
    assert codes == ["R91.8", "S22.32XA"]


def test_the_kept_descriptions_are_the_packages_for_exactly_the_tables_codes():
    assert list(icd10.DESCRIPTIONS) == icd10.all_codes()
    for code, description in icd10.DESCRIPTIONS.items():
        assert description == cm.get_description(code), code
        assert cm.is_category_or_subcategory(code) or cm.is_extended_subcategory(code), code


def test_coding_the_tables_findings_does_not_load_the_package():
    """The package's tables cost ~180 MB and seconds per process: offline reports (and dashboard kernels) skip them;
    a code outside the table (a language model's) still goes to the package."""
    import subprocess
    import sys

    script = ("import sys\n"
              "from medxpert_utils.report import icd10\n"
              "from medxpert_utils.report.schema import Finding\n"
              "codes = icd10.codes_for_findings([Finding(name='Pleural Effusion', status='present'),"
              " Finding(name='Fracture', status='present', location='left')])\n"
              "assert [c.code for c in codes] == ['J90', 'S22.32XA'], codes\n"
              "assert 'simple_icd_10_cm' not in sys.modules\n"
              "assert icd10.describe('J18.1') and 'simple_icd_10_cm' in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
