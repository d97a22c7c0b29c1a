"""ICD-10-CM tagging of CheXpert observations, validated against ``simple_icd_10_cm``.

The table maps each observation to one default code and, where the evidence names a more
specific variant (a side, a tension pneumothorax, a pacemaker), to that code instead. Choices:

===========================  ==========  ====================================================================
observation                  code        why
===========================  ==========  ====================================================================
No Finding                   (none)      a normal study is not a condition; Z codes describe encounters
Enlarged Cardiomediastinum   R93.1       abnormal imaging of heart (the cardiomediastinal silhouette);
                             R93.89      ... 'mediastin' in the evidence: imaging of other body structures
Cardiomegaly                 I51.7       Cardiomegaly
Lung Opacity                 R91.8       other nonspecific abnormal finding of lung field
Lung Lesion                  R91.8       a lesion/mass/nodules; 'nodule' (single) -> R91.1 solitary nodule
Edema                        J81.1       includes 'pulmonary edema NOS'; 'acute' or 'flash' -> J81.0
Consolidation                R91.8       consolidation is an imaging sign, not a diagnosis of pneumonia
Pneumonia                    J18.9       pneumonia, unspecified organism
Atelectasis                  J98.11      Atelectasis
Pneumothorax                 J93.9       unspecified; 'tension' -> J93.0
Pleural Effusion             J90         effusion NEC (J91.8 needs the underlying condition coded first)
Pleural Other                J94.9       pleural condition, unspecified; 'plaque' -> J92.9
Fracture                     S22.39XA    rib fracture (the usual chest-film fracture), initial encounter;
                                         bilateral -> S22.43XA, 'multiple'/'ribs' -> S22.49XA,
                                         right -> S22.31XA, left -> S22.32XA
Support Devices              Z97.8       presence of other specified devices; 'pacemaker' -> Z95.0
===========================  ==========  ====================================================================

Descriptions come from the package, never from this table or a language model. Those of the table's own codes
are read from the package once and kept in :data:`DESCRIPTIONS` (a test checks them against the package), so an
offline report never loads the package's tables (about 180 MB and seconds per process, a dashboard kernel's
largest item); any other code, e.g. one a language model proposes, is looked up in the package.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import lru_cache

from medxpert_utils.report.schema import OBSERVATIONS, Icd10Code


@dataclass(frozen=True)
class Variant:
    """Use ``code`` instead of the default when ``pattern`` matches the finding's context text."""

    pattern: str
    code: str


@dataclass(frozen=True)
class Mapping:
    default: str | None
    variants: tuple[Variant, ...] = ()


MAPPING: dict[str, Mapping] = {
    "No Finding": Mapping(None),
    "Enlarged Cardiomediastinum": Mapping("R93.1", (Variant(r"\bmediastin", "R93.89"),)),
    "Cardiomegaly": Mapping("I51.7"),
    "Lung Opacity": Mapping("R91.8"),
    "Lung Lesion": Mapping("R91.8", (Variant(r"\bnodule\b", "R91.1"),)),
    "Edema": Mapping("J81.1", (Variant(r"\b(acute|flash)\b", "J81.0"),)),
    "Consolidation": Mapping("R91.8"),
    "Pneumonia": Mapping("J18.9"),
    "Atelectasis": Mapping("J98.11"),
    "Pneumothorax": Mapping("J93.9", (Variant(r"\btension\b", "J93.0"),)),
    "Pleural Effusion": Mapping("J90"),
    "Pleural Other": Mapping("J94.9", (Variant(r"\bplaques?\b", "J92.9"),)),
    "Fracture": Mapping("S22.39XA", (
        Variant(r"\bbilateral\b", "S22.43XA"),
        Variant(r"\b(multiple|several)\b|\bribs\b|\bfractures\b", "S22.49XA"),
        Variant(r"\bright\b", "S22.31XA"),
        Variant(r"\bleft\b", "S22.32XA"),
    )),
    "Support Devices": Mapping("Z97.8", (Variant(r"\bpacemaker\b", "Z95.0"),)),
}
assert set(MAPPING) == set(OBSERVATIONS)


# The descriptions of MAPPING's codes as simple_icd_10_cm gives them (tests/report check they still match).
DESCRIPTIONS: dict[str, str] = {
    "R93.1": 'Abnormal findings on diagnostic imaging of heart and coronary circulation',
    "R93.89": 'Abnormal findings on diagnostic imaging of other specified body structures',
    "I51.7": 'Cardiomegaly',
    "R91.8": 'Other nonspecific abnormal finding of lung field',
    "R91.1": 'Solitary pulmonary nodule',
    "J81.1": 'Chronic pulmonary edema',
    "J81.0": 'Acute pulmonary edema',
    "J18.9": 'Pneumonia, unspecified organism',
    "J98.11": 'Atelectasis',
    "J93.9": 'Pneumothorax, unspecified',
    "J93.0": 'Spontaneous tension pneumothorax',
    "J90": 'Pleural effusion, not elsewhere classified',
    "J94.9": 'Pleural condition, unspecified',
    "J92.9": 'Pleural plaque without asbestos',
    "S22.39XA": 'Fracture of one rib, unspecified side, initial encounter for closed fracture',
    "S22.43XA": 'Multiple fractures of ribs, bilateral, initial encounter for closed fracture',
    "S22.49XA": 'Multiple fractures of ribs, unspecified side, initial encounter for closed fracture',
    "S22.31XA": 'Fracture of one rib, right side, initial encounter for closed fracture',
    "S22.32XA": 'Fracture of one rib, left side, initial encounter for closed fracture',
    "Z97.8": 'Presence of other specified devices',
    "Z95.0": 'Presence of cardiac pacemaker',
}


def _cm():
    with warnings.catch_warnings():  # the package imports pkg_resources, which warns on import
        warnings.simplefilter("ignore")
        import simple_icd_10_cm as cm
    return cm


def normalise(code: str) -> str:
    """Upper-case, trimmed, with the dot (``j189`` -> ``J18.9``)."""
    code = str(code).strip().upper()
    if "." not in code and len(code) > 3:
        code = f"{code[:3]}.{code[3:]}"
    return code


@lru_cache(maxsize=4096)
def is_valid(code: str) -> bool:
    """True when ``code`` is an ICD-10-CM category, subcategory or extended code (not a chapter or block)."""
    code = normalise(code)
    if code in DESCRIPTIONS:
        return True
    cm = _cm()
    if not re.fullmatch(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?", code):
        return False
    return bool(cm.is_valid_item(code)) and (cm.is_category_or_subcategory(code) or cm.is_extended_subcategory(code))


def describe(code: str) -> str:
    """The official description of a valid code (ValueError otherwise)."""
    code = normalise(code)
    if code in DESCRIPTIONS:
        return DESCRIPTIONS[code]
    if not is_valid(code):
        raise ValueError(f"not an ICD-10-CM code: {code!r}")
    return _cm().get_description(code)


def to_icd10(code: str) -> Icd10Code:
    code = normalise(code)
    return Icd10Code(code=code, description=describe(code))


def code_for(observation: str, context: str = "") -> str | None:
    """The code of one observation, picking the first variant whose pattern matches ``context``
    (location, severity and evidence sentences, lower-cased); None for 'No Finding'."""
    mapping = MAPPING[observation]
    text = (context or "").lower()
    for variant in mapping.variants:
        if re.search(variant.pattern, text):
            return variant.code
    return mapping.default


def codes_for_findings(findings, contexts: dict[str, str] | None = None) -> list[Icd10Code]:
    """ICD-10-CM codes of the present findings (unique, in finding order)."""
    contexts = contexts or {}
    out: list[Icd10Code] = []
    seen: set[str] = set()
    for finding in findings:
        if finding.status != "present":
            continue
        context = " ".join(filter(None, [finding.location, finding.severity, contexts.get(finding.name, "")]))
        code = code_for(finding.name, context)
        if code and code not in seen:
            seen.add(code)
            out.append(to_icd10(code))
    return out


def all_codes() -> list[str]:
    """Every code the table can produce (defaults and variants)."""
    codes = []
    for mapping in MAPPING.values():
        for code in [mapping.default, *(v.code for v in mapping.variants)]:
            if code and code not in codes:
                codes.append(code)
    return codes
