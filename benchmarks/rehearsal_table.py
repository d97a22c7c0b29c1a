"""What the reference run will need, extrapolated from a finished rehearsal run (``params/rehearsal.yaml``).

The rehearsal runs the real chain at full model size (ViT-B/32, BLIP base, Whisper small with random weights) on a
few hundred studies. Its measurements scale to the reference project's data: 24,500 training pairs x 3 epochs and
a 3,062-case validation and test split (``params/mimic_hf.yaml``: 500 captioned images, 50 reports). Per stage:

* time: each stage's own unit costs where the run records them (training: seconds per optimiser step and per
  validation pair; embedding: seconds per row and model; captions: seconds per image), else the stage's wall time
  scaled by its work (data: studies; evaluation: test cases; reports: cases); the dashboard does not scale;
* memory: the stage kernel's peak resident set and that of the kernel with its worker processes, as measured
  (run.json): batch sizes stay the same at scale, so these do not grow with the dataset, except training's decoded
  image cache (``train.image_cache_mb`` per loader process, filled only at scale);
* disk: model folders and checkpoints as measured, embeddings and indexes scaled by rows.

The times are CPU times on the rehearsal's machine; the GPU figure is left to ``benchmarks/gpu_train.py``.

    python benchmarks/rehearsal_table.py                  # outputs/rehearsal -> results/rehearsal.json + table
    python benchmarks/rehearsal_table.py --run NAME --train-pairs 24500 --epochs 3
"""

from __future__ import annotations

import argparse
import math
import os
import platform
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from medxpert_utils.core import config, io, runs

RESULTS = Path(__file__).resolve().parent / "results" / "rehearsal.json"
MB = 2**20


@dataclass(frozen=True)
class Target:
    """The data the extrapolation is for (the reference project's by default)."""

    train_pairs: int = 24_500
    epochs: int = 3
    val_cases: int = 3_062
    test_cases: int = 3_062
    captions: int = 500  # params/mimic_hf.yaml captions.max_images
    reports: int = 50  # params/mimic_hf.yaml report.n_cases

    @property
    def studies(self) -> int:
        return self.train_pairs + self.val_cases + self.test_cases


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def measure(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What a finished run recorded that the extrapolation reads: per-stage records, unit costs, counts, sizes."""
    run_dir = Path(run_dir)
    cfg = config.from_run(run_dir)
    info = runs.read(run_dir)
    stages = info.get("stages", {})
    for name, record in stages.items():
        if record.get("status") != "ok":
            raise SystemExit(f"{name} has not finished in {run_dir} - run ./run_all.sh {cfg.params_path} first")
    train = io.read_json(cfg.paths.metrics / "train.json")
    embed = [io.read_json(cfg.paths.embeddings(m) / "cache_key.json")["stats"] for m in ("zero_shot", "fine_tuned")]
    captions = io.read_json(cfg.paths.metrics / "captions.json")
    from medxpert_utils.data import manifest

    counts = manifest.read(cfg.run_dir)["split"].value_counts()
    attempt = (info.get("attempts") or [{}])[-1]
    chain = None
    if attempt.get("status") == "ok" and attempt.get("finished"):
        chain = (datetime.fromisoformat(attempt["finished"]) - datetime.fromisoformat(attempt["started"]))
    paths = cfg.paths
    fixed = {name: folder_bytes(paths.models / name) for name in ("clip_base", "clip", "blip_base", "blip",
                                                                  "whisper_base")}
    fixed["checkpoints"] = folder_bytes(run_dir / "checkpoints")
    return {
        "run": cfg.run_name, "profile": cfg.params.profile, "random_weights": cfg.random_weights(),
        "machine": info.get("machine"), "git": info.get("git"), "stages": stages,
        "chain_wall_s": chain.total_seconds() if chain is not None else None,
        "studies": int(counts.sum()), "test": int(counts.get(cfg.embed.eval_split, 0)),
        "train": {k: train[k] for k in ("steps", "batch_size", "step_seconds", "val_seconds", "n_val")}
        | {"processes": train.get("processes", 1)},
        "embed_seconds_per_row": sum(float(s["seconds"]) / int(s["corpus_rows"]) for s in embed),
        "corpus_rows": int(embed[0]["corpus_rows"]),
        "caption_seconds": captions["caption_seconds"], "n_captions": captions["n_captions"],
        "num_beams": cfg.captions.num_beams, "max_new_tokens": cfg.captions.max_new_tokens,
        "n_reports": cfg.report.n_cases, "image_cache_mb": cfg.train.image_cache_mb,
        "fixed_bytes": {k: v for k, v in fixed.items() if v},
        "scaled_bytes": {"embeddings": folder_bytes(run_dir / "embeddings"), "index": folder_bytes(run_dir / "index")},
    }


def extrapolate(measured: dict[str, Any], target: Target = Target(), cores: int | None = None) -> dict[str, Any]:
    """Per-stage measurements of :func:`measure` and their extrapolation to ``target`` (seconds, MB)."""
    records = measured["stages"]
    rows: list[dict[str, Any]] = []

    def add(name: str, work: str, scaled_work: str, seconds: float, how: str) -> None:
        record = records[name]
        rows.append({"stage": name, "wall_s": record.get("wall_s"), "peak_rss_mb": record.get("peak_rss_mb"),
                     "peak_rss_tree_mb": record.get("peak_rss_tree_mb"), "work": work, "target_work": scaled_work,
                     "target_s": round(seconds, 1), "how": how})

    studies = measured["studies"]
    add("00_data_prep", f"{studies} studies", f"{target.studies:,} studies",
        records["00_data_prep"]["wall_s"] * target.studies / studies, "wall x studies (the synthetic generator: a "
        "download and decode of the real images takes its own time)")

    train = measured["train"]
    steps = math.ceil(target.train_pairs / (train["batch_size"] * train["processes"])) * target.epochs
    val_per_pair = train["val_seconds"] / train["n_val"]
    seconds = train["step_seconds"] * steps + val_per_pair * target.val_cases * (target.epochs + 1)
    add("01_clip_finetune", f"{train['steps']} steps of {train['batch_size']}, {train['n_val']} val pairs",
        f"{steps:,} steps, {target.val_cases:,} val pairs x {target.epochs + 1}", seconds,
        f"{train['step_seconds']:.2f} s per step + {val_per_pair * 1000:.0f} ms per validation pair (zero-shot "
        "and each epoch)")

    per_row = measured["embed_seconds_per_row"]
    add("02_embed_index", f"{measured['corpus_rows']} rows x 2 models", f"{target.studies:,} rows x 2 models",
        per_row * target.studies, f"{per_row * 1000:.0f} ms per row (image + report, both models)")

    add("03_retrieval_eval", f"{measured['test']} test cases", f"{target.test_cases:,} test cases",
        records["03_retrieval_eval"]["wall_s"] * target.test_cases / measured["test"],
        "wall x test cases (rough: the rehearsal's includes the demo-only grounding; bootstrap grows with n)")

    per_image = measured["caption_seconds"] / measured["n_captions"]
    add("04_blip_captions", f"{measured['n_captions']} images", f"{target.captions:,} images",
        per_image * target.captions, f"{per_image:.1f} s per image ({measured['num_beams']} beams, "
        f"{measured['max_new_tokens']} tokens: a random decoder never stops early)")

    n_reports = measured["n_reports"]
    add("05_diagnosis_reports", f"{n_reports} reports", f"{target.reports} reports",
        records["05_diagnosis_reports"]["wall_s"] * target.reports / n_reports, "wall x reports (offline reporter)")
    add("06_dashboard", "the page", "the page", records["06_dashboard"]["wall_s"], "does not scale")

    fixed, scaled = measured["fixed_bytes"], measured["scaled_bytes"]
    disk = {"measured_mb": {k: round(v / MB, 1) for k, v in {**fixed, **scaled}.items() if v},
            "target_mb": {**{k: round(v / MB, 1) for k, v in fixed.items()},
                          **{k: round(v / MB * target.studies / studies, 1) for k, v in scaled.items()}}}
    total = sum(r["target_s"] for r in rows)
    cores = cores or os.cpu_count() or 1
    keep = ("run", "profile", "random_weights", "machine", "git", "image_cache_mb", "chain_wall_s")
    return {**{k: measured.get(k) for k in keep},
            "cpu_count": cores, "target": {**asdict(target), "studies": target.studies}, "stages": rows,
            "stage_wall_sum_s": round(sum(r["wall_s"] or 0 for r in rows), 1),
            "target_total_s": round(total, 1), "target_cpu_hours": round(total / 3600, 2),
            "target_core_hours": round(total / 3600 * cores, 2), "disk": disk}


def markdown(result: dict[str, Any]) -> str:
    """The README's tables: per stage, then disk."""
    lines = ["| stage | rehearsal: wall | peak memory (kernel / with workers) | rehearsal work | reference work | "
             "extrapolated CPU time | how |", "|---|---|---|---|---|---|---|"]
    for r in result["stages"]:
        lines.append(f"| {r['stage']} | {r['wall_s']:.0f} s | {_mb(r['peak_rss_mb'])} / {_mb(r['peak_rss_tree_mb'])} "
                     f"| {r['work']} | {r['target_work']} | {_duration(r['target_s'])} | {r['how']} |")
    lines.append(f"| **sum of stages** | {result['stage_wall_sum_s']:.0f} s | | | | "
                 f"**{_duration(result['target_total_s'])}** ({result['target_core_hours']} core-hours) | |")
    lines += ["", "| on disk | rehearsal | reference |", "|---|---|---|"]
    disk = result["disk"]
    for name, size in disk["target_mb"].items():
        lines.append(f"| {name} | {_mb(disk['measured_mb'].get(name))} | {_mb(size)} |")
    return "\n".join(lines)


def _mb(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:.1f} GB" if value >= 1024 else f"{value:.0f} MB"


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="rehearsal", help="a finished rehearsal run (name under outputs/ or path)")
    for field, default in asdict(Target()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=default)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    target = Target(**{f: getattr(args, f) for f in asdict(Target())})
    result = extrapolate(measure(config.load("rehearsal", args.run).run_dir), target)
    result["platform"] = platform.platform()
    io.write_json(args.out, result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
