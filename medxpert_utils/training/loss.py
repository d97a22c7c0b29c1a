"""Contrastive objectives and the validation metric of CLIP training.

:func:`clip_loss` follows open_clip's ``loss.py``: normalise, scale by a learnable temperature
clamped at 100, symmetric cross-entropy against the diagonal (or against soft targets).
:func:`label_aware_targets` builds those soft targets so that duplicated reports stop being
negatives of each other. :func:`retrieval_top1` is the per-epoch validation accuracy, with the
retrieval metrics' report-group convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
              targets: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric contrastive loss of a batch of image and text embeddings (row i of each is a pair).

    Both are L2-normalised; cosine similarities are scaled by ``exp(logit_scale)``. Without
    ``targets`` it is CLIP's InfoNCE: mean of the image->text and text->image cross-entropies
    against the diagonal. With ``targets`` (B x B, rows summing to 1; row i = image i over texts)
    it is the soft cross-entropy in both directions (text rows use the renormalised transpose).
    """
    image_emb = F.normalize(image_emb, dim=-1)
    text_emb = F.normalize(text_emb, dim=-1)
    # CLIP clamps the temperature at 100: beyond that the softmax saturates and training can
    # collapse by sharpening the logits instead of learning the embedding.
    scale = logit_scale.exp().clamp(max=100.0)
    logits = scale * image_emb @ text_emb.t()
    if targets is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    targets = targets.to(logits.dtype)
    text_targets = targets.t() / targets.t().sum(dim=1, keepdim=True).clamp_min(1e-12)
    loss_i2t = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t2i = -(text_targets * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return (loss_i2t + loss_t2i) / 2


def label_aware_targets(report_groups: torch.Tensor | Sequence[int], label_sets: torch.Tensor | Sequence | None = None,
                        label_weight: float = 0.5) -> torch.Tensor:
    """Soft targets (B x B) for :func:`clip_loss`: pairs from the same report group are positives.

    Duplicated reports (the many identical "no acute cardiopulmonary process") are then no
    longer negatives of each other. With ``label_sets`` (a B x L multi-hot tensor or B hashable
    sets), pairs with identical label sets but different reports get weight ``label_weight``.
    Rows are normalised to sum to 1.

    Exact copies of a report get one text embedding, hence identical logits, and then the
    report-group targets give InfoNCE's loss and gradients exactly (the target mass moves between
    equal logits); they differ only for reports whose wording differs but normalises to one group.
    On exact duplicates it is ``label_sets`` that changes training.
    """
    groups = torch.as_tensor(report_groups).reshape(-1)
    targets = (groups[:, None] == groups[None, :]).to(torch.float32)
    if label_sets is not None and label_weight > 0:
        if isinstance(label_sets, torch.Tensor):
            same = (label_sets[:, None, :] == label_sets[None, :, :]).all(dim=-1)
        else:
            keys = [frozenset(s) if not isinstance(s, (str, bytes)) else s for s in label_sets]
            same = torch.tensor([[a == b for b in keys] for a in keys], dtype=torch.bool)
        targets = torch.where((targets == 0) & same, torch.full_like(targets, float(label_weight)), targets)
    return targets / targets.sum(dim=1, keepdim=True)


def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, groups: torch.Tensor | Sequence[int],
                     k: int = 1) -> dict[str, float]:
    """Recall@k in both directions with report-group ground truth (the retrieval metrics' convention).

    image->text: each image ranks the distinct report groups (one text per group, so identical
    reports are one candidate); a hit is its own group among the first ``k``. text->image: each
    distinct report group queries once; a hit is any image of that group among the first ``k``.
    """
    groups = torch.as_tensor(groups).reshape(-1).cpu()
    image_emb = F.normalize(image_emb.float(), dim=-1).cpu()
    text_emb = F.normalize(text_emb.float(), dim=-1).cpu()
    unique, first = np.unique(groups.numpy(), return_index=True)
    group_texts, unique_t = text_emb[torch.as_tensor(first)], torch.as_tensor(unique)
    sims = image_emb @ group_texts.t()  # images x groups
    top_groups = unique_t[sims.topk(min(k, sims.shape[1]), dim=1).indices]
    i2t = (top_groups == groups[:, None]).any(dim=1).float().mean().item()
    top_images = groups[sims.t().topk(min(k, sims.shape[0]), dim=1).indices]
    t2i = (top_images == unique_t[:, None]).any(dim=1).float().mean().item()
    return {"i2t": float(i2t), "t2i": float(t2i)}


def retrieval_top1(image_emb: torch.Tensor, text_emb: torch.Tensor,
                   groups: torch.Tensor | Sequence[int]) -> dict[str, float]:
    """Top-1 accuracies (:func:`retrieval_recall` at k = 1): the per-epoch validation metric."""
    return retrieval_recall(image_emb, text_emb, groups, k=1)
