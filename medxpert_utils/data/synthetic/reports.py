"""Reports of the synthetic phantom studies: FINDINGS and IMPRESSION text that state exactly what is drawn.

:func:`compose_report` writes both sections for a study's findings (see :mod:`medxpert_utils.data.synthetic.phantom`)
with the vocabulary of CheXpert-style labelers: several phrasings per finding, laterality and severity,
negations of absent findings ("No pleural effusion or pneumothorax."), uncertainty for findings drawn
faintly ("Cannot exclude early pneumonia in the right lower lobe."), and a few fixed templates for normal
studies, as in real archives where many normal reports are word for word the same. Each sentence carries
the labels it states, so the report's truth is known by construction: CheXpert's aggregation (positive
beats uncertain beats negative) and its "No Finding" rule (1 unless something other than support devices
is positive or uncertain).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medxpert_utils.data.labels import CHEXPERT_LABELS, NO_FINDING_EXEMPT
from medxpert_utils.data.synthetic.phantom import Finding

Tags = dict[str, int]
Sentence = tuple[str, Tags]

# (findings, impression, findings tags); impressions carry no labels beyond "No Finding".
NORMAL_TEMPLATES: tuple[tuple[str, str, Tags], ...] = (
    ("The lungs are clear. There is no pleural effusion or pneumothorax. The cardiomediastinal silhouette is "
     "within normal limits. No acute osseous abnormality.", "No acute cardiopulmonary process.",
     {"Lung Opacity": 0, "Pleural Effusion": 0, "Pneumothorax": 0, "Enlarged Cardiomediastinum": 0}),
    ("Heart size is normal. Cardiomediastinal and hilar contours are normal. The lungs are clear without focal "
     "consolidation. No pleural effusion or pneumothorax.", "No acute cardiopulmonary abnormality.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, "Lung Opacity": 0, "Consolidation": 0,
      "Pleural Effusion": 0, "Pneumothorax": 0}),
    ("PA view of the chest. The heart is normal in size. The lungs are well expanded and clear. No pneumothorax "
     "or pleural effusion.", "Normal chest radiograph.",
     {"Cardiomegaly": 0, "Lung Opacity": 0, "Pneumothorax": 0, "Pleural Effusion": 0}),
    ("No focal consolidation, pleural effusion or pneumothorax. Heart size is normal.",
     "No evidence of acute cardiopulmonary disease.",
     {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0, "Cardiomegaly": 0}),
)
_NORMAL_WEIGHTS = (0.4, 0.3, 0.2, 0.1)

_ADVERB = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}
_LOBE = {("right", "upper"): "right upper lobe", ("right", "middle"): "right middle lobe",
         ("right", "lower"): "right lower lobe", ("left", "upper"): "left upper lobe",
         ("left", "middle"): "lingula", ("left", "lower"): "left lower lobe"}
_DEVICE_LABEL = {"Support Devices": 1}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def describe(f: Finding, rng: np.random.Generator) -> tuple[Sentence, Sentence]:
    """(findings sentence, impression sentence) stating one finding, each with its labels."""
    unc = f.certainty == "uncertain"
    side, sev = f.side or "", f.severity or ""
    lobe = _LOBE.get((side, f.zone or ""), "")
    if f.kind == "cardiomegaly":
        adv = _ADVERB[sev]
        fx = _pick(rng, [f"{_cap(sev)} cardiomegaly.", f"The heart is {adv} enlarged.",
                         f"The cardiac silhouette is {adv} enlarged.", f"Heart size is {adv} enlarged."])
        ix = _pick(rng, [f"{_cap(sev)} cardiomegaly.", f"{_cap(sev)} enlargement of the cardiac silhouette."])
        return (fx, {"Cardiomegaly": 1}), (ix, {"Cardiomegaly": 1})
    if f.kind == "widened_mediastinum":
        fx = _pick(rng, ["The mediastinum is widened.", "Widening of the superior mediastinum.",
                         "The upper mediastinal contours are widened.", "Mediastinal widening."])
        ix = _pick(rng, ["Widened mediastinum.", "Mediastinal widening.", "Widening of the superior mediastinum."])
        tags = {"Enlarged Cardiomediastinum": 1}
        return (fx, tags), (ix, tags)
    if f.kind == "effusion":
        tags = {"Pleural Effusion": -1 if unc else 1}
        if unc:
            fx = _pick(rng, [f"Possible small {side} pleural effusion.",
                             f"A small {side} pleural effusion cannot be excluded.",
                             f"Small {side} pleural effusion is possible."])
            ix = _pick(rng, [f"Possible small {side} pleural effusion.",
                             f"Small {side} pleural effusion cannot be excluded."])
        elif side == "bilateral":
            fx = _pick(rng, [f"{_cap(sev)} bilateral pleural effusions.",
                             f"There are {sev} bilateral pleural effusions.",
                             f"{_cap(sev)} pleural effusions are seen bilaterally.",
                             f"{_cap(sev)} bilateral pleural effusions with blunting of both costophrenic angles."])
            ix = _pick(rng, [f"{_cap(sev)} bilateral pleural effusions.", f"{_cap(sev)} bilateral effusions."])
        else:
            fx = _pick(rng, [f"{_cap(sev)} {side} pleural effusion.", f"There is a {sev} {side} pleural effusion.",
                             f"A {sev} {side}-sided pleural effusion is present.",
                             f"{_cap(sev)} {side} pleural effusion with blunting of the {side} costophrenic angle."])
            ix = _pick(rng, [f"{_cap(sev)} {side} pleural effusion.", f"{_cap(sev)} {side} effusion."])
        return (fx, tags), (ix, tags)
    if f.kind == "pneumothorax":
        tags = {"Pneumothorax": -1 if unc else 1}
        if unc:
            fx = _pick(rng, [f"Possible small {side} apical pneumothorax.",
                             f"A tiny {side} apical pneumothorax cannot be excluded.",
                             f"Small {side} apical pneumothorax is possible."])
            ix = _pick(rng, [f"Possible small {side} apical pneumothorax.",
                             f"Small {side} apical pneumothorax cannot be excluded."])
        elif sev == "small":
            fx = _pick(rng, [f"Small {side} apical pneumothorax.", f"There is a small {side} apical pneumothorax.",
                             f"A small {side} pneumothorax is seen at the apex."])
            ix = _pick(rng, [f"Small {side} apical pneumothorax.", f"Small {side} pneumothorax."])
        else:
            fx = _pick(rng, [f"{_cap(sev)} {side} pneumothorax.",
                             f"There is a {sev} {side} pneumothorax with a visible visceral pleural line.",
                             f"A {sev} {side}-sided pneumothorax is present."])
            ix = _pick(rng, [f"{_cap(sev)} {side} pneumothorax.", f"{_cap(sev)} {side}-sided pneumothorax."])
        return (fx, tags), (ix, tags)
    if f.kind == "consolidation":
        tags = {"Consolidation": -1 if unc else 1}
        if unc:
            fx = _pick(rng, [f"Possible consolidation in the {lobe}.",
                             f"Consolidation in the {lobe} cannot be excluded.",
                             f"Possible early {lobe} consolidation."])
            ix = _pick(rng, [f"Possible {lobe} consolidation.", f"Consolidation in the {lobe} cannot be excluded."])
        else:
            fx = _pick(rng, [f"Consolidation in the {lobe}.", f"There is focal consolidation in the {lobe}.",
                             f"Dense {lobe} consolidation.", f"{_cap(lobe)} consolidation."])
            ix = _pick(rng, [f"{_cap(lobe)} consolidation.", f"Consolidation in the {lobe}."])
        return (fx, tags), (ix, tags)
    if f.kind == "pneumonia":
        if unc:
            fx, ftags = _pick(rng, [
                (f"Subtle patchy opacity in the {lobe}; early pneumonia cannot be excluded.",
                 {"Lung Opacity": 1, "Pneumonia": -1}),
                (f"Cannot exclude early pneumonia in the {lobe}.", {"Pneumonia": -1}),
                (f"Possible early pneumonia in the {lobe}.", {"Pneumonia": -1})])  # type: ignore[arg-type]
            ix = _pick(rng, [f"Cannot exclude early pneumonia in the {lobe}.", f"Possible early {lobe} pneumonia."])
            return (fx, ftags), (ix, {"Pneumonia": -1})
        fx, ftags = _pick(rng, [
            (f"{_cap(lobe)} pneumonia.", {"Pneumonia": 1}),
            (f"Patchy opacity in the {lobe} consistent with pneumonia.", {"Lung Opacity": 1, "Pneumonia": 1}),
            (f"There is a {lobe} pneumonia.", {"Pneumonia": 1})])  # type: ignore[arg-type]
        ix = _pick(rng, [f"{_cap(lobe)} pneumonia.", f"Pneumonia in the {lobe}."])
        return (fx, ftags), (ix, {"Pneumonia": 1})
    if f.kind == "opacity":
        tags = {"Lung Opacity": 1}
        fx = _pick(rng, [f"Patchy opacity in the {lobe}.", f"There is a hazy opacity in the {lobe}.",
                         f"Ill-defined {lobe} opacity.", f"Patchy opacities in the {lobe}."])
        ix = _pick(rng, [f"{_cap(lobe)} opacity.", f"Patchy {lobe} opacity."])
        return (fx, tags), (ix, tags)
    if f.kind == "atelectasis":
        tags = {"Atelectasis": 1}
        mild = "mild " if sev == "mild" else ""
        if side == "bilateral":
            fx = _pick(rng, [f"{mild}bibasilar atelectasis.", f"{mild}linear atelectasis at both lung bases.",
                             f"{mild}bibasilar plate-like atelectasis."])
            ix = _pick(rng, [f"{mild}bibasilar atelectasis.", f"{mild}atelectasis at both lung bases."])
        else:
            fx = _pick(rng, [f"{mild}linear atelectasis at the {side} lung base.", f"{mild}{side} basilar atelectasis.",
                             f"{mild}plate-like atelectasis in the {side} lower lobe.",
                             f"{mild}subsegmental atelectasis at the {side} base."])
            ix = _pick(rng, [f"{mild}{side} basilar atelectasis.", f"{mild}atelectasis at the {side} lung base."])
        fx, ix = _cap(fx), _cap(ix)
        return (fx, tags), (ix, tags)
    if f.kind == "edema":
        tags = {"Edema": -1 if unc else 1}
        if unc:
            fx = _pick(rng, ["Possible mild pulmonary edema.", "Mild pulmonary edema cannot be excluded.",
                             "Mild interstitial edema is possible."])
            ix = _pick(rng, ["Possible mild pulmonary edema.", "Mild pulmonary edema cannot be excluded."])
        else:
            fx = _pick(rng, [f"{_cap(sev)} pulmonary edema.", f"There is {sev} perihilar pulmonary edema.",
                             f"{_cap(sev)} interstitial pulmonary edema with perihilar haziness.",
                             f"Findings of {sev} pulmonary edema."])
            ix = _pick(rng, [f"{_cap(sev)} pulmonary edema.", f"{_cap(sev)} pulmonary edema."])
        return (fx, tags), (ix, tags)
    if f.kind == "lesion":
        tags = {"Lung Lesion": 1}
        cm = f"{f.size_cm:.1f}"
        if f.detail == "multiple":
            fx = _pick(rng, ["Multiple bilateral pulmonary nodules.",
                             "Several pulmonary nodules are seen in both lungs.",
                             "Multiple nodules in both lungs."])
            ix = _pick(rng, ["Multiple bilateral pulmonary nodules.", "Multiple pulmonary nodules in both lungs."])
        elif f.detail == "mass":
            fx = _pick(rng, [f"A {cm} cm mass in the {lobe}.", f"There is a large {lobe} mass measuring {cm} cm.",
                             f"{_cap(lobe)} mass measuring {cm} cm."])
            ix = _pick(rng, [f"{_cap(lobe)} mass.", f"{cm} cm {lobe} mass."])
        else:
            fx = _pick(rng, [f"A {cm} cm nodule in the {lobe}.", f"There is a {cm} cm nodule in the {lobe}.",
                             f"{cm} cm {lobe} pulmonary nodule."])
            ix = _pick(rng, [f"{_cap(lobe)} pulmonary nodule.", f"{cm} cm {lobe} nodule."])
        return (fx, tags), (ix, tags)
    if f.kind == "fracture":
        tags = {"Fracture": 1}
        nth = _ordinal(int(f.detail or 6))
        fx = _pick(rng, [f"Acute displaced fracture of the {side} {nth} posterior rib.",
                         f"There is a displaced {side} {nth} rib fracture.",
                         f"Displaced fracture of the {side} {nth} rib."])
        ix = _pick(rng, [f"{_cap(side)} {nth} rib fracture.", f"Displaced {side} {nth} rib fracture."])
        return (fx, tags), (ix, tags)
    if f.kind == "pleural_thickening":
        tags = {"Pleural Other": 1}
        fx = _pick(rng, [f"Pleural thickening along the {side} lateral chest wall.",
                         f"There is {side} lateral pleural thickening.",
                         f"Chronic {side} pleural thickening."])
        ix = _pick(rng, [f"{_cap(side)} pleural thickening.", f"Chronic {side} pleural thickening."])
        return (fx, tags), (ix, tags)
    if f.kind == "device":
        return _describe_device(f, rng)
    raise ValueError(f"no report phrasing for finding kind {f.kind!r}")


def _describe_device(f: Finding, rng: np.random.Generator) -> tuple[Sentence, Sentence]:
    side = f.side or "right"
    options = {
        "et_tube": (["Endotracheal tube terminates approximately 4 cm above the carina.",
                     "The endotracheal tube is in standard position.", "ET tube tip is 4 cm above the carina."],
                    ["Endotracheal tube in standard position.", "ET tube in appropriate position."]),
        "ng_tube": (["A nasogastric tube courses below the diaphragm with its tip in the stomach.",
                     "Enteric tube tip is in the stomach.", "The NG tube extends into the stomach."],
                    ["Nasogastric tube in the stomach.", "Enteric tube in appropriate position."]),
        "central_line": (["Right internal jugular central venous catheter terminates in the SVC.",
                          "A right IJ central line ends in the mid SVC.",
                          "Right internal jugular line with tip in the superior vena cava."],
                         ["Right internal jugular central line in standard position.",
                          "Right IJ catheter tip in the SVC."]),
        "picc": (["Left PICC line terminates in the SVC.", "A left upper extremity PICC ends in the lower SVC.",
                  "Left-sided PICC with tip in the superior vena cava."],
                 ["Left PICC in standard position.", "Left PICC line tip in the SVC."]),
        "pacemaker": (["Left-sided pacemaker with leads in the right atrium and right ventricle.",
                       "A dual-chamber pacemaker is present with leads terminating in the right atrium and "
                       "right ventricle.",
                       "Left chest wall pacemaker with two leads in expected position."],
                      ["Left-sided dual-chamber pacemaker.", "Pacemaker leads in appropriate position."]),
        "chest_tube": ([f"A {side} chest tube is in place.", f"{_cap(side)}-sided chest tube with its tip at the apex.",
                        f"There is a {side} chest tube."],
                       [f"{_cap(side)} chest tube in place.", f"{_cap(side)} chest tube."]),
    }[f.detail or ""]
    return (_pick(rng, options[0]), dict(_DEVICE_LABEL)), (_pick(rng, options[1]), dict(_DEVICE_LABEL))


_LUNG_KINDS = {"consolidation", "pneumonia", "opacity", "atelectasis", "edema", "lesion"}
# Order of mention: devices, lungs, pleura, heart and mediastinum, bones.
_FINDINGS_ORDER = ("device", "consolidation", "pneumonia", "opacity", "lesion", "edema", "atelectasis", "effusion",
                   "pneumothorax", "pleural_thickening", "cardiomegaly", "widened_mediastinum", "fracture")
# Order in the impression: the most urgent first, devices last.
_IMPRESSION_ORDER = ("pneumothorax", "pneumonia", "consolidation", "opacity", "lesion", "widened_mediastinum",
                     "fracture",
                     "cardiomegaly", "edema", "effusion", "atelectasis", "pleural_thickening", "device")


def _negatives(findings: Sequence[Finding], rng: np.random.Generator) -> dict[str, list[Sentence]]:
    """Statements of absent findings, grouped by the report section they belong to."""
    kinds = {f.kind for f in findings}
    out: dict[str, list[Sentence]] = {"lungs": [], "pleura": [], "heart": [], "bones": []}
    if not kinds & _LUNG_KINDS and rng.random() < 0.7:
        out["lungs"].append(_pick(rng, [("The lungs are clear.", {"Lung Opacity": 0}),
                                        ("No focal consolidation.", {"Consolidation": 0})]))  # type: ignore[arg-type]
    elif not kinds & {"consolidation", "pneumonia", "opacity"} and rng.random() < 0.5:
        out["lungs"].append(("No focal consolidation.", {"Consolidation": 0}))
    if "edema" not in kinds and kinds & {"cardiomegaly", "effusion"} and rng.random() < 0.5:
        out["lungs"].append(("No pulmonary edema.", {"Edema": 0}))
    if not kinds & {"effusion", "pneumothorax"}:
        text = _pick(rng, ["No pleural effusion or pneumothorax.", "There is no pleural effusion or pneumothorax.",
                           "No pneumothorax or pleural effusion."])
        out["pleura"].append((text, {"Pleural Effusion": 0, "Pneumothorax": 0}))
    elif "effusion" not in kinds:
        text = _pick(rng, ["No pleural effusion.", "There is no pleural effusion."])
        out["pleura"].append((text, {"Pleural Effusion": 0}))
    elif "pneumothorax" not in kinds:
        out["pleura"].append((_pick(rng, ["No pneumothorax.", "There is no pneumothorax."]), {"Pneumothorax": 0}))
    if not kinds & {"cardiomegaly", "widened_mediastinum"}:
        out["heart"].append(_pick(rng, [
            ("Heart size is normal.", {"Cardiomegaly": 0}),
            ("The cardiomediastinal silhouette is within normal limits.", {"Enlarged Cardiomediastinum": 0}),
            ("The heart is normal in size.", {"Cardiomegaly": 0})]))  # type: ignore[arg-type]
    elif "widened_mediastinum" not in kinds and rng.random() < 0.5:
        out["heart"].append(("The mediastinal contours are normal.", {"Enlarged Cardiomediastinum": 0}))
    elif "cardiomegaly" not in kinds and rng.random() < 0.5:
        out["heart"].append(("Heart size is normal.", {"Cardiomegaly": 0}))
    if "fracture" not in kinds and rng.random() < 0.4:
        out["bones"].append(_pick(rng, [("No acute osseous abnormality.", {}),  # type: ignore[arg-type]
                                        ("No displaced rib fracture.", {"Fracture": 0})]))
    return out


def _merge(tags: Sequence[Tags]) -> dict[str, int | None]:
    """CheXpert aggregation (positive beats uncertain beats negative) plus its "No Finding" rule."""
    rank = {1: 2, -1: 1, 0: 0}
    out: dict[str, int | None] = dict.fromkeys(CHEXPERT_LABELS)
    for item in tags:
        for label, value in item.items():
            if out[label] is None or rank[value] > rank[out[label]]:  # type: ignore[index]
                out[label] = value
    out["No Finding"] = 0 if any(out[n] in (1, -1) for n in CHEXPERT_LABELS if n not in NO_FINDING_EXEMPT) else 1
    return out


def compose_report(findings: Sequence[Finding], rng: np.random.Generator,
                   with_impression: bool = True) -> tuple[str, str, dict[str, int | None]]:
    """Write (findings text, impression text, truth) for a study showing exactly ``findings``.

    ``truth`` is what the text the labeler reads states: the impression, or the findings when
    ``with_impression`` is False (the impression is then "").
    """
    if not findings:
        ftext, itext, ftags = NORMAL_TEMPLATES[int(rng.choice(len(NORMAL_TEMPLATES), p=_NORMAL_WEIGHTS))]
        if not with_impression:
            return ftext, "", _merge([ftags])
        return ftext, itext, _merge([])

    described = {id(f): describe(f, rng) for f in findings}
    negatives = _negatives(findings, rng)
    by_order = lambda order: sorted(findings, key=lambda f: order.index(f.kind))  # noqa: E731
    sentences: list[Sentence] = [described[id(f)][0] for f in by_order(_FINDINGS_ORDER) if f.kind == "device"]
    for section, kinds in (("lungs", _LUNG_KINDS), ("pleura", {"effusion", "pneumothorax", "pleural_thickening"}),
                           ("heart", {"cardiomegaly", "widened_mediastinum"}), ("bones", {"fracture"})):
        sentences += [described[id(f)][0] for f in by_order(_FINDINGS_ORDER) if f.kind in kinds]
        sentences += negatives[section]
    findings_text = " ".join(text for text, _ in sentences)
    if not with_impression:
        return findings_text, "", _merge([tags for _, tags in sentences])

    ordered = by_order(_IMPRESSION_ORDER)
    kinds = {f.kind: f for f in findings}
    impression: list[Sentence] = []
    devices = [f for f in ordered if f.kind == "device"]
    heart_failure = {"cardiomegaly", "edema", "effusion"} <= set(kinds) and all(
        kinds[k].certainty == "positive" for k in ("edema", "effusion")) and kinds["effusion"].side == "bilateral"
    if heart_failure and rng.random() < 0.5:
        edema, effusion = kinds["edema"], kinds["effusion"]
        heart = _cap(kinds["cardiomegaly"].severity or "moderate")
        impression.append((f"{heart} cardiomegaly with {edema.severity} pulmonary edema and {effusion.severity} "
                           "bilateral pleural effusions.",
                           {"Cardiomegaly": 1, "Edema": 1, "Pleural Effusion": 1}))
        ordered = [f for f in ordered if f.kind not in ("cardiomegaly", "edema", "effusion")]
    impression += [described[id(f)][1] for f in ordered if f.kind != "device"]
    if len(devices) >= 2 and rng.random() < 0.5:
        text = _pick(rng, ["Lines and tubes in standard position.", "Support devices in standard position."])
        impression.append((text, dict(_DEVICE_LABEL)))
    else:
        impression += [described[id(f)][1] for f in devices]
    if "pneumothorax" not in kinds and kinds.keys() & {"effusion", "fracture", "device"} and rng.random() < 0.3:
        impression.append(("No pneumothorax.", {"Pneumothorax": 0}))
    if len(impression) >= 2 and rng.random() < 0.3:
        impression_text = " ".join(f"{i}. {text}" for i, (text, _) in enumerate(impression, 1))
    else:
        impression_text = " ".join(text for text, _ in impression)
    return findings_text, impression_text, _merge([tags for _, tags in impression])


_DEVICE_PHRASE = {"et_tube": "endotracheal tube", "ng_tube": "nasogastric tube",
                  "central_line": "right internal jugular central line", "picc": "left PICC line",
                  "pacemaker": "left-sided pacemaker"}
_KIND_OBSERVATION = {"cardiomegaly": "Cardiomegaly", "widened_mediastinum": "Enlarged Cardiomediastinum",
                     "effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax", "consolidation": "Consolidation",
                     "pneumonia": "Pneumonia", "opacity": "Lung Opacity", "atelectasis": "Atelectasis",
                     "edema": "Edema", "lesion": "Lung Lesion", "fracture": "Fracture", "device": "Support Devices",
                     "pleural_thickening": "Pleural Other"}


def observation(f: Finding) -> str:
    """The CheXpert observation (a name of ``CHEXPERT_LABELS``) a finding's report sentence states."""
    return _KIND_OBSERVATION[f.kind]


def phrase(f: Finding) -> str:
    """A short phrase naming one finding as the reports word it ("left pleural effusion", "right upper lobe
    consolidation"): the text a grounding evaluation asks the model to find. Uses no randomness."""
    side, lobe = f.side or "", _LOBE.get((f.side or "", f.zone or ""), "")
    simple = {"cardiomegaly": "cardiomegaly", "widened_mediastinum": "widened mediastinum",
              "edema": "pulmonary edema", "pneumothorax": f"{side} pneumothorax",
              "consolidation": f"{lobe} consolidation", "pneumonia": f"{lobe} pneumonia",
              "opacity": f"{lobe} opacity", "pleural_thickening": f"{side} pleural thickening"}
    if f.kind in simple:
        return simple[f.kind]
    if f.kind == "effusion":
        return "bilateral pleural effusions" if side == "bilateral" else f"{side} pleural effusion"
    if f.kind == "atelectasis":
        return "bibasilar atelectasis" if side == "bilateral" else f"{side} basilar atelectasis"
    if f.kind == "lesion":
        return "multiple pulmonary nodules" if f.detail == "multiple" else f"{lobe} {f.detail or 'nodule'}"
    if f.kind == "fracture":
        return f"{side} {_ordinal(int(f.detail or 6))} rib fracture"
    if f.kind == "device":
        return f"{f.side or 'right'} chest tube" if f.detail == "chest_tube" else _DEVICE_PHRASE[f.detail or ""]
    raise ValueError(f"no phrase for finding kind {f.kind!r}")
