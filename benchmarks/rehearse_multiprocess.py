"""Rehearse the multi-process commands of the README at full size, on 2 CPU processes, for a few steps.

The README's "Reproduce the reference table" runs training and embedding under ``accelerate launch`` (or
``torchrun``) on several GPUs. This runs the same commands on this machine's CPU (gloo) with the rehearsal
profile's ViT-B/32 (random weights, built from its published configuration): the data stage through
``run_all.sh``, then

* ``accelerate launch --multi_gpu --num_processes 2 -m medxpert_utils.training`` for ``--steps`` optimiser steps
  (``--multi_gpu`` is the launcher a multi-GPU config selects; it runs on CPU too. ``--cpu --num_processes 2``
  would start one process: Accelerate's multi-CPU mode needs MPI),
* ``accelerate launch --multi_gpu --num_processes 2 -m medxpert_utils.retrieval.embedding`` (both models),
* ``torchrun --nproc-per-node 2 -m medxpert_utils.training`` on a second run,

and checks what they wrote (two processes, the steps asked for, a saved model, the same training losses from both
launchers, embeddings of every row by two processes).
Each command's wall time and peak memory (the sum over its processes, sampled) go to
``benchmarks/results/rehearse_multiprocess.json``.

    python benchmarks/rehearse_multiprocess.py              # 3 steps, runs rehearsal_ddp and rehearsal_torchrun
    python benchmarks/rehearse_multiprocess.py --steps 2 --params params/rehearsal.yaml
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from medxpert_utils.core import config, io
from medxpert_utils.core.memory import PeakMemory

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "rehearse_multiprocess.json"


def timed(command: list[str], env: dict[str, str]) -> dict:
    """Run ``command`` from the project root; its wall time, peak memory over its processes and exit status."""
    t0 = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    with PeakMemory(root=process.pid, interval=0.5) as memory:
        output, _ = process.communicate()
    record = {"command": " ".join(command), "returncode": process.returncode,
              "wall_s": round(time.perf_counter() - t0, 1), "peak_rss_tree_mb": memory.peak_rss_tree_mb}
    print(f"$ {record['command']}\n  exit {process.returncode} in {record['wall_s']} s, peak "
          f"{record['peak_rss_tree_mb']} MB over its processes", flush=True)
    if process.returncode:
        print(output[-4000:], file=sys.stderr)
        raise SystemExit(f"failed: {record['command']}")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/rehearsal.yaml")
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps per training command")
    args = parser.parse_args(argv)
    python = sys.executable
    bindir = str(Path(python).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    steps = [f"train.max_steps={args.steps}", "train.checkpoint_every_steps=1000"]
    sets = [arg for item in steps for arg in ("--set", item)]
    records = []
    for run in ("rehearsal_ddp", "rehearsal_torchrun"):
        cfg = config.load(args.params, run)
        if cfg.run_dir.exists():
            shutil.rmtree(cfg.run_dir)  # a rehearsal starts from nothing: no finished training to find
        records.append(timed(["./run_all.sh", args.params, "--run", run, "--until", "00"], env))
    # Accelerate's --cpu launcher starts ONE process whatever --num_processes says (its multi-CPU mode needs MPI);
    # --multi_gpu is the launcher a multi-GPU box's config selects (torchrun underneath), and it runs on CPU (gloo).
    launch = [python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
              "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    common = ["--params", args.params, "--no-progress"]
    records.append(timed([*launch, "-m", "medxpert_utils.training", *common, "--run", "rehearsal_ddp", *sets], env))
    records.append(timed([*launch, "-m", "medxpert_utils.retrieval.embedding", *common, "--run", "rehearsal_ddp"],
                         env))
    records.append(timed([python, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
                          "medxpert_utils.training", "--", *common, "--run", "rehearsal_torchrun", *sets], env))

    checks = {}
    for run in ("rehearsal_ddp", "rehearsal_torchrun"):
        cfg = config.load(args.params, run)
        trained = io.read_json(cfg.paths.metrics / "train.json")
        assert trained["processes"] == 2 and trained["steps"] == args.steps, trained
        assert (cfg.paths.clip_finetuned / "model.safetensors").is_file()
        checks[run] = {"processes": trained["processes"], "steps": trained["steps"],
                       "train_loss": [h.get("train_loss") for h in trained["history"]]}
    # the same seed, data and global batches: Accelerate's launcher and torchrun train alike (up to the order in
    # which the processes' gradients are summed)
    for a, b in zip(checks["rehearsal_ddp"]["train_loss"], checks["rehearsal_torchrun"]["train_loss"], strict=True):
        assert math.isclose(a, b, rel_tol=1e-4), checks
    cfg = config.load(args.params, "rehearsal_ddp")
    for model in ("zero_shot", "fine_tuned"):
        stats = io.read_json(cfg.paths.embeddings(model) / "cache_key.json")["stats"]
        assert stats["processes"] == 2 and stats["corpus_rows"] == cfg.data.n_studies, stats
        checks[f"embed_{model}"] = {k: stats[k] for k in ("processes", "corpus_rows", "dim", "seconds")}
    io.write_json(RESULTS, {"machine": f"{platform.machine()} {os.cpu_count()} cores", "params": args.params,
                            "steps": args.steps, "commands": records, "checks": checks})
    print(f"all commands passed; results in {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
