"""Dataset sources: each turns one dataset layout into the manifest contract (see ``manifest``).

:func:`build_manifest` dispatches on ``data.source`` to one function per source: ``demo`` and
``csv`` here, ``mimic_hf`` and ``mimic_cxr_jpg`` in ``mimic``, ``iu_xray`` in ``openi``. All of
them end in ``assemble.finish``, the steps every source shares (report cleaning, empty reports
dropped, ``data.max_studies`` sample, image checks, labels, patient split, validation). The
second return value, ``stats``, says what was kept, skipped and why.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from medxpert_utils.core.config import Config
from medxpert_utils.core.errors import UserError
from medxpert_utils.core.paths import PROJECT_ROOT, data_dir
from medxpert_utils.data import manifest as mf
from medxpert_utils.data.assemble import LEAKAGE_NOTE, BuildStats, finish, resolve_data_root
from medxpert_utils.data.mimic import hf_image_dir, load_hf_dataset, mimic_cxr_jpg, mimic_hf
from medxpert_utils.data.openi import iu_xray

__all__ = ["BuildStats", "SOURCES", "build_manifest", "csv", "demo", "demo_cache_dir", "hf_image_dir", "iu_xray",
           "load_hf_dataset", "mimic_cxr_jpg", "mimic_hf", "resolve_data_root"]


def build_manifest(cfg: Config, progress: bool = True) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Build the manifest of ``cfg.data.source`` and return it with its build ``stats``."""
    source = cfg.data.source
    if source not in SOURCES:
        raise UserError(f"unknown data.source '{source}' - use one of {', '.join(SOURCES)}")
    return SOURCES[source](cfg, progress=progress)


# --------------------------------------------------------------------------- demo

def demo_cache_dir(n_studies: int, image_size: int, images_per_study_max: int, seed: int) -> Path:
    """Cache folder of one synthetic dataset, keyed by everything that changes its content."""
    from medxpert_utils.data.synthetic import dataset as synthetic

    version = getattr(synthetic, "GENERATOR_VERSION", None) or getattr(synthetic, "__version__", None)
    if version is None:  # no declared version: any change to the generator's code makes a new cache
        version = hashlib.sha256(inspect.getsource(synthetic).encode()).hexdigest()[:10]
    key = f"n{n_studies}_px{image_size}_v{images_per_study_max}_seed{seed}_g{version}"
    return data_dir() / "synthetic" / key


def demo(cfg: Config, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Synthetic phantom radiographs (offline), generated once per parameter set under ``data/synthetic/<key>``.

    Labels come from the labeler run on each report, like any real source; the generator's own
    truth stays in the ``truth_<label>`` columns for checking the labeler.
    """
    from medxpert_utils.data.synthetic import dataset as synthetic

    d = cfg.data
    out_dir = demo_cache_dir(d.n_studies, d.image_size, d.images_per_study_max, cfg.seed)
    # The generator keeps images whose content key matches, so a second call only checks them.
    frame = synthetic.generate(d.n_studies, d.image_size, cfg.seed, out_dir=out_dir,
                               images_per_study_max=d.images_per_study_max, progress=progress)
    stats = BuildStats("demo", notes=["synthetic phantom radiographs, not clinical data"])
    frame = frame.drop(columns=[c for c in ("report", "split", *mf.LABEL_COLUMNS) if c in frame.columns])
    frame["source"] = "demo"
    return finish(frame, cfg, stats, progress)


# --------------------------------------------------------------------------- csv

_HEADINGS = re.compile(r"^\s*(FINDINGS|IMPRESSION)\s*:", re.IGNORECASE | re.MULTILINE)


def csv(cfg: Config, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Any folder of images plus a CSV with an image-path column and a report column.

    Paths are relative to ``data.root`` (or absolute). A report with FINDINGS:/IMPRESSION: headings
    is split into sections; one without becomes the findings. Without ``data.patient_column`` each
    row is its own patient (split by row, noted). CheXpert label columns in the CSV are used as is.
    """
    from medxpert_utils.data.reports import extract_sections

    d = cfg.data
    root = resolve_data_root(d.root)
    if not d.csv_file:
        raise UserError("data.csv_file is not set - name the CSV (inside data.root, or an absolute path)")
    csv_path = _csv_path(cfg)
    if not csv_path.is_file():
        raise UserError(f"CSV not found: {csv_path} - set data.root and data.csv_file")
    base = root or csv_path.parent
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    stats = BuildStats("csv")
    has_sections = d.report_column not in table.columns and any(c in table.columns for c in ("findings", "impression"))
    needed = [d.image_column] + ([] if has_sections else [d.report_column])
    for col in needed + ([d.patient_column] if d.patient_column else []):
        if col not in table.columns:
            raise UserError(f"{csv_path.name} has no column '{col}' (has {', '.join(table.columns)}) - "
                            "set data.image_column / data.report_column / data.patient_column")
    if has_sections:
        findings = table.get("findings", pd.Series("", index=table.index)).tolist()
        impressions = table.get("impression", pd.Series("", index=table.index)).tolist()
    else:
        findings, impressions = [], []
        for text in table[d.report_column]:
            if _HEADINGS.search(text or ""):
                f, i = extract_sections(text)
            else:
                f, i = text, ""
            findings.append(f)
            impressions.append(i)
    row_ids = [f"row{i}" for i in range(len(table))]
    study = table["study_id"].tolist() if "study_id" in table.columns else row_ids
    if d.patient_column:
        patients = table[d.patient_column].str.strip()
        missing = patients.eq("")
        if missing.any():
            stats.notes.append(f"{int(missing.sum())} row(s) have no patient id: each is its own patient")
        patients = patients.where(~missing, pd.Series(row_ids, index=table.index)).tolist()
    else:
        patients = row_ids
        stats.notes.append(LEAKAGE_NOTE.format(what="CSV (no data.patient_column)"))
    frame = pd.DataFrame({
        "study_id": study, "patient_id": patients,
        "image_path": [p if os.path.isabs(p) else str(base / p) for p in table[d.image_column]],
        "findings": findings, "impression": impressions, "source": "csv",
    })
    if all(c in table.columns for c in mf.LABEL_COLUMNS):
        for col in mf.LABEL_COLUMNS:
            frame[col] = pd.to_numeric(table[col].replace("", None), errors="coerce").round().astype("Int8")
    return finish(frame, cfg, stats, progress)


def _csv_path(cfg: Config) -> Path:
    path = Path(cfg.data.csv_file or "").expanduser()
    return path if path.is_absolute() else (resolve_data_root(cfg.data.root) or PROJECT_ROOT) / path


def source_files(cfg: Config) -> list[Path]:
    """Files that list a source's rows, whose content enters the data stage's key beside its images (the CSV of
    the ``csv`` source; the other sources are listed by their images and params)."""
    return [_csv_path(cfg)] if cfg.data.source == "csv" and cfg.data.csv_file else []


SOURCES: dict[str, Callable[..., tuple[pd.DataFrame, dict]]] = {
    "demo": demo, "mimic_hf": mimic_hf, "mimic_cxr_jpg": mimic_cxr_jpg, "iu_xray": iu_xray, "csv": csv,
}
