"""Image-embedding throughput: the project's embed path from PNG files vs a bare forward pass.

    python benchmarks/bench_embed.py                # 256 images, ViT-B/32 (CLIPConfig defaults, random init)

Model: CLIP ViT-B/32 architecture (``CLIPConfig()`` defaults, random weights: speed does not
depend on the values) with CLIP's image processor settings (224 px, centre crop, OpenAI mean/std).
Data: 224 px grayscale PNGs written to a temporary folder.

* project path: ``retrieval.encoders.embed_images`` - DataLoader (``runtime.default_num_workers``) decoding the
  PNGs with ``data.images.load_image`` + ``transforms.eval_image_transform``, batched forward under
  ``torch.inference_mode``, L2 normalisation, copy into the output matrix;
* bare: the same forward + normalisation over tensors preprocessed and held in memory beforehand.

Target: project throughput >= 0.9 x bare. Prints a table, writes benchmarks/results/bench_embed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def write_pngs(folder: Path, n: int, size: int, seed: int = 0) -> list[str]:
    """Smooth grey phantoms (bright blobs on a dark field) as 8-bit PNGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    paths = []
    for i in range(n):
        img = np.full((size, size), 30.0)
        for _ in range(4):
            cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.25)
            img += 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += rng.normal(0, 6, img.shape)
        path = folder / f"img{i:05d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L").save(path)
        paths.append(str(path))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256, help="number of PNG images")
    ap.add_argument("--size", type=int, default=224, help="side of the PNGs in pixels")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader workers (default: runtime.default_num_workers)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best time of each path counts")
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_embed.json")
    args = ap.parse_args()

    import torch
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from medxpert_utils.core import runtime
    from medxpert_utils.data.images import load_image
    from medxpert_utils.data.loading.transforms import eval_image_transform
    from medxpert_utils.models.clip import image_features
    from medxpert_utils.retrieval import encoders

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig()).eval()
    processor = CLIPImageProcessorPil()  # CLIP's defaults: shortest edge 224, centre crop 224
    workers = runtime.default_num_workers(args.workers)
    device = torch.device("cpu")
    print(f"ViT-B/32 random init, {args.n} PNGs of {args.size} px, batch {args.batch_size}, {workers} workers, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_pngs(Path(tmp), args.n, args.size)
        transform = eval_image_transform(processor)
        t0 = time.perf_counter()
        pixels = torch.stack([transform(load_image(p)) for p in paths])
        preprocess_s = time.perf_counter() - t0

        def bare() -> np.ndarray:
            out = np.empty((len(pixels), model.config.projection_dim), dtype=np.float32)
            with torch.inference_mode():
                for start in range(0, len(pixels), args.batch_size):
                    feats = image_features(model, pixels[start:start + args.batch_size])
                    out[start:start + len(feats)] = torch.nn.functional.normalize(feats, dim=-1).numpy()
            return out

        def project() -> np.ndarray:
            return encoders.embed_images(model, processor, paths, batch_size=args.batch_size, num_workers=workers,
                                      device=device, progress=False)

        with torch.inference_mode():  # warm up kernels and allocator
            image_features(model, pixels[: args.batch_size])
        times = {"bare": [], "project": []}
        results = {}
        for _ in range(args.repeats):  # interleaved, so other load on the machine hits both alike
            for name, fn in (("bare", bare), ("project", project)):
                t0 = time.perf_counter()
                results[name] = fn()
                times[name].append(time.perf_counter() - t0)
    assert np.allclose(results["bare"], results["project"], atol=1e-4), "the two paths disagree"

    best = {name: min(values) for name, values in times.items()}
    rows = [{"path": "bare forward (preloaded tensors)", "seconds": best["bare"],
             "images_per_s": args.n / best["bare"]},
            {"path": "embed.embed_images (PNG files)", "seconds": best["project"],
             "images_per_s": args.n / best["project"]}]
    ratio = best["bare"] / best["project"]
    print(f"\n{'path':<36}{'seconds':>10}{'images/s':>12}")
    for row in rows:
        print(f"{row['path']:<36}{row['seconds']:>10.2f}{row['images_per_s']:>12.1f}")
    print(f"\nthroughput ratio project / bare: {ratio:.3f} (target >= 0.9) - "
          f"{'OK' if ratio >= 0.9 else 'BELOW TARGET'}")
    print(f"(decode + preprocess alone, serial: {args.n / preprocess_s:.0f} images/s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "workers": workers, "torch_threads": torch.get_num_threads(),
               "machine": f"{platform.machine()} {os.cpu_count()} cores", "rows": rows, "all_times": times,
               "ratio": ratio, "meets_target": ratio >= 0.9, "preprocess_images_per_s": args.n / preprocess_s}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
