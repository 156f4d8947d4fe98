"""Whisper's shapes and building blocks, without transformers.

The encoder (`encoders.WhisperEncoder`) and the decoder (`decoders.whisper.WhisperTextDecoder`)
have their own forwards; they only need Whisper's parts with the parameter names of
transformers' Whisper checkpoints (``layers.0.self_attn.q_proj.weight``...), so that
transformers and CTranslate2 checkpoints load into them and LoRA targets stay the same names.
Building them here rather than through `transformers.models.whisper` keeps that library (about
2.5 s of imports on a laptop CPU) out of `dllm-asr transcribe`'s start-up.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class WhisperDims:
    """The fields of a Whisper config the toolkit reads; names and defaults as transformers'
    ``WhisperConfig`` (whose ``config.json`` files and objects it is read from)."""

    vocab_size: int = 51865
    num_mel_bins: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536
    decoder_layers: int = 4
    decoder_attention_heads: int = 6
    decoder_ffn_dim: int = 1536
    max_source_positions: int = 1500
    max_target_positions: int = 448
    pad_token_id: int = 50256
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    decoder_start_token_id: int = 50257
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    activation_function: str = "gelu"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.activation_function != "gelu":
            raise ValueError(f"activation_function {self.activation_function!r}: Whisper's layers use 'gelu'")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WhisperDims":
        """From a ``config.json``'s fields; the ones this toolkit does not read are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known and value is not None})

    @classmethod
    def of(cls, config: Any) -> "WhisperDims":
        """From a `WhisperDims`, a dict, or any object with these attributes (a transformers
        ``WhisperConfig``)."""
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            return cls.from_dict(config)
        return cls.from_dict({f.name: getattr(config, f.name) for f in dataclasses.fields(cls)
                              if hasattr(config, f.name)})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class WhisperAttention(nn.Module):
    """The projections of one Whisper attention block (the key projection has no bias)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)


class WhisperEncoderLayer(nn.Module):
    """A pre-norm encoder layer's parameters: self-attention and a GELU MLP."""

    def __init__(self, width: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = WhisperAttention(width)
        self.self_attn_layer_norm = nn.LayerNorm(width)
        self.activation_fn = nn.GELU()
        self.fc1 = nn.Linear(width, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, width)
        self.final_layer_norm = nn.LayerNorm(width)


class WhisperDecoderLayer(WhisperEncoderLayer):
    """A pre-norm decoder layer's parameters: self-attention, cross-attention, a GELU MLP."""

    def __init__(self, width: int, ffn_dim: int) -> None:
        super().__init__(width, ffn_dim)
        self.encoder_attn = WhisperAttention(width)
        self.encoder_attn_layer_norm = nn.LayerNorm(width)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed encoder positions (length, channels): sines then cosines of position x
    geometrically spaced inverse timescales from 1 down to 1 / max_timescale."""
    if channels % 2:
        raise ValueError(f"sinusoidal positions need an even width, got {channels}")
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inverse_timescales = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inverse_timescales[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


INITIALISED_PARTS = (nn.Linear, nn.Conv1d, nn.Embedding, nn.LayerNorm)
_skip_init = False


def build_uninitialised(make: Callable[[], nn.Module]) -> nn.Module:
    """`make()` with its parameters allocated but not initialised, for modules whose every weight
    is loaded next: random initialisation of a Whisper decoder costs more than reading its
    checkpoint. (Building on the meta device instead would import torch's compiler, ~1.3 s.)
    The layer classes' `reset_parameters` are switched off meanwhile, process-wide: do not build
    modules in another thread at the same time."""
    global _skip_init
    saved = {part: part.__dict__.get("reset_parameters") for part in INITIALISED_PARTS}
    for part in INITIALISED_PARTS:
        part.reset_parameters = lambda self: None
    _skip_init = True
    try:
        return make()
    finally:
        _skip_init = False
        for part, method in saved.items():
            if method is None:
                del part.reset_parameters
            else:
                part.reset_parameters = method


def init_whisper_weights(module: nn.Module, std: float) -> None:
    """Random initialisation as transformers' Whisper: linear, convolution and embedding weights
    from N(0, std), biases and an embedding's padding row zero, layer norms (1, 0). Nothing
    inside `build_uninitialised`."""
    if _skip_init:
        return
    with torch.no_grad():
        for part in module.modules():
            if isinstance(part, (nn.Linear, nn.Conv1d)):
                part.weight.normal_(0.0, std)
                if part.bias is not None:
                    part.bias.zero_()
            elif isinstance(part, nn.Embedding):
                part.weight.normal_(0.0, std)
                if part.padding_idx is not None:
                    part.weight[part.padding_idx].zero_()
            elif isinstance(part, nn.LayerNorm):
                part.weight.fill_(1.0)
                part.bias.zero_()


__all__ = ["WhisperAttention", "WhisperDecoderLayer", "WhisperDims", "WhisperEncoderLayer",
           "build_uninitialised", "init_whisper_weights", "sinusoids"]
