"""MIMIC-CXR sources: the Hugging Face mirror (``mimic_hf``) and PhysioNet MIMIC-CXR-JPG on disk."""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medxpert_utils.core import io
from medxpert_utils.core.config import Config
from medxpert_utils.core.errors import ImageLoadError, MissingModelError, UserError
from medxpert_utils.core.paths import PROJECT_ROOT, data_dir
from medxpert_utils.core.progress import tqdm
from medxpert_utils.data import manifest as mf
from medxpert_utils.data.assemble import LEAKAGE_NOTE, BuildStats, finish, resolve_data_root, sample_studies
from medxpert_utils.data.images import load_image

_HF_IMAGE = ("image", "img", "jpg", "png", "image_path")
_HF_FINDINGS = ("findings", "finding")
_HF_IMPRESSION = ("impression", "impressions")


def _pick_column(columns: list[str], options: tuple[str, ...]) -> str | None:
    lower = {c.lower().strip(): c for c in columns}
    return next((lower[o] for o in options if o in lower), None)


def _hf_local_path(name: str) -> Path | None:
    for candidate in (Path(name).expanduser(), PROJECT_ROOT / name):
        if candidate.exists():
            return candidate.resolve()
    return None


def load_hf_dataset(name: str, split: str, revision: str | None = None):
    """A ``datasets.Dataset`` from the hub (id) or a local folder (``save_to_disk`` or data files)."""
    import datasets

    local = _hf_local_path(name)
    try:
        saved = local is not None and any((local / f).is_file() for f in ("state.json", "dataset_dict.json"))
        if saved:
            loaded = datasets.load_from_disk(str(local))  # a save_to_disk folder, which load_dataset refuses
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise UserError(f"dataset '{name}' has no split '{split}' (has {', '.join(loaded)}) - "
                                    "set data.hf_split")
                loaded = loaded[split]
            return loaded
        return datasets.load_dataset(str(local) if local else name, split=split, revision=revision,
                                     token=os.environ.get("HF_TOKEN") or None)
    except UserError:
        raise
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise UserError(f"dataset '{name}' has no split '{split}' - set data.hf_split ({str(exc)[:120]})") from None
        raise
    except Exception as exc:
        if not _is_offline_error(exc):
            raise
        raise MissingModelError(
            f"cannot load dataset '{name}' (offline or not cached: {exc.__class__.__name__}): connect to the internet "
            "or set HF_TOKEN for gated datasets, or point data.hf_dataset at a local copy; use the demo profile to "
            "run offline"
        ) from None


def _is_offline_error(exc: BaseException) -> bool:
    import httpx
    from datasets.exceptions import DatasetsError

    return isinstance(exc, (OSError, DatasetsError, httpx.HTTPError)) or type(exc).__module__.startswith(
        ("huggingface_hub", "httpx", "requests"))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "__", text.strip("/")).strip("_") or "dataset"


def hf_image_dir(name: str, split: str, revision: str | None) -> Path:
    """Where the PNGs of an HF dataset are cached: ``data/hf/<slug>/<revision or main>/<split>/``."""
    local = _hf_local_path(name)
    if local is not None:
        slug = f"local-{_slug(local.name)}-{hashlib.sha256(str(local).encode()).hexdigest()[:8]}"
        return data_dir() / "hf" / slug / "local" / _slug(split)
    return data_dir() / "hf" / _slug(name) / _slug(revision or "main") / _slug(split)


def mimic_hf(cfg: Config, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """A MIMIC-CXR mirror on the Hugging Face hub (``image``, ``findings``, ``impression`` columns).

    The mirror has no patient ids, so every row is its own patient (``row<N>``) and the split is by
    row; stats' notes say so. Images are written once as PNG under ``data/hf/...`` and reused.
    """
    import datasets

    d = cfg.data
    ds = load_hf_dataset(d.hf_dataset, d.hf_split, d.hf_revision)
    columns = list(ds.column_names)
    image_col = _pick_column(columns, _HF_IMAGE)
    findings_col = _pick_column(columns, _HF_FINDINGS)
    impression_col = _pick_column(columns, _HF_IMPRESSION)
    if image_col is None or (findings_col is None and impression_col is None):
        raise UserError(f"dataset '{d.hf_dataset}' lacks an image column or findings/impression columns "
                        f"(has {', '.join(columns)}) - use a dataset with 'image', 'findings' and 'impression'")
    text = ds.select_columns([c for c in (findings_col, impression_col) if c]).to_pandas()
    frame = pd.DataFrame({
        "study_id": [f"row{i}" for i in range(len(ds))],
        "findings": text[findings_col] if findings_col else "",
        "impression": text[impression_col] if impression_col else "",
        "_row": np.arange(len(ds)),
    })
    frame["patient_id"] = frame["study_id"]
    frame["source"] = "mimic_hf"
    out_dir = hf_image_dir(d.hf_dataset, d.hf_split, d.hf_revision)
    if isinstance(ds.features.get(image_col), datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))  # raw bytes: a bad image fails per row
    base = _hf_local_path(d.hf_dataset)

    def materialise(rows: pd.DataFrame, stats: BuildStats) -> pd.DataFrame:
        targets = [out_dir / f"{r}.png" for r in rows["_row"]]
        todo = [i for i, t in enumerate(targets) if not t.is_file()]
        out_dir.mkdir(parents=True, exist_ok=True)

        def write(i: int, value: Any) -> str | None:
            name = f"row {int(rows['_row'].iloc[i])}"
            try:
                img = load_image(_hf_image_source(value, base), name=name)
            except ImageLoadError as exc:
                return str(exc)
            with io.atomic_path(targets[i], suffix=".png") as tmp:
                img.save(tmp, format="PNG")
            return None

        failed: set[int] = set()
        if todo:
            subset = ds.select(rows["_row"].iloc[todo].tolist()).select_columns([image_col])
            with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool, \
                    tqdm(total=len(todo), desc="writing PNGs", disable=not progress, mininterval=1.0) as bar:
                pending = []
                for i, record in zip(todo, subset):
                    pending.append((i, pool.submit(write, i, record[image_col])))
                    if len(pending) >= 256:
                        failed |= _collect(pending, stats, bar)
                failed |= _collect(pending, stats, bar)
        keep = [i for i in range(len(rows)) if i not in failed]
        rows = rows.iloc[keep].copy()
        rows["image_path"] = [str(targets[i]) for i in keep]
        return rows.drop(columns="_row").reset_index(drop=True)

    stats = BuildStats("mimic_hf", notes=[LEAKAGE_NOTE.format(what="Hugging Face mirror")])
    return finish(frame, cfg, stats, progress, materialise=materialise)


def _collect(pending: list, stats: BuildStats, bar) -> set[int]:
    failed = set()
    for i, future in pending:
        error = future.result()
        if error:
            failed.add(i)
            stats.skip("unreadable image in the dataset", messages=[error])
        bar.update(1)
    pending.clear()
    return failed


def _hf_image_source(value: Any, base: Path | None) -> Any:
    """Bytes or a path from whatever an HF image cell holds (raw dict, PIL image, bytes or path)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if value is None:
        return b""
    if hasattr(value, "save"):  # a decoded PIL image
        import io as _io

        buffer = _io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue()
    if isinstance(value, str) and base is not None and not os.path.isabs(value):
        return str((base if base.is_dir() else base.parent) / value)
    return value


# --------------------------------------------------------------------------- mimic_cxr_jpg

MIMIC_PREFIX = "mimic-cxr-2.0.0"
FRONTAL_VIEWS = ("PA", "AP")


def _mimic_table(root: Path, kind: str) -> pd.DataFrame:
    for suffix in (".csv.gz", ".csv"):
        path = root / f"{MIMIC_PREFIX}-{kind}{suffix}"
        if path.is_file():
            return pd.read_csv(path, dtype={"dicom_id": str})
    raise UserError(f"MIMIC-CXR-JPG: {root / f'{MIMIC_PREFIX}-{kind}.csv.gz'} not found (nor .csv) - set data.root "
                    "to the folder holding files/ and the mimic-cxr-2.0.0-*.csv.gz tables")


def mimic_cxr_jpg(cfg: Config, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """PhysioNet MIMIC-CXR-JPG 2.x on local disk with its official CheXpert labels.

    Images: ``files/p10/p10000032/s50414267/<dicom_id>.jpg``; reports from mimic-cxr-reports
    (``<reports_root>/files/p10/p10000032/s50414267.txt``, FINDINGS:/IMPRESSION: sections). Frontal
    (PA/AP) views only by default; the official split when ``data.official_split`` ("validate"
    becomes "val"), else the seeded patient split. Ids: studies ``s<id>``, patients ``p<id>``.
    """
    from medxpert_utils.data.reports import extract_sections

    d = cfg.data
    root = resolve_data_root(d.root)
    if root is None or not root.is_dir():
        raise UserError(f"MIMIC-CXR-JPG folder not found: {root} - set data.root to the folder holding files/ "
                        "and the mimic-cxr-2.0.0-*.csv.gz tables (PhysioNet, credentialed access)")
    reports_root = resolve_data_root(d.reports_root, default=root)
    if not (reports_root / "files").is_dir():
        raise UserError(f"MIMIC-CXR reports not found: {reports_root / 'files'} - set data.reports_root to the "
                        "folder of mimic-cxr-reports (files/p10/p10000032/s50414267.txt)")
    stats = BuildStats("mimic_cxr_jpg")
    meta = _mimic_table(root, "metadata")
    labels = _mimic_table(root, "chexpert")
    split_table = _mimic_table(root, "split") if d.official_split else None
    for table, name in ((meta, "metadata"), (labels, "chexpert")):
        missing = {"subject_id", "study_id"} - set(table.columns)
        if missing:
            raise UserError(f"MIMIC-CXR-JPG {name} table lacks column(s) {sorted(missing)} - is it the 2.x file?")

    frame = meta.copy()
    if d.frontal_only:
        views = frame.get("ViewPosition", pd.Series("", index=frame.index)).fillna("").astype(str).str.upper()
        n_before = len(frame)
        frame = frame.loc[views.isin(FRONTAL_VIEWS)]
        stats.notes.append(f"frontal views only (PA/AP): kept {len(frame)} of {n_before} images")
    frame = pd.DataFrame({  # only what the manifest needs: no dates or other metadata carried along
        "dicom_id": frame["dicom_id"].astype(str),
        "subject": frame["subject_id"].astype("int64").astype(str),
        "study_id": "s" + frame["study_id"].astype("int64").astype(str),
        "view": frame.get("ViewPosition", pd.Series("", index=frame.index)).fillna("").astype(str),
    })
    sampled = sample_studies(frame, cfg, stats)
    subj, study_num = sampled["subject"], sampled["study_id"].str[1:]
    sampled = sampled.assign(
        patient_id="p" + subj,
        image_path=[str(root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{t}" / f"{dicom}.jpg")
                    for s, t, dicom in zip(subj, study_num, sampled["dicom_id"])],
    )
    findings, impressions, missing_reports = {}, {}, []
    for s, t in sorted(set(zip(subj, study_num))):
        path = reports_root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{t}.txt"
        try:
            raw = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            missing_reports.append(f"s{t}")
            continue
        findings[f"s{t}"], impressions[f"s{t}"] = extract_sections(raw)
    has_report = sampled["study_id"].isin(findings)
    stats.skip("report file missing", names=sorted(set(missing_reports)),
               count=int((~has_report).sum()))
    sampled = sampled.loc[has_report].copy()
    sampled["findings"] = sampled["study_id"].map(findings)
    sampled["impression"] = sampled["study_id"].map(impressions)

    labels = labels.assign(study_id="s" + labels["study_id"].astype("int64").astype(str))
    label_cols = [c for c in mf.LABEL_COLUMNS if c in labels.columns]
    if len(label_cols) != len(mf.LABEL_COLUMNS):
        raise UserError(f"MIMIC-CXR-JPG chexpert table lacks label column(s) "
                        f"{sorted(set(mf.LABEL_COLUMNS) - set(label_cols))}")
    labels = labels.drop_duplicates("study_id").set_index("study_id")[list(mf.LABEL_COLUMNS)]
    merged = sampled.join(labels, on="study_id")
    merged["_label_from_report"] = ~merged["study_id"].isin(labels.index)
    for col in mf.LABEL_COLUMNS:
        merged[col] = pd.to_numeric(merged[col], errors="coerce").round().astype("Int8")

    if split_table is not None:
        splits = split_table["split"].astype(str).str.lower().replace({"validate": "val"})
        split_table = split_table.assign(split=splits)
        merged = merged.join(split_table.drop_duplicates("dicom_id").set_index("dicom_id")["split"], on="dicom_id")
        unsplit = merged["split"].isna() | ~merged["split"].isin(mf.SPLIT_VALUES)
        stats.skip("not in the official split table", names=merged.loc[unsplit, "dicom_id"].tolist())
        merged = merged.loc[~unsplit]
        stats.notes.append("official MIMIC-CXR split (validate -> val)")
    merged = merged.drop(columns="subject")
    merged["source"] = "mimic_cxr_jpg"
    return finish(merged.reset_index(drop=True), cfg, stats, progress)
