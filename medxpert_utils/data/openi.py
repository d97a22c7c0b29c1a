"""IU X-ray: the Open-I Indiana University chest X-ray collection (PNGs + report XMLs).

The two public archives are downloaded into ``data/iu_xray`` when absent (resumable, checksummed,
safely extracted; see ``download``), then each report XML becomes one study of one patient.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pandas as pd

from medxpert_utils.core import io
from medxpert_utils.core.config import Config
from medxpert_utils.core.errors import UserError
from medxpert_utils.core.paths import data_dir
from medxpert_utils.data import download as dl
from medxpert_utils.data.assemble import BuildStats, finish, resolve_data_root

IU_PNG_URL = "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_png.tgz"
IU_REPORTS_URL = "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_reports.tgz"
# Published sha256 of the archives. Open-I publishes none, so these are unknown: the first
# completed download records its checksum in checksums.json and later runs verify against that.
IU_CHECKSUMS: dict[str, str | None] = {"NLMCXR_png.tgz": None, "NLMCXR_reports.tgz": None}
_FRONTAL_WORDS = re.compile(r"\b(PA|AP|frontal|posteroanterior|anteroposterior)\b", re.IGNORECASE)
_LATERAL_WORDS = re.compile(r"\b(lateral|lat)\b", re.IGNORECASE)


def ensure_iu_xray(root: Path, download: bool = True, png_url: str | None = None, reports_url: str | None = None,
                   progress: bool = True) -> Path:
    """Make sure ``root`` holds the IU X-ray PNGs and report XMLs, downloading and extracting when absent.

    ``root/images`` and ``root/reports`` hold the extracted archives (a folder already filled by
    hand is used as it is); the archives themselves stay in ``root`` beside ``checksums.json``.
    """
    png_url, reports_url = png_url or IU_PNG_URL, reports_url or IU_REPORTS_URL
    for url, folder in ((png_url, "images"), (reports_url, "reports")):
        target = root / folder
        if (target / ".complete").is_file():
            continue
        if target.is_dir() and any(target.iterdir()):  # extracted by hand: trust what is there
            continue
        archive = root / url.rsplit("/", 1)[-1]
        if not archive.is_file():
            if not download:
                raise UserError(f"IU X-ray {folder} not found under {root} - set data.download: true, or place "
                                f"{archive.name} (from {url}) there")
            dl.download(url, archive, sha256=IU_CHECKSUMS.get(archive.name), progress=progress)
        else:
            dl.verify_checksum(archive, IU_CHECKSUMS.get(archive.name))
        dl.safe_extract(archive, target)
        io.write_text(target / ".complete", f"{archive.name}\n")
    return root


def parse_iu_report(path: str | os.PathLike) -> dict[str, Any]:
    """One Open-I report XML -> {uid, findings, impression, images: [(image id, caption)]}."""
    tree = ET.parse(path)
    root = tree.getroot()
    sections: dict[str, str] = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip().upper()
        sections[label] = " ".join("".join(node.itertext()).split())
    uid = root.find("uId")
    images = []
    for parent in root.iter("parentImage"):
        caption = parent.findtext("caption") or ""
        images.append((parent.get("id"), " ".join(caption.split())))
    return {
        "uid": (uid.get("id") if uid is not None else None) or f"CXR{Path(path).stem}",
        "findings": sections.get("FINDINGS", ""),
        "impression": sections.get("IMPRESSION", ""),
        "images": [(i, c) for i, c in images if i],
    }


def iu_is_frontal(position: int, caption: str) -> bool:
    """Frontal-view guess for an IU image (the collection has no view field).

    A caption naming only a frontal projection (PA/AP/frontal) or only a lateral one decides;
    otherwise (most captions say "PA and lateral") the first image of a report counts as frontal
    and the rest as lateral - the usual convention for this collection, right for most reports.
    """
    frontal, lateral = bool(_FRONTAL_WORDS.search(caption)), bool(_LATERAL_WORDS.search(caption))
    if frontal != lateral:
        return frontal
    return position == 0


def iu_xray(cfg: Config, progress: bool = True, png_url: str | None = None,
            reports_url: str | None = None) -> tuple[pd.DataFrame, dict]:
    """Open-I Indiana University chest X-rays: report XMLs + PNGs, downloaded into ``data/iu_xray``.

    Each report is one patient and one study (``CXR<n>``); its ``parentImage`` ids name the PNGs.
    """
    d = cfg.data
    root = resolve_data_root(d.root, default=data_dir() / "iu_xray")
    ensure_iu_xray(root, download=d.download, png_url=png_url, reports_url=reports_url, progress=progress)
    stats = BuildStats("iu_xray", notes=["patient id = report id (the collection has one report per patient)"])
    pngs = {p.stem: p for p in root.rglob("*.png")}
    rows, bad_xml, no_image = [], [], []
    for xml in sorted(root.rglob("*.xml"), key=lambda p: (len(p.stem), p.stem)):
        try:
            report = parse_iu_report(xml)
        except (ET.ParseError, OSError) as exc:
            bad_xml.append(f"{xml.name}: unreadable report XML ({exc.__class__.__name__})")
            continue
        # position in the report, not among the files found: the view rule counts from the report
        found = [(k, image_id, cap) for k, (image_id, cap) in enumerate(report["images"]) if image_id in pngs]
        if not found:
            no_image.append(report["uid"])
            continue
        for position, image_id, caption in found:
            frontal = iu_is_frontal(position, caption)
            if d.frontal_only and not frontal:
                continue
            rows.append({"study_id": report["uid"], "patient_id": report["uid"], "image_path": str(pngs[image_id]),
                         "findings": report["findings"], "impression": report["impression"],
                         "view": "frontal" if frontal else "lateral", "source": "iu_xray"})
    stats.skip("unreadable report XML", messages=bad_xml)
    stats.skip("report names no image found on disk", names=no_image)
    if d.frontal_only:
        stats.notes.append("frontal views by caption, else the first image of each report (IU has no view field)")
    frame = pd.DataFrame(rows, columns=["study_id", "patient_id", "image_path", "findings", "impression", "view",
                                        "source"])
    return finish(frame, cfg, stats, progress)
