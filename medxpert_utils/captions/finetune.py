"""Fine-tuning BLIP on image -> report pairs, keeping the checkpoint with the lowest validation loss."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medxpert_utils.core import io, stages
from medxpert_utils.core.errors import UserError
from medxpert_utils.data.images import load_manifest_image, to_rgb
from medxpert_utils.models.blip import load_blip, prepare_base_model, small_model_threads, text_max_length

if TYPE_CHECKING:

    from medxpert_utils.core.config import Config

CACHE_BYTES = 2 * 2**30
VAL_MAX = 512  # validation pairs used for checkpoint selection (a seeded sample when there are more)
# Fine-tuning adds a multi-label loss on the 14 CheXpert labels from a linear head on the vision [CLS]
# output (the head is dropped afterwards; the saved model is plain BLIP). A from-scratch tiny BLIP
# otherwise learns the report language long before it learns to look: in trials it captioned every
# phantom with the most common report.
AUX_LABEL_WEIGHT = 1.0
RECORD_FILE = "finetune.json"  # in models/blip/: the finished fine-tuning's key and result (rerun reuses it)


class CaptionDataset:
    """(pixel_values, text, finding targets) from image paths, reports and optional 0/1 label rows; an image that
    no longer decodes raises :class:`~medxpert_utils.data.images.ImageChangedError` (one line naming it)."""

    def __init__(self, paths: Sequence[str], texts: Sequence[str], image_processor, cache: bool = True,
                 targets: "np.ndarray | None" = None):
        self.paths, self.texts = list(paths), list(texts)
        self.targets = targets
        self.image_processor = image_processor
        self._cache: dict[int, Any] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        target = None if self.targets is None else self.targets[i]
        if self._cache is not None and i in self._cache:
            return self._cache[i], self.texts[i], target
        image = to_rgb(load_manifest_image(self.paths[i]))
        pixels = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        if self._cache is not None:
            self._cache[i] = pixels
        return pixels, self.texts[i], target


class CaptionCollate:
    """Stack images, tokenise texts; labels are the ids with padding ignored (-100), the first token
    BLIP's start token; ``finding_targets`` when the dataset has them."""

    def __init__(self, tokenizer, bos_token_id: int, max_length: int):
        self.tokenizer, self.bos_token_id, self.max_length = tokenizer, bos_token_id, max_length

    def __call__(self, items):
        import torch

        enc = self.tokenizer([t for _, t, _ in items], padding="longest", truncation=True, max_length=self.max_length,
                             return_tensors="pt", return_token_type_ids=False)
        input_ids = enc["input_ids"].clone()
        input_ids[:, 0] = self.bos_token_id  # generate() replaces the first token the same way
        labels = input_ids.masked_fill(enc["attention_mask"] == 0, -100)
        batch = {"pixel_values": torch.stack([p for p, _, _ in items]), "input_ids": input_ids,
                 "attention_mask": enc["attention_mask"], "labels": labels}
        if items[0][2] is not None:
            batch["finding_targets"] = torch.as_tensor(np.stack([t for _, _, t in items]), dtype=torch.float32)
        return batch


def _loader(dataset: CaptionDataset, processor, model, batch_size: int, shuffle: bool, seed: int, max_length: int):
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed)
    collate = CaptionCollate(processor.tokenizer, model.config.text_config.bos_token_id, max_length)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate,
                      num_workers=0)


def evaluate_loss(model, loader, device, dtype=None) -> float:
    """Mean token cross-entropy over ``loader`` (weighted by tokens per batch)."""
    import torch

    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items() if k != "finding_targets"}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = model(**batch).loss
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(loss) * n
            tokens += n
    return total / max(tokens, 1)


def _cache_fits(n_images: int, image_processor) -> bool:
    """Keep decoded pixel tensors in memory between epochs when they fit in CACHE_BYTES."""
    size = getattr(image_processor, "size", None) or {}
    side_h, side_w = size.get("height", 384), size.get("width", 384)
    return n_images * 3 * side_h * side_w * 4 <= CACHE_BYTES


def finetune(cfg: "Config", progress: bool = True, max_steps: int | None = None) -> dict[str, Any]:
    """Fine-tune the base captioner on the training split (image -> report); keep the best checkpoint
    by validation loss in ``models/blip/``.

    Seeded. AdamW; the learning rate warms up, then decays (cosine) over the planned steps or
    ``captions.max_minutes``, whichever runs out first (:class:`TimeAwareCosine`); ``max_steps`` caps
    the steps (quick trials). Returns the history: validation loss before training and at its best,
    one row per epoch (caption loss, auxiliary label loss, validation caption loss), steps, skips.
    The result is recorded beside the model (``models/blip/finetune.json``); a rerun with the same
    params, base model and data returns it instead of training again.
    """
    from medxpert_utils.core import runtime
    from medxpert_utils.data import manifest
    from medxpert_utils.data.labels import CHEXPERT_LABELS as CHEXPERT

    params = cfg.captions
    runtime.seed_everything(cfg.seed)
    device = runtime.get_device(cfg.device)
    dtype = runtime.autocast_dtype(device, "auto")
    frame = manifest.read(cfg.run_dir)
    train = frame[frame["split"] == "train"]
    val = frame[frame["split"] == "val"]
    if len(val) > VAL_MAX:
        val = val.sample(VAL_MAX, random_state=cfg.seed)
    if train.empty or val.empty:
        raise UserError("BLIP fine-tuning needs train and val rows in the manifest - check data.split")
    base = prepare_base_model(cfg)
    key = _finetune_key(cfg, max_steps)
    recorded = None if stages.forced() else _recorded_result(cfg, key)  # --force: fine-tune again
    if recorded is not None:
        print(f"BLIP fine-tuning already finished ({recorded['steps']} steps; {cfg.paths.blip / RECORD_FILE}); delete "
              f"{cfg.paths.blip} to train again", file=sys.stderr)
        return recorded
    model, processor = load_blip(base, device)
    cache = _cache_fits(len(train) + len(val), processor.image_processor)
    max_length = text_max_length(cfg)
    targets = (train[list(CHEXPERT)].astype("Float32").fillna(0).to_numpy() == 1).astype(np.float32)
    train_ds = CaptionDataset(train["image_path"].tolist(), train["report"].fillna("").tolist(),
                              processor.image_processor, cache, targets)
    val_ds = CaptionDataset(val["image_path"].tolist(), val["report"].fillna("").tolist(), processor.image_processor,
                            cache)
    train_loader = _loader(train_ds, processor, model, params.batch_size, True, cfg.seed, max_length)
    val_loader = _loader(val_ds, processor, model, params.batch_size, False, cfg.seed, max_length)

    steps_per_epoch = len(train_loader)
    total_steps = (params.epochs * steps_per_epoch if max_steps is None
                   else min(max_steps, params.epochs * steps_per_epoch))

    with small_model_threads(model, device):
        result = _train(cfg, model, processor, train_loader, val_loader, train_ds, val_ds, device, dtype, total_steps,
                        progress)
    io.write_json(cfg.paths.blip / RECORD_FILE, {"key": key, "result": result})  # after the last save of the model
    return result


# Decoding and scoring settings: they change this stage's captions and scores, not the fine-tuned model
# (captions.max_new_tokens also sets the training targets' length, so it stays in).
NOT_IN_FINETUNE_KEY = ("captions.num_beams", "captions.max_images", "captions.prompt", "eval.chexbert")


def _finetune_key(cfg: "Config", max_steps: int | None) -> dict[str, Any]:
    """What a finished fine-tuning must match to be reused: the caption stage's key without its decoding params
    (:mod:`medxpert_utils.core.keys`: params, the manifest's content hash, the stage's version)."""
    from medxpert_utils.core.keys import stage_key

    return {"stage": stage_key(cfg, "04", without=NOT_IN_FINETUNE_KEY), "max_steps": max_steps}


def _recorded_result(cfg: "Config", key: dict[str, Any]) -> dict[str, Any] | None:
    """The result of a finished fine-tuning with the same key whose model is still there, else None."""
    from medxpert_utils.models.pretrained import read_record

    saved = read_record(cfg.paths.blip, cfg.paths.blip / RECORD_FILE)
    return saved.get("result") if isinstance(saved, dict) and saved.get("key") == key else None


class TimeAwareCosine:
    """Learning-rate factor: linear warm-up, then cosine decay over the training's progress, where
    progress is the larger of steps done / planned and time spent / ``budget_s``. With a time limit
    the rate still reaches ~0 by the end, instead of being cut off mid-schedule."""

    def __init__(self, total_steps: int, warmup_steps: int, budget_s: float | None = None, clock=time.monotonic):
        self.total, self.warmup, self.budget, self.clock = max(1, total_steps), warmup_steps, budget_s, clock
        self.start: float | None = None

    def progress(self, step: int) -> float:
        if self.start is None:
            self.start = self.clock()
        done = step / self.total
        if self.budget:
            done = max(done, (self.clock() - self.start) / self.budget)
        return min(1.0, done)

    def __call__(self, step: int) -> float:
        progress = self.progress(step)
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def _train(cfg, model, processor, train_loader, val_loader, train_ds, val_ds, device, dtype, total_steps: int,
           progress: bool) -> dict[str, Any]:
    import torch

    from medxpert_utils.core.progress import tqdm
    from medxpert_utils.models.pretrained import save_pretrained

    params = cfg.captions
    # Auxiliary finding head on the vision [CLS] output, used only while training (see AUX_LABEL_WEIGHT).
    head = torch.nn.Linear(model.config.vision_config.hidden_size, len(train_ds.targets[0])).to(device) \
        if train_ds.targets is not None and AUX_LABEL_WEIGHT > 0 else None
    trainable = [p for p in model.parameters() if p.requires_grad] + (list(head.parameters()) if head else [])
    optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=0.05)
    start = time.monotonic()
    initial = evaluate_loss(model, val_loader, device, dtype)
    budget = 60 * params.max_minutes if params.max_minutes else None
    train_start = time.monotonic()
    schedule = TimeAwareCosine(total_steps, max(1, int(0.05 * total_steps)), budget, clock=time.monotonic)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    best, history, step, stopped = initial, [], 0, None
    save_pretrained(model, processor, cfg.paths.blip)  # the untrained state is the best until an epoch beats it
    for epoch in range(1, params.epochs + 1):
        model.train()
        losses, aux_losses = [], []
        # counted by hand and closed here: a bar wrapping the loader shows a stale count when the loop breaks
        bar = tqdm(total=len(train_loader), desc=f"BLIP epoch {epoch}/{params.epochs}", disable=not progress,
                   leave=False)
        for batch in train_loader:
            bar.update(1)
            batch = {k: v.to(device) for k, v in batch.items()}
            targets = batch.pop("finding_targets", None)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = model(**batch)
                loss = out.loss
                if head is not None and targets is not None:
                    aux = torch.nn.functional.binary_cross_entropy_with_logits(head(out.image_embeds[:, 0]).float(),
                                                                               targets)
                    aux_losses.append(float(aux.detach()))
                    loss = loss + AUX_LABEL_WEIGHT * aux
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(float(out.loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if step >= total_steps:
                stopped = "max_steps" if epoch < params.epochs else None
                break
            if budget and time.monotonic() - train_start > budget:
                stopped = "max_minutes"
                break
        bar.close()
        val_loss = evaluate_loss(model, val_loader, device, dtype)
        history.append({"epoch": epoch, "step": step, "train_loss": float(np.mean(losses)) if losses else math.nan,
                        "train_label_loss": float(np.mean(aux_losses)) if aux_losses else None,
                        "val_loss": val_loss, "seconds": round(time.monotonic() - start, 1)})
        if val_loss < best:
            best = val_loss
            save_pretrained(model, processor, cfg.paths.blip)
        if stopped:
            break
    return {"base": prepare_base_model(cfg), "initial_val_loss": initial, "best_val_loss": best, "steps": step,
            "epochs_run": len(history), "stopped": stopped, "seconds": round(time.monotonic() - start, 1),
            "n_train": len(train_ds), "n_val": len(val_ds),
            "history": history}
