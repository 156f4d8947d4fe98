"""The static prefix cache shared by the LLaDA and transformers decoders: the prompt and audio
keys/values computed once per batch, and the masks and positions of the response read against them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PrefixCache:
    """Keys and values of every layer for a left-padded prefix, computed once per decode call.

    keys[i], values[i]: (B, kv_heads, P, hd) after RoPE; mask (B, P) bool key padding;
    lengths (B,) real prefix positions (the response's RoPE positions start there)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    lengths: torch.Tensor

    def select(self, rows: torch.Tensor) -> PrefixCache:
        """The cache of the sub-batch ``rows`` (B',)."""
        return PrefixCache([k[rows] for k in self.keys], [v[rows] for v in self.values], self.mask[rows],
                           self.lengths[rows])


def cached_attention_mask(prefix_mask: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Boolean mask (B, 1, L, P + L) of response queries over [prefix | response] keys: every real
    key, bidirectionally, plus each query's own key (so padded queries never see an empty row)."""
    keys = torch.cat([prefix_mask, response_mask], dim=1).bool()
    length, prefix = response_mask.shape[1], prefix_mask.shape[1]
    allowed = keys[:, None, None, :].expand(-1, 1, length, -1).clone()
    allowed[..., prefix:] |= torch.eye(length, dtype=torch.bool, device=keys.device)
    return allowed


def response_positions(prefix_lengths: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """RoPE positions (B, L) of a response after a prefix of ``prefix_lengths`` (B,) real tokens:
    the same values ``position_ids_from_mask`` gives over the whole packed row."""
    counts = prefix_lengths.to(response_mask.device)[:, None] + response_mask.long().cumsum(dim=1)
    return (counts - 1).clamp(min=0)
