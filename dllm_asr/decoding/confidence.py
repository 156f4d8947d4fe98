"""Token choice and confidence per position (docs/algorithms.md 3a: argmax, Gumbel sampling, remasking scores)."""
from __future__ import annotations

import torch
from torch import Tensor

from dllm_asr.decoding.predictor import MaskPredictor, call_predictor


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator for Gumbel noise and random scores; seeded when `seed` is given."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def gumbel_perturbed(logits: Tensor, temperature: float, generator: torch.Generator) -> Tensor:
    """logits (..., V) -> float64 scores whose argmax samples softmax(logits / temperature).

    docs/algorithms.md 3a: the LLaDA reference divides exp(logits) by (-log u)^T in float64. We take the
    log of that, logits - T * log(-log u), which has the same argmax and cannot overflow.
    """
    scores = logits.to(torch.float64, copy=True)  # the caller's logits stay untouched
    if temperature == 0:
        return scores
    uniform = torch.rand(scores.shape, dtype=torch.float64, generator=generator, device=scores.device)
    return scores - temperature * torch.log(-torch.log(uniform))


def confidence_and_argmax(
    logits: Tensor,
    temperature: float,
    remasking: str,
    generator: torch.Generator,
    mask_id: int | None = None,
    model_precision: bool = False,
) -> tuple[Tensor, Tensor]:
    """Predicted token and its commit score at every position.

    logits: (B, L, V). Returns (tokens LongTensor (B, L), scores float64 (B, L)).
    docs/algorithms.md 3a: the token is the argmax of the (Gumbel-noised when temperature > 0) logits;
    "low_confidence" scores it by its probability under the un-noised softmax, "random" by a
    uniform draw. The mask token is never a prediction (its logit is excluded from the argmax
    only, so confidences equal the reference whenever the reference would not predict [MASK]).
    model_precision: the softmax in the logits' dtype, as the reference (`probability_of`); the
    scores are then in that dtype, else float64.
    """
    if temperature == 0:
        tokens = argmax_except(logits, mask_id)
    else:
        noisy = gumbel_perturbed(logits, temperature, generator)
        if mask_id is not None and 0 <= mask_id < logits.shape[-1]:
            noisy[..., mask_id] = float("-inf")
        tokens = noisy.argmax(dim=-1)
    if remasking == "random":
        scores = torch.rand(tokens.shape, generator=generator, device=logits.device).to(torch.float64)
    else:
        scores = probability_of(logits, tokens, model_precision)
    return tokens, scores


def argmax_except(logits: Tensor, excluded: int | None) -> Tensor:
    """argmax over the last axis of logits (..., V) with token `excluded` left out, without
    copying the logits (a (B, L, V) copy per step is most of a small decoder's step on a CPU)."""
    tokens = logits.argmax(dim=-1)
    if excluded is None or not 0 <= excluded < logits.shape[-1]:
        return tokens
    hit = tokens == excluded
    if bool(hit.any()):
        rows = logits[hit].clone()
        rows[:, excluded] = float("-inf")
        tokens[hit] = rows.argmax(dim=-1)
    return tokens


def probability_of(logits: Tensor, tokens: Tensor, model_precision: bool = False) -> Tensor:
    """softmax(logits)[token] per position, float64 (..,): exp(logit - logsumexp), the
    normaliser reduced in float32 over V and only the per-position results in float64.

    model_precision=True: softmax in the logits' own dtype, returned in that dtype (bf16 logits
    give bf16-rounded probabilities, hence ties, which `commit_top_k` then orders as the
    reference's topk over the same dtype does); what LLaDA's reference code computes.
    """
    if model_precision:
        return torch.softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    chosen = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).to(torch.float64)
    return torch.exp(chosen - chunked_logsumexp(logits).to(torch.float64))


def chunked_logsumexp(logits: Tensor, rows_per_chunk: int = 64) -> Tensor:
    """logsumexp over the last axis of logits (..., V) in float32, `rows_per_chunk` positions at a
    time. Why: `torch.logsumexp` holds a temporary as large as its input, and the first step of a
    batch of eight 10-s windows scores (544, 51,864) logits: a 113-MB copy on top of them, which
    set a long recording's peak memory (docs/default-model.md, "Memory")."""
    flat = logits.reshape(-1, logits.shape[-1])
    parts = [torch.logsumexp(chunk.float(), dim=-1) for chunk in flat.split(rows_per_chunk)]
    return (torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.float32)).reshape(logits.shape[:-1])


def predict_positions(predictor: MaskPredictor, block: Tensor, rows: Tensor, lengths: Tensor, wanted: Tensor, temperature: float,
                      remasking: str, generator: torch.Generator | None, mask_id: int | None,
                      seed: int | None, model_precision: bool = False,
                      windows: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, torch.Generator]:
    """One forward pass; the predicted token, its commit score and its probability at the `wanted` positions.

    block (B', L') ids; wanted (B', L') bool. Returns predicted (B', L') (block's own ids where not
    wanted), scores float64 (B', L') (-inf where not wanted), probabilities float64 (B', L')
    (softmax of the predicted token: the scores themselves unless remasking is random) and the generator. Greedy
    low-confidence decoding asks the predictor for the wanted positions' logits only; sampling
    and random remasking draw noise over the whole block, as the reference does. model_precision:
    see `probability_of`; windows: each row's sub-block, for the predictor (`call_predictor`).
    """
    greedy = temperature == 0 and remasking == "low_confidence"
    logits = call_predictor(predictor, block, rows, lengths, positions=wanted if greedy else None, windows=windows)
    if generator is None:
        generator = make_generator(seed, logits.device)
    if greedy:
        chosen, chosen_scores = confidence_and_argmax(logits[None], 0.0, remasking, generator, mask_id, model_precision)
        predicted = block.clone()
        predicted[wanted] = chosen[0].to(block.device)
        scores = torch.full(block.shape, float("-inf"), dtype=chosen_scores.dtype, device=block.device)
        scores[wanted] = chosen_scores[0].to(block.device)
        return predicted, scores, scores, generator
    predicted, scores = confidence_and_argmax(logits, temperature, remasking, generator, mask_id, model_precision)
    probs = scores if remasking == "low_confidence" else probability_of(logits, predicted, model_precision)
    scores = scores.to(block.device).masked_fill(~wanted, float("-inf"))
    return predicted.to(block.device), scores, probs.to(block.device), generator
