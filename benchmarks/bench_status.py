"""How long a rerun's freshness check takes over many images: ``keys.evaluate`` (what ``./run_all.sh`` and
``medxpert status`` compute) against a bare loop that only ``stat``s the same files.

    python benchmarks/bench_status.py              # 100,000 images (small PNG files in a temporary folder)
    python benchmarks/bench_status.py --n 20000    # quicker

A run is fabricated with every stage recorded as finished and a manifest listing ``--n`` image files. The first
evaluation hashes every file (cold: nothing cached); later ones find every file in the hash cache by path, size and
modification time and read none of them. Target: a cached evaluation within a few times the bare stat loop (it also
reads the manifest and queries the cache), far from the cold pass that reads every byte. One file is then rewritten
with other pixels under the same name: the next evaluation rehashes only that file and finds the data stage stale.

Prints a table and writes benchmarks/results/bench_status.json.
"""

from __future__ import annotations

import argparse
import io as _io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results" / "bench_status.json"


def _png(value: int) -> bytes:
    buffer = _io.BytesIO()
    Image.fromarray(np.full((16, 16), value % 256, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _timed(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        function()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="image files in the fabricated manifest")
    parser.add_argument("--repeats", type=int, default=5, help="timed cached evaluations (and bare loops)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["MEDXPERT_OUTPUTS"] = str(root / "outputs")
        os.environ["MEDXPERT_DATA"] = str(root / "data")
        from medxpert_utils.core import config, keys, runs
        from medxpert_utils.core.stages import STAGES

        images = root / "images"
        images.mkdir()
        paths = [str(images / f"{i:07d}.png") for i in range(args.n)]
        for i, path in enumerate(paths):
            Path(path).write_bytes(_png(i))
        time.sleep(2.5)  # files modified within the last 2 s are not cached (coarse file-system clocks)
        cfg = runs.prepare(config.load("params/demo.yaml", root / "outputs" / "bench"))
        cfg.paths.manifest.parent.mkdir(parents=True, exist_ok=True)
        from medxpert_utils.core import hashing

        t0 = time.perf_counter()
        hashes = hashing.current_sha256(paths)  # cold: reads and hashes every file, fills the cache
        cold_s = time.perf_counter() - t0
        from medxpert_utils.data import manifest
        from medxpert_utils.data.labels import CHEXPERT_LABELS

        ids = [f"{i}" for i in range(args.n)]
        frame = pd.DataFrame({"study_id": ids, "patient_id": ids, "image_path": paths, "findings": "",
                              "impression": "Clear.", "report": "Clear.", "split": "train",
                              **dict.fromkeys(CHEXPERT_LABELS), "image_sha256": hashes, "unreadable": ""})
        manifest.validate(frame).to_parquet(cfg.paths.manifest)
        for stage in STAGES:
            for artefact in stage.artefacts:
                target = cfg.run_dir / artefact
                if target.exists():
                    continue
                if "." in target.name:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text("{}")
                else:
                    target.mkdir(parents=True, exist_ok=True)
            keys.record_success(cfg, stage)

        cached = _timed(lambda: keys.evaluate(cfg), args.repeats)
        bare = _timed(lambda: [os.stat(p) for p in paths], args.repeats)
        assert keys.evaluate(cfg).fresh
        Path(paths[args.n // 2]).write_bytes(_png(args.n + 7))  # other pixels, same name
        t0 = time.perf_counter()
        status = keys.evaluate(cfg)
        changed_s = time.perf_counter() - t0
        assert status["00"].state == "stale" and status["00"].reasons[0].startswith("images changed on disk: 1 of")

    result = {
        "n_images": args.n,
        "cold_hash_s": round(cold_s, 3),
        "cached_evaluate_s_median": round(statistics.median(cached), 3),
        "bare_stat_loop_s_median": round(statistics.median(bare), 3),
        "ratio_cached_to_bare": round(statistics.median(cached) / statistics.median(bare), 2),
        "one_changed_image_evaluate_s": round(changed_s, 3),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
