"""Fast-dLLM's block-wise key/value caches for the mask predictor (docs/algorithms.md 3h).

A bidirectional decoder recomputes every position at every step. Fast-dLLM (Wu et al., 2025)
saves most of that in semi-autoregressive decoding: when a row enters a new sub-block, one full
pass computes the logits of that step and the keys/values of every layer at every position; the
following steps of the same sub-block recompute only

- "prefix" cache: the sub-block and everything after it, attending to the cached keys/values of
  everything before it (prompt, audio and the sub-blocks already decoded);
- "dual" cache: the sub-block only, attending to the cached keys/values before it and after it.

Both are approximations (cached positions do not see this sub-block's new tokens) that the paper
measures as nearly free in accuracy; docs/results.md measures them on this toolkit's models.
A model family provides a `CacheBackend`; `BlockCachePredictor` keeps the state and decides when
to refresh. Without sub-blocks (one window over the whole response) a single full pass caches the
prompt and audio, and every later step recomputes the whole response against it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

CACHE_MODES = ("none", "static", "prefix", "dual")


@dataclass
class SequenceCache:
    """Keys/values of every layer for whole packed sequences, from one full pass.

    keys[i], values[i]: (B, heads, S, head_dim); key_mask (B, S) bool (real positions);
    positions (B, S) the position ids of each column; first: the column whose output predicts
    response token 0 (token j's logits come from column first + j); shift: where token j is an
    input, first + j + shift (1 under Whisper's next-token alignment, else 0).
    rows: the original batch rows these B rows are; windows (B, 2) their sub-blocks at the pass
    (both set by `BlockCachePredictor` after the pass).
    """

    keys: list[Tensor]
    values: list[Tensor]
    key_mask: Tensor
    positions: Tensor
    first: int
    shift: int
    rows: list[int] = field(default_factory=list)
    windows: Tensor | None = None

    def select(self, index: Tensor) -> SequenceCache:
        """The rows at `index` (B',) of this cache."""
        return SequenceCache([k[index] for k in self.keys], [v[index] for v in self.values], self.key_mask[index],
                             self.positions[index], self.first, self.shift,
                             [self.rows[i] for i in index.tolist()], self.windows[index])


class CacheBackend(Protocol):
    """What a model family provides for `BlockCachePredictor`."""

    def full_hidden(self, tokens: Tensor, rows: Tensor, lengths: Tensor) -> tuple[Tensor, SequenceCache]:
        """A full pass: final hidden states of the response tokens (B', L', D), aligned with
        `tokens`, and the cache of the whole packed sequences (its `rows`/`windows` left unset)."""

    def window_hidden(self, cache: SequenceCache, tokens: Tensor, columns: Tensor) -> Tensor:
        """Hidden states (B', W, D) of the sequence columns `columns` (B', W) recomputed from the
        current `tokens` (B', L'), their keys/values replacing the cached ones in attention."""

    def logits(self, hidden: Tensor) -> Tensor:
        """hidden (..., D) -> logits (..., V) as the family's mask predictor gives them."""


class BlockCachePredictor:
    """A mask predictor with Fast-dLLM's prefix or dual cache over a `CacheBackend`.

    It refreshes (one full pass for all rows of the call) whenever a row of the call has no cache
    yet or has moved to a new sub-block; otherwise it recomputes only each row's window.
    """

    takes_positions = True
    takes_windows = True

    def __init__(self, backend: CacheBackend, mode: str):
        if mode not in ("prefix", "dual"):
            raise ValueError(f"--cache: BlockCachePredictor takes prefix or dual, got {mode!r}")
        self.backend, self.mode = backend, mode
        self.cache: SequenceCache | None = None
        self.full_passes = 0
        self.window_passes = 0

    def __call__(self, tokens: Tensor, rows: Tensor, lengths: Tensor, positions: Tensor | None = None,
                 windows: Tensor | None = None) -> Tensor:
        if windows is None:  # no sub-blocks (e.g. prior-guided): one window over each row
            windows = torch.stack([torch.zeros_like(lengths), lengths], dim=1)
        windows = windows.to(lengths.device)
        index = self._cached_index(rows, windows)
        if index is None:
            hidden, cache = self.backend.full_hidden(tokens, rows, lengths)
            cache.rows, cache.windows = rows.tolist(), windows.clone()
            self.cache, self.full_passes = cache, self.full_passes + 1
        else:
            hidden = self._window_pass(self.cache.select(index), tokens, lengths, windows)
            self.window_passes += 1
        if positions is not None:
            return self.backend.logits(hidden[positions.to(hidden.device)])
        return self.backend.logits(hidden)

    def _cached_index(self, rows: Tensor, windows: Tensor) -> Tensor | None:
        """Where each row sits in the cache, or None when the call needs a full pass."""
        if self.cache is None:
            return None
        where = {row: i for i, row in enumerate(self.cache.rows)}
        if any(row not in where for row in rows.tolist()):
            return None
        index = torch.tensor([where[row] for row in rows.tolist()], device=windows.device)
        return index if bool((self.cache.windows.to(windows.device)[index] == windows).all()) else None

    def _window_pass(self, cache: SequenceCache, tokens: Tensor, lengths: Tensor, windows: Tensor) -> Tensor:
        """Hidden states (B', L', D) with each row's window recomputed (zeros elsewhere)."""
        lo = windows[:, 0]
        hi = lengths if self.mode == "prefix" else windows[:, 1]
        # outputs for tokens [lo, hi), and the inputs of those tokens (one column later under the shift)
        columns, valid = window_columns(cache.first + lo, cache.first + hi + cache.shift)
        hidden = self.backend.window_hidden(cache, tokens, columns)
        out = hidden.new_zeros(tokens.shape[0], tokens.shape[1], hidden.shape[-1])
        token_index = columns - cache.first  # the token each column's output predicts
        keep = valid & (token_index >= 0) & (token_index < tokens.shape[1])
        batch_index = torch.arange(tokens.shape[0], device=columns.device)[:, None].expand_as(columns)
        out[batch_index[keep], token_index[keep]] = hidden[keep]
        return out


def window_columns(start: Tensor, stop: Tensor) -> tuple[Tensor, Tensor]:
    """Per row the columns [start, stop), padded to the longest by repeating the last one.

    start, stop (B,) long. Returns columns (B, W) and valid (B, W) bool (False on the padding).
    """
    width = max(1, int((stop - start).max()))
    offsets = torch.arange(width, device=start.device)[None]
    valid = offsets < (stop - start)[:, None]
    columns = start[:, None] + torch.minimum(offsets, (stop - start - 1).clamp(min=0)[:, None])
    return columns, valid


def scatter_columns(cached: Tensor, columns: Tensor, fresh: Tensor) -> Tensor:
    """cached (B, H, S, d) with the columns (B, W) replaced by fresh (B, H, W, d); a new tensor."""
    index = columns[:, None, :, None].expand(-1, cached.shape[1], -1, cached.shape[3])
    return cached.scatter(2, index, fresh.to(cached.dtype))


def column_attention_mask(cache: SequenceCache, columns: Tensor) -> Tensor:
    """(B, 1, W, S) bool: every window query attends to every real column, and to its own."""
    allowed = cache.key_mask[:, None, None, :].expand(-1, 1, columns.shape[1], -1).clone()
    own = torch.zeros_like(allowed)
    own.scatter_(3, columns[:, None, :, None], True)
    return allowed | own
