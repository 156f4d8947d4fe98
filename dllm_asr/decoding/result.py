"""The outcome of a decode, and the per-row accounting (NFE, steps, commits, trace)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dllm_asr.decoding.commit import first_true


@dataclass
class DecodeResult:
    """Final tokens plus the cost of getting them, per row.

    tokens: LongTensor (B, L), the final block; positions past a row's response are EOS.
    lengths: LongTensor (B,), response length of each row: positions before its first EOS.
    block_lengths: LongTensor (B,), each row's block length at the end (shrinks under pruning).
    nfe: LongTensor (B,), forward passes (predictor calls) that included the row.
    steps: LongTensor (B,), decoding steps the row took (one forward pass each).
    committed: per row, the number of positions that left the mask / the loop at each step.
    wall_time: seconds spent in the decode call.
    trace: if requested, the block (B, L) after every step (a clone, on the CPU).
    confidence: float64 (B, L) on the CPU, the probability the model gave each position's token
        when it committed it (NaN: a token given in `init`, or padding); None if not recorded.
    """

    tokens: Tensor
    lengths: Tensor
    block_lengths: Tensor
    nfe: Tensor
    steps: Tensor
    committed: list[list[int]]
    wall_time: float
    trace: list[Tensor] | None = None
    confidence: Tensor | None = None

    def sequences(self) -> list[list[int]]:
        """Each row's response token ids, up to and excluding its first EOS."""
        return [self.tokens[i, : int(n)].tolist() for i, n in enumerate(self.lengths)]

    def confidences(self) -> list[list[float | None]] | None:
        """Per row, the probability of each response token when it was committed (None: the
        token was given, not predicted), aligned with `sequences()`; None if not recorded."""
        if self.confidence is None:
            return None
        return [[None if math.isnan(p) else p for p in self.confidence[i, : int(n)].tolist()]
                for i, n in enumerate(self.lengths)]


def response_lengths(tokens: Tensor, block_lengths: Tensor, eos_id: int) -> Tensor:
    """Per-row index of the first EOS within the row's block, else the block length. Shape (B,)."""
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    inside = positions < block_lengths.to(tokens.device)[:, None]
    first_eos = first_true((tokens == eos_id) & inside)
    return torch.minimum(first_eos, block_lengths.to(tokens.device)).cpu()


@dataclass
class StepLog:
    """Accumulates per-row accounting while a decode loop runs (docs/algorithms.md 3: cost per strategy)."""

    batch_size: int
    keep_trace: bool = False
    width: int = 0
    """The block width, for the per-position confidence record."""
    nfe: list[int] = field(init=False)
    committed: list[list[int]] = field(init=False)
    trace: list[Tensor] | None = field(init=False)
    confidence: Tensor | None = field(init=False)
    """(B, width) on the decode's device, made at the first record (no host copy per step)."""
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.nfe = [0] * self.batch_size
        self.committed = [[] for _ in range(self.batch_size)]
        self.trace = [] if self.keep_trace else None
        self.confidence = None
        self.started = time.perf_counter()

    def _confidence(self) -> Tensor:
        if self.confidence is None:  # nothing committed yet: every position was given
            return torch.full((self.batch_size, self.width), math.nan, dtype=torch.float64)
        return self.confidence

    def record_confidence(self, rows: Tensor, chosen: Tensor, probs: Tensor) -> None:
        """Keep probs (B', W) at the chosen (B', W) positions of rows (B',): the tokens committed now."""
        if self.confidence is None:
            self.confidence = torch.full((self.batch_size, self.width), math.nan, dtype=torch.float64,
                                         device=probs.device)
        width = chosen.shape[1]
        rows = rows.to(probs.device)
        current = self.confidence[rows, :width]
        self.confidence[rows, :width] = torch.where(chosen, probs.detach().double(), current)

    def record_step(self, rows: list[int], committed: list[int], block: Tensor) -> None:
        """One forward pass over `rows`, which committed `committed[j]` positions in row rows[j]."""
        for row, count in zip(rows, committed):
            self.nfe[row] += 1
            self.committed[row].append(int(count))
        if self.trace is not None:
            self.trace.append(block.detach().clone().cpu())

    def finish(self, tokens: Tensor, block_lengths: Tensor, eos_id: int) -> DecodeResult:
        """Freeze the log into a `DecodeResult` for the final block `tokens` (B, L)."""
        steps = torch.tensor([len(c) for c in self.committed], dtype=torch.long)
        return DecodeResult(
            tokens=tokens,
            lengths=response_lengths(tokens, block_lengths, eos_id),
            block_lengths=block_lengths.detach().clone().cpu().long(),
            nfe=torch.tensor(self.nfe, dtype=torch.long),
            steps=steps,
            committed=self.committed,
            wall_time=time.perf_counter() - self.started,
            trace=self.trace,
            confidence=self._confidence()[:, : tokens.shape[1]].cpu(),
        )


def concat_results(parts: list[DecodeResult], eos_id: int) -> DecodeResult:
    """Chain results of decodes run one after another on the same batch (the last holds the tokens)."""
    last = parts[-1]
    trace = None
    if all(p.trace is not None for p in parts):
        trace = [t for p in parts for t in p.trace]  # type: ignore[union-attr]
    return DecodeResult(
        tokens=last.tokens,
        lengths=response_lengths(last.tokens, last.block_lengths, eos_id),
        block_lengths=last.block_lengths,
        nfe=sum((p.nfe for p in parts), torch.zeros_like(last.nfe)),
        steps=sum((p.steps for p in parts), torch.zeros_like(last.steps)),
        committed=[[c for p in parts for c in p.committed[i]] for i in range(len(last.committed))],
        wall_time=sum(p.wall_time for p in parts),
        trace=trace,
        confidence=later_confidence(parts),
    )


def later_confidence(parts: list[DecodeResult]) -> Tensor | None:
    """The chained decodes' confidences: each position's from the last decode that committed it."""
    recorded = [p.confidence for p in parts if p.confidence is not None]
    if not recorded:
        return None
    merged = recorded[0].clone()
    for later in recorded[1:]:
        merged = torch.where(torch.isnan(later), merged, later)
    return merged
