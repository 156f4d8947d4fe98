"""Masked-diffusion decoding: LLaDA's low-confidence remasking, semi-AR blocks, Fast-dLLM threshold.

docs/algorithms.md 3a-3d. Every row keeps its own schedule (`RowSchedule`), so rows of different
lengths, at different sub-blocks or finished early share one forward pass per step; only the
rows still decoding are sent to the predictor.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dllm_asr.decoding.commit import (apply_eos_stop, commit_above_threshold, commit_most_confident,
                                      commit_top_k)
from dllm_asr.decoding.confidence import predict_positions
from dllm_asr.decoding.options import DecodeOptions
from dllm_asr.decoding.predictor import MaskPredictor
from dllm_asr.decoding.result import DecodeResult, StepLog
from dllm_asr.decoding.steps import RowSchedule

Window = tuple[int, int, "int | None"]


def fill_padding(tokens: Tensor, lengths: Tensor, value: int) -> Tensor:
    """tokens (B, L) with positions >= lengths[i] set to `value` (a new tensor)."""
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    return tokens.masked_fill(positions >= lengths.to(tokens.device)[:, None], value)


def window_mask(windows: list[Window], width: int, device: torch.device) -> Tensor:
    """BoolTensor (B', width): True inside each row's current sub-block [lo, hi) (docs/algorithms.md 3b).

    Positions right of the sub-block get -inf scores through this mask, so they never commit early.
    """
    positions = torch.arange(width, device=device)
    lo = torch.tensor([w[0] for w in windows], device=device)
    hi = torch.tensor([w[1] for w in windows], device=device)
    return (positions >= lo[:, None]) & (positions < hi[:, None])


def choose_commits(scores: Tensor, windows: list[Window], options: DecodeOptions) -> Tensor:
    """BoolTensor (B', L'): positions to commit, by quota (3a) or by threshold (3d)."""
    if options.threshold is not None:
        return commit_above_threshold(scores, options.threshold)
    quota = torch.tensor([w[2] for w in windows], dtype=torch.long, device=scores.device)
    if options.numerics == "reference":
        return commit_top_k(scores, quota)
    return commit_most_confident(scores, quota)


def diffusion_step(
    predictor: MaskPredictor,
    tokens: Tensor,
    lengths: Tensor,
    rows: list[int],
    windows: list[Window],
    options: DecodeOptions,
    generator: torch.Generator | None,
    log: StepLog,
) -> tuple[list[int], torch.Generator]:
    """One forward pass over `rows`; commits in place into `tokens` (B, L) and the committed
    tokens' probabilities into `log`.

    Returns the number of positions each row committed (EOS fill included) and the generator.
    """
    row_index = torch.tensor(rows, dtype=torch.long, device=tokens.device)
    row_lengths = lengths[row_index]
    width = int(row_lengths.max())
    block = tokens[row_index, :width]
    masked = block == options.mask_id
    candidates = masked & window_mask(windows, width, tokens.device)
    bounds = torch.tensor([w[:2] for w in windows], dtype=torch.long, device=tokens.device)
    predicted, scores, probs, generator = predict_positions(
        predictor, block, row_index, row_lengths, candidates, options.temperature, options.remasking,
        generator, options.mask_id, options.seed, model_precision=options.numerics == "reference", windows=bounds
    )
    chosen = choose_commits(scores, windows, options)
    log.record_confidence(row_index, chosen, probs)
    updated = torch.where(chosen, predicted, block)
    if options.eos_early_stop:
        updated = apply_eos_stop(updated, row_lengths, options.eos_id)
    tokens[row_index, :width] = updated
    committed = (masked & (updated != options.mask_id)).sum(dim=1)
    return committed.tolist(), generator


def decode_diffusion(
    predictor: MaskPredictor, init: Tensor, options: DecodeOptions, lengths: Tensor
) -> DecodeResult:
    """Decode every mask of `init` (B, L) within `lengths` (B,); see `dllm_asr.decoding.decode`.

    Loop: each unfinished row asks its schedule for its window and quota, the active rows share
    one forward pass, each commits its share; a row leaves when it holds no mask (docs/algorithms.md 3c).
    """
    tokens = fill_padding(init.clone(), lengths, options.eos_id)
    if options.eos_early_stop:
        tokens = apply_eos_stop(tokens, lengths, options.eos_id)
    schedules = [RowSchedule.for_row(int(n), options) for n in lengths.tolist()]
    log = StepLog(tokens.shape[0], options.trace, width=tokens.shape[1])
    generator = None
    while True:
        windows = [s.next_window(tokens[i], options.mask_id) for i, s in enumerate(schedules)]
        rows = [i for i, w in enumerate(windows) if w is not None]
        if not rows:
            break
        active_windows = [windows[i] for i in rows]
        committed, generator = diffusion_step(
            predictor, tokens, lengths, rows, active_windows, options, generator, log  # type: ignore[arg-type]
        )
        for i in rows:
            schedules[i].advance()
        log.record_step(rows, committed, tokens)
    return log.finish(tokens, lengths, options.eos_id)
