"""A cold ``medxpert search --text`` (and ``diagnose --text``) against a bare script doing the same query.

    python benchmarks/bench_cli_cold.py                        # outputs/demo, 7 alternating rounds
    python benchmarks/bench_cli_cold.py --run outputs/demo --repeats 11

"Cold" is a fresh Python process per query, as a shell user or a script runs the CLI (the operating system's file
cache is warm: one untimed round of every command goes first). Each round runs, one after the other:

1. ``medxpert search --text Q --run R --json`` (the run's fine-tuned CLIP, its query check, the hits as JSON);
2. the bare search: a standalone snippet importing only transformers, torch and faiss, loading the run's CLIP
   folder (``models/clip/``) and its image index (``index/fine_tuned/image.faiss``), embedding Q with the text
   tower and printing the top-k ids and scores;
3. ``medxpert diagnose --text Q --run R --json`` (search, then the offline reporter's DiagnosisReport);
4. the bare diagnose: the bare search with twice the report's top_k hits, written out as JSON. The offline
   reporter's work (labelling the retrieved reports, ICD-10 codes) has no bare equivalent, so this ratio also
   measures that work; it is reported as it is.

Target: the search ratio (median CLI / median bare) at most 1.1. Wall-clock medians are the figure; the CPU
time (user + system) of each process is reported beside them, steadier on a machine shared with other work.
Prints a table and writes benchmarks/results/bench_cli_cold.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_cli_cold.json"
QUERY = "small left pleural effusion"

# The bare query: the run's CLIP text tower and its FAISS image index, nothing of medxpert_utils.
BARE = '''
import json, sys
import faiss, torch
from transformers import CLIPModel, CLIPTokenizerFast
folder, index_path, query, k, max_length = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
model = CLIPModel.from_pretrained(folder).eval()
tokenizer = CLIPTokenizerFast.from_pretrained(folder)
with torch.inference_mode():
    tokens = tokenizer([query], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    features = model.get_text_features(**tokens)  # transformers 5 returns the pooled, projected output object
    features = features if isinstance(features, torch.Tensor) else features.pooler_output
    vector = torch.nn.functional.normalize(features, dim=-1).numpy()
scores, ids = faiss.read_index(index_path).search(vector, k)
print(json.dumps({"query": query, "hits": [{"id": int(i), "score": float(s)} for i, s in zip(ids[0], scores[0])]}))
'''


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one command in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="outputs/demo", help="a finished run (name under outputs/ or a folder)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (each runs all four commands)")
    parser.add_argument("--query", default=QUERY)
    parser.add_argument("-k", type=int, default=5, help="hits of the search (the CLI's default)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from medxpert_utils.core import config

    cfg = config.from_run(args.run)
    folder = cfg.paths.clip_finetuned
    index_path = cfg.paths.index("fine_tuned") / "image.faiss"
    if not (folder / "config.json").is_file() or not index_path.is_file():
        raise SystemExit(f"{cfg.run_dir} has no fine-tuned CLIP or image index: run ./run_all.sh first")
    cli = Path(sys.executable).with_name("medxpert")
    cli_argv = [str(cli)] if cli.is_file() else [sys.executable, "-m", "medxpert_utils"]
    run, query, max_length = str(cfg.run_dir), args.query, str(cfg.clip.max_length)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / "bare_search.py"
        bare.write_text(BARE)
        commands = {
            "cli_search": [*cli_argv, "search", "--text", query, "--run", run, "-k", str(args.k), "--json"],
            "bare_search": [sys.executable, str(bare), str(folder), str(index_path), query, str(args.k), max_length],
            "cli_diagnose": [*cli_argv, "diagnose", "--text", query, "--run", run, "--generator", "offline",
                             "--json"],
            "bare_diagnose": [sys.executable, str(bare), str(folder), str(index_path), query,
                              str(2 * cfg.report.top_k), max_length],
        }
        for argv in commands.values():  # untimed: the file cache, not the first process, pays for the first read
            _run(argv, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for round_ in range(args.repeats):
            for name, argv in commands.items():
                wall, used = _run(argv, env)
                times[name].append(wall)
                cpu[name].append(used)
            print(f"round {round_ + 1}/{args.repeats}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()),
                  flush=True)

    median = {name: statistics.median(values) for name, values in times.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    result = {
        "run": cfg.run_name,
        "query": query,
        "repeats": args.repeats,
        "median_s": {name: round(value, 3) for name, value in median.items()},
        "ratio_search": round(median["cli_search"] / median["bare_search"], 3),
        "ratio_diagnose": round(median["cli_diagnose"] / median["bare_diagnose"], 3),
        "target_ratio_search": 1.1,
        # CPU time (user + system) is steadier than wall time on a machine shared with other work
        "median_cpu_s": {name: round(value, 3) for name, value in median_cpu.items()},
        "cpu_ratio_search": round(median_cpu["cli_search"] / median_cpu["bare_search"], 3),
        "cpu_ratio_diagnose": round(median_cpu["cli_diagnose"] / median_cpu["bare_diagnose"], 3),
        "times_s": {name: [round(v, 3) for v in values] for name, values in times.items()},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    print()
    print(f"{'command':<14} {'median s':>9} {'cpu s':>7}")
    for name, value in median.items():
        print(f"{name:<14} {value:>9.3f} {median_cpu[name]:>7.3f}")
    print(f"search   CLI / bare: {result['ratio_search']:.3f} wall, {result['cpu_ratio_search']:.3f} cpu "
          "(target <= 1.1)")
    print(f"diagnose CLI / bare: {result['ratio_diagnose']:.3f} wall, {result['cpu_ratio_diagnose']:.3f} cpu (the bare "
          "side writes no report)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
