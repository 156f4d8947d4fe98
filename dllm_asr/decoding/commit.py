"""Which masked positions commit at a step, and the per-row EOS early stop.

docs/algorithms.md 3a (top-k by confidence), 3d (confidence threshold), 3c (EOS early stop).
All functions take `scores` (B, L) float with -inf at positions that may not commit.
"""
from __future__ import annotations

import torch
from torch import Tensor


def rank_descending(scores: Tensor) -> Tensor:
    """Rank of every position by score within its row, 0 = best; ties go to the lower index."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def commit_most_confident(scores: Tensor, k: Tensor) -> Tensor:
    """BoolTensor (B, L): the k[i] best-scored candidates of each row (docs/algorithms.md 3a).

    k: LongTensor (B,). Never selects a -inf (non-candidate) position, so k larger than a row's
    candidate count commits all of them.
    """
    candidates = scores > float("-inf")
    return candidates & (rank_descending(scores) < k.to(scores.device)[:, None])


def commit_top_k(scores: Tensor, k: Tensor) -> Tensor:
    """BoolTensor (B, L): each row's k[i] best candidates as `torch.topk` picks them, ties in its
    order, as LLaDA's reference loop (`numerics="reference"`); otherwise `commit_most_confident`."""
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    candidates = (scores > float("-inf")).sum(dim=1)
    for row, count in enumerate(torch.minimum(k.to(scores.device), candidates).tolist()):
        if count:
            chosen[row, torch.topk(scores[row], count).indices] = True
    return chosen


def commit_above_threshold(scores: Tensor, threshold: float) -> Tensor:
    """BoolTensor (B, L): Fast-dLLM parallel commit (docs/algorithms.md 3d).

    Every candidate with score >= threshold, and always each row's single best candidate, so a
    step commits at least one token in every row that has a candidate.
    """
    candidates = scores > float("-inf")
    chosen = candidates & (scores >= threshold)
    best = torch.zeros_like(chosen)
    best.scatter_(1, scores.argmax(dim=1, keepdim=True), True)
    return chosen | (best & candidates)


def first_true(flags: Tensor) -> Tensor:
    """Per row of flags (B, L), the index of the first True, or L when none. LongTensor (B,)."""
    batch, width = flags.shape
    positions = torch.arange(width + 1, device=flags.device).expand(batch, width + 1)
    padded = torch.cat([flags, torch.ones(batch, 1, dtype=torch.bool, device=flags.device)], dim=1)
    return torch.where(padded, positions, width + 1).min(dim=1).values


def apply_eos_stop(tokens: Tensor, lengths: Tensor, eos_id: int) -> Tensor:
    """Per-row EOS early stop (docs/algorithms.md 3c): positions after a row's first EOS become EOS.

    tokens: (B, L); lengths: (B,) with positions >= lengths[i] left alone (padding). Masks before
    the first EOS stay masked and are still decoded. Returns a new tensor.
    """
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    inside = positions < lengths.to(tokens.device)[:, None]
    first_eos = first_true((tokens == eos_id) & inside)
    after_eos = inside & (positions > first_eos[:, None])
    return tokens.masked_fill(after_eos, eos_id)
