"""The one entry point: `decode(predictor, init, options, lengths)` (docs/algorithms.md section 3)."""
from __future__ import annotations

import torch
from torch import Tensor

from dllm_asr.decoding.diffusion import decode_diffusion
from dllm_asr.decoding.options import DecodeOptions
from dllm_asr.decoding.predictor import MaskPredictor
from dllm_asr.decoding.prior import decode_prior_guided
from dllm_asr.decoding.result import DecodeResult


def check_inputs(init: Tensor, lengths: Tensor | None) -> Tensor:
    """Validate `init` (B, L) integer and `lengths` (B,) in [0, L]; return lengths (long, init's device)."""
    if not isinstance(init, Tensor) or init.dim() != 2:
        raise ValueError(f"decode: init must be a 2-D LongTensor (B, L), got {getattr(init, 'shape', type(init))}")
    if init.dtype in (torch.bool,) or init.is_floating_point() or init.is_complex():
        raise ValueError(f"decode: init must hold integer token ids, got dtype {init.dtype}")
    batch, width = init.shape
    if lengths is None:
        return torch.full((batch,), width, dtype=torch.long, device=init.device)
    lengths = torch.as_tensor(lengths).to(device=init.device, dtype=torch.long)
    if lengths.shape != (batch,):
        raise ValueError(f"decode: lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    if batch and (int(lengths.min()) < 0 or int(lengths.max()) > width):
        raise ValueError(f"decode: lengths must lie in [0, {width}], got {lengths.tolist()}")
    return lengths


def decode(
    predictor: MaskPredictor,
    init: Tensor,
    options: DecodeOptions,
    lengths: Tensor | None = None,
) -> DecodeResult:
    """Decode a batch of response blocks with a mask predictor.

    predictor: callable(tokens (B', L'), rows (B',), lengths (B',)) -> logits (B', L', V), see
        docs/architecture.md; wrap a plain tokens -> logits function with `as_mask_predictor`.
    init: LongTensor (B, L). Diffusion decoding (docs/algorithms.md 3a-3d): `options.mask_id` at undecided
        positions, other tokens are committed and never change (deliberation, 3e, passes a
        partly masked prior). Prior-guided decoding (3f, `options.prior_guided`): the prior token
        ids, which are re-predicted and may be replaced; `options.margin` masks are appended.
    lengths: LongTensor (B,), each row's block length (prior length when prior-guided);
        positions >= lengths[i] are padding. None: every row uses all L positions.
    Returns a `DecodeResult` with tokens (B, L) (B, L + margin when prior-guided).
    """
    lengths = check_inputs(init, lengths)
    init = init.long()
    if options.prior_guided:
        return decode_prior_guided(predictor, init, options, lengths)
    return decode_diffusion(predictor, init, options, lengths)
