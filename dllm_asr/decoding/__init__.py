"""Decoding strategies for masked-diffusion LMs over a common mask-predictor interface.

docs/algorithms.md section 3: diffusion decoding (a), semi-autoregressive blocks (b), per-row EOS early
stop (c), confidence-threshold parallel decoding (d), deliberation of a prior transcript (e)
and prior-guided adaptive decoding (f). Nothing here knows about networks: a predictor is any
callable(tokens (B', L'), rows (B',), lengths (B',)) -> logits (B', L', V).
"""
from __future__ import annotations

from .commit import apply_eos_stop, commit_above_threshold, commit_most_confident, commit_top_k
from .confidence import confidence_and_argmax
from .deliberation import deliberate, deliberate_semi_ar, drop_eos, mask_low_confidence, mask_random
from .engine import decode
from .options import DecodeOptions
from .predictor import MaskPredictor, as_mask_predictor
from .prior import build_prior_block, pack_priors
from .result import DecodeResult, response_lengths
from .steps import block_bounds, num_transfer_tokens

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
