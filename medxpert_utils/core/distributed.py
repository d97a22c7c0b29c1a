"""Training on several processes under ``accelerate launch`` (or ``torchrun``): rank, gather and sync helpers.

Embeddings are all-gathered *with gradients* (:class:`_GatherWithGrad`), so the contrastive loss
sees every pair of the global batch as a negative and each process's gradient equals a single
process's on the global batch.
"""

from __future__ import annotations

import os
from typing import Any

import torch


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient for the local slice (as in SimCLR/open_clip)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        import torch.distributed as dist

        parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        stacked = torch.stack(grads)
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def is_main_process() -> bool:
    """True in the only process, or in rank 0 of several (before any Accelerator exists)."""
    return int(os.environ.get("RANK", "0")) == 0


class Distributed:
    """Several processes under ``accelerate launch``: the Accelerator, rank and gather helpers."""

    def __init__(self, accelerator: Any):
        self.acc = accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.is_main = accelerator.is_main_process

    @classmethod
    def create(cls, device_pref: str) -> "Distributed | None":
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        from accelerate import Accelerator

        from medxpert_utils.core.runtime import get_device

        # Accelerator(cpu=False) on a machine without a GPU falls back to one process (world 1) although
        # torchrun started several: ask for the CPU backend whenever the device resolves to the CPU.
        accelerator = Accelerator(cpu=get_device(device_pref).type == "cpu")
        if accelerator.num_processes != int(os.environ["WORLD_SIZE"]):
            from medxpert_utils.core.errors import UserError

            raise UserError(f"accelerate sees {accelerator.num_processes} processes but WORLD_SIZE is "
                               f"{os.environ['WORLD_SIZE']}: start with `accelerate launch` or `torchrun`")
        return cls(accelerator)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's ``x`` along dim 0 (sizes may differ: skipped images); gradients flow
        back to each process's own rows."""
        import torch.distributed as dist

        n = torch.tensor([x.shape[0]], device=x.device)
        gathered = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(gathered, n)
        sizes = [int(size) for size in gathered]
        if x.shape[0] < max(sizes):
            x = torch.cat([x, x.new_zeros((max(sizes) - x.shape[0], *x.shape[1:]))])
        parts = _GatherWithGrad.apply(x.contiguous())
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    def any(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.acc.device)
        return bool(self.acc.reduce(t, reduction="sum").item() > 0)

    def broadcast(self, obj: Any) -> Any:
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj])[0]

    def barrier(self) -> None:
        self.acc.wait_for_everyone()
