"""The mask-predictor contract of docs/architecture.md, and an adapter for plain functions."""
from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor


class MaskPredictor(Protocol):
    """predictor(tokens (B', L'), rows (B',), lengths (B',)) -> logits (B', L', V).

    `rows` index the original batch (the prompt/audio prefix of each row is bound inside the
    predictor); positions at or beyond `lengths[j]` are padding and their logits are ignored.
    A predictor may also set `takes_positions = True` and accept `positions` (B', L') bool, then
    returning only those positions' logits, (N, V) (see `call_predictor`); and `takes_windows =
    True` to be told each row's current sub-block, `windows` (B', 2) [lo, hi) (None outside
    sub-block decoding), which block-wise key/value caches refresh on (docs/algorithms.md 3h).
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


def call_predictor(predictor: MaskPredictor, tokens: Tensor, rows: Tensor, lengths: Tensor,
                   positions: Tensor | None = None, windows: Tensor | None = None) -> Tensor:
    """Run one forward pass and check the logits' shape: (B', L', V) float, V > 1.

    positions: optional BoolTensor (B', L'): only these positions' logits are wanted, returned as
    (N, V) in row-major order. A predictor with a true `takes_positions` attribute computes only
    those (the output projection is most of a small decoder's cost); any other is sliced.
    windows: (B', 2) each row's current sub-block, given to predictors with `takes_windows`.
    """
    extra = {"windows": windows} if getattr(predictor, "takes_windows", False) else {}
    with torch.no_grad():
        if positions is not None and getattr(predictor, "takes_positions", False):
            logits = predictor(tokens, rows, lengths, positions=positions, **extra)
            expected = (int(positions.sum()),)
        else:
            logits = predictor(tokens, rows, lengths, **extra)
            expected = tuple(tokens.shape)
    if not isinstance(logits, Tensor) or logits.dim() != len(expected) + 1 or tuple(logits.shape[:-1]) != expected:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"mask predictor: expected logits of shape ({', '.join(map(str, expected))}, V), got {shape}")
    if positions is not None and len(expected) == 2:
        logits = logits[positions.to(logits.device)]
    return logits
