"""The query check (medxpert_utils.retrieval.ood) on a finished run: can it tell the run's test radiographs from
images that are not chest radiographs like the corpus?

    python benchmarks/bench_ood.py                       # the demo run, outputs/demo
    python benchmarks/bench_ood.py --run smoke --n 10    # any finished run (notebook 02 done)

In-distribution: the run's test split (``embed.eval_split``). Out-of-distribution, assembled offline from what the
project's dependencies install (``retrieval.ood_eval.ood_set``): matplotlib's sample photos in colour and grey,
its MR slice and terrain maps, pydicom's test files (as DICOM with their tags, and their pixels alone as PNG),
noise, rendered text pages, and the run's test radiographs flipped left-right and upside down, rotated 90
degrees, a quarter cropped and enlarged, and colour-tinted (``--n`` of each generated kind). Every image goes the
way a query goes: decoded from its file bytes, embedded with the run's fine-tuned CLIP, gated by its colour and
DICOM tags.

Scores compared: deep-kNN (1 - cosine to the k-th nearest training image; Sun et al., 2022) for several k, and the
Mahalanobis distance to the training embeddings' Gaussian (Ledoit-Wolf). Each threshold is calibrated on the
validation split to accept 95% of it, as the run's check is. Reported per score, with scikit-learn: AUROC
(out-of-distribution positive) and FPR at 95% TPR (share of out-of-distribution images accepted at the threshold
that accepts 95% of the test images), of the score alone and of the whole check (gates first), the share of the
test split the calibrated threshold accepts, and the share flagged per group.

Writes benchmarks/results/bench_ood.json (or --out) and, with --table, the per-image scores as CSV.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="demo", help="finished run (name under outputs/ or a path)")
    parser.add_argument("--model", default="fine_tuned", choices=["fine_tuned", "zero_shot"])
    parser.add_argument("--n", type=int, default=30, help="images per generated out-of-distribution kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_ood.json")
    parser.add_argument("--table", type=Path, help="also write the per-image scores as CSV")
    args = parser.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore", module="pydicom")  # its test files are odd on purpose
    from medxpert_utils.core.errors import UserError
    from medxpert_utils.retrieval.ood_eval import evaluate

    start = time.perf_counter()
    try:
        summary, table = evaluate(args.run, model=args.model, n_per_group=args.n, seed=args.seed)
    except UserError as exc:
        print(f"bench_ood: {exc}", file=sys.stderr)
        return 2
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    if args.table:
        table.to_csv(args.table, index=False)
    print(f"{summary['n_in_distribution']} test images, {summary['n_out_of_distribution']} out-of-distribution "
          f"({', '.join(f'{g} {n}' for g, n in summary['groups'].items())}); {summary['seconds']} s")
    print(f"{'score':<12} {'AUROC':>6} {'FPR95':>6} | {'+gates':>6} {'FPR95':>6} | test accepted  missed groups")
    for name, r in summary["methods"].items():
        missed = ", ".join(f"{g} {1 - v:.0%}" for g, v in r["flagged_by_group"].items() if v < 1) or "-"
        print(f"{name:<12} {r['score_only']['auroc']:>6.3f} {r['score_only']['fpr@95tpr']:>6.3f} | "
              f"{r['with_gates']['auroc']:>6.3f} {r['with_gates']['fpr@95tpr']:>6.3f} | "
              f"{r['test_accepted']:>12.1%}  {missed}")
    print(f"the run's check: {summary['chosen']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
