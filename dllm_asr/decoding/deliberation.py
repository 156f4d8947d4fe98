"""Deliberation of a prior transcript (Whisper-LLaDA sec. 3.3.1; docs/algorithms.md).

The prior (e.g. an AR recogniser's transcript) fills the response block, length = its token
count. A fraction p of it is re-masked and the model re-decodes those positions with `decode`,
which never touches an unmasked token. Three ways to choose the masked positions: at random,
the lowest-confidence ones, or one chunk at a time (semi-AR).

Where the paper is silent its code decides (the "reference" rules, the default here):
floor(p * n) tokens are re-masked, semi-AR chunks are n // C tokens with the remainder in the
last, and an EOS filled into the middle of a transcript is dropped (`drop_eos`). The
"balanced" alternatives: round half up, near-equal chunks, and the transcript ends at an EOS.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from dllm_asr.decoding.commit import rank_descending
from dllm_asr.decoding.confidence import make_generator
from dllm_asr.decoding.engine import decode
from dllm_asr.decoding.options import DecodeOptions
from dllm_asr.decoding.predictor import MaskPredictor, call_predictor
from dllm_asr.decoding.result import DecodeResult, concat_results


ROUNDINGS = ("floor", "half-up")
CHUNK_SPLITS = ("remainder-last", "even")


def masked_count(length: int, ratio: float, rounding: str = "floor") -> int:
    """Positions to re-mask in a row of `length` tokens at ratio p.

    "floor": int(length * p), as Whisper-LLaDA's code (5 tokens at 0.3 -> 1); "half-up": the
    nearest integer, halves up (5 at 0.3 -> 2).
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"deliberation: rounding must be one of {ROUNDINGS}, got {rounding!r}")
    return int(length * ratio) if rounding == "floor" else int(length * ratio + 0.5)


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"deliberation: mask ratio p must be in [0, 1], got {ratio}")


def _check_chunks(chunks: int) -> None:
    if chunks < 1:
        raise ValueError(f"deliberate_semi_ar: chunks must be >= 1, got {chunks}")


def _inside(prior: Tensor, lengths: Tensor) -> Tensor:
    positions = torch.arange(prior.shape[1], device=prior.device).expand_as(prior)
    return positions < lengths.to(prior.device)[:, None]


def mask_lowest(prior: Tensor, lengths: Tensor, scores: Tensor, ratio: float, mask_id: int,
                rounding: str = "floor") -> Tensor:
    """Mask, per row, the masked_count(n_i, p) positions with the lowest scores (ties: lower index)."""
    inside = _inside(prior, lengths)
    ranks = rank_descending((-scores).masked_fill(~inside, float("-inf")))
    quota = torch.tensor([masked_count(int(n), ratio, rounding) for n in lengths.tolist()], device=prior.device)
    return prior.masked_fill(inside & (ranks < quota[:, None]), mask_id)


def mask_random(
    prior: Tensor, lengths: Tensor, ratio: float, mask_id: int, seed: int | None = None, rounding: str = "floor"
) -> Tensor:
    """Random masking: a uniformly chosen fraction p of each row's prior tokens becomes [MASK].

    prior: LongTensor (B, L); lengths: (B,). Seeded with `seed` (reproducible). Returns (B, L).
    """
    _check_ratio(ratio)
    scores = torch.rand(prior.shape, generator=make_generator(seed)).to(prior.device)
    return mask_lowest(prior, lengths, scores, ratio, mask_id, rounding)


def mask_low_confidence(
    predictor: MaskPredictor,
    prior: Tensor,
    lengths: Tensor,
    ratio: float,
    mask_id: int,
    neutral_id: int,
    rounding: str = "floor",
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
    return mask_lowest(prior, lengths, scores, ratio, mask_id, rounding), scores


def chunk_bounds(length: int, chunks: int, split: str = "remainder-last") -> list[tuple[int, int]]:
    """C chunks [lo, hi) of a row of `length` positions.

    "remainder-last" (Whisper-LLaDA's code): length // C each, the last one takes the rest
    (10 in 4 -> 2, 2, 2, 4; fewer tokens than chunks leaves the first chunks empty).
    "even": cut at (c * length) // C (10 in 4 -> 2, 3, 2, 3).
    """
    if split not in CHUNK_SPLITS:
        raise ValueError(f"deliberation: chunk split must be one of {CHUNK_SPLITS}, got {split!r}")
    if split == "even":
        cuts = [(c * length) // chunks for c in range(chunks + 1)]
    else:
        cuts = [c * (length // chunks) for c in range(chunks)] + [length]
    return list(zip(cuts[:-1], cuts[1:]))


def deliberate_semi_ar(
    predictor: MaskPredictor, prior: Tensor, lengths: Tensor, chunks: int, options: DecodeOptions,
    split: str = "remainder-last",
) -> DecodeResult:
    """Semi-AR deliberation: fully mask chunk c and re-decode it, c = 0..C-1, left to right.

    The other chunks show the prior (right) or the re-decoded tokens (left). Each chunk is decoded
    with `options`, so `options.steps` is the steps of one chunk (steps=1 gives one pass per
    chunk); `split` is `chunk_bounds`'. With `options.eos_early_stop`, a row whose response
    already ended (an EOS) before chunk c keeps that chunk. Returns the chained accounting of C decodes.
    """
    _check_chunks(chunks)
    if options.prior_guided:
        raise ValueError("deliberate_semi_ar: options.prior_guided must be False")
    tokens, parts = prior.clone(), []
    for c in range(chunks):
        for i, n in enumerate(lengths.tolist()):
            lo, hi = chunk_bounds(int(n), chunks, split)[c]
            ended = options.eos_early_stop and bool((tokens[i, :lo] == options.eos_id).any())
            if not ended:
                tokens[i, lo:hi] = options.mask_id
        part = decode(predictor, tokens, options, lengths)
        tokens = part.tokens.clone()
        parts.append(part)
    return concat_results(parts, options.eos_id)


RULES = ("reference", "balanced")


def deliberate(
    predictor: MaskPredictor, prior: Tensor, lengths: Tensor, options: DecodeOptions, mask: str = "semi-ar",
    ratio: float = 0.3, chunks: int = 2, rules: str = "reference", neutral_id: int | None = None,
) -> DecodeResult:
    """Deliberate prior transcripts (B, L) of `lengths` (B,): re-mask some tokens, decode them again.

    mask: "random" | "low-confidence" (scored against a block of `neutral_id`, default EOS) |
    "semi-ar" (`chunks` chunks, one after another). `options.steps` is the step budget: with
    rules="reference" (Whisper-LLaDA's code) it is shared by the semi-AR chunks, counts are
    floored, chunks are n // C with the rest last and an EOS filled mid-transcript is dropped;
    with "balanced" the steps are per chunk, counts rounded half up, chunks near-equal, and the
    transcript ends at its first EOS. Random and low-confidence decode with min(steps, masks) steps.
    """
    if rules not in RULES:
        raise ValueError(f"deliberation: rules must be one of {RULES}, got {rules!r}")
    reference = rules == "reference"
    rounding, split = ("floor", "remainder-last") if reference else ("half-up", "even")
    options = replace(options, eos_early_stop=not reference)
    if mask == "semi-ar":
        _check_chunks(chunks)  # before the step budget is divided by it
        longest_chunk = -(-int(lengths.max()) // chunks)
        steps = options.steps // chunks if reference else min(options.steps, longest_chunk)
        result = deliberate_semi_ar(predictor, prior, lengths, chunks, replace(options, steps=max(1, steps)), split)
    else:
        if mask == "random":
            init = mask_random(prior, lengths, ratio, options.mask_id, seed=options.seed, rounding=rounding)
        elif mask == "low-confidence":
            neutral = options.eos_id if neutral_id is None else neutral_id
            init, _ = mask_low_confidence(predictor, prior, lengths, ratio, options.mask_id, neutral, rounding)
        else:
            raise ValueError(f"deliberation: mask must be random, low-confidence or semi-ar, got {mask!r}")
        masked = int((init == options.mask_id).sum(dim=1).max())
        result = decode(predictor, init, replace(options, steps=max(1, min(options.steps, masked))), lengths)
    return drop_eos(result, options.eos_id) if reference else result


def drop_eos(result: DecodeResult, eos_id: int) -> DecodeResult:
    """The result with every EOS inside each row's block removed and the tokens after it moved up.

    Whisper-LLaDA's deliberation keeps a transcript's tokens after an EOS the model filled into
    one of its masks (its text decoding skips special tokens); this gives the same tokens.
    tokens, confidence: (B, L), compacted per row; lengths: the non-EOS count per row.
    """
    tokens = result.tokens
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    keep = (tokens != eos_id) & (positions < result.block_lengths.to(tokens.device)[:, None])
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    kept = keep.sum(dim=1)
    compact = tokens.gather(1, order).masked_fill(positions >= kept[:, None], eos_id)
    confidence = result.confidence
    if confidence is not None:
        moved = confidence.gather(1, order.to(confidence.device))
        confidence = moved.masked_fill((positions >= kept[:, None]).to(confidence.device), float("nan"))
    return replace(result, tokens=compact, lengths=kept.to(result.lengths.device), confidence=confidence)
