"""The decoder interface shared by every language model that drives transcription.

A decoder maps input embeddings to vocabulary logits, bidirectionally by default (the
masked-diffusion case) or causally (the autoregressive baseline and sanity checks).
See docs/architecture.md, "Decoder interface" and "Padding convention".
"""
from __future__ import annotations

import torch
from torch import nn


class DecoderLoadError(ValueError):
    """A decoder checkpoint (directory, file, option) cannot be loaded; the message names it."""


class DecoderLM(nn.Module):
    """Base class of the LM decoders.

    Subclasses set ``hidden_size``, ``vocab_size``, ``mask_token_id``, ``eos_token_id``,
    ``tokenizer`` (a transformers tokenizer), ``name`` and ``num_layers`` (transformer blocks,
    each with one q_proj/k_proj/v_proj for LoRA), and implement ``embed`` and
    ``forward``.
    """

    hidden_size: int
    vocab_size: int
    mask_token_id: int
    eos_token_id: int
    name: str
    num_layers: int

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings: ids (B, S) long -> (B, S, D) in the model's dtype."""
        raise NotImplementedError

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        causal: bool = False,
        num_logits: int | None = None,
    ) -> torch.Tensor:
        """Logits (B, S, V) for inputs_embeds (B, S, D); with ``num_logits``, only the last
        ``num_logits`` positions' logits (B, num_logits, V).

        attention_mask (B, S) bool is the key-padding mask (True at real positions);
        position_ids (B, S) long are the RoPE positions (see ``position_ids_from_mask``).
        ``causal=False`` is full bidirectional attention restricted by the key-padding mask.
        """
        raise NotImplementedError

    def keep_first_layers(self, count: int) -> None:
        """Drop every transformer layer after the first ``count`` (a decoder slice: cheaper, for
        CPU runs; the layers kept are exactly the pretrained ones)."""
        raise NotImplementedError(f"{self.name}: no decoder slicing")

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def check_slice(count: int, available: int, name: str) -> None:
    """``count`` must be between 1 and the decoder's number of layers."""
    if not 1 <= count <= available:
        raise ValueError(f"decoder.num_layers: {name} has {available} layers, cannot keep {count}")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """RoPE positions (B, S) long: ``cumsum(mask) - 1`` clamped at 0, so left padding does
    not shift a row's positions and a row's positions do not depend on the other rows."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def attention_mask_4d(attention_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """Boolean SDPA mask (B, 1, S, S), True where a query may attend to a key.

    Keys are restricted by the key-padding mask (B, S); with ``causal`` also to keys at or
    before the query. Every query may attend to itself, so padded query rows are never fully
    masked (a fully masked softmax row is NaN); their outputs are ignored anyway.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (B, S), got shape {tuple(attention_mask.shape)}")
    keys = attention_mask.bool()
    seq_len = keys.shape[1]
    allowed = keys[:, None, None, :].expand(-1, 1, seq_len, -1)
    eye = torch.eye(seq_len, dtype=torch.bool, device=keys.device)
    if causal:
        tril = torch.ones(seq_len, seq_len, dtype=torch.bool, device=keys.device).tril()
        allowed = allowed & tril
    return allowed | eye


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX-BF16)."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def auto_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype "auto" stands for: bfloat16 on a CPU with native bf16 matrix instructions, where
    the default model runs 1.3-1.7 times faster at the same WER (docs/default-model.md, "bfloat16 on
    a CPU"); float32 everywhere else (a CPU without them emulates bf16, slowly; GPUs: not
    measured for the Whisper-sized model)."""
    if torch.device(device).type == "cpu" and cpu_has_bf16_matmul():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(dtype: torch.dtype | str | None, device: str | torch.device = "cpu") -> torch.dtype:
    """A torch dtype from a dtype or a name ("float32", "fp32", "bf16", "bfloat16", "fp16", ...;
    "auto": `auto_dtype(device)`)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() == "auto":
        return auto_dtype(device)
    names = {
        "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
        "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
        "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
        "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
    }
    if str(dtype).lower() not in names:
        raise ValueError(f"--dtype {dtype}: unknown dtype; use auto or one of {sorted(names)}")
    return names[str(dtype).lower()]
