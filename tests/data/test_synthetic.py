"""Synthetic demo data: deterministic, cached, drawn as the report says (laterality included), labeler-consistent."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medxpert_utils.data.labels import CHEXPERT_LABELS, find_mentions, label_report
from medxpert_utils.data.reports import clean_report, report_text
from medxpert_utils.data.synthetic import dataset as synthetic
from medxpert_utils.data.synthetic import phantom
from medxpert_utils.data.synthetic import reports as phantom_reports
from medxpert_utils.data.synthetic.phantom import Anatomy, Finding, Nuisance, regions, render

SIZE = 64
KIND_LABEL = {
    "cardiomegaly": "Cardiomegaly", "widened_mediastinum": "Enlarged Cardiomediastinum", "effusion": "Pleural Effusion",
    "pneumothorax": "Pneumothorax", "consolidation": "Consolidation", "pneumonia": "Pneumonia",
    "opacity": "Lung Opacity",
    "atelectasis": "Atelectasis", "edema": "Edema", "lesion": "Lung Lesion", "fracture": "Fracture",
    "device": "Support Devices", "pleural_thickening": "Pleural Other",
}


def pixels(path: str) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L"
        return np.asarray(img).copy()


def draw(*findings: Finding) -> np.ndarray:
    """A noise-free, unrotated 64 px phantom of the default patient."""
    return render(findings, Anatomy(), Nuisance(), SIZE).astype(float)


@pytest.fixture(scope="module")
def cohort() -> list[synthetic.Study]:
    return synthetic.plan_cohort(600, seed=1)


@pytest.fixture(scope="module")
def normal() -> np.ndarray:
    return draw()


@pytest.fixture(scope="module")
def masks() -> dict[str, np.ndarray]:
    return regions(Anatomy(), SIZE)


# ------------------------------------------------------------------------------------- generate()


def test_generate_is_deterministic_and_seed_dependent(tmp_path):
    a = synthetic.generate(10, SIZE, seed=5, out_dir=tmp_path / "a", progress=False, workers=1)
    b = synthetic.generate(10, SIZE, seed=5, out_dir=tmp_path / "b", progress=False, workers=1)
    c = synthetic.generate(10, SIZE, seed=6, out_dir=tmp_path / "c", progress=False, workers=1)
    text_cols = [col for col in a.columns if col != "image_path"]
    pd.testing.assert_frame_equal(a[text_cols], b[text_cols])
    for pa, pb in zip(a["image_path"], b["image_path"]):
        assert np.array_equal(pixels(pa), pixels(pb))
    assert a["study_id"].tolist() != c["study_id"].tolist()
    assert a["findings"].tolist() != c["findings"].tolist()
    assert not np.array_equal(pixels(a["image_path"][0]), pixels(c["image_path"][0]))


def test_process_pool_draws_the_same_pixels(tmp_path):
    one = synthetic.generate(6, SIZE, seed=2, out_dir=tmp_path / "one", progress=False, workers=1)
    two = synthetic.generate(6, SIZE, seed=2, out_dir=tmp_path / "two", progress=False, workers=2)
    for pa, pb in zip(one["image_path"], two["image_path"]):
        assert np.array_equal(pixels(pa), pixels(pb))


def test_second_call_is_a_cache_hit_and_a_changed_image_is_redrawn(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    first = synthetic.generate(8, SIZE, seed=0, out_dir=out, progress=False, workers=1)
    stamps = {p: Path(p).stat().st_mtime_ns for p in first["image_path"]}

    def refuse(*args, **kwargs):
        raise AssertionError("a cached image was drawn again")

    monkeypatch.setattr(synthetic, "render_study", refuse)
    second = synthetic.generate(8, SIZE, seed=0, out_dir=out, progress=False, workers=1)
    pd.testing.assert_frame_equal(first, second)
    assert {p: Path(p).stat().st_mtime_ns for p in second["image_path"]} == stamps
    monkeypatch.undo()

    stale = first["image_path"][3]
    expected = pixels(stale)
    Image.new("L", (SIZE, SIZE)).save(stale)  # same name, no content key
    drawn = []
    original = synthetic.render_study
    monkeypatch.setattr(synthetic, "render_study", lambda *a, **k: drawn.append(a[0].study_id) or original(*a, **k))
    synthetic.generate(8, SIZE, seed=0, out_dir=out, progress=False, workers=1)
    assert drawn == [first["study_id"][3]]
    assert np.array_equal(pixels(stale), expected)
    assert not list(out.rglob("*.tmp"))


def test_columns_dtypes_files_and_dataset_card(tmp_path):
    frame = synthetic.generate(12, SIZE, seed=3, out_dir=tmp_path, images_per_study_max=3, progress=False, workers=1)
    truth = [f"truth_{label}" for label in CHEXPERT_LABELS]
    assert list(frame.columns) == ["study_id", "patient_id", "image_path", "view", "findings", "impression", *truth]
    assert frame["study_id"].nunique() == 12 and len(frame) > 12  # several images for some studies
    assert frame["study_id"].str.fullmatch(r"s5\d{6}").all()
    assert frame["patient_id"].str.fullmatch(r"p1\d{6}").all()
    assert (frame["view"] == "PA").all()
    assert frame.groupby("study_id")["patient_id"].nunique().max() == 1
    for col in truth:
        assert str(frame[col].dtype) == "Int8"
        assert set(frame[col].dropna().unique()) <= {1, 0, -1}
    for path in frame["image_path"]:
        assert Path(path).is_absolute() and Path(path).is_file()
        assert pixels(path).shape == (SIZE, SIZE)
    card = (tmp_path / "dataset_card.md").read_text()
    assert "NOT clinical data" in card and "patient's LEFT is on the image's RIGHT" in card
    assert f"{len(frame)} grayscale 8-bit PNG images of {SIZE} x {SIZE} px" in card


def test_smaller_cohort_is_a_prefix_of_a_larger_one():
    assert synthetic.plan_cohort(30, seed=4) == synthetic.plan_cohort(70, seed=4)[:30]


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="n_studies"):
        synthetic.generate(0, SIZE, 0, tmp_path, progress=False)
    with pytest.raises(ValueError, match="image_size"):
        synthetic.generate(5, 8, 0, tmp_path, progress=False)


# ------------------------------------------------------------------------------------- reports


def test_reports_look_like_an_archive(cohort):
    n = len(cohort)
    normal_share = sum(not s.findings for s in cohort) / n
    assert 0.33 <= normal_share <= 0.47
    no_impression = sum(s.impression_text == "" for s in cohort) / n
    assert 0.03 <= no_impression <= 0.14
    # normal studies share a handful of reports
    normal_reports = Counter(s.impression_text or s.findings_text for s in cohort if not s.findings)
    assert len(normal_reports) <= 2 * len(phantom_reports.NORMAL_TEMPLATES)
    assert normal_reports.most_common(1)[0][1] >= 0.1 * n
    text = " ".join(s.findings_text + " " + s.impression_text for s in cohort)
    for phrase in ("No pleural effusion or pneumothorax.", "cannot be excluded", "Possible",
                   "Small left pleural effusion",
                   "bilateral pleural effusions", "cardiomegaly", "pneumothorax"):
        assert phrase in text
    # realistic mix: support devices and effusions are common; heart failure findings co-occur
    positive = Counter(label for s in cohort for label, v in s.truth.items() if v == 1)
    assert positive["Support Devices"] >= 0.05 * n and positive["Pleural Effusion"] >= 0.06 * n
    both = sum(s.truth["Cardiomegaly"] == 1 and s.truth["Edema"] == 1 for s in cohort)
    assert both >= 0.02 * n


@pytest.mark.parametrize("finding", [
    Finding("cardiomegaly", severity="moderate"), Finding("widened_mediastinum"),
    Finding("effusion", side="left", severity="small"), Finding("effusion", side="bilateral", severity="large"),
    Finding("pneumothorax", side="right", severity="moderate"), Finding("consolidation", side="right", zone="lower"),
    Finding("pneumonia", side="left", zone="upper"), Finding("opacity", side="left", zone="middle"),
    Finding("atelectasis", side="bilateral"), Finding("edema", severity="mild"),
    Finding("lesion", side="right", zone="upper", detail="mass", size_cm=4.0),
    Finding("lesion", side="left", zone="lower", detail="nodule", size_cm=1.5),
    Finding("lesion", side="bilateral", detail="multiple", size_cm=1.5), Finding("fracture", side="left", detail="6"),
    Finding("device", detail="pacemaker"), Finding("device", detail="et_tube"),
    Finding("pleural_thickening", side="right"),
], ids=lambda f: f"{f.kind}-{f.side or f.severity or f.detail}")
def test_every_finding_has_at_least_three_phrasings(finding):
    phrasings = {phantom_reports.describe(finding, np.random.default_rng(i))[0][0] for i in range(60)}
    assert len(phrasings) >= 3, phrasings


def test_report_states_exactly_what_is_drawn(cohort):
    for study in cohort:
        drawn = {KIND_LABEL[f.kind] for f in study.findings}
        stated = {label for label, v in study.truth.items() if v in (1, -1) and label != "No Finding"}
        extra = {"Lung Opacity"} if any(f.kind == "pneumonia" for f in study.findings) else set()
        assert drawn <= stated <= drawn | extra, (study.study_id, study.findings, study.truth)
        assert study.truth["No Finding"] == (0 if stated - {"Support Devices"} else 1)
        for f in study.findings:
            label = KIND_LABEL[f.kind]
            if f.certainty == "uncertain" and label != "Support Devices":
                assert study.truth[label] == -1
            else:
                assert study.truth[label] == 1
        # the findings section states every drawn finding too
        in_findings = {label for label, v in label_report(study.findings_text).items() if v in (1, -1)}
        assert drawn <= in_findings


def test_laterality_of_text_matches_the_finding(cohort):
    checked = 0
    for study in cohort:
        for f in study.findings:
            if f.kind in ("effusion", "pneumothorax", "fracture") and f.side in ("left", "right"):
                label = KIND_LABEL[f.kind]
                for text in (study.findings_text, study.impression_text):
                    sides = {m.laterality for m in find_mentions(text) if m.label == label and m.value != 0}
                    assert sides <= {f.side}, (text, f)
                checked += 1
    assert checked >= 20


def test_labeler_agrees_with_the_generator_truth(cohort):
    """The rule labeler reads the report (impression, else findings) as the generator meant it."""
    exact, per_label = 0, Counter()
    for study in cohort:
        text = report_text(clean_report(study.findings_text), clean_report(study.impression_text))
        labels = label_report(text)
        exact += labels == study.truth
        per_label.update(label for label in CHEXPERT_LABELS if labels[label] == study.truth[label])
    n = len(cohort)
    print(f"labeler agreement with generator truth: {exact / n:.3f} of reports exactly; "
          f"worst label {min(per_label.values()) / n:.3f}")
    assert exact / n >= 0.95
    assert min(per_label[label] for label in CHEXPERT_LABELS) / n >= 0.97


def test_truth_agreement_table():
    frame = pd.DataFrame({f"truth_{label}": pd.array([1, pd.NA], dtype="Int8") for label in CHEXPERT_LABELS})
    for label in CHEXPERT_LABELS:
        frame[label] = pd.array([1, pd.NA], dtype="Int8")
    frame.loc[1, "Edema"] = 0
    table = synthetic.truth_agreement(frame)
    assert table.loc["Cardiomegaly", "agreement"] == 1.0
    assert table.loc["Edema", "agreement"] == 0.5
    assert table.loc["all 14", "agreement"] == 0.5


# ------------------------------------------------------------------------------------- pictures


def region_change(img: np.ndarray, normal: np.ndarray, mask: np.ndarray) -> float:
    return float((img - normal)[mask].mean())


def test_heart_is_on_the_image_right_and_cardiomegaly_raises_the_ratio(masks):
    def ratio(rs: dict[str, np.ndarray]) -> float:
        heart_cols = np.flatnonzero(rs["heart"].any(axis=0))
        lung_cols = np.flatnonzero((rs["lung_left"] | rs["lung_right"]).any(axis=0))
        return (np.ptp(heart_cols) + 1) / (np.ptp(lung_cols) + 1)

    heart_cols = np.flatnonzero(masks["heart"].any(axis=0))
    assert heart_cols.mean() > SIZE / 2  # bulges to the image right (the patient's left)
    assert np.flatnonzero(masks["lung_left"].any(axis=0)).mean() > SIZE / 2  # left lung on the image right
    normal_ratio = ratio(masks)
    big_ratio = ratio(regions(Anatomy(), SIZE, [Finding("cardiomegaly", severity="moderate")]))
    assert 0.36 <= normal_ratio <= 0.48 and big_ratio > 0.52


@pytest.mark.parametrize("finding, region, other, sign", [
    (Finding("effusion", side="left", severity="moderate"), "lower_left", "lower_right", 1),
    (Finding("effusion", side="right", severity="small"), "lower_right", "lower_left", 1),
    (Finding("consolidation", side="right", zone="lower"), "lower_right", "lower_left", 1),
    (Finding("pneumonia", side="left", zone="upper"), "upper_left", "upper_right", 1),
    (Finding("opacity", side="right", zone="middle"), "lung_right", "lung_left", 1),
    (Finding("atelectasis", side="left"), "lower_left", "lower_right", 1),
    (Finding("lesion", side="right", zone="upper", detail="mass", size_cm=5.0), "upper_right", "upper_left", 1),
    (Finding("pleural_thickening", side="left"), "lung_left", "lung_right", 1),
    (Finding("pneumothorax", side="right", severity="large"), "lung_right", "lung_left", -1),
    (Finding("cardiomegaly", severity="severe"), "lower_left", "upper_right", 1),
], ids=lambda v: v.kind + "-" + str(v.side or v.severity) if isinstance(v, Finding) else None)
def test_finding_is_drawn_where_the_report_says(finding, region, other, sign, normal, masks):
    img = draw(finding)
    change = region_change(img, normal, masks[region])
    assert sign * change > 4, change
    assert abs(region_change(img, normal, masks[other])) < 0.25 * abs(change)


def test_pneumothorax_removes_lung_markings_lateral_to_the_pleural_line():
    """Two patients differing only in their vessel pattern look the same where the lung has collapsed away."""
    a, b = Anatomy(vessel_seed=1), Anatomy(vessel_seed=2)
    t = phantom._build_thorax(a, Nuisance(), SIZE, [])
    rim = (t.d_lat[-1] > -0.17) & (t.d_lat[-1] < -0.02) & (t.lung[-1] > 0.9)  # lateral rim of the right lung
    inner = (t.d_lat[-1] < -0.3) & (t.lung[-1] > 0.9)
    ptx = Finding("pneumothorax", side="right", severity="large")

    def vessel_difference(findings, where):
        one = render(findings, a, Nuisance(), SIZE).astype(float)
        two = render(findings, b, Nuisance(), SIZE).astype(float)
        return np.abs(one - two)[where].mean()

    assert vessel_difference([], rim) > 2  # markings reach the periphery normally
    assert vessel_difference([ptx], rim) < 0.1 * vessel_difference([], rim)
    assert vessel_difference([ptx], inner) > 2  # the collapsed lung keeps its markings
    darker = render([ptx], a, Nuisance(), SIZE).astype(float)[rim].mean()
    assert darker < render([], a, Nuisance(), SIZE).astype(float)[rim].mean()


def test_edema_and_widened_mediastinum_are_bilateral(normal, masks):
    edema = draw(Finding("edema", severity="moderate"))
    left, right = region_change(edema, normal, masks["lung_left"]), region_change(edema, normal, masks["lung_right"])
    assert left > 2 and right > 2
    wide = draw(Finding("widened_mediastinum"))
    upper = masks["upper_left"] | masks["upper_right"]
    assert region_change(wide, normal, upper) > 2
    assert abs(region_change(wide, normal, masks["lower_left"] | masks["lower_right"])) < 1


@pytest.mark.parametrize("finding, image_side", [
    (Finding("device", detail="pacemaker"), "right"), (Finding("device", detail="picc"), "right"),
    (Finding("device", detail="central_line"), "left"), (Finding("device", side="left", detail="chest_tube"), "right"),
    (Finding("fracture", side="left", detail="6"), "right"), (Finding("fracture", side="right", detail="5"), "left"),
    (Finding("lesion", side="left", zone="lower", detail="nodule", size_cm=2.0), "right"),
], ids=lambda v: f"{v.kind}-{v.detail}-{v.side}" if isinstance(v, Finding) else v)
def test_laterality_of_drawing(finding, image_side, normal):
    change = np.abs(draw(finding) - normal)
    half = SIZE // 2
    right, left = change[:, half:].sum(), change[:, :half].sum()
    assert right > 0 or left > 0
    assert (right > 3 * left) if image_side == "right" else (left > 3 * right)


def test_every_device_is_drawn(normal):
    for device in phantom.DEVICES:
        assert np.abs(draw(Finding("device", side="right", detail=device)) - normal).max() > 25, device


def test_uncertain_findings_are_drawn_faintly(normal, masks):
    positive = region_change(draw(Finding("effusion", side="left", severity="small")), normal, masks["lower_left"])
    uncertain = region_change(draw(Finding("effusion", side="left", severity="small", certainty="uncertain")),
                              normal, masks["lower_left"])
    assert 0 < uncertain < positive


def test_patient_anatomy_persists_across_studies_and_images_vary():
    studies = synthetic.plan_cohort(40, seed=9, images_per_study_max=2)
    by_patient: dict[str, list[synthetic.Study]] = {}
    for study in studies:
        by_patient.setdefault(study.patient_id, []).append(study)
    repeat = [group for group in by_patient.values() if len(group) > 1]
    assert repeat
    for group in repeat:
        assert all(s.anatomy == group[0].anatomy for s in group)
    assert len({s.anatomy for s in studies}) == len(by_patient)
    assert len({n for s in studies for n in s.nuisances}) == sum(len(s.nuisances) for s in studies)


def test_render_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="unknown finding kind"):
        render([Finding("tumour")], size=32)
    with pytest.raises(ValueError, match="unknown device"):
        render([Finding("device", detail="stent")], size=32)
    assert re.fullmatch(r"[0-9a-f]{20}", synthetic.content_key(synthetic.plan_cohort(1, 0)[0], 0, 32))


@pytest.mark.slow
def test_data_figures_are_drawn_and_saved(tmp_path):
    from medxpert_utils.data.labels import label_frame
    from medxpert_utils.viz import plots

    frame = synthetic.generate(9, 32, seed=1, out_dir=tmp_path / "demo", progress=False, workers=1)
    frame["report"] = [report_text(f, i) for f, i in zip(frame["findings"], frame["impression"])]
    frame["split"] = ["train"] * 5 + ["val"] * 2 + ["test"] * 2
    frame[list(CHEXPERT_LABELS)] = label_frame(frame["report"])
    Path(frame.loc[0, "image_path"]).write_bytes(b"not a png")  # shown as a message, not a crash
    for name, draw_figure in (("label_prevalence", plots.label_prevalence), ("report_lengths", plots.report_lengths)):
        draw_figure(frame, path=tmp_path / f"{name}.png")
    plots.sample_grid(frame, n=9, seed=0, path=tmp_path / "sample_grid.png")
    for name in ("label_prevalence", "report_lengths", "sample_grid"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------- finding regions

REGION_CASES = [
    Finding("effusion", side="left", severity="moderate"), Finding("effusion", side="right", severity="small"),
    Finding("pneumothorax", side="right", severity="large"), Finding("pneumothorax", side="left", severity="small"),
    Finding("consolidation", side="right", zone="lower", variant=3),
    Finding("opacity", side="left", zone="upper", variant=4),
    Finding("lesion", side="right", zone="upper", detail="mass", size_cm=5.0, variant=5),
    Finding("lesion", side="left", zone="lower", detail="nodule", size_cm=2.0, variant=6),
    Finding("fracture", side="left", detail="6"), Finding("fracture", side="right", detail="5"),
    Finding("atelectasis", side="left", variant=7), Finding("pleural_thickening", side="right", variant=8),
    Finding("cardiomegaly", severity="severe"), Finding("widened_mediastinum"),
    *(Finding("device", side="left", detail=d) for d in phantom.DEVICES),
]


def _image_side(box: list[int], size: int) -> str:
    return "right" if (box[0] + box[2]) / 2 > size / 2 else "left"


@pytest.mark.parametrize("finding", REGION_CASES, ids=lambda f: f"{f.kind}-{f.detail or f.side or f.severity}")
def test_region_box_holds_what_the_finding_changed(finding):
    """Rendered with and without the finding (rotated, shifted patient): the most changed pixels lie in its box."""
    anatomy = Anatomy(vessel_seed=11)
    nuisance = Nuisance(rotation_deg=3.0, shift_x=0.03, shift_y=-0.02, scale=1.02)
    size = 96
    change = np.abs(render([finding], anatomy, nuisance, size).astype(float) - render([], anatomy, nuisance, size))
    records = phantom.finding_regions([finding], anatomy, nuisance, size)
    assert records and all(r["box"] is not None and r["area"] > 0 for r in records)
    inside = np.zeros(change.shape, dtype=bool)
    for r in records:
        x0, y0, x1, y1 = r["box"]
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
        inside[y0:y1, x0:x1] = True
        if r["side"] in ("left", "right") and finding.kind != "device":  # PA: the patient's left is the image right
            assert _image_side(r["box"], size) == ("right" if r["side"] == "left" else "left")
    strong = change >= 0.5 * change.max()
    assert strong.any() and inside[strong].mean() > 0.9
    assert inside.mean() < 0.6  # a region, not the whole image


def test_bilateral_findings_have_one_region_per_side():
    records = phantom.finding_regions([Finding("effusion", side="bilateral", severity="moderate"),
                                       Finding("edema", severity="moderate")], Anatomy(), Nuisance(), 64)
    assert [(r["finding"], r["side"]) for r in records] == [(0, "right"), (0, "left"), (1, "right"), (1, "left")]
    assert _image_side(records[0]["box"], 64) == "left" and _image_side(records[1]["box"], 64) == "right"


def test_finding_regions_leave_the_drawing_unchanged():
    """Locating findings reads the same seeds as drawing them and draws nothing: pixels are the same after it."""
    study = next(s for s in synthetic.plan_cohort(40, seed=2) if len(s.findings) >= 2)
    before = synthetic.render_study(study, 0, 64)
    synthetic.study_regions(study, 0, 64)
    assert np.array_equal(before, synthetic.render_study(study, 0, 64))


def test_generate_writes_regions_and_reuses_them(tmp_path, monkeypatch):
    frame = synthetic.generate(40, 64, 0, tmp_path, progress=False, workers=1)
    regions_frame = synthetic.read_regions(tmp_path)
    assert set(regions_frame["observation"]) <= set(CHEXPERT_LABELS)
    assert set(regions_frame["study_id"]) <= set(frame["study_id"])
    for _, row in regions_frame.iterrows():  # every located finding is positive or uncertain in its report's truth
        truth = frame.loc[frame["study_id"] == row["study_id"], f"truth_{row['observation']}"].iloc[0]
        report = " ".join(frame.loc[frame["study_id"] == row["study_id"], ["findings", "impression"]].iloc[0]).lower()
        assert truth in (1, -1) or row["kind"] in ("device", "pneumonia"), row.to_dict()
        side_word = row["phrase"].split()[0]
        if side_word in ("left", "right"):
            assert side_word in report
    drawn = ["truth_Pleural Effusion", "truth_Pneumothorax", "truth_Lung Lesion", "truth_Fracture"]
    with_findings = frame.loc[(frame[drawn] == 1).any(axis=1).to_numpy(dtype=bool)]
    assert len(with_findings)
    assert set(with_findings["study_id"]) <= set(regions_frame["study_id"])
    assert "regions.jsonl" in (tmp_path / "dataset_card.md").read_text()
    before = (tmp_path / "regions.jsonl").read_bytes()
    monkeypatch.setattr(synthetic, "study_regions", lambda *a: pytest.fail("regions recomputed"))
    synthetic.generate(40, 64, 0, tmp_path, progress=False, workers=1)
    assert (tmp_path / "regions.jsonl").read_bytes() == before
