"""Training throughput of the project's loop vs a bare loop, in image-report pairs per second.

For each architecture -- the demo's tiny CLIP and ViT-B/32 (random init from its published
configuration, 224 px) -- it builds a small synthetic dataset of PNGs on disk and measures, in the
same process:

* **project**: ``train.fit`` itself (data loading from PNG with augmentation in DataLoader
  workers, tokenisation in the collate, forward, loss, backward, AdamW step, scheduler), read
  from the ``pairs_per_s`` that fit records per epoch; the first epoch is warm-up and excluded.
* **bare**: forward + loss + backward + AdamW step on batches preloaded as tensors, timed before
  and after the project run (their mean cancels drift on a shared machine).

The ratio project / bare is the share of the model's pace the loop keeps (target >= 0.9); with
``--repeats N`` the median of N measurements (a shared VM's pace drifts by 10-20% between runs).
Results are printed and written to ``benchmarks/results/train.json``.

    python benchmarks/bench_train.py                 # both architectures
    python benchmarks/bench_train.py --arch tiny --batches 10 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medxpert_utils.core import config, io, runtime
from medxpert_utils.models import clip
from medxpert_utils.training import trainer as train

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"

def _demo_tiny() -> dict:
    """The demo profile's tiny model, batch and stored image size (read from params/demo.yaml)."""
    demo = config.load("demo")
    # 10 batches per epoch (the demo has 21): each epoch's first batch waits for loading, which
    # 3 batches of this fast model would overweight
    return {"batch": demo.train.batch_size, "image_px": demo.data.image_size, "tiny": demo.clip.tiny, "batches": 10}


ARCHS = {
    "tiny": _demo_tiny(),  # the demo profile's model and batch
    # the reference architecture, randomly initialised (no weights offline), at the reference batch
    "vit-b32": {"batch": 16, "image_px": 256, "tiny": None, "batches": 3},
}


def build_vit_b32(reports: list[str], out_dir: Path) -> Path:
    """ViT-B/32 CLIP from its published configuration (random weights), as the rehearsal profile builds it."""
    return clip.build_random_clip("openai/clip-vit-base-patch32", reports, out_dir, seed=0, max_length=77)


def prepare(arch: str, root: Path, batches: int, epochs: int, workers: int | None = None) -> config.Config:
    """A run folder with a synthetic manifest (``batches`` full training batches) and the model to train."""
    from medxpert_utils.data import sources

    spec = ARCHS[arch]
    batch = spec["batch"]
    n_studies = int(batch * batches / 0.8) + batch
    overrides = {
        "data.n_studies": n_studies, "data.image_size": spec["image_px"],
        "data.split": {"train": 0.8, "val": 0.1, "test": 0.1},
        "train.batch_size": batch, "train.epochs": epochs, "train.max_steps": None, "train.max_minutes": None,
        "train.checkpoint_every_steps": 10**6, "train.num_workers": workers, "train.val_max_pairs": batch,
        "train.lr": 1e-4, "train.resume": False,
    }
    if spec["tiny"] is not None:
        overrides.update({"clip.model": "tiny", "clip.max_length": 64, "clip.tiny": spec["tiny"].model_dump()})
    cfg = config.load("smoke", str(root / arch), overrides)
    cfg.paths.ensure()
    frame, _ = sources.build_manifest(cfg, progress=False)
    # keep whole patients in train until `batches` full batches are there (the partial rest is dropped)
    counts = frame.loc[frame["split"] == "train", "patient_id"].value_counts(sort=False)
    keep = counts.index[(counts.cumsum() - counts) < batch * batches]
    frame.loc[(frame["split"] == "train") & ~frame["patient_id"].isin(keep), "split"] = "test"
    io.write_parquet(cfg.paths.manifest, frame)
    if spec["tiny"] is None:
        folder = build_vit_b32(frame.loc[frame["split"] == "train", "report"].tolist(), root / f"{arch}_base")
        cfg = config.load("smoke", str(root / arch), {**overrides, "clip.model": str(folder), "clip.max_length": 77})
    return cfg


def bare_pairs_per_s(cfg: config.Config, steps: int) -> float:
    """Forward + loss + backward + AdamW on preloaded tensors (one warm-up step, then ``steps`` timed)."""
    from medxpert_utils.data import manifest
    from medxpert_utils.data.loading.datasets import make_loader

    device = runtime.get_device(cfg.device)
    model, processor = clip.load_clip(clip.prepare_base_model(cfg), device)
    model.train()
    frame = manifest.read(cfg.run_dir)
    loader = make_loader(frame[frame["split"] == "train"], processor, cfg.train.batch_size, True, None, 0, 0,
                         max_length=cfg.clip.max_length)
    loader.batch_sampler.set_epoch(0)
    batches = [{k: batch[k].to(device) for k in ("pixel_values", "input_ids", "attention_mask")} for batch in loader]
    optimizer = torch.optim.AdamW(train.param_groups(model, 0.1), lr=1e-4)
    dtype = runtime.autocast_dtype(device, cfg.train.mixed_precision)

    def step(batch):
        with torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(device.type, enabled=False):
            out = model(**batch)
        loss = train.clip_loss(out.image_embeds.float(), out.text_embeds.float(), model.logit_scale)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * cfg.train.batch_size / (time.perf_counter() - t0)


def measure(arch: str, root: Path, batches: int, epochs: int, workers: int | None = None) -> dict:
    cfg = prepare(arch, root, batches, epochs, workers)
    steps = batches * (epochs - 1)
    bare_before = bare_pairs_per_s(cfg, max(2, steps // 2))
    result = train.fit(cfg, progress=False)
    bare_after = bare_pairs_per_s(cfg, max(2, steps // 2))
    project = [h["pairs_per_s"] for h in result["history"][1:]]
    bare = (bare_before + bare_after) / 2
    return {
        "arch": arch, "batch": cfg.train.batch_size, "image_size": cfg.clip.tiny.image_size if cfg.clip.model == "tiny"
        else 224, "batches_per_epoch": batches, "timed_epochs": len(project),
        "num_workers": runtime.default_num_workers(cfg.train.num_workers), "device": result["device"],
        "project_pairs_per_s": float(np.mean(project)), "bare_pairs_per_s": bare,
        "bare_before": bare_before, "bare_after": bare_after, "ratio": float(np.mean(project)) / bare,
        "trainable_params": result["params"]["trainable"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=[*ARCHS, "all"], default="all")
    parser.add_argument("--batches", type=int, default=None,
                        help="training batches per epoch (default: 10 tiny, 3 ViT-B/32)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (the first is warm-up)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the project's choice)")
    parser.add_argument("--repeats", type=int, default=1, help="measure this many times; report the median run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    archs = list(ARCHS) if args.arch == "all" else [args.arch]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        os.environ.setdefault("MEDXPERT_OUTPUTS", tmp)
        for arch in archs:
            runs = [measure(arch, Path(tmp) / f"r{i}", args.batches or ARCHS[arch]["batches"], args.epochs,
                            args.workers)
                    for i in range(args.repeats)]
            r = sorted(runs, key=lambda run: run["ratio"])[len(runs) // 2]  # the median run
            r = {**r, "ratios_of_repeats": [run["ratio"] for run in runs]}
            rows.append(r)
            print(f"{arch}: project {r['project_pairs_per_s']:.1f} pairs/s, bare {r['bare_pairs_per_s']:.1f} "
                  f"pairs/s (before {r['bare_before']:.1f}, after {r['bare_after']:.1f}) -> ratio {r['ratio']:.2f}",
                  flush=True)
    print(f"\n{'arch':<9} {'batch':>5} {'px':>4} {'workers':>7} {'project':>9} {'bare':>9} {'ratio':>6}")
    for r in rows:
        print(f"{r['arch']:<9} {r['batch']:>5} {r['image_size']:>4} {r['num_workers']:>7} "
              f"{r['project_pairs_per_s']:>9.1f} {r['bare_pairs_per_s']:>9.1f} {r['ratio']:>6.2f}")
    print("target: ratio >= 0.9 (the loop keeps 90% of the bare model's pace)")
    if args.out.is_file():  # keep the previous figures of architectures not run this time
        kept = [r for r in io.read_json(args.out).get("results", []) if r.get("arch") not in archs]
        rows = [*kept, *rows]
    io.write_json(args.out, {"benchmark": "train", "cpu_cores": os.cpu_count(),
                             "torch_threads": torch.get_num_threads(), "machine": platform.platform(),
                             "torch": torch.__version__, "results": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
