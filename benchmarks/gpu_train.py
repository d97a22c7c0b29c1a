"""GPU check of CLIP fine-tuning: ViT-B/32 (random init) on 224 px synthetic pairs with bf16 autocast.

One prepared script, under 8 minutes on one GPU:

1. synthetic phantom pairs on disk (``data.synthetic``) and a ViT-B/32 CLIP from ``CLIPConfig()``
   defaults with a tokenizer trained on the reports (no download);
2. a doubling search of the batch size on a bare bf16 training step (preloaded tensors):
   pairs/s and peak memory per batch until out of memory -> the largest batch that fits;
3. the project's loop (``train.fit``: PNG decoding and augmentation in DataLoader workers,
   bf16 autocast, AdamW, validation) at batch 16 and at the largest batch that fits (halved
   until fit itself fits), pairs/s from its second epoch and peak memory.

Everything goes to ``--out`` (JSON). ``--dry-run`` runs the same steps on CPU with a tiny model and
tiny batches, to check the script before spending GPU time.

    python benchmarks/gpu_train.py --out $OUT/gpu_train.json
    python benchmarks/gpu_train.py --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from medxpert_utils.core import config, io, runtime
from medxpert_utils.models import clip, pretrained
from medxpert_utils.training import trainer as train

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_train.json"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_model(reports: list[str], out_dir: Path, dry_run: bool) -> Path:
    """ViT-B/32 from ``CLIPConfig()`` defaults (tiny in a dry run), random init, tokenizer from ``reports``."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = clip.train_tokenizer(reports, 2000, 77)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if dry_run:
        small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
        cfg = CLIPConfig(text_config={**ids, **small}, vision_config={**small, "image_size": 32, "patch_size": 8},
                         projection_dim=32)
        processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        cfg = CLIPConfig(text_config=ids)
        processor = CLIPImageProcessorPil()
    torch.manual_seed(0)
    return pretrained.save_pretrained(CLIPModel(cfg), CLIPProcessor(image_processor=processor, tokenizer=tokenizer),
                                      out_dir)


def make_dataset(root: Path, n_studies: int, image_px: int):
    """Synthetic phantoms (PNG) with reports, as a validated manifest frame (all rows train except a val slice)."""
    from medxpert_utils.data import sources

    cfg = config.load("smoke", str(root / "source"), {"data.n_studies": n_studies, "data.image_size": image_px})
    frame, _ = sources.build_manifest(cfg, progress=False)
    return frame


def manifest_for(frame, rows: int, val_rows: int, links: Path):
    """``rows`` training pairs (the images repeated as hard links under ``links``) plus ``val_rows`` val pairs."""
    import pandas as pd

    from medxpert_utils.data import manifest

    base = frame.reset_index(drop=True)
    copies = []
    for k in range(rows // len(base) + 1):  # the manifest wants one row per image file: hard-link copies
        folder = links / f"r{k}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, src in enumerate(base["image_path"]):
            dst = folder / f"{i}.png"
            if not dst.exists():
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copyfile(src, dst)
            paths.append(str(dst))
        copies.append(base.assign(study_id=base["study_id"].astype(str) + f"_r{k}", image_path=paths,
                                  patient_id=base["patient_id"].astype(str) + f"_r{k}", split="train"))
    train_rows = pd.concat(copies, ignore_index=True).iloc[:rows]
    val = base.iloc[:val_rows].assign(study_id=base["study_id"].astype(str).iloc[:val_rows] + "_val",
                                      patient_id=base["patient_id"].astype(str).iloc[:val_rows] + "_val", split="val")
    out = pd.concat([train_rows, val], ignore_index=True)
    return manifest.validate(out)


def bare_step_search(spec: str, device: torch.device, dtype, start: int, max_batch: int, steps: int,
                     deadline: float) -> list[dict]:
    """pairs/s and peak memory of a bare training step, doubling the batch until out of memory."""
    model, processor = clip.load_clip(spec, device)
    model.train()
    optimizer = torch.optim.AdamW(train.param_groups(model, 0.1), lr=1e-5)
    size = model.config.vision_config.image_size
    tokens = processor.tokenizer(["small left pleural effusion and mild cardiomegaly, no pneumothorax"],
                                 return_tensors="pt")["input_ids"].to(device)
    rows, batch = [], start
    while batch <= max_batch and time.time() < deadline:
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            pixels = torch.randn(batch, 3, size, size, device=device)
            ids = tokens.expand(batch, -1).contiguous()
            timings = []
            for i in range(steps + 1):
                t0 = time.perf_counter()
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    out = model(input_ids=ids, pixel_values=pixels)
                loss = train.clip_loss(out.image_embeds.float(), out.text_embeds.float(), model.logit_scale)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i:  # the first step warms up kernels and the allocator
                    timings.append(time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
            rows.append({"batch": batch, "pairs_per_s": batch * len(timings) / sum(timings), "peak_gib": peak,
                         "fits": True})
            _log(f"bare step, batch {batch}: {rows[-1]['pairs_per_s']:.0f} pairs/s, peak {peak} GiB")
            del pixels, ids, out, loss
            batch *= 2
        except torch.OutOfMemoryError:
            rows.append({"batch": batch, "pairs_per_s": None, "peak_gib": None, "fits": False})
            _log(f"bare step, batch {batch}: out of memory")
            break
    optimizer.zero_grad(set_to_none=True)
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def fit_at(frame, spec: str, root: Path, batch: int, device_pref: str, mixed: str, batches: int) -> dict:
    """``train.fit`` for two epochs of ``batches`` batches; pairs/s of the second, peak memory, wall time."""
    run = root / f"fit_b{batch}"
    cfg = config.load("smoke", str(run), {
        "device": device_pref, "clip.model": spec, "clip.max_length": 77, "train.batch_size": batch,
        "train.epochs": 2, "train.max_steps": None, "train.max_minutes": None, "train.lr": 1e-5,
        "train.mixed_precision": mixed, "train.checkpoint_every_steps": 10**6, "train.num_workers": None,
        "train.resume": False, "train.val_max_pairs": min(256, batch),
    })
    cfg.paths.ensure()
    io.write_parquet(cfg.paths.manifest, manifest_for(frame, batch * batches, min(256, batch), root / "links"))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = train.fit(cfg, progress=False)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    shutil.rmtree(run, ignore_errors=True)  # models and checkpoints of a benchmark are not kept
    return {"batch": batch, "pairs_per_s": result["history"][-1]["pairs_per_s"],
            "first_epoch_pairs_per_s": result["history"][0]["pairs_per_s"], "peak_gib": peak,
            "mixed_precision": result["mixed_precision"], "device": result["device"],
            "num_workers": runtime.default_num_workers(None), "wall_s": time.perf_counter() - t0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model and batches: check the script")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--budget-s", type=float, default=420, help="stop the batch search when this is spent")
    parser.add_argument("--max-batch", type=int, default=None, help="largest batch tried (default 32768; dry run 16)")
    args = parser.parse_args()
    started = time.time()
    device = torch.device("cpu") if args.dry_run else runtime.get_device("auto")
    if device.type != "cuda" and not args.dry_run:
        print("no CUDA GPU visible - run with --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    mixed = "no" if args.dry_run else "bf16"
    dtype = runtime.autocast_dtype(device, mixed)
    report: dict = {"benchmark": "gpu_train", "dry_run": args.dry_run, "torch": torch.__version__,
                    "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                    "cpu_cores": os.cpu_count(), "mixed_precision": mixed}
    with tempfile.TemporaryDirectory(prefix="gpu_train_") as tmp:
        root = Path(tmp)
        os.environ["MEDXPERT_DATA"] = str(root / "data")  # the synthetic images live and die with this run
        n_studies, image_px = (48, 32) if args.dry_run else (512, 256)
        frame = make_dataset(root, n_studies, image_px)
        _log(f"{len(frame)} synthetic pairs at {image_px} px ({time.time() - started:.0f} s)")
        spec = str(build_model(frame["report"].tolist(), root / "base", args.dry_run))
        max_batch = args.max_batch or (16 if args.dry_run else 32768)
        start = 4 if args.dry_run else 16
        search = bare_step_search(spec, device, dtype, start, max_batch, 1 if args.dry_run else 3,
                                  started + args.budget_s)
        report["bare_search"] = search
        fitting = [r["batch"] for r in search if r["fits"]]
        largest = max(fitting) if fitting else start
        report["largest_bare_batch"] = largest
        runs = []
        for batch in dict.fromkeys([start, largest]):
            while True:
                try:
                    runs.append(fit_at(frame, spec, root, batch, device.type, mixed, 2 if args.dry_run else 3))
                    _log(f"fit, batch {batch}: {runs[-1]['pairs_per_s']:.0f} pairs/s (epoch 2), "
                         f"peak {runs[-1]['peak_gib']} GiB, {runs[-1]['wall_s']:.0f} s")
                    break
                except torch.OutOfMemoryError:
                    _log(f"fit, batch {batch}: out of memory - halving")
                    batch //= 2
                    if batch < start:
                        break
        report["fit"] = runs
    report["wall_s"] = time.time() - started
    io.write_json(args.out, report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
