"""Contrastive fine-tuning of CLIP on image-report pairs (notebook 01 and ``python -m medxpert_utils.training``).

The recipe comes from ``params.train``: AdamW (no weight decay on biases, norms and the logit
scale; eps 1e-6), linear warm-up then cosine / linear / constant decay (:class:`LRSchedule`, the
formulas of ``transformers.get_scheduler``), gradient accumulation, optional freezing of early
vision blocks, plain InfoNCE or the label-aware loss (:mod:`medxpert_utils.training.loss`), and
autocast (bf16, or fp16 with a GradScaler) on GPU. Each epoch ends with a
validation pass; the checkpoint that is best by ``train.select_by`` (the reference recipe's validation
image->text top-1 accuracy, the validation loss, or the mean validation Recall@10 of both directions) is saved
with ``save_pretrained`` into ``models/clip/``. Metrics go to ``metrics/train.json``, the curves
to ``figures/training_curves.png``.

Reproducibility and resuming. Runs are seeded; on CPU they are deterministic (same params ->
same metrics). Every ``checkpoint_every_steps`` optimiser steps the whole training state --
weights, optimiser, scheduler, scaler, RNGs, history and the loader position (epoch, batch) --
is written atomically to ``checkpoints/last.pt``. The batch order of an epoch is a permutation
seeded by (seed, epoch) and augmentation is seeded by (seed, epoch, row), so a resumed run
continues mid-epoch and ends bit-identical to an uninterrupted one. Only the last checkpoint is
kept; after a successful finish it stays (marked finished, a few MB for the tiny model) so that
rerunning the notebook returns the recorded result instead of training again. A checkpoint made
with other params is ignored (a note is printed) and training starts over.

Time budgets. With ``max_minutes`` the number of optimiser steps is planned before training:
the zero-shot validation pass is timed and a few forward/backward passes on the first training
batches are timed (no weights change), then the steps that fit the budget -- validation passes
included -- set the LR schedule's length, so cosine decay completes within the budget. While
training, the length is re-planned from the measured pace whenever it is off by more than 10%
(a shared machine speeds up and slows down), and training stops when the clock runs out. Such
runs depend on machine speed; deterministic tests use ``max_steps``.

Devices. One code path: a plain PyTorch loop on ``runtime.get_device`` (never ``.cuda()``). Under
``accelerate launch --multi_gpu --num_processes N -m medxpert_utils.training ...`` (or ``torchrun
--nproc-per-node N -m medxpert_utils.training -- ...``, which also runs on CPU with gloo) an
:class:`accelerate.Accelerator` wraps the model in DDP, each process reads its slice of every
global batch (``train.batch_size`` pairs per process) and the embeddings are all-gathered with
gradients, so the loss sees every pair of the global batch as a negative and the gradient equals
a single process's on the global batch. The main process validates and writes checkpoints and
metrics; an unfinished checkpoint resumes only with the same number of processes (it is part of its
key), while a finished one is reused by any number -- the notebook finds a run trained by ``accelerate launch``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medxpert_utils.core import io, runtime, stages
from medxpert_utils.core.distributed import Distributed
from medxpert_utils.core.errors import UserError
from medxpert_utils.training.loss import clip_loss, label_aware_targets, retrieval_recall, retrieval_top1
from medxpert_utils.training.schedule import LRSchedule, Pace, param_groups, plan_steps
from medxpert_utils.training.state import (
    CHECKPOINT_NAME,
    load_checkpoint,
    rng_state,
    run_key,
    save_checkpoint,
    set_rng_state,
)

if TYPE_CHECKING:
    import pandas as pd

    from medxpert_utils.core.config import Config

LOG_SCALE_MAX = math.log(100.0)
VAL_METRICS = ("val_loss", "val_i2t_acc", "val_t2i_acc", "val_i2t_r10", "val_t2i_r10")
SELECT_BY = ("val_i2t_acc", "val_loss", "val_mean_r10")


def selection_score(metrics: dict[str, Any], criterion: str) -> float:
    """How good an epoch's validation is under ``train.select_by`` (higher is better; -inf when unmeasured).

    ``val_i2t_acc``: image->text top-1 accuracy (the reference recipe); ``val_loss``: the validation loss
    (negated); ``val_mean_r10``: the mean of image->text and text->image Recall@10, which on a small validation
    split varies far less from epoch to epoch than top-1.
    """
    if criterion == "val_loss":
        value = -metrics.get("val_loss", float("nan"))
    elif criterion == "val_mean_r10":
        value = 0.5 * (metrics.get("val_i2t_r10", float("nan")) + metrics.get("val_t2i_r10", float("nan")))
    elif criterion == "val_i2t_acc":
        value = metrics.get("val_i2t_acc", float("nan"))
    else:
        raise ValueError(f"unknown selection criterion {criterion!r} - choose one of {', '.join(SELECT_BY)}")
    return float("-inf") if value is None or math.isnan(value) else float(value)
_PROBE_BATCHES = 4
# steps per pace window of the time budget (at most an epoch): re-plans follow a window's median step time
PACE_WINDOW = 50


class TrainingInterrupted(RuntimeError):
    """Raised by the ``stop_after_steps`` test hook to simulate a crash after a given optimiser step."""


# ---------------------------------------------------------------------------------------- plumbing


@dataclass(frozen=True)
class TrainOutputs:
    """Where one training run writes: the best model, its checkpoints, metrics JSON and curves figure."""

    model_dir: Path
    checkpoints: Path
    metrics: Path
    figure: Path | None

    @classmethod
    def of_run(cls, cfg: "Config") -> "TrainOutputs":
        return cls(cfg.paths.clip_finetuned, cfg.paths.checkpoints, cfg.paths.metrics / "train.json",
                   cfg.paths.figures / "training_curves.png")

    @classmethod
    def under(cls, folder: Path) -> "TrainOutputs":
        return cls(folder / "clip", folder / "checkpoints", folder / "train.json", folder / "training_curves.png")


@contextlib.contextmanager
def _deterministic(enabled: bool):
    """Deterministic kernels for the duration of training (restored afterwards); used on CPU."""
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def _val_frame(frame: "pd.DataFrame", max_pairs: int | None, seed: int) -> "pd.DataFrame":
    val = frame[frame["split"] == "val"]
    if max_pairs is not None and len(val) > max_pairs:
        val = val.sample(n=max_pairs, random_state=seed).sort_index()
    return val.reset_index(drop=True)


# --------------------------------------------------------------------------------------- the loop


class _Trainer:
    """One training run: built by :func:`fit`, holding the model, data and mutable training state."""

    def __init__(self, cfg: "Config", outputs: TrainOutputs, progress: bool, log: Callable[[str], None]):
        from medxpert_utils.core import runtime
        from medxpert_utils.data import manifest
        from medxpert_utils.data.loading.datasets import make_loader
        from medxpert_utils.models import clip

        self.t0 = time.perf_counter()
        self.cfg, self.tp, self.outputs, self.progress, self.log = cfg, cfg.train, outputs, progress, log
        self.dist = Distributed.create(cfg.device)
        self.is_main = self.dist is None or self.dist.is_main
        self.device = self.dist.acc.device if self.dist else runtime.get_device(cfg.device)
        self.amp_dtype = runtime.autocast_dtype(self.device, self.tp.mixed_precision)

        frame = manifest.read(cfg.run_dir)
        self.train_df = frame[frame["split"] == "train"].reset_index(drop=True)
        self.val_df = _val_frame(frame, self.tp.val_max_pairs, cfg.seed)
        if len(self.train_df) < 2:
            raise UserError(f"the training split has {len(self.train_df)} rows - contrastive training needs "
                            "at least 2; check data.split or the dataset")
        if self.is_main:
            self.base = clip.prepare_base_model(cfg)
        if self.dist:
            self.dist.barrier()
            self.base = clip.prepare_base_model(cfg) if not self.is_main else self.base  # reuses the built folder
        self.key = run_key(cfg, self.dist.world if self.dist else 1)
        self.model, self.processor = clip.load_clip(self.base, self.device)
        clip.freeze_vision_layers(self.model, self.tp.freeze_vision_layers)
        self.counts = clip.count_parameters(self.model)
        self.core = self.model
        if self.dist:
            self.model = self.dist.acc.prepare_model(self.model)
        self.max_length = min(cfg.clip.max_length, int(self.core.config.text_config.max_position_embeddings))

        rank, world = (self.dist.rank, self.dist.world) if self.dist else (0, 1)
        workers = runtime.default_num_workers(self.tp.num_workers)
        loader_args = dict(max_length=self.max_length, device=self.device, raw_pixels=True,
                           cache_mb=self.tp.image_cache_mb)
        self.train_loader = make_loader(self.train_df, self.processor, self.tp.batch_size, True,
                                        self.tp.augment if self.tp.augment.enabled else None, workers, cfg.seed,
                                        rank=rank, world_size=world, **loader_args)
        batches = self.train_loader.batch_sampler.batches_per_epoch()
        self.accum = max(1, min(self.tp.grad_accum_steps, batches))
        self.steps_per_epoch = batches // self.accum
        self.train_loader.batch_sampler.num_batches = self.steps_per_epoch * self.accum
        self.val_loader = (make_loader(self.val_df, self.processor, self.tp.batch_size, False, None, workers, cfg.seed,
                                       **loader_args) if len(self.val_df) else None)

        self.normalise = self.train_loader.dataset.transform.normalise_batch  # uint8 batches -> model input
        # eps 1e-6 as CLIP and open_clip use for ViTs: with the tiny gradients of a near-collapsed batch,
        # eps 1e-8 turns noise into full-size Adam steps.
        self.optimizer = torch.optim.AdamW(param_groups(self.model, self.tp.weight_decay), lr=self.tp.lr,
                                           betas=tuple(self.tp.betas), eps=1e-6)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.scheduler = None
        # mutable state (saved in checkpoints)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": None, "score": float("-inf")}
        self.zero_shot: dict[str, Any] = {}
        self.planned_steps = 0
        self.elapsed_before = 0.0
        self.epoch_stats = {"loss_sum": 0.0, "loss_n": 0, "pairs": 0, "seconds": 0.0}
        self.val_seconds = 0.0
        self.step_seconds: float | None = None
        self.stopped_early: str | None = None
        self.model.train()

    # -- pieces -------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def _targets(self, batch: dict[str, Any], groups: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        if self.tp.loss != "label_aware":
            return None
        la = self.tp.label_aware
        return label_aware_targets(groups, labels if la.same_labels else None, la.label_weight).to(self.device)

    def _forward_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        dev = self.device
        with runtime.autocast(dev, self.amp_dtype):
            out = self.model(input_ids=batch["input_ids"].to(dev, non_blocking=True),
                             attention_mask=batch["attention_mask"].to(dev, non_blocking=True),
                             pixel_values=self.normalise(batch["pixel_values"].to(dev, non_blocking=True)))
        image, text = out.image_embeds.float(), out.text_embeds.float()
        groups, labels = batch["report_group"], batch["labels"]
        if self.dist:
            image, text = self.dist.gather(image), self.dist.gather(text)
            with torch.no_grad():
                groups = self.dist.gather(groups.to(dev)).cpu()
                labels = self.dist.gather(labels.to(dev)).cpu()
        return clip_loss(image, text, self.core.logit_scale, self._targets(batch, groups, labels))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss (the training loss, batch by batch) and report-group top-1 accuracies."""
        if self.val_loader is None:
            return dict.fromkeys(VAL_METRICS, float("nan"))
        from medxpert_utils.models.clip import image_features, text_features

        was_training = self.core.training
        self.core.eval()
        images, texts, groups, losses, weights = [], [], [], [], []
        self.val_loader.batch_sampler.set_epoch(0)
        for batch in self.val_loader:
            if not batch["n"]:
                continue
            with runtime.autocast(self.device, self.amp_dtype):
                pixels = self.normalise(batch["pixel_values"].to(self.device, non_blocking=True))
                img = image_features(self.core, pixels).float()
                txt = text_features(self.core, batch["input_ids"].to(self.device),
                                    batch["attention_mask"].to(self.device)).float()
            if batch["n"] > 1:
                losses.append(clip_loss(img, txt, self.core.logit_scale,
                                        self._targets(batch, batch["report_group"], batch["labels"])).item())
                weights.append(batch["n"])
            images.append(img.cpu())
            texts.append(txt.cpu())
            groups.append(batch["report_group"])
        self.core.train(was_training)
        if not images:
            return dict.fromkeys(VAL_METRICS, float("nan"))
        images, texts, groups = torch.cat(images), torch.cat(texts), torch.cat(groups)
        acc = retrieval_top1(images, texts, groups)
        r10 = retrieval_recall(images, texts, groups, k=10)
        val_loss = float(np.average(losses, weights=weights)) if losses else float("nan")
        return {"val_loss": val_loss, "val_i2t_acc": acc["i2t"], "val_t2i_acc": acc["t2i"],
                "val_i2t_r10": r10["i2t"], "val_t2i_r10": r10["t2i"]}

    def _probe_step_seconds(self) -> float:
        """Seconds per optimiser step from a few forward/backward passes (weights untouched)."""
        times, last = [], time.perf_counter()
        self.train_loader.batch_sampler.set_epoch(0)
        for i, batch in enumerate(self.train_loader):
            if batch["n"] > 1:
                loss = self._forward_loss(batch)
                self.scaler.scale(loss / self.accum).backward()
            now = time.perf_counter()
            times.append(now - last)
            last = now
            if i + 1 >= _PROBE_BATCHES:
                break
        self.optimizer.zero_grad(set_to_none=True)
        per_batch = float(np.mean(times[1:])) if len(times) > 1 else float(times[0])
        return per_batch * self.accum * 1.1  # +10%: the optimiser step is not in the probe

    def _make_scheduler(self) -> None:
        self.schedule = LRSchedule(self.tp.scheduler, int(round(self.tp.warmup_ratio * self.planned_steps)),
                                   self.planned_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)

    def _replan(self, step_s: float) -> None:
        """Time budget: fit the schedule's remaining length to the pace ``step_s`` measured so far.

        The first plan comes from a short probe; a shared machine can speed up or slow down by
        several times, and a schedule that is cut by the clock ends with its learning rate still
        high. The pace is a window's median step time (:class:`~medxpert_utils.training.schedule.Pace`),
        so a stall of a few steps leaves a schedule that still fits alone (and the run's result with it).
        Adjusted only when off by more than 10%, never past the step/epoch limits.
        """
        remaining = self.tp.max_minutes * 60 * 0.95 - self.elapsed()
        more = 0
        for _ in range(3):  # validations depend on the steps, which depend on the time validations take
            validations = 1 + (self.batch_in_epoch // self.accum + more) // self.steps_per_epoch
            more = max(0, int((remaining - validations * self.val_seconds) / step_s))
        limit = self.tp.epochs * self.steps_per_epoch
        if self.tp.max_steps is not None:
            limit = min(limit, self.tp.max_steps)
        total = max(self.step + 1, min(limit, self.step + more))
        if self.dist:  # every process must stop at the same step
            total = self.dist.broadcast(total)
        if abs(total - self.planned_steps) > 0.1 * self.planned_steps:
            self.planned_steps = self.schedule.total = total

    def state_dict(self, finished: bool = False) -> dict[str, Any]:
        recorded = {"result": self.summary()} if finished else {}  # what another process count reuses
        return {
            **recorded,
            "key": self.key, "finished": finished, "model": self.core.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(), "step": self.step, "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch, "history": self.history, "best": self.best,
            "zero_shot": self.zero_shot, "planned_steps": self.planned_steps, "elapsed": self.elapsed(),
            "epoch_stats": self.epoch_stats, "val_seconds": self.val_seconds,
            "stopped_early": self.stopped_early, "step_seconds": self.step_seconds,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.core.load_state_dict(state["model"])
        self.planned_steps = state["planned_steps"]
        self._make_scheduler()  # first: building a scheduler resets the optimiser's lr, which the state restores
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for name in ("step", "epoch", "batch_in_epoch", "history", "best", "zero_shot", "epoch_stats",
                     "val_seconds"):
            setattr(self, name, state[name])
        self.elapsed_before = state["elapsed"]
        self.t0 = time.perf_counter()
        self.stopped_early = state.get("stopped_early")
        self.step_seconds = state.get("step_seconds")
        set_rng_state(state["rng"])

    def checkpoint(self, finished: bool = False) -> None:
        if self.is_main:
            save_checkpoint(self.outputs.checkpoints, self.state_dict(finished))

    def _save_best(self) -> None:
        from medxpert_utils.models.pretrained import save_pretrained

        if self.is_main:
            save_pretrained(self.core, self.processor, self.outputs.model_dir)

    # -- the run ------------------------------------------------------------------------------
    def plan(self, evaluate_base: bool = True) -> None:
        """Zero-shot validation, then the schedule's length from epochs, max_steps and max_minutes."""
        t = time.perf_counter()
        if self.is_main and evaluate_base:
            self.zero_shot = self.evaluate()
            self.val_seconds = time.perf_counter() - t
        total = self.tp.epochs * self.steps_per_epoch
        if self.tp.max_steps is not None:
            total = min(total, self.tp.max_steps)
        if self.tp.max_minutes is not None:
            step_s = self._probe_step_seconds()
            budget = self.tp.max_minutes * 60 * 0.95 - self.elapsed()  # 5% kept for saving and stragglers
            total = min(total, plan_steps(budget, self.steps_per_epoch, self.tp.epochs, step_s, self.val_seconds))
        if self.dist:
            total = self.dist.broadcast(total)
        self.planned_steps = max(1, total)
        self._make_scheduler()

    def _out_of_time(self) -> bool:
        if self.tp.max_minutes is None:
            return False
        late = self.elapsed() + self.val_seconds > self.tp.max_minutes * 60
        return self.dist.any(late) if self.dist else late

    def _end_epoch(self, partial: bool) -> None:
        t = time.perf_counter()
        metrics = self.evaluate() if self.is_main else {}
        self.val_seconds = time.perf_counter() - t
        stats = self.epoch_stats
        entry = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "train_loss": stats["loss_sum"] / max(1, stats["loss_n"]),
            **metrics,
            "lr": float(self.scheduler.get_last_lr()[0]),
            "pairs_per_s": stats["pairs"] / stats["seconds"] if stats["seconds"] > 0 else None,
            "wall_s": self.elapsed(),
            "partial_epoch": partial,
        }
        self.history.append(entry)
        score = selection_score(metrics, self.tp.select_by)
        if self.is_main and (self.best["epoch"] is None or score > self.best["score"]):
            self.best = {"epoch": self.epoch + 1, "step": self.step, "score": score}
            self._save_best()
        if self.dist:
            self.dist.barrier()
        self.epoch_stats = {"loss_sum": 0.0, "loss_n": 0, "pairs": 0, "seconds": 0.0}

    def train(self, stop_after_steps: int | None = None) -> None:
        """Run epochs from the current position until the planned steps are done or time runs out."""
        from medxpert_utils.core.progress import tqdm
        from medxpert_utils.data.loading.prefetch import prefetched

        self.model.train()
        sampler = self.train_loader.batch_sampler
        n_batches = sampler.batches_per_epoch()
        recent, step_time = None, 0.0  # seconds per optimiser step (moving average), this step so far
        pace = Pace(min(self.steps_per_epoch, PACE_WINDOW))  # what the time budget re-plans by
        while self.epoch < self.tp.epochs and self.step < self.planned_steps:
            sampler.set_epoch(self.epoch, self.batch_in_epoch)
            bar = tqdm(total=n_batches, initial=self.batch_in_epoch, disable=not (self.progress and self.is_main),
                       desc=f"epoch {self.epoch + 1}/{self.tp.epochs}", unit="batch", dynamic_ncols=True)
            stats, tick, out_of_time = self.epoch_stats, time.perf_counter(), False
            batches = prefetched(self.train_loader)
            try:
                for batch in batches:
                    self.batch_in_epoch += 1
                    usable = batch["n"] > 1
                    if self.dist:  # every process must take part in the forward/backward, or none
                        usable = not self.dist.any(not usable)
                    if usable:
                        loss = self._forward_loss(batch)
                        self.scaler.scale(loss / self.accum).backward()
                        stats["loss_sum"] += float(loss.item())
                        stats["loss_n"] += 1
                        stats["pairs"] += batch["n"] * (self.dist.world if self.dist else 1)
                    at_step = self.batch_in_epoch % self.accum == 0
                    if at_step:
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                        self.optimizer.zero_grad(set_to_none=True)
                        self.scheduler.step()
                        with torch.no_grad():  # keep the parameter where the loss's clamp acts (as open_clip does)
                            self.core.logit_scale.clamp_(0, LOG_SCALE_MAX)
                        self.step += 1
                    now = time.perf_counter()
                    stats["seconds"] += now - tick
                    step_time += now - tick
                    tick = now
                    if at_step:
                        recent = step_time if recent is None else 0.7 * recent + 0.3 * step_time
                        measured = pace.add(step_time)
                        self.step_seconds, step_time = recent, 0.0
                        if self.tp.max_minutes is not None and measured is not None:
                            self._replan(measured)
                    bar.update(1)
                    bar.set_postfix(loss=f"{stats['loss_sum'] / max(1, stats['loss_n']):.3f}",
                                    pairs_s=f"{stats['pairs'] / max(stats['seconds'], 1e-9):.0f}")
                    if not at_step:
                        continue
                    if self.step % self.tp.checkpoint_every_steps == 0:
                        self.checkpoint()
                    if stop_after_steps is not None and self.step >= stop_after_steps:
                        bar.close()
                        raise TrainingInterrupted(f"stopped after step {self.step} (test hook)")
                    out_of_time = self._out_of_time()
                    if self.step >= self.planned_steps or out_of_time:
                        break
            finally:
                batches.close()
            bar.close()
            partial = self.batch_in_epoch < n_batches
            self._end_epoch(partial)
            if partial:
                self.batch_in_epoch = n_batches  # stopped mid-epoch: a resumed finished run does not replay it
            else:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            self.checkpoint()
            if out_of_time:
                self.stopped_early = "max_minutes"
                break
        if self.stopped_early is None and self.step < self.tp.epochs * self.steps_per_epoch:
            limited_by_steps = self.tp.max_steps is not None and self.step >= self.tp.max_steps
            self.stopped_early = "max_steps" if limited_by_steps else "max_minutes"

    def summary(self) -> dict[str, Any]:
        from medxpert_utils.models.clip import is_untrained_base

        groups = self.val_loader.dataset.groups if self.val_loader is not None else np.array([], dtype=np.int64)
        n_groups = len(np.unique(groups))
        best = next((h for h in self.history if h["step"] == self.best.get("step")), None)
        return {
            "history": self.history,
            "zero_shot": self.zero_shot,
            "zero_shot_untrained": is_untrained_base(self.cfg),
            "best_epoch": self.best["epoch"],
            "best_step": self.best.get("step"),
            "best_val_i2t_acc": best.get("val_i2t_acc") if best else None,
            "select_by": self.tp.select_by,
            "best": best,
            "params": self.counts,
            "device": str(self.device),
            "processes": self.dist.world if self.dist else 1,
            "mixed_precision": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "no",
            "stopped_early": self.stopped_early,
            "steps": self.step,
            "planned_steps": self.planned_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "batch_size": self.tp.batch_size,
            "grad_accum_steps": self.accum,
            "loss": self.tp.loss,
            "base_model": self.cfg.clip.model,
            "n_train": len(self.train_df),
            "n_val": len(self.val_df),
            "val_chance_i2t": 1.0 / n_groups if n_groups else None,
            "val_chance_i2t_r10": min(1.0, 10.0 / n_groups) if n_groups else None,
            # image->text top-1 of ranking the most frequent report first for every image
            "val_majority_i2t": float(np.bincount(groups).max() / len(groups)) if n_groups else None,
            "wall_s": self.elapsed(),
            "step_seconds": self.step_seconds,  # recent seconds per optimiser step, data loading included
            "val_seconds": self.val_seconds,  # the last validation pass
            "model_dir": str(self.outputs.model_dir),
        }


def _write_results(trainer: _Trainer, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write (on the main process) and return the run's result: ``trainer``'s summary unless given."""
    result = trainer.summary() if result is None else result
    if trainer.is_main:
        io.write_json(trainer.outputs.metrics, result)
        if trainer.outputs.figure is not None:
            import matplotlib.pyplot as plt

            from medxpert_utils.viz.plots import training_curves

            plt.close(training_curves(result, trainer.outputs.figure))
    return result


def fit(cfg: "Config", progress: bool = True, *, outputs: TrainOutputs | None = None,
        stop_after_steps: int | None = None, log: Callable[[str], None] | None = None,
        evaluate_base: bool = True) -> dict[str, Any]:
    """Fine-tune the run's base CLIP contrastively; return (and write) the ``metrics/train.json`` payload.

    Writes the best model to ``models/clip/`` (``save_pretrained``), the metrics and the curves.
    Resumes from ``checkpoints/last.pt`` when ``train.resume`` and the checkpoint matches these
    params; a finished checkpoint returns its recorded result without training. ``outputs``
    redirects every write (used by :func:`medxpert_utils.training.compare.compare_losses`); ``stop_after_steps`` is a
    test hook that raises :class:`TrainingInterrupted` after that optimiser step; ``evaluate_base=False`` skips the
    zero-shot validation (``zero_shot`` stays empty).
    """
    from medxpert_utils.core import runtime

    log = log or (lambda message: print(message, file=sys.stderr))
    outputs = outputs or TrainOutputs.of_run(cfg)
    runtime.seed_everything(cfg.seed)
    single_cpu = int(os.environ.get("WORLD_SIZE", "1")) <= 1 and runtime.get_device(cfg.device).type == "cpu"
    with _deterministic(single_cpu):
        trainer = _Trainer(cfg, outputs, progress, log)
        resume = cfg.train.resume and not stages.forced()  # --force: train again, whatever was saved
        state = load_checkpoint(outputs.checkpoints, trainer.key, log) if resume else None
        if state is not None and state.get("finished") and (outputs.model_dir / "config.json").is_file():
            log(f"training already finished at step {state['step']} "
                f"(checkpoint {outputs.checkpoints / CHECKPOINT_NAME}); "
                "set train.resume=false or delete the checkpoint to train again")
            if state["key"] != trainer.key:  # finished by another number of processes: its recorded result
                return _write_results(trainer, state["result"])
            trainer.load_state(state)
            return _write_results(trainer)
        if state is not None and not state.get("finished"):
            trainer.load_state(state)
            log(f"resuming from step {trainer.step} (epoch {trainer.epoch + 1}, batch {trainer.batch_in_epoch})")
        else:
            runtime.seed_everything(cfg.seed)
            trainer.plan(evaluate_base)
        trainer.train(stop_after_steps=stop_after_steps)
        trainer.checkpoint(finished=True)
        return _write_results(trainer)
