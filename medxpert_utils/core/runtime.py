"""Device, seeding and worker counts: one place so every stage is device-agnostic and seeded."""

from __future__ import annotations

import os
import random

import numpy as np


def get_device(preference: str = "auto"):
    """Torch device from params (``auto``: CUDA, then Apple MPS, then CPU). Never call ``.cuda()`` directly."""
    import torch

    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        from medxpert_utils.core.errors import UserError

        raise UserError("params ask for device: cuda but no CUDA GPU is visible - set device: auto or cpu")
    return torch.device(preference)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def default_num_workers(requested: int | None) -> int:
    """DataLoader workers: as requested, else one per spare core (0 on a 1-2 core machine keeps it in-process)."""
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores - 1)) if cores > 2 else 0


def autocast_dtype(device, mixed_precision: str = "auto"):
    """dtype for ``torch.autocast`` on GPU (bf16 where supported, else fp16), None on CPU or when off."""
    import torch

    if device.type != "cuda" or mixed_precision == "no":
        return None
    if mixed_precision == "fp16":
        return torch.float16
    if mixed_precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device, dtype=None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context when ``dtype`` is None (CPU, or off).

    Pass the dtype from :func:`autocast_dtype`; the one helper training, embedding and search share.
    """
    import contextlib

    import torch

    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
