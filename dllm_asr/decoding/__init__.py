"""Decoding strategies for masked-diffusion LMs over a common mask-predictor interface.

docs/algorithms.md section 3: diffusion decoding (a), semi-autoregressive blocks (b), per-row EOS early
stop (c), confidence-threshold parallel decoding (d), deliberation of a prior transcript (e)
and prior-guided adaptive decoding (f). Nothing here knows about networks: a predictor is any
callable(tokens (B', L'), rows (B',), lengths (B',)) -> logits (B', L', V).
"""
from __future__ import annotations

from dllm_asr.decoding.commit import (apply_eos_stop, commit_above_threshold, commit_most_confident,
                                      commit_top_k)
from dllm_asr.decoding.confidence import confidence_and_argmax
from dllm_asr.decoding.deliberation import (deliberate, deliberate_semi_ar, drop_eos, mask_low_confidence,
                                            mask_random)
from dllm_asr.decoding.engine import decode
from dllm_asr.decoding.options import DecodeOptions
from dllm_asr.decoding.predictor import MaskPredictor, as_mask_predictor
from dllm_asr.decoding.prior import build_prior_block, pack_priors
from dllm_asr.decoding.result import DecodeResult, response_lengths
from dllm_asr.decoding.steps import block_bounds, num_transfer_tokens

__all__ = [
    "DecodeOptions",
    "DecodeResult",
    "MaskPredictor",
    "apply_eos_stop",
    "as_mask_predictor",
    "block_bounds",
    "build_prior_block",
    "commit_above_threshold",
    "commit_most_confident",
    "commit_top_k",
    "confidence_and_argmax",
    "decode",
    "deliberate",
    "deliberate_semi_ar",
    "drop_eos",
    "mask_low_confidence",
    "mask_random",
    "num_transfer_tokens",
    "pack_priors",
    "response_lengths",
]
