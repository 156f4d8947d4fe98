"""Training objectives: response targets, the masked-diffusion loss, the autoregressive baseline's
loss and the CTC loss, with `response_loss` choosing by the model's objective (the trainer and
`evaluation.evaluate.audio_gain` both use it).

Forward process (docs/algorithms.md sec. 2, LLaDA): for a clean response r0 (transcript tokens padded
with EOS), draw t ~ U(0, 1], mask each response token independently with probability
p_mask = (1 - eps) * t + eps, never the prompt or the audio. The model predicts the masked
tokens; the loss is the cross-entropy on masked positions only (Whisper-LLaDA eq. 3):

    L = - E_t [ (1/t) * sum_{i masked} log p(r0_i | prompt, audio, r_t) ]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from dllm_asr.model.encoders import ENGLISH_CHARS, CharVocabulary


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


def encode_transcripts(tokenizer, texts: Sequence[str], eos_id: int, length: int | None = None,
                       multiple: int = 8) -> tuple[Tensor, Tensor]:
    """Transcripts -> response ids padded with EOS, as LLaDA's SFT does.

    Every row gets at least one EOS. Without `length`, rows are padded to the longest
    transcript + 1, rounded up to `multiple` (so the EOS padding the model learns varies).
    Returns ids (B, L) and text_lengths (B,) (tokens before the first EOS).
    """
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    longest = max((len(ids) for ids in encoded), default=0) + 1
    if length is None:
        length = -(-longest // multiple) * multiple
    ids = torch.full((len(encoded), length), eos_id, dtype=torch.long)
    for row, tokens in enumerate(encoded):
        tokens = tokens[: length - 1]
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    text_lengths = torch.tensor([min(len(t), length - 1) for t in encoded], dtype=torch.long)
    return ids, text_lengths


def eos_padded(ids: Tensor, length: int, eos_id: int) -> Tensor:
    """(B, L) response ids -> (B, length): cut, or padded on the right with EOS.

    Only cut an `encode_transcripts` batch past every row's first EOS (its default width is).
    """
    if length <= ids.shape[1]:
        return ids[:, :length]
    return F.pad(ids, (0, length - ids.shape[1]), value=eos_id)


def transcript_and_eos(ids: Tensor, text_lengths: Tensor) -> Tensor:
    """(B, L) bool, True at each row's transcript tokens and its first EOS: what the AR loss scores.

    ids (B, L) and text_lengths (B,) as `encode_transcripts` returns them.
    """
    positions = torch.arange(ids.shape[1], device=ids.device)[None]
    return positions <= text_lengths.to(ids.device)[:, None]


def ctc_loss(log_probs: torch.Tensor, lengths: torch.Tensor, texts: list[str],
             vocab: CharVocabulary = ENGLISH_CHARS) -> torch.Tensor:
    """Mean CTC loss (per-target-length normalised, as torch's ``reduction='mean'``).

    Args:
        log_probs: (B, T, V) from ``CTCHead``. lengths: (B,) valid frames. texts: B transcripts.
    Returns:
        scalar loss; impossible alignments (transcript longer than the audio) give 0, not inf.
    """
    if len(texts) != log_probs.shape[0]:
        raise ValueError(f"ctc_loss got {len(texts)} texts for a batch of {log_probs.shape[0]}")
    targets = [torch.tensor(vocab.encode(text), dtype=torch.long) for text in texts]
    target_lengths = torch.tensor([len(target) for target in targets], dtype=torch.long)
    flat_targets = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.long)
    return F.ctc_loss(log_probs.transpose(0, 1).float(), flat_targets.to(log_probs.device),
                      lengths.to(log_probs.device, torch.long), target_lengths.to(log_probs.device),
                      blank=vocab.blank_id, reduction="mean", zero_infinity=True)


def response_loss(model, audio, texts: list[str], weighting: str = "llada", mask_eps: float = 1e-3,
                  full_mask_fraction: float = 0.0, generator: torch.Generator | None = None,
                  block_lengths: Tensor | None = None) -> Tensor:
    """The decoder's loss on `texts` (B transcripts) read with `audio` (an AudioContext of B rows):
    next-token loss for a model trained with the AR objective, else the masked-diffusion loss of
    one forward-mask draw from `generator` (`forward_mask`, `masked_diffusion_loss`).

    block_lengths (B,): each row's diffusion response block (EOS-padded; at least its transcript
    + 1); positions past it are neither attended to, masked nor scored. None: every row is as
    long as the micro-batch's, `encode_transcripts`' default.
    """
    ids, text_lengths = encode_transcripts(model.tokenizer, texts, model.eos_id)
    if model.config.objective == "ar":
        ids = ids.to(model.device)
        valid = transcript_and_eos(ids, text_lengths)
        return next_token_loss(model.response_logits(audio, ids, causal=True), ids, valid)
    if block_lengths is None:
        row_lengths = None
        valid = torch.ones_like(ids, dtype=torch.bool)  # EOS padding is part of the answer (LLaDA)
    else:
        row_lengths = torch.maximum(block_lengths.cpu().long(), text_lengths + 1)
        ids = eos_padded(ids, int(row_lengths.max()), model.eos_id)
        valid = torch.arange(ids.shape[1])[None] < row_lengths[:, None]
        row_lengths = row_lengths.to(model.device)
    ids, valid = ids.to(model.device), valid.to(model.device)
    noisy = forward_mask(ids, valid, model.mask_id, mask_eps, full_mask_fraction, generator)
    logits = model.response_logits(audio, noisy.noisy, row_lengths)
    return masked_diffusion_loss(logits, ids, noisy, valid, weighting)
