"""The ``demo`` data source: a synthetic cohort of phantom chest radiographs with radiology-style reports.

NOT CLINICAL DATA. Nothing here comes from a patient; it exists so the whole pipeline runs offline.

:func:`generate` plans a cohort from a seed (patients with 1-4 studies each, the patient's anatomy and
chronic findings kept across their studies), writes each study's report with
:mod:`medxpert_utils.data.synthetic.reports` and draws its images with :mod:`medxpert_utils.data.synthetic.phantom`,
whose visible signs follow the report: every finding the report states (positive, or uncertain and
then drawn faintly) is drawn, and nothing else. Laterality follows the PA convention: the patient's
left is on the image's right. About 40 % of studies are normal and share a few report templates;
about 8 % have no impression.

``truth_<Label>`` columns hold what the report text states by construction (1 / 0 / -1 / <NA>), for the
text the labeler reads: the impression, or the findings where the impression is empty.

Everything is a pure function of the seed: a study's content depends only on (seed, patient number,
study number), so a smaller cohort is a prefix of a larger one and cached images are reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, PngImagePlugin

from medxpert_utils.core import io, stages
from medxpert_utils.core.progress import tqdm
from medxpert_utils.data.labels import CHEXPERT_LABELS
from medxpert_utils.data.synthetic import phantom
from medxpert_utils.data.synthetic import reports as phantom_reports
from medxpert_utils.data.synthetic.phantom import Anatomy, Finding, Nuisance, finding_regions, render
from medxpert_utils.data.synthetic.reports import compose_report, observation, phrase


def _code_fingerprint() -> str:
    """Hash of the generator's own source files, so a cached dataset never outlives a code change."""
    digest = hashlib.sha256()
    for module_file in (__file__, phantom.__file__, phantom_reports.__file__):
        digest.update(Path(module_file).read_bytes().replace(b"\r\n", b"\n"))
    return digest.hexdigest()[:8]


# Keys the cache (data/synthetic/<...>_g<version>/ and each PNG's content key): the major version, then
# a fingerprint of the code, so the same seed with changed pictures or reports never reuses old files.
GENERATOR_VERSION = f"1.{_code_fingerprint()}"
PNG_KEY = "medxpert-content-key"
REGIONS_FILE = "regions.jsonl"  # beside dataset_card.md: where each image shows each finding (see study_regions)
P_NORMAL = 0.5  # of studies of patients without a chronic finding
P_NO_IMPRESSION = 0.08
# Share of the abnormal studies (of patients without a chronic finding) that tell each clinical story.
SCENARIOS = {"heart_failure": 0.18, "infection": 0.18, "atelectasis": 0.12, "effusion": 0.1, "icu": 0.1,
             "opacity": 0.08, "pneumothorax": 0.06, "lesion": 0.06, "fracture": 0.04, "mediastinum": 0.04,
             "pleural": 0.04}
_ID_MODULUS = 999_983  # prime: id = offset + index * stride (mod p) never repeats within p indices


def truth_columns() -> list[str]:
    """Names of the generator's truth columns, in manifest label order."""
    return [f"truth_{label}" for label in CHEXPERT_LABELS]


# ----------------------------------------------------------------------------------------------
# cohort


@dataclass(frozen=True)
class Study:
    """Everything about one synthetic study: who, what is in it, the report and each image's acquisition."""

    patient_id: str
    study_id: str
    anatomy: Anatomy
    findings: tuple[Finding, ...]
    nuisances: tuple[Nuisance, ...]
    findings_text: str
    impression_text: str
    truth: dict[str, int | None]


def _variant(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _side(rng: np.random.Generator, bilateral: float = 0.0) -> str:
    if rng.random() < bilateral:
        return "bilateral"
    return "left" if rng.random() < 0.5 else "right"


def _zone_finding(kind: str, rng: np.random.Generator, **kw: Any) -> Finding:
    side = "right" if rng.random() < 0.55 else "left"
    zone = str(rng.choice(["lower", "middle", "upper"], p=[0.55, 0.2, 0.25]))
    return Finding(kind, side=side, zone=zone, variant=_variant(rng), **kw)


def _lesion(rng: np.random.Generator) -> Finding:
    detail = str(rng.choice(["nodule", "mass", "multiple"], p=[0.45, 0.4, 0.15]))
    size = {"nodule": rng.uniform(1.2, 2.5), "mass": rng.uniform(3.5, 6.0), "multiple": rng.uniform(1.2, 1.8)}[detail]
    if detail == "multiple":
        return Finding("lesion", side="bilateral", detail=detail, size_cm=round(float(size), 1), variant=_variant(rng))
    return _zone_finding("lesion", rng, detail=detail, size_cm=round(float(size), 1))


def _chronic(rng: np.random.Generator) -> tuple[Finding, ...]:
    """Findings a patient keeps in every study (each independently, ~20 % of patients have one)."""
    out = []
    if rng.random() < 0.1:
        severity = str(rng.choice(["mild", "moderate", "severe"], p=[0.45, 0.4, 0.15]))
        out.append(Finding("cardiomegaly", severity=severity))
    if rng.random() < 0.05:
        out.append(Finding("device", detail="pacemaker"))
    if rng.random() < 0.04:
        out.append(_lesion(rng))
    if rng.random() < 0.03:
        out.append(Finding("pleural_thickening", side=_side(rng), variant=_variant(rng)))
    return tuple(out)


def sample_findings(rng: np.random.Generator, chronic: Sequence[Finding] = ()) -> tuple[Finding, ...]:
    """The findings of one study: none (normal), or a clinical scenario plus the patient's chronic findings."""
    out: list[Finding] = list(chronic)
    if not chronic and rng.random() < P_NORMAL:
        return ()
    if chronic and rng.random() < 0.5:
        return tuple(out)
    sev3 = lambda p: str(rng.choice(["mild", "moderate", "severe"], p=p))  # noqa: E731
    size3 = lambda p: str(rng.choice(["small", "moderate", "large"], p=p))  # noqa: E731
    unsure = lambda p: "uncertain" if rng.random() < p else "positive"  # noqa: E731
    scenario = str(rng.choice(list(SCENARIOS), p=list(SCENARIOS.values())))

    def effusion(side: str | None = None, p_unsure: float = 0.1, sizes=(0.6, 0.3, 0.1)) -> Finding:
        certainty = unsure(p_unsure) if side != "bilateral" else "positive"
        side = side or _side(rng, bilateral=0.3)
        if certainty == "uncertain":
            side = "right" if side == "bilateral" else side
            return Finding("effusion", side=side, severity="small", certainty=certainty)
        return Finding("effusion", side=side, severity=size3(sizes))

    if scenario == "heart_failure":
        if rng.random() < 0.85:
            out.append(Finding("cardiomegaly", severity=sev3([0.4, 0.4, 0.2])))
        if rng.random() < 0.75:
            certainty = unsure(0.12)
            out.append(Finding("edema", severity="mild" if certainty == "uncertain" else sev3([0.45, 0.4, 0.15]),
                               certainty=certainty))
        if rng.random() < 0.6 or len(out) == len(chronic):
            out.append(effusion("bilateral" if rng.random() < 0.6 else None, sizes=(0.6, 0.35, 0.05)))
    elif scenario == "infection":
        kind = str(rng.choice(["consolidation", "pneumonia", "opacity"], p=[0.35, 0.45, 0.2]))
        certainty = unsure(0.2) if kind in ("pneumonia", "consolidation") else "positive"
        infection = _zone_finding(kind, rng, certainty=certainty)
        out.append(infection)
        if rng.random() < 0.2 and certainty == "positive":
            out.append(Finding("effusion", side=infection.side, severity="small"))
    elif scenario == "atelectasis":
        atel = Finding("atelectasis", side=_side(rng, bilateral=0.5), severity="mild" if rng.random() < 0.5 else None,
                       variant=_variant(rng))
        out.append(atel)
        if rng.random() < 0.3:
            out.append(effusion(atel.side, p_unsure=0.0, sizes=(0.8, 0.2, 0.0)))
    elif scenario == "effusion":
        out.append(effusion(p_unsure=0.2, sizes=(0.5, 0.35, 0.15)))
    elif scenario == "icu":
        if rng.random() < 0.8:
            out.append(Finding("device", detail="et_tube"))
        if rng.random() < (0.8 if out and out[-1].detail == "et_tube" else 0.4):
            out.append(Finding("device", detail="ng_tube"))
        if rng.random() < 0.6 or len(out) == len(chronic):
            out.append(Finding("device", detail="central_line" if rng.random() < 0.7 else "picc"))
        extra = str(rng.choice(["none", "edema", "atelectasis", "effusion", "opacity"], p=[0.4, 0.15, 0.2, 0.15, 0.1]))
        if extra == "edema":
            out.append(Finding("edema", severity=sev3([0.6, 0.3, 0.1])))
        elif extra == "atelectasis":
            out.append(Finding("atelectasis", side=_side(rng, bilateral=0.6), severity="mild", variant=_variant(rng)))
        elif extra == "effusion":
            out.append(effusion(p_unsure=0.0))
        elif extra == "opacity":
            out.append(_zone_finding("opacity", rng))
    elif scenario == "opacity":
        out.append(_zone_finding("opacity", rng))
    elif scenario == "pneumothorax":
        side = _side(rng)
        certainty = unsure(0.15)
        size = "small" if certainty == "uncertain" else size3([0.5, 0.3, 0.2])
        out.append(Finding("pneumothorax", side=side, severity=size, certainty=certainty))
        if certainty == "positive" and rng.random() < 0.35:
            out.append(Finding("device", side=side, detail="chest_tube"))
        if rng.random() < 0.2:
            out.append(Finding("fracture", side=side, detail=str(int(rng.integers(4, 9)))))
    elif scenario == "lesion":
        out.append(_lesion(rng))
    elif scenario == "fracture":
        out.append(Finding("fracture", side=_side(rng), detail=str(int(rng.integers(4, 9)))))
    elif scenario == "mediastinum":
        out.append(Finding("widened_mediastinum"))
    elif scenario == "pleural":
        out.append(Finding("pleural_thickening", side=_side(rng), variant=_variant(rng)))
    if rng.random() < 0.05:
        out.append(Finding("device", detail="central_line" if rng.random() < 0.55 else "picc"))

    unique: dict[tuple[str, str | None], Finding] = {}
    for f in out:  # one finding per kind (devices: per type); the chronic one comes first and wins
        unique.setdefault((f.kind, f.detail if f.kind == "device" else None), f)
    return tuple(unique.values())


def _id_sequence(seed: int, salt: int, base: int) -> tuple[int, int, int]:
    rng = np.random.default_rng([seed, salt])
    return base, int(rng.integers(0, _ID_MODULUS)), int(rng.integers(1000, _ID_MODULUS - 1000))


def _make_id(prefix: str, spec: tuple[int, int, int], index: int) -> str:
    base, offset, stride = spec
    return f"{prefix}{base + (offset + index * stride) % _ID_MODULUS}"


def plan_cohort(n_studies: int, seed: int, images_per_study_max: int = 1) -> list[Study]:
    """The first ``n_studies`` studies of the cohort of ``seed`` (a pure function; no pixels drawn)."""
    if n_studies < 1 or n_studies >= _ID_MODULUS:
        raise ValueError(f"n_studies must be between 1 and {_ID_MODULUS - 1}, got {n_studies}")
    if images_per_study_max < 1:
        raise ValueError(f"images_per_study_max must be at least 1, got {images_per_study_max}")
    patient_ids, study_ids = _id_sequence(seed, 11, 1_000_000), _id_sequence(seed, 12, 5_000_000)
    studies: list[Study] = []
    patient = 0
    while len(studies) < n_studies:
        prng = np.random.default_rng([seed, 1, patient])
        n_for_patient = int(prng.choice([1, 2, 3, 4], p=[0.45, 0.3, 0.15, 0.1]))
        anatomy = Anatomy.sample(prng)
        chronic = _chronic(prng)
        for j in range(n_for_patient):
            if len(studies) == n_studies:
                break
            srng = np.random.default_rng([seed, 2, patient, j])
            findings = sample_findings(srng, chronic)
            with_impression = srng.random() >= P_NO_IMPRESSION
            ftext, itext, truth = compose_report(findings, srng, with_impression=with_impression)
            n_images = 1 if images_per_study_max == 1 else int(srng.integers(1, images_per_study_max + 1))
            nuisances = tuple(Nuisance.sample(np.random.default_rng([seed, 3, patient, j, k])) for k in range(n_images))
            studies.append(Study(_make_id("p", patient_ids, patient), _make_id("s", study_ids, len(studies)), anatomy,
                                 findings, nuisances, ftext, itext, truth))
        patient += 1
    return studies


# ----------------------------------------------------------------------------------------------
# images


def content_key(study: Study, image_index: int, image_size: int) -> str:
    """Hash of everything that decides an image's pixels (a cached PNG with this key is reused)."""
    payload = json.dumps([GENERATOR_VERSION, image_size, dataclasses.asdict(study.anatomy),
                          [dataclasses.asdict(f) for f in study.findings],
                          dataclasses.asdict(study.nuisances[image_index])], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def render_study(study: Study, image_index: int = 0, image_size: int = 128) -> np.ndarray:
    """The pixels of one image of ``study`` (uint8, ``image_size`` square)."""
    return render(study.findings, study.anatomy, study.nuisances[image_index], image_size)


def _cached_key(path: Path) -> str | None:
    try:
        with Image.open(path) as img:
            return img.text.get(PNG_KEY)  # type: ignore[attr-defined]
    except (OSError, ValueError, SyntaxError):
        return None


def study_regions(study: Study, image_index: int, image_size: int) -> list[dict[str, Any]]:
    """Where one image of ``study`` shows each of its findings: the records of :data:`REGIONS_FILE`.

    One record per finding and side (:func:`phantom.finding_regions`): ``study_id``, ``image`` (the
    file name), ``finding``, ``kind``, ``detail``, ``certainty``, ``observation`` (a CheXpert label),
    ``phrase`` (the finding as the reports word it), ``side`` (patient side), ``box`` (``[x0, y0, x1,
    y1]`` pixels of the saved image, x1/y1 exclusive, origin top left; None when not visible), ``area``
    (pixels) and ``image_size``.
    """
    found = finding_regions(study.findings, study.anatomy, study.nuisances[image_index], image_size)
    out = []
    for record in found:
        f = study.findings[record["finding"]]
        out.append({"study_id": study.study_id, "image": f"{study.study_id}_{image_index + 1}.png",
                    "finding": record["finding"], "kind": f.kind, "detail": f.detail, "certainty": f.certainty,
                    "observation": observation(f), "phrase": phrase(f), "side": record["side"],
                    "box": record["box"], "area": record["area"], "image_size": image_size})
    return out


def _render_and_write(tasks: list[tuple[str, str, Study, int, int, bool]]) -> list[tuple[str, list[dict]]]:
    """Draw the images flagged to draw; return every task's (content key, region records)."""
    located = []
    for path, key, study, index, size, draw in tasks:
        if draw:
            info = PngImagePlugin.PngInfo()
            info.add_text(PNG_KEY, key)
            with io.atomic_path(path, suffix=".png") as tmp:
                Image.fromarray(render_study(study, index, size)).save(tmp, format="PNG", pnginfo=info)  # "L"
        located.append((key, study_regions(study, index, size)))
    return located


def read_regions(out_dir: str | os.PathLike) -> pd.DataFrame:
    """The region records of a generated dataset folder (:data:`REGIONS_FILE`), one row per finding and side."""
    path = Path(out_dir) / REGIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found - regenerate the demo dataset: {stages.hint('00', force=True)}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    columns = ["study_id", "image", "finding", "kind", "detail", "certainty", "observation", "phrase", "side", "box",
               "area", "image_size", "key"]
    return pd.DataFrame(rows, columns=columns).drop(columns="key")


def _saved_regions(path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                out.setdefault(record["key"], []).append(record)
    return out


def _worker_count(n_tasks: int, workers: int | None) -> int:
    if workers is not None:
        return max(1, workers)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8, n_tasks // 100))  # a process pool only pays off for a few hundred images


def generate(n_studies: int, image_size: int, seed: int, out_dir: Path, images_per_study_max: int = 1,
             progress: bool = True, workers: int | None = None) -> pd.DataFrame:
    """Generate (or reuse) the synthetic dataset: PNGs and ``dataset_card.md`` in ``out_dir``, one row per image.

    Columns: study_id, patient_id, image_path (absolute), view ("PA"), findings, impression and
    ``truth_<Label>`` for the 14 CheXpert observations (nullable Int8: 1 / 0 / -1 / <NA>). Images already
    in ``out_dir`` with the same content key are kept, so a second call only checks them. ``workers``:
    processes that draw images (None: one per core when there are hundreds of images).
    """
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
    out_dir = Path(out_dir).expanduser().resolve()
    studies = plan_cohort(n_studies, seed, images_per_study_max)
    rows, todo, order = [], [], []
    saved = _saved_regions(out_dir / REGIONS_FILE)
    for study in studies:
        for k in range(len(study.nuisances)):
            path = out_dir / "images" / study.patient_id / f"{study.study_id}_{k + 1}.png"
            key = content_key(study, k, image_size)
            draw = not path.is_file() or _cached_key(path) != key
            if draw or (study.findings and key not in saved):
                todo.append((str(path), key, study, k, image_size, draw))
            order.append(key)
            rows.append({"study_id": study.study_id, "patient_id": study.patient_id, "image_path": str(path),
                         "view": "PA", "findings": study.findings_text, "impression": study.impression_text,
                         **{f"truth_{label}": study.truth[label] for label in CHEXPERT_LABELS}})
    n_draw = sum(task[-1] for task in todo)
    n_workers = _worker_count(len(todo), workers)
    with tqdm(total=len(todo), desc="drawing phantoms", unit="img", disable=not progress or not n_draw) as bar:
        chunks = [todo[i:i + 32] for i in range(0, len(todo), 32)]
        if n_workers <= 1:
            for chunk in chunks:
                located = _render_and_write(chunk)
                saved.update((key, [dict(r, key=key) for r in records]) for key, records in located)
                bar.update(len(located))
        else:
            # fork where there is one: the workers only run NumPy/Pillow, and spawn would re-import the
            # caller's __main__ (impossible for a script piped on stdin)
            method = "fork" if "fork" in get_all_start_methods() else "spawn"
            with ProcessPoolExecutor(n_workers, mp_context=get_context(method)) as pool:
                for done in as_completed([pool.submit(_render_and_write, chunk) for chunk in chunks]):
                    located = done.result()
                    saved.update((key, [dict(r, key=key) for r in records]) for key, records in located)
                    bar.update(len(located))
    if todo or not (out_dir / REGIONS_FILE).is_file():
        lines = [json.dumps(record, sort_keys=True) for key in dict.fromkeys(order) for record in saved.get(key, [])]
        io.write_text(out_dir / REGIONS_FILE, "".join(line + "\n" for line in lines))

    frame = pd.DataFrame(rows)
    for col in truth_columns():
        frame[col] = pd.array([pd.NA if v is None else v for v in frame[col]], dtype="Int8")
    for col in ("study_id", "patient_id", "image_path", "view", "findings", "impression"):
        frame[col] = frame[col].astype(str)
    io.write_text(out_dir / "dataset_card.md", dataset_card(frame, n_studies, image_size, seed, images_per_study_max))
    return frame


def truth_agreement(frame: pd.DataFrame) -> pd.DataFrame:
    """How often the labeler's columns (``<Label>``) equal the generator's truth (``truth_<Label>``).

    One row per observation (share of rows where both agree, <NA> matching <NA>, and the positive
    counts of each) and a last row "all 14" with the share of rows that agree on every observation.
    """
    missing = [c for c in [*CHEXPERT_LABELS, *truth_columns()] if c not in frame.columns]
    if missing:
        raise ValueError(f"truth_agreement needs label and truth columns; missing {missing[0]!r} (demo source only)")
    rows, every = [], np.ones(len(frame), dtype=bool)
    for label in CHEXPERT_LABELS:
        labeler = frame[label].astype("Int8").fillna(-9).to_numpy(dtype=int)
        truth = frame[f"truth_{label}"].astype("Int8").fillna(-9).to_numpy(dtype=int)
        same = labeler == truth
        every &= same
        rows.append({"observation": label, "agreement": float(same.mean()) if len(same) else float("nan"),
                     "truth positive": int((truth == 1).sum()), "labeler positive": int((labeler == 1).sum())})
    rows.append({"observation": "all 14", "agreement": float(every.mean()) if len(every) else float("nan"),
                 "truth positive": None, "labeler positive": None})
    out = pd.DataFrame(rows).set_index("observation")
    return out.astype({"truth positive": "Int64", "labeler positive": "Int64"})


def dataset_card(frame: pd.DataFrame, n_studies: int, image_size: int, seed: int, images_per_study_max: int) -> str:
    """The ``dataset_card.md`` text: what this dataset is (synthetic, not clinical) and how it was made."""
    studies = frame.drop_duplicates("study_id")
    rows = []
    for label in CHEXPERT_LABELS:
        values = studies[f"truth_{label}"]
        counts = [int((values == v).sum()) for v in (1, -1, 0)]
        rows.append(f"| {label} | {counts[0]} | {counts[1]} | {counts[2]} |")
    no_impression = int((studies["impression"].str.strip() == "").sum())
    return f"""# Synthetic phantom chest radiographs (MedXpert demo dataset)

> **Synthetic demo data - NOT clinical data.** No image or report here comes from a patient. The
> pictures are geometric phantoms and the reports are written from templates. Use them to run and
> test the MedXpert pipeline offline; never to train or evaluate anything meant for clinical use.

## How it was generated

- Generator: `medxpert_utils.data.synthetic.dataset` version {GENERATOR_VERSION} (images drawn by
  `medxpert_utils.data.synthetic.phantom`), seed {seed}.
- {len(studies)} studies of {frame['patient_id'].nunique()} synthetic patients (1-4 studies each).
- {len(frame)} grayscale 8-bit PNG images of {image_size} x {image_size} px, all PA views, at most
  {images_per_study_max} per study.
- Each patient has their own anatomy (thorax width, lung height, diaphragm level, heart size and
  position, vessel pattern) and may have chronic findings (cardiomegaly, pacemaker, lung lesion,
  pleural thickening) that persist across their studies. Each image varies in rotation, position,
  magnification, inspiration, exposure, contrast and noise.
- Laterality: PA convention, the patient's LEFT is on the image's RIGHT (the heart bulges to the
  image right; a "left pleural effusion" is drawn at the image's right base).
- What each finding looks like: cardiomegaly - cardiothoracic ratio 0.53-0.64 (normal 0.38-0.45);
  widened mediastinum - broad upper mediastinum; pleural effusion - dense base with a meniscus that
  climbs the lateral wall and a blunted costophrenic angle (small / moderate / large); pneumothorax -
  visceral pleural line with no lung markings lateral to it; consolidation / pneumonia / lung
  opacity - dense to patchy opacity in the named lobe; atelectasis - linear bands at a base; edema -
  bilateral perihilar haze with blurred vessels; lung lesion - round nodule(s) or a mass; fracture -
  a displaced posterior rib; support devices - endotracheal and nasogastric tubes, central venous
  and PICC lines, chest tubes as thin bright lines, a pacemaker as a bright box with two leads;
  pleural other - lumpy pleural thickening along a lateral wall. Uncertain findings ("possible",
  "cannot be excluded") are drawn faintly. Small nodules and rib fractures are subtle at 64 px.
- Reports: a FINDINGS and an IMPRESSION text per study; they state every finding drawn and no
  other; normal studies share a few fixed templates. {no_impression} of the studies have no
  impression (their report is the findings).
- `truth_<Label>` columns: what the report text (impression, else findings) states by construction
  (1 positive, 0 negative, -1 uncertain, empty unmentioned), to check the rule labeler against.
- `{REGIONS_FILE}`: where each image shows each of its findings, one JSON line per finding and side:
  `study_id`, `image` (file name), `observation` (the CheXpert label), `phrase` (the finding as the
  reports word it, e.g. "left pleural effusion"), `side` (the patient's side), `box` (`[x0, y0, x1, y1]`
  in pixels of the {image_size} px image, origin top left, x1/y1 exclusive), `area` (pixels), `kind`,
  `detail`, `certainty`, `finding` (index of the finding in the study) and `key` (the image's content
  key). A box bounds the pixels where the finding's own drawing layer reaches
  {phantom.REGION_THRESHOLD:.0%} of its maximum (the heart for cardiomegaly, the displaced rib for a
  fracture). Normal images have no lines.

## Truth counts per study

| Observation | positive | uncertain | negative |
|---|---|---|---|
{chr(10).join(rows)}
"""
