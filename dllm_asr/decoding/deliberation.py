"""Deliberation of a prior transcript (Whisper-LLaDA sec. 3.3.1, PAPERS.md 3e).

The prior (e.g. an AR recogniser's transcript) fills the response block, length = its token
count. A fraction p of it is re-masked and the model re-decodes those positions with `decode`,
which never touches an unmasked token before the response's first EOS. Three ways to choose
the masked positions: at random, the lowest-confidence ones, or one chunk at a time (semi-AR).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .commit import rank_descending
from .confidence import make_generator
from .options import DecodeOptions
from .predictor import MaskPredictor, call_predictor
from .result import DecodeResult, concat_results


def masked_count(length: int, ratio: float) -> int:
    """Positions to re-mask in a row of `length` tokens at ratio p: round-half-up of p * length."""
    return int(ratio * length + 0.5)


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"deliberation: mask ratio p must be in [0, 1], got {ratio}")


def _inside(prior: Tensor, lengths: Tensor) -> Tensor:
    positions = torch.arange(prior.shape[1], device=prior.device).expand_as(prior)
    return positions < lengths.to(prior.device)[:, None]


def mask_lowest(prior: Tensor, lengths: Tensor, scores: Tensor, ratio: float, mask_id: int) -> Tensor:
    """Mask, per row, the masked_count(n_i, p) positions with the lowest scores (ties: lower index)."""
    inside = _inside(prior, lengths)
    ranks = rank_descending((-scores).masked_fill(~inside, float("-inf")))
    quota = torch.tensor([masked_count(int(n), ratio) for n in lengths.tolist()], device=prior.device)
    return prior.masked_fill(inside & (ranks < quota[:, None]), mask_id)


def mask_random(
    prior: Tensor, lengths: Tensor, ratio: float, mask_id: int, seed: int | None = None
) -> Tensor:
    """Random masking: a uniformly chosen fraction p of each row's prior tokens becomes [MASK].

    prior: LongTensor (B, L); lengths: (B,). Seeded with `seed` (reproducible). Returns (B, L).
    """
    _check_ratio(ratio)
    scores = torch.rand(prior.shape, generator=make_generator(seed)).to(prior.device)
    return mask_lowest(prior, lengths, scores, ratio, mask_id)


def mask_low_confidence(
    predictor: MaskPredictor,
    prior: Tensor,
    lengths: Tensor,
    ratio: float,
    mask_id: int,
    neutral_id: int,
) -> tuple[Tensor, Tensor]:
    """Low-confidence masking: one scoring pass, then mask the prior tokens the model doubts most.

    The response slots are all filled with `neutral_id` (so the score reflects prompt and audio,
    not the prior itself); the score of position j is p(prior token j) under the softmax at j.
    Returns (init LongTensor (B, L), scores float64 (B, L), +inf at padding). Costs one forward
    pass per row.
    """
    _check_ratio(ratio)
    inside = _inside(prior, lengths)
    neutral = torch.full_like(prior, neutral_id)
    rows = torch.arange(prior.shape[0], device=prior.device)
    logits = call_predictor(predictor, neutral, rows, lengths.to(prior.device))
    probs = torch.softmax(logits.to(torch.float64), dim=-1)
    scores = probs.gather(-1, prior.to(probs.device).unsqueeze(-1)).squeeze(-1).to(prior.device)
    scores = scores.masked_fill(~inside, float("inf"))
    return mask_lowest(prior, lengths, scores, ratio, mask_id), scores


def chunk_bounds(length: int, chunks: int) -> list[tuple[int, int]]:
    """C near-equal chunks [lo, hi) of a row of `length` positions, cut at (c * length) // C."""
    cuts = [(c * length) // chunks for c in range(chunks + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def deliberate_semi_ar(
    predictor: MaskPredictor, prior: Tensor, lengths: Tensor, chunks: int, options: DecodeOptions
) -> DecodeResult:
    """Semi-AR deliberation: fully mask chunk c and re-decode it, c = 0..C-1, left to right.

    The other chunks show the prior (right) or the re-decoded tokens (left). Each chunk is decoded
    with `options` (steps=1 gives the paper's one pass per chunk). With `options.eos_early_stop`, a
    row whose response already ended (an EOS) before chunk c keeps that chunk. Returns the chained accounting of C decodes.
    """
    from .engine import decode  # the engine imports this module's siblings; avoid a cycle

    if chunks < 1:
        raise ValueError(f"deliberate_semi_ar: chunks must be >= 1, got {chunks}")
    if options.prior_guided:
        raise ValueError("deliberate_semi_ar: options.prior_guided must be False")
    tokens, parts = prior.clone(), []
    for c in range(chunks):
        for i, n in enumerate(lengths.tolist()):
            lo, hi = chunk_bounds(int(n), chunks)[c]
            ended = options.eos_early_stop and bool((tokens[i, :lo] == options.eos_id).any())
            if not ended:
                tokens[i, lo:hi] = options.mask_id
        part = decode(predictor, tokens, options, lengths)
        tokens = part.tokens.clone()
        parts.append(part)
    return concat_results(parts, options.eos_id)
