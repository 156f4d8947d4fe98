"""The masked-diffusion training objective and the autoregressive baseline's loss.

Forward process (docs/algorithms.md sec. 2, LLaDA): for a clean response r0 (transcript tokens padded
with EOS), draw t ~ U(0, 1], mask each response token independently with probability
p_mask = (1 - eps) * t + eps, never the prompt or the audio. The model predicts the masked
tokens; the loss is the cross-entropy on masked positions only (Whisper-LLaDA eq. 3):

    L = - E_t [ (1/t) * sum_{i masked} log p(r0_i | prompt, audio, r_t) ]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F


@dataclass(frozen=True)
class MaskedBatch:
    """A forward-masked response batch.

    noisy: (B, L) response with `mask_id` at masked positions.
    masked: (B, L) bool, True where a token was masked.
    p_mask: (B,) masking probability of each row.
    """

    noisy: Tensor
    masked: Tensor
    p_mask: Tensor


def forward_mask(
    response: Tensor,
    valid: Tensor,
    mask_id: int,
    eps: float = 1e-3,
    full_mask_fraction: float = 0.0,
    generator: torch.Generator | None = None,
) -> MaskedBatch:
    """Mask each valid response token with probability p_mask = (1 - eps) t + eps, t ~ U(0, 1].

    response (B, L) long; valid (B, L) bool (False beyond a row's response, which is never
    masked nor scored). `full_mask_fraction` of the rows (chosen at random, as dLLM-ASR's ~20%)
    get p_mask = 1, i.e. every token masked: the situation of the first decoding step.
    """
    batch, length = response.shape
    device = response.device
    t = 1.0 - torch.rand(batch, generator=generator, device=device)  # (0, 1]
    p_mask = (1.0 - eps) * t + eps
    if full_mask_fraction > 0:
        full = torch.rand(batch, generator=generator, device=device) < full_mask_fraction
        p_mask = torch.where(full, torch.ones_like(p_mask), p_mask)
    draws = torch.rand(batch, length, generator=generator, device=device)
    masked = (draws < p_mask[:, None]) & valid
    noisy = torch.where(masked, torch.full_like(response, mask_id), response)
    return MaskedBatch(noisy=noisy, masked=masked, p_mask=p_mask)


def masked_diffusion_loss(
    logits: Tensor, targets: Tensor, batch: MaskedBatch, valid: Tensor, weighting: str = "llada"
) -> Tensor:
    """Cross-entropy on masked positions.

    logits (B, L, V), targets (B, L), valid (B, L) bool. `weighting`:

    * "llada" (LLaDA's SFT recipe, eq. 3): each masked token's loss divided by its row's
      p_mask and by the row's answer length (its valid positions, EOS padding included),
      summed and averaged over rows.
    * "none" (the Whisper-LLaDA code): plain mean over masked tokens.

    Returns 0 (with a gradient path) when nothing is masked, instead of the reference's NaN.
    """
    if weighting not in ("llada", "none"):
        raise ValueError(f"loss weighting must be 'llada' or 'none', got {weighting!r}")
    masked = batch.masked
    zero = logits.sum() * 0.0
    if not bool(masked.any()):
        return zero
    token_loss = F.cross_entropy(logits[masked].float(), targets[masked], reduction="none")
    if weighting == "none":
        return token_loss.mean() + zero
    rows = masked.nonzero()[:, 0]
    answer_length = valid.sum(dim=1).clamp(min=1).to(token_loss.dtype)
    weighted = token_loss / batch.p_mask[rows] / answer_length[rows]
    return weighted.sum() / logits.shape[0] + zero


def next_token_loss(logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """Autoregressive loss over the response.

    logits (B, L, V) are the causal LM's outputs at the positions *before* each response token
    (the last prefix position predicts targets[:, 0]); targets (B, L); valid (B, L) bool marks
    the tokens to score (the transcript and its single closing EOS). Mean over scored tokens.
    """
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[valid].float(), targets[valid])
