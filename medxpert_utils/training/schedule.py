"""The optimiser's parameter groups, the learning-rate schedule and the step planner of a time budget."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices only; biases, norms, embeddings' 1-D params and logit_scale none."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "bias" in name or "norm" in name or name.endswith("logit_scale"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class LRSchedule:
    """Learning-rate factor per optimiser step: linear warm-up, then cosine / linear decay or constant.

    The formulas of ``transformers.get_scheduler`` ("cosine", "linear", "constant_with_warmup"),
    as a callable object so that ``total`` can be re-planned during a time-budgeted run and is
    saved with the scheduler's state (``LambdaLR`` stores a callable object's attributes).
    """

    kind: str
    warmup: int
    total: int

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        if self.kind == "constant":
            return 1.0
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        if self.kind == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def plan_steps(budget_s: float, steps_per_epoch: int, epochs: int, step_s: float, val_s: float) -> int:
    """Most optimiser steps whose training and validation time fit ``budget_s`` (at least 1)."""
    def cost(steps: int) -> float:  # validation runs after every (possibly partial) epoch
        return steps * step_s + math.ceil(steps / steps_per_epoch) * val_s

    lo, hi = 1, epochs * steps_per_epoch
    if cost(hi) <= budget_s:
        return hi
    while lo < hi:  # cost is monotonic: largest steps with cost <= budget
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= budget_s else (lo, mid - 1)
    return lo


class Pace:
    """The pace a time budget re-plans by: the median seconds per optimiser step over windows of ``window`` steps.

    :meth:`add` returns a window's median when it completes, else None; the first window (image cache
    filling, warm-up, other programs starting beside this one) only warms up and returns None. A stall
    shorter than half a window does not move a median, so it cannot cut a schedule that still fits.
    """

    def __init__(self, window: int):
        self.window = max(1, int(window))
        self.times: list[float] = []
        self.warm = False

    def add(self, seconds: float) -> float | None:
        self.times.append(float(seconds))
        if len(self.times) < self.window:
            return None
        times, self.times = self.times, []
        if not self.warm:
            self.warm = True
            return None
        return statistics.median(times)
