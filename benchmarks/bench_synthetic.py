"""Synthetic demo data: time to generate the demo profile's dataset, against writing the same PNGs bare.

    python benchmarks/bench_synthetic.py                  # 2,000 studies at 128 px (params/demo.yaml)
    python benchmarks/bench_synthetic.py --n 500 --size 64

* project path: ``data.synthetic.generate`` into an empty folder - plan the cohort and write the
  reports, draw every phantom, write PNGs atomically with their content key, write the dataset card;
  run once in-process (``workers=1``) and once with the default process pool;
* cache hit: the same call again (checks the content key of every PNG, draws nothing);
* bare: the same number of images written as PNGs of one pre-drawn phantom (encoding + file
  system only), the floor any generator pays.

Target: the demo dataset (2,000 studies at 128 px) in well under a minute on 2 CPU cores.
Wall time depends on what else the machine runs, so CPU seconds (this process and its workers) are
printed too. Prints a table and writes benchmarks/results/bench_synthetic.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished children) of ``fn()``."""
    before = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (time.process_time() - before[0] + (after.ru_utime - before[1].ru_utime)
           + (after.ru_stime - before[1].ru_stime))
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="studies to generate")
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_synthetic.json")
    args = ap.parse_args()

    from PIL import Image

    from medxpert_utils.core import io
    from medxpert_utils.data.synthetic import dataset as synthetic

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label, workers in (("generate, 1 process", 1), ("generate, process pool", None)):
            shutil.rmtree(folder / "demo", ignore_errors=True)
            wall, cpu = timed(lambda workers=workers: synthetic.generate(args.n, args.size, 0, folder / "demo",
                                                                         progress=False, workers=workers))
            rows.append((label, wall, cpu))
        rows.append(("cache hit", *timed(lambda: synthetic.generate(args.n, args.size, 0, folder / "demo",
                                                                     progress=False))))
        n_images = len(list((folder / "demo").rglob("*.png")))
        picture = Image.fromarray(synthetic.render_study(synthetic.plan_cohort(1, 0)[0], 0, args.size))

        def bare() -> None:
            for i in range(n_images):
                with io.atomic_path(folder / "bare" / f"{i}.png", suffix=".png") as path:
                    picture.save(path, format="PNG")

        rows.append(("bare PNG writes", *timed(bare)))

    bare_wall = rows[-1][1]
    print(f"{args.n} studies ({n_images} images) at {args.size} px on {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'path':<26}{'wall s':>9}{'cpu s':>9}{'ms/img cpu':>12}{'x bare':>9}")
    for label, wall, cpu in rows:
        print(f"{label:<26}{wall:>9.1f}{cpu:>9.1f}{1000 * cpu / n_images:>12.2f}{wall / bare_wall:>9.1f}")
    best = min(wall for label, wall, _ in rows if label.startswith("generate"))
    print(f"target (under 60 s): {'met' if best < 60 else 'MISSED'} ({best:.1f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"n_studies": args.n, "n_images": n_images, "image_size": args.size,
               "machine": f"{platform.machine()} {os.cpu_count()} cores", "load": os.getloadavg()[0],
               "rows": [{"path": label, "wall_s": wall, "cpu_s": cpu} for label, wall, cpu in rows]}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
