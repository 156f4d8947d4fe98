"""Modality adapters: encoder frames -> LLM-width audio embeddings.

* `WindowQFormer`: Whisper-LLaDA's window-level Q-Former (as in SALMONN): the encoder output is
  cut into windows of 17 frames (0.33 s); 4 learned queries cross-attend to each window through
  a 2-layer BERT-style transformer (self-attention over the queries, cross-attention to the
  window, feed-forward; post-LayerNorm), then a linear projection to the LLM width.
* `ConvProjector`: dLLM-ASR's stride-2 Conv1d followed by a linear projection.

Both take padded batches with lengths and return embeddings with lengths; padded frames never
reach real outputs, so a row's embeddings do not depend on the rest of its batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dllm_asr.config import AdapterConfig


class QFormerLayer(nn.Module):
    """One BERT-style layer: query self-attention, cross-attention to frames, feed-forward."""

    def __init__(self, hidden: int, heads: int, frame_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.self_norm = nn.LayerNorm(hidden)
        self.cross_attn = nn.MultiheadAttention(
            hidden, heads, dropout=dropout, batch_first=True, kdim=frame_dim, vdim=frame_dim
        )
        self.cross_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * hidden, hidden)
        )
        self.ffn_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries: Tensor, frames: Tensor, frame_padding: Tensor) -> Tensor:
        """queries (W, Q, H), frames (W, K, F), frame_padding (W, K) True at padding -> (W, Q, H)."""
        attended, _ = self.self_attn(queries, queries, queries, need_weights=False)
        queries = self.self_norm(queries + self.dropout(attended))
        attended, _ = self.cross_attn(
            queries, frames, frames, key_padding_mask=frame_padding, need_weights=False
        )
        queries = self.cross_norm(queries + self.dropout(attended))
        return self.ffn_norm(queries + self.dropout(self.ffn(queries)))


class WindowQFormer(nn.Module):
    """Window-level Q-Former (Whisper-LLaDA sec. 3.1): (B, T, F) frames -> (B, W*Q, D_llm)."""

    def __init__(self, config: AdapterConfig, frame_dim: int, llm_dim: int):
        super().__init__()
        self.window = config.window
        self.num_queries = config.num_queries
        self.drop_partial = config.partial_window == "drop"
        if config.partial_window not in ("pad", "drop"):
            raise ValueError(f"adapter.partial_window must be 'pad' or 'drop', got {config.partial_window!r}")
        self.queries = nn.Parameter(torch.randn(config.num_queries, config.hidden_size) * 0.02)
        self.query_norm = nn.LayerNorm(config.hidden_size)
        self.layers = nn.ModuleList(
            QFormerLayer(config.hidden_size, config.num_heads, frame_dim, config.dropout)
            for _ in range(config.num_layers)
        )
        self.proj = nn.Linear(config.hidden_size, llm_dim)

    def num_windows(self, lengths: Tensor) -> Tensor:
        """Windows per row for frame counts `lengths` (B,)."""
        if self.drop_partial:
            return lengths // self.window
        return (lengths + self.window - 1) // self.window

    def forward(self, frames: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """frames (B, T, F), lengths (B,) -> embeddings (B, W*Q, D_llm), lengths (B,)."""
        batch, _, dim = frames.shape
        windows = max(int(self.num_windows(lengths).max()), 1)
        total = windows * self.window
        frames = F.pad(frames[:, :total], (0, 0, 0, max(0, total - frames.shape[1])))
        frame_index = torch.arange(total, device=frames.device)
        padding = frame_index[None, :] >= lengths[:, None]  # (B, total)
        frames = frames.reshape(batch * windows, self.window, dim)
        padding = padding.reshape(batch * windows, self.window)
        # A window made only of padding would give NaN attention; let it attend (its output is masked).
        padding = padding & ~padding.all(dim=1, keepdim=True)
        queries = self.query_norm(self.queries).expand(batch * windows, -1, -1)
        for layer in self.layers:
            queries = layer(queries, frames, padding)
        out = self.proj(queries).reshape(batch, windows * self.num_queries, -1)
        return out, self.num_windows(lengths) * self.num_queries


class ConvProjector(nn.Module):
    """dLLM-ASR projector: Conv1d (kernel 3, stride s) + GELU + Linear, (B, T, F) -> (B, ceil(T/s), D)."""

    def __init__(self, config: AdapterConfig, frame_dim: int, llm_dim: int):
        super().__init__()
        self.stride = config.conv_stride
        self.conv = nn.Conv1d(frame_dim, frame_dim, kernel_size=3, stride=self.stride, padding=1)
        self.proj = nn.Linear(frame_dim, llm_dim)

    def forward(self, frames: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """frames (B, T, F), lengths (B,) -> embeddings (B, T', D_llm), lengths (B,)."""
        valid = torch.arange(frames.shape[1], device=frames.device)[None, :] < lengths[:, None]
        # Zeroed padding looks exactly like the conv's own zero padding of an unbatched row.
        frames = frames * valid[..., None].to(frames.dtype)
        hidden = F.gelu(self.conv(frames.transpose(1, 2))).transpose(1, 2)
        out_lengths = (lengths - 1) // self.stride + 1
        return self.proj(hidden), out_lengths


def build_adapter(config: AdapterConfig, frame_dim: int, llm_dim: int) -> nn.Module:
    """The adapter named by `config.kind`."""
    if config.kind == "qformer":
        return WindowQFormer(config, frame_dim, llm_dim)
    if config.kind == "conv":
        return ConvProjector(config, frame_dim, llm_dim)
    raise ValueError(f"adapter.kind must be 'qformer' or 'conv', got {config.kind!r}")
