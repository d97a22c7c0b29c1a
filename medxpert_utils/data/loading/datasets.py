"""PyTorch datasets and loaders for image-report pairs and for images alone.

Images are decoded inside DataLoader workers and turned into tensors by
:class:`~medxpert_utils.data.loading.transforms.ImageTransform`. Training passes uint8 pixels from the
workers and normalises whole batches on the device (``raw_pixels``); its augmentation is drawn per image
and applied to the whole batch in the collate.

Augmentation randomness is a function of ``(seed, epoch, row)`` alone, so a batch is the same
whichever worker builds it and a resumed run sees exactly the images an uninterrupted one saw.
Reports are tokenised once (then kept) and padded per batch in the collate function (padding to the
longest, truncation at ``max_length``).

Images are read with :func:`~medxpert_utils.data.images.load_manifest_image`: the data stage has
decoded every manifest image already, so one that fails now changed since, and loading stops with
:class:`~medxpert_utils.data.images.ImageChangedError` (one line naming the file). In a DataLoader
worker process the error travels as a batch carrying ``image_error`` (an exception raised there would
reach the caller wrapped in a traceback); the loaders of this module raise it in the calling process,
and :func:`raise_image_error` does so for a DataLoader built elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from medxpert_utils.data.images import ImageChangedError, load_manifest_image
from medxpert_utils.data.loading.transforms import N_DRAWS, ImageTransform, eval_image_transform, train_image_transform

IMAGE_ERROR = "image_error"  # key of a batch whose image failed in a worker process: the one-line message


def _in_worker() -> bool:
    """True inside a DataLoader worker process, where an exception would reach the caller wrapped."""
    return get_worker_info() is not None


def raise_image_error(batch: object) -> None:
    """Raise the :class:`ImageChangedError` a worker process met, carried by ``batch``; else do nothing."""
    if isinstance(batch, dict) and IMAGE_ERROR in batch:
        raise ImageChangedError(batch[IMAGE_ERROR])


class ManifestLoader(DataLoader):
    """A DataLoader that raises, in the calling process, the :class:`ImageChangedError` a worker met."""

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            raise_image_error(batch)
            yield batch


def positive_label_matrix(frame: pd.DataFrame) -> np.ndarray:
    """``rows x 14`` float32 multi-hot of positive (== 1) CheXpert labels; absent columns count as 0."""
    from medxpert_utils.data.labels import CHEXPERT_LABELS

    out = np.zeros((len(frame), len(CHEXPERT_LABELS)), dtype=np.float32)
    for j, name in enumerate(CHEXPERT_LABELS):
        if name in frame.columns:
            out[:, j] = pd.to_numeric(frame[name], errors="coerce").eq(1).fillna(False).to_numpy(dtype=np.float32)
    return out


class ImageTextDataset(Dataset):
    """Manifest rows as dicts of ``pixel_values``, ``text``, ``index``, ``report_group`` and ``labels``.

    ``index`` is the row's position in ``frame``. Keys may be plain row positions or
    ``(row, epoch)`` pairs (from :class:`EpochBatchSampler`); a row's augmentation draws are row
    ``row`` of a table drawn from ``(seed, epoch)``. An image that no longer decodes raises
    :class:`ImageChangedError` (in a worker process: an item ``{"image_error": message}``). With
    ``raw`` the pixels stay uint8 and unnormalised (see :meth:`ImageTransform.raw`); augmented raw
    items carry their source and draws, for the collate to augment the whole batch at once.
    """

    def __init__(self, frame: pd.DataFrame, image_transform: ImageTransform, text_column: str = "report",
                 seed: int = 0, raw: bool = False, cache_mb: float = 0.0):
        from medxpert_utils.data.manifest import report_groups

        self.paths = frame["image_path"].astype(str).tolist()
        self.texts = frame[text_column].fillna("").astype(str).tolist()
        if "report_group" in frame.columns:
            self.groups = frame["report_group"].to_numpy(dtype=np.int64)
        else:
            self.groups = report_groups(self.texts)
        self.labels = positive_label_matrix(frame)
        self.transform = image_transform
        self.seed = int(seed)
        self.raw = bool(raw)
        self.batch_augment = self.raw and image_transform.augment is not None
        # Decoded images (for batch augmentation: their reduced source tensors) kept in memory up to
        # cache_mb, first come, first kept: epochs after the first skip decoding, which costs as much
        # as the augmentation. Each worker process has its own.
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: dict[int, Image.Image | torch.Tensor] = {}
        self._cached_bytes = 0
        self._draw_table: tuple[int, np.ndarray] | None = None  # (epoch, rows x N_DRAWS)

    def __len__(self) -> int:
        return len(self.paths)

    def _image(self, index: int) -> Image.Image | torch.Tensor:
        """The decoded image, or with batch augmentation its source tensor (cached within the budget)."""
        item = self._cache.get(index)
        if item is None:
            img = load_manifest_image(self.paths[index])
            if self.batch_augment:
                item = self.transform.source_tensor(img)
                size = item.numel()
            else:
                item, size = img, img.width * img.height * len(img.getbands())
            if self._cached_bytes + size <= self.cache_bytes:
                self._cache[index] = item
                self._cached_bytes += size
        return item

    def draws(self, index: int, epoch: int) -> np.ndarray:
        """Row ``index``'s augmentation draws in ``epoch``: a function of ``(seed, epoch, index)`` alone.

        One table per epoch (vectorised, then looked up) instead of a generator per item, whose
        set-up alone cost more than the rest of an item's loading.
        """
        if self._draw_table is None or self._draw_table[0] != epoch:
            self._draw_table = (epoch, np.random.default_rng([self.seed, epoch]).random((len(self), N_DRAWS)))
        return self._draw_table[1][index]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
        try:
            img = self._image(index)
        except ImageChangedError as exc:
            if not _in_worker():
                raise
            return {IMAGE_ERROR: str(exc)}
        draws = self.draws(index, epoch) if self.transform.augment is not None else None
        if self.batch_augment:  # augmented in the collate, for the whole batch at once
            image = {"augment": {"source": img, "draws": draws}}
        else:
            image = {"pixel_values": self.transform.raw(img, draws) if self.raw else self.transform(img, draws)}
        return {
            **image,
            "text": self.texts[index],
            "index": index,
            "report_group": int(self.groups[index]),
            "labels": self.labels[index],
        }


class ClipCollate:
    """Stack images and tokenise the batch's reports (keys: ``n``, ``n_skipped`` (always 0), ``pixel_values``,
    ``input_ids``, ``attention_mask``, ``index``, ``report_group``, ``labels``).

    A batch with an item whose image failed in a worker becomes ``{"image_error": message, "n": 0,
    "n_skipped": len(items)}``, which :func:`raise_image_error` turns into the error.

    Each distinct report is tokenised once (truncated at ``max_length``, unpadded) and kept, up to
    ``max_cached_texts`` of them; batches are then padded from the kept ids, which gives exactly
    what the tokenizer's ``padding="longest"`` call gives. Medical reports repeat, and tokenising
    every batch again would cost a small model a few percent of its step on every epoch. Ids are kept
    as int32: MIMIC-CXR's ~200k distinct reports of ~100 tokens take ~80 MB per loader process.
    """

    def __init__(self, tokenizer: Any, max_length: int, transform: ImageTransform | None = None,
                 max_cached_texts: int = 2**20):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.transform = transform  # applies the batch augmentation of items that carry "augment" draws
        self.max_cached_texts = int(max_cached_texts)
        self._ids: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` of ``texts`` padded to the longest (the tokenizer's own call)."""
        pad_id = getattr(self.tokenizer, "pad_token_id", None)
        if pad_id is None:  # nothing to pad with: let the tokenizer decide (and raise)
            enc = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        missing = [text for text in dict.fromkeys(texts) if text not in self._ids]
        found = {}
        if missing:
            enc = self.tokenizer(missing, truncation=True, max_length=self.max_length)
            found = {text: np.asarray(ids, dtype=np.int32) for text, ids in zip(missing, enc["input_ids"])}
            room = max(0, self.max_cached_texts - len(self._ids))
            self._ids.update(dict(list(found.items())[:room]))
        seqs = [self._ids.get(text, found.get(text)) for text in texts]
        longest = max(len(ids) for ids in seqs)
        input_ids = np.full((len(seqs), longest), pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), longest), dtype=np.int64)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for row, ids in enumerate(seqs):
            cols = slice(longest - len(ids), longest) if left else slice(0, len(ids))
            input_ids[row, cols] = ids
            mask[row, cols] = 1
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        failed = _failure(items)
        if failed is not None:
            return failed
        batch: dict[str, Any] = {"n": len(items), "n_skipped": 0}
        if not items:
            return batch
        batch.update(
            pixel_values=(self.transform.augment_batch([item["augment"] for item in items]) if "augment" in items[0]
                          else torch.stack([item["pixel_values"] for item in items])),
            **self.encode([item["text"] for item in items]),
            index=torch.tensor([item["index"] for item in items], dtype=torch.long),
            report_group=torch.tensor([item["report_group"] for item in items], dtype=torch.long),
            labels=torch.from_numpy(np.stack([item["labels"] for item in items])),
        )
        return batch


def _failure(items: Sequence[object]) -> dict[str, Any] | None:
    """The batch that carries the first failed item's message out of a worker, or None when none failed."""
    for item in items:
        if isinstance(item, dict) and IMAGE_ERROR in item:
            return {IMAGE_ERROR: item[IMAGE_ERROR], "n": 0, "n_skipped": len(items)}
    return None


class EpochBatchSampler(Sampler):
    """Batches of ``(row, epoch)`` keys; the order is a permutation seeded by ``(seed, epoch)``.

    Reproducible from the seed alone, so a resumed run can start at ``start_batch`` of an epoch
    without replaying it. Under several processes each rank takes its slice of every global
    batch (``batch_size`` rows per process). ``num_batches`` caps the batches per epoch.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 num_batches: int | None = None, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.shuffle, self.seed = int(n), int(batch_size), bool(shuffle), int(seed)
        self.drop_last, self.rank, self.world_size = bool(drop_last), int(rank), int(world_size)
        self.num_batches = num_batches
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def batches_per_epoch(self) -> int:
        global_batch = self.batch_size * self.world_size
        full, rest = divmod(self.n, global_batch)
        count = full if (self.drop_last or rest == 0) else full + 1
        return count if self.num_batches is None else min(count, int(self.num_batches))

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.order(self.epoch)
        global_batch = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch()):
            rows = order[b * global_batch:(b + 1) * global_batch]
            rows = rows[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            yield [(int(r), self.epoch) for r in rows]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)


def tokenizer_max_length(processor: Any, cap: int | None = None) -> int:
    """Truncation length: the tokenizer's limit, the text tower's positions and ``cap``, whichever is least."""
    tokenizer = getattr(processor, "tokenizer", processor)
    limit = int(min(getattr(tokenizer, "model_max_length", 77) or 77, 4096))
    return min(limit, int(cap)) if cap else limit


_PREFETCH_BYTES = 4 * 2**30  # host memory the batches waiting in worker queues may take


def _loader_kwargs(num_workers: int, device: Any, batch_bytes: int) -> dict[str, Any]:
    if num_workers > 0:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenise in workers, not with threads
    pin = device is not None and torch.device(device).type == "cuda"
    kwargs: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin}
    if num_workers > 0:
        # Each worker builds whole batches; with huge batches 4 queued per worker would fill the host.
        prefetch = int(max(1, min(4, _PREFETCH_BYTES // max(1, batch_bytes * num_workers))))
        kwargs.update(persistent_workers=True, prefetch_factor=prefetch)
    return kwargs


def make_loader(frame: pd.DataFrame, processor: Any, batch_size: int, shuffle: bool, augment: Any | None,
                num_workers: int, seed: int, *, max_length: int | None = None, drop_last: bool | None = None,
                num_batches: int | None = None, device: Any = None, rank: int = 0, world_size: int = 1,
                raw_pixels: bool = False, cache_mb: float = 0.0) -> ManifestLoader:
    """DataLoader of tokenised image-report batches over ``frame`` (see :class:`ClipCollate` for the keys).

    The batch sampler is ``loader.batch_sampler`` (:class:`EpochBatchSampler`): call its
    ``set_epoch(epoch, start_batch)`` before iterating. ``drop_last`` defaults to ``shuffle``
    (training batches are full so every step sees the same number of negatives). With
    ``raw_pixels`` batches carry uint8 pixels; normalise them on the device with
    ``loader.dataset.transform.normalise_batch``. ``cache_mb`` keeps up to that many MB of decoded
    images in memory across epochs (transforms still run on every pass), split between the workers.
    An image that no longer decodes stops the iteration with :class:`ImageChangedError`.
    """
    transform = train_image_transform(processor, augment) if augment is not None else eval_image_transform(processor)
    dataset = ImageTextDataset(frame.reset_index(drop=True), transform, seed=seed, raw=raw_pixels,
                               cache_mb=cache_mb / max(1, num_workers))
    drop = shuffle if drop_last is None else drop_last
    if drop and len(dataset) < batch_size * world_size:
        drop = False  # a split smaller than one batch still trains
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed=seed, drop_last=drop, num_batches=num_batches,
                                rank=rank, world_size=world_size)
    collate = ClipCollate(getattr(processor, "tokenizer", processor), tokenizer_max_length(processor, max_length),
                          transform)
    # A private generator: iterating the loader then never draws from the global torch RNG.
    generator = torch.Generator().manual_seed(int(seed))
    out_h, out_w = transform.output_size
    batch_bytes = batch_size * out_h * out_w * (1 if raw_pixels else 3 * 4)
    return ManifestLoader(dataset, batch_sampler=sampler, collate_fn=collate, generator=generator,
                          **_loader_kwargs(num_workers, device, batch_bytes))


class ImageDataset(Dataset):
    """Images alone (for embedding a corpus): item ``(pixel_values, position)``.

    An image that no longer decodes raises :class:`ImageChangedError` (in a worker process: an item
    ``{"image_error": message}``, see :func:`collate_images`).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], transform: ImageTransform):
        self.paths = [os.fspath(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | dict[str, str]:
        try:
            return self.transform(load_manifest_image(self.paths[index])), int(index)
        except ImageChangedError as exc:
            if not _in_worker():
                raise
            return {IMAGE_ERROR: str(exc)}


def collate_images(items: Sequence[tuple[torch.Tensor, int] | dict[str, str]]) -> dict[str, Any]:
    """Stack a batch of images: ``n``, ``n_skipped`` (always 0), ``pixel_values`` and their ``index`` positions.

    A batch with an item that failed in a worker becomes ``{"image_error": message, "n": 0, "n_skipped":
    len(items)}``: :func:`make_image_loader` raises it; a DataLoader built elsewhere calls
    :func:`raise_image_error` on each batch.
    """
    failed = _failure(items)
    if failed is not None:
        return failed
    out: dict[str, Any] = {"n": len(items), "n_skipped": 0}
    if items:
        out["pixel_values"] = torch.stack([item[0] for item in items])
        out["index"] = torch.tensor([item[1] for item in items], dtype=torch.long)
    return out


def make_image_loader(paths: Sequence[str | os.PathLike], processor: Any, batch_size: int, num_workers: int,
                      device: Any = None) -> ManifestLoader:
    """In-order DataLoader of images for embedding, with the eval transform; batches from :func:`collate_images`."""
    transform = eval_image_transform(processor)
    out_h, out_w = transform.output_size
    return ManifestLoader(ImageDataset(paths, transform), batch_size=batch_size, shuffle=False,
                          collate_fn=collate_images,
                          **_loader_kwargs(num_workers, device, batch_size * out_h * out_w * 3 * 4))
