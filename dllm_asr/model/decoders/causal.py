"""The autoregressive baseline (Whisper-LLaMA style): the decoder reads [prompt | audio] as a
prefix and writes the transcript left to right with causal attention and a KV cache.

With an HFDecoder this is transformers' own ``generate`` (greedy or beam search, KV cache, from
``inputs_embeds``); any other DecoderLM gets an uncached greedy loop of full causal forwards.
"""
from __future__ import annotations

import torch

from dllm_asr.model.decoders.base import DecoderLM, position_ids_from_mask


class GeneratedTokens(list):
    """A list (one per row) of generated token-id lists, EOS and what follows it removed, with
    ``nfe``: the number of forward passes of the network the generation took (one per generated
    position for the batch as a whole, the prefix pass included), and ``confidences``: per row,
    each token's probability when it was chosen (None where the decoder does not record them)."""

    def __init__(self, rows: list[list[int]], nfe: int, confidences: list[list[float]] | None = None,
                 spans: list[list[tuple[float, float | None, int]] | None] | None = None):
        super().__init__(rows)
        self.nfe = nfe
        self.confidences = confidences
        self.spans = spans
        """Per row, the segments the decoder timed itself (Whisper's time tokens: start s, end s or
        None, one past the segment's last token), from the start of the row's audio; None: untimed."""


def _cut_at_eos(rows: torch.Tensor, eos_token_id: int) -> list[list[int]]:
    cut = []
    for row in rows.tolist():
        cut.append(row[: row.index(eos_token_id)] if eos_token_id in row else row)
    return cut


def _count_forwards(module: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    calls = [0]

    def hook(_module, _args, _output):
        calls[0] += 1

    return calls, module.register_forward_hook(hook)


def _hf_generate(decoder, inputs_embeds, attention_mask, max_new_tokens, num_beams, eos_token_id) -> GeneratedTokens:
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                              eos_token_id=eos_token_id, pad_token_id=eos_token_id, num_return_sequences=1)
    calls, handle = _count_forwards(decoder.hf_model)
    try:
        with torch.no_grad():
            # With inputs_embeds and no input_ids, a decoder-only model returns only the new tokens.
            out = decoder.hf_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask.long(),
                                            generation_config=config)
    finally:
        handle.remove()
    return GeneratedTokens(_cut_at_eos(out, eos_token_id), nfe=calls[0])


def _uncached_greedy(decoder: DecoderLM, inputs_embeds, attention_mask, max_new_tokens,
                     eos_token_id) -> GeneratedTokens:
    """Greedy decoding by full causal forwards over the growing sequence (no KV cache)."""
    embeds, mask = inputs_embeds, attention_mask.bool()
    batch = embeds.shape[0]
    tokens = torch.full((batch, 0), eos_token_id, dtype=torch.long, device=embeds.device)
    done = torch.zeros(batch, dtype=torch.bool, device=embeds.device)
    nfe = 0
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = decoder(embeds, mask, position_ids_from_mask(mask), causal=True)
            nfe += 1
            nxt = logits[:, -1].argmax(-1).masked_fill(done, eos_token_id)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            done |= nxt == eos_token_id
            if bool(done.all()):
                break
            embeds = torch.cat([embeds, decoder.embed(nxt[:, None]).to(embeds.dtype)], dim=1)
            mask = torch.cat([mask, torch.ones(batch, 1, dtype=torch.bool, device=mask.device)], dim=1)
    return GeneratedTokens(_cut_at_eos(tokens, eos_token_id), nfe=nfe)


def ar_generate(decoder: DecoderLM, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                max_new_tokens: int, num_beams: int = 1, eos_token_id: int | None = None) -> GeneratedTokens:
    """Autoregressive decoding after a left-padded prefix.

    inputs_embeds (B, S, D): the [prompt | audio] prefix of each row, left-padded;
    attention_mask (B, S): True at real positions. Returns one token-id list per row (without
    the EOS) and ``.nfe``. Greedy when ``num_beams == 1``, else beam search (HF decoders only).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if inputs_embeds.dim() != 3 or attention_mask.shape != inputs_embeds.shape[:2]:
        raise ValueError(f"inputs_embeds must be (B, S, D) and attention_mask (B, S); got "
                         f"{tuple(inputs_embeds.shape)} and {tuple(attention_mask.shape)}")
    eos = decoder.eos_token_id if eos_token_id is None else eos_token_id
    if hasattr(decoder, "hf_model"):
        return _hf_generate(decoder, inputs_embeds, attention_mask, max_new_tokens, num_beams, eos)
    if num_beams != 1:
        raise ValueError(f"num_beams={num_beams}: beam search needs an HF decoder; {decoder.name} supports greedy only")
    return _uncached_greedy(decoder, inputs_embeds, attention_mask, max_new_tokens, eos)
