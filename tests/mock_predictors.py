"""Hand-made mask predictors for tests and demos: no network, fully deterministic.

Both record every call (`calls`: the tokens, rows and lengths they received), so tests can
assert what a strategy sends to the model (finished rows dropped, pruned widths, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class PredictorCall:
    """What one forward pass received: tokens (B', L'), rows (B',), lengths (B',)."""

    tokens: Tensor
    rows: list[int]
    lengths: list[int]


def logits_from_choice(tokens: Tensor, confidence: Tensor, vocab_size: int) -> Tensor:
    """Logits (..., V) whose softmax puts `confidence` on `tokens` and spreads the rest evenly.

    tokens: LongTensor (...), confidence: float (...) in (1/V, 1). Float64 for exact probabilities.
    """
    confidence = confidence.to(torch.float64)
    rest = (1.0 - confidence) / (vocab_size - 1)
    probs = rest.unsqueeze(-1).expand(*tokens.shape, vocab_size).clone()
    probs.scatter_(-1, tokens.unsqueeze(-1), confidence.unsqueeze(-1))
    return probs.log()


@dataclass
class HashPredictor:
    """Logits of row r = a fixed function of (position, the row's own tokens, r).

    Bidirectional like the real model: every position sees a summary of all tokens of its row
    (inside the row's length only), so the logits change as tokens commit. [MASK] gets a very
    low logit, as a trained model would.
    """

    vocab_size: int
    mask_id: int
    seed: int = 0
    max_length: int = 256
    max_rows: int = 64
    calls: list[PredictorCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        v = self.vocab_size
        self.position_table = 2.0 * torch.randn(self.max_length, v, generator=g, dtype=torch.float64)
        self.context_table = 3.0 * torch.randn(v, v, generator=g, dtype=torch.float64)
        self.right_table = torch.randn(v, v, generator=g, dtype=torch.float64)
        self.row_table = torch.randn(self.max_rows, v, generator=g, dtype=torch.float64)

    def row_logits(self, tokens: Tensor, row: int) -> Tensor:
        """tokens (n,) of one row -> logits (n, V)."""
        n = tokens.shape[0]
        context = self.context_table[tokens].mean(dim=0, keepdim=True) if n else 0.0
        logits = self.position_table[:n] + context + self.right_table[tokens.roll(-1)] + self.row_table[row]
        logits[:, self.mask_id] = -50.0
        return logits

    def __call__(self, tokens: Tensor, rows: Tensor, lengths: Tensor) -> Tensor:
        self.calls.append(PredictorCall(tokens.clone(), rows.tolist(), lengths.tolist()))
        out = torch.zeros(*tokens.shape, self.vocab_size, dtype=torch.float64)
        for j, (row, n) in enumerate(zip(rows.tolist(), lengths.tolist())):
            out[j, :n] = self.row_logits(tokens[j, :n], row)
        return out


@dataclass
class TablePredictor:
    """Fixed choice per (row, position): `choice[r][p]` with probability `confidence[r][p]`.

    Ignores the current tokens, so hand-worked schedules are easy to predict. An optional
    `per_call` list replaces the tables from the given call index on (call k uses the last
    entry whose index <= k), for predictors whose opinion changes between passes.
    """

    choice: Tensor
    confidence: Tensor
    vocab_size: int
    per_call: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    calls: list[PredictorCall] = field(default_factory=list)

    def tables(self) -> tuple[Tensor, Tensor]:
        current = (self.choice, self.confidence)
        for start in sorted(self.per_call):
            if start <= len(self.calls):
                current = self.per_call[start]
        return current

    def __call__(self, tokens: Tensor, rows: Tensor, lengths: Tensor) -> Tensor:
        choice, confidence = self.tables()
        self.calls.append(PredictorCall(tokens.clone(), rows.tolist(), lengths.tolist()))
        width = tokens.shape[1]
        return logits_from_choice(choice[rows, :width], confidence[rows, :width], self.vocab_size)
