"""``python -m medxpert_utils.training --params P --run R [--set k=v]``: notebook 01's training in batch.

Runs on every process under ``accelerate launch -m medxpert_utils.training`` or ``torchrun -m
medxpert_utils.training``; the main process prepares the run folder and prints the result.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from medxpert_utils.core import runs
from medxpert_utils.core.distributed import is_main_process
from medxpert_utils.core.stage import stage_main
from medxpert_utils.training.trainer import fit

if TYPE_CHECKING:
    from medxpert_utils.core.config import Config


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medxpert_utils.training --params P --run R [--set k=v]`` (also under ``accelerate launch``)."""
    def run(cfg: "Config", args: argparse.Namespace) -> None:
        if is_main_process():
            runs.prepare(cfg)
        result = fit(cfg, progress=not args.no_progress)
        if is_main_process():
            last = result["history"][-1] if result["history"] else {}
            print(f"trained {result['steps']} steps; best epoch {result['best_epoch']}: val i2t top-1 "
                  f"{result['best_val_i2t_acc']}, last val t2i top-1 {last.get('val_t2i_acc')}; "
                  f"model in {result['model_dir']}")

    return stage_main("training", "Contrastive CLIP fine-tuning (notebook 01 in batch); under `accelerate launch -m` "
                      "it runs on every process.", argv, run)


if __name__ == "__main__":
    raise SystemExit(main())
