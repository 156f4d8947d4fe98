"""LM decoders: LLaDA (native), LLaMA-family transformers models made bidirectional, and the
autoregressive baseline decoding. ``load_decoder`` is the one entry point for all of them."""
from __future__ import annotations

import os

import torch

from .base import DecoderLM, DecoderLoadError, attention_mask_4d, position_ids_from_mask, resolve_dtype
from .causal import GeneratedTokens, ar_generate
from .hf import HFDecoder, load_hf_decoder
from .llada import LLaDAConfig, LLaDADecoder, load_llada

# Short names of decoders that ship with a PyPI package: name -> (kind, source).
DECODER_REGISTRY = {"smollm2-135m": ("hf", "smollm2-135m")}
DECODER_KINDS = ("llada", "hf")


def load_decoder(kind: str, source: str | os.PathLike, dtype: torch.dtype | str = torch.float32,
                 device: str | torch.device = "cpu") -> DecoderLM:
    """Load a decoder: kind "llada" (a LLaDA checkpoint directory) or "hf" (a registry short name
    such as "smollm2-135m", a .gguf file, or a Hugging Face LLaMA-family directory)."""
    if str(source) in DECODER_REGISTRY:
        kind, source = DECODER_REGISTRY[str(source)]
    if kind == "llada":
        return load_llada(source, dtype=dtype, device=device)
    if kind == "hf":
        return load_hf_decoder(source, dtype=dtype, device=device)
    raise DecoderLoadError(f"unknown decoder kind {kind!r}; use one of {', '.join(DECODER_KINDS)}")


__all__ = [
    "DECODER_KINDS", "DECODER_REGISTRY", "DecoderLM", "DecoderLoadError", "GeneratedTokens", "HFDecoder",
    "LLaDAConfig", "LLaDADecoder", "ar_generate", "attention_mask_4d", "load_decoder", "load_hf_decoder",
    "load_llada", "position_ids_from_mask", "resolve_dtype",
]
