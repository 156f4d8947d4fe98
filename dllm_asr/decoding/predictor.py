"""The mask-predictor contract of docs/architecture.md, and an adapter for plain functions."""
from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor


class MaskPredictor(Protocol):
    """predictor(tokens (B', L'), rows (B',), lengths (B',)) -> logits (B', L', V).

    `rows` index the original batch (the prompt/audio prefix of each row is bound inside the
    predictor); positions at or beyond `lengths[j]` are padding and their logits are ignored.
    """

    def __call__(self, tokens: Tensor, rows: Tensor, lengths: Tensor) -> Tensor: ...


def as_mask_predictor(fn: Callable[[Tensor], Tensor]) -> MaskPredictor:
    """Wrap a plain function tokens (B', L') -> logits (B', L', V) as a `MaskPredictor`.

    The wrapped function sees neither the row indices nor the lengths (handy for tests and for
    text-only models with no per-row prefix).
    """

    def predictor(tokens: Tensor, rows: Tensor, lengths: Tensor) -> Tensor:
        return fn(tokens)

    return predictor


def call_predictor(predictor: MaskPredictor, tokens: Tensor, rows: Tensor, lengths: Tensor) -> Tensor:
    """Run one forward pass and check the logits' shape: (B', L', V) float, V > 1."""
    with torch.no_grad():
        logits = predictor(tokens, rows, lengths)
    if not isinstance(logits, Tensor) or logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(tokens.shape):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"mask predictor: expected logits of shape ({tokens.shape[0]}, {tokens.shape[1]}, V), got {shape}"
        )
    return logits
