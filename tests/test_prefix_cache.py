"""The Fast-dLLM prefix key/value cache (docs/algorithms.md 3d): exact for one layer, approximate but
batch-invariant and cheaper for more."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dllm_asr.transcription.long_form import transcribe_batch
from dllm_asr.transcription.options import TranscribeOptions
from tests.helpers import tiny_model_config


def _one_layer_model():
    from dllm_asr.model.loading import build_model

    config = tiny_model_config()
    random_config = dict(config.decoder.random_config, n_layers=1)
    config = replace(config, decoder=replace(config.decoder, random_config=random_config))
    torch.manual_seed(0)
    return build_model(config).eval()


def _response(model, lengths: list[int], seed: int = 0) -> torch.Tensor:
    """Random response ids (B, max(lengths)) with about half the positions masked."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 200, (len(lengths), max(lengths)), generator=gen)
    masked = torch.rand(tokens.shape, generator=gen) < 0.5
    return tokens.masked_fill(masked, model.mask_id)


@torch.no_grad()
def test_one_layer_cached_logits_equal_uncached(real_clips):
    model = _one_layer_model()
    audio = model.encode_audio(real_clips[:3])  # clips of different lengths: left padding differs per row
    plain, cached = model.mask_predictor(audio), model.mask_predictor(audio, cache="static")
    for rows, lengths in (([0, 1, 2], [7, 5, 3]), ([2, 0], [4, 6])):
        rows_t, lengths_t = torch.tensor(rows), torch.tensor(lengths)
        tokens = _response(model, lengths)
        expected, got = plain(tokens, rows_t, lengths_t), cached(tokens, rows_t, lengths_t)
        for i, n in enumerate(lengths):
            torch.testing.assert_close(got[i, :n], expected[i, :n], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_two_layers_approximate_but_decodes_and_is_batch_invariant(tiny_model, real_clips):
    audio = tiny_model.encode_audio(real_clips[:2])
    rows, lengths = torch.tensor([0, 1]), torch.tensor([6, 6])
    tokens = _response(tiny_model, [6, 6])
    plain = tiny_model.mask_predictor(audio)(tokens, rows, lengths)
    cached = tiny_model.mask_predictor(audio, cache="static")(tokens, rows, lengths)
    assert not torch.allclose(plain, cached, atol=1e-6)  # the prefix no longer sees the response
    options = TranscribeOptions(strategy="diffusion", steps=4, length=6, cache="static")
    batched = transcribe_batch(tiny_model, real_clips, options)
    for clip, row in zip(real_clips, batched):
        assert row.nfe >= 1 and len(row.tokens) <= 6
        assert transcribe_batch(tiny_model, [clip], options)[0].tokens == row.tokens


def test_cached_steps_run_only_the_response_positions(tiny_model, real_clips):
    seen: list[int] = []
    blocks = tiny_model.decoder.model.transformer["blocks"]
    hook = blocks[0].register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            audio = tiny_model.encode_audio(real_clips[:2])
            prefix_width = tiny_model.prefix(audio)[0].shape[1]
            predict = tiny_model.mask_predictor(audio, cache="static")
            for _ in range(3):
                predict(_response(tiny_model, [5, 5]), torch.tensor([0, 1]), torch.tensor([5, 5]))
            tiny_model.mask_predictor(audio)(_response(tiny_model, [5, 5]), torch.tensor([0, 1]), torch.tensor([5, 5]))
    finally:
        hook.remove()
    assert seen == [prefix_width, 5, 5, 5, prefix_width + 5]


def test_decoder_without_cache_support_is_a_clear_error(tiny_model, real_clips):
    audio = tiny_model.encode_audio(real_clips[:1])
    decoder = tiny_model.decoder
    tiny_model.decoder = torch.nn.Module()  # stands for a decoder with no prefix-cache methods
    tiny_model.decoder.name = "plain"
    try:
        with pytest.raises(ValueError, match="--cache static"):
            tiny_model.mask_predictor(audio, cache="static")
    finally:
        tiny_model.decoder = decoder


def _split_forward(decoder, embeds, mask, response_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Response logits of the full bidirectional forward and of the cached path, (B, L, V) each."""
    from dllm_asr.model.decoders.base import position_ids_from_mask

    full = decoder(embeds, mask, position_ids_from_mask(mask))[:, -response_length:]
    prefix, prefix_mask = embeds[:, :-response_length], mask[:, :-response_length]
    cache = decoder.compute_prefix_cache(prefix, prefix_mask, position_ids_from_mask(prefix_mask))
    before = [k.clone() for k in cache.keys]
    cached = decoder.forward_with_prefix_cache(embeds[:, -response_length:], mask[:, -response_length:], cache)
    again = decoder.forward_with_prefix_cache(embeds[:, -response_length:], mask[:, -response_length:], cache)
    assert all(torch.equal(a, b) for a, b in zip(before, cache.keys))  # the shared prefix is never modified
    torch.testing.assert_close(again, cached)
    return full, cached


@pytest.mark.parametrize("n_layers", [1, 2])
@torch.no_grad()
def test_hf_decoder_prefix_cache_exact_for_one_layer(tmp_path, n_layers):
    from dllm_asr.model.decoders.hf import load_hf_decoder
    from tests.tiny_checkpoints import write_tiny_llama_checkpoint

    decoder = load_hf_decoder(write_tiny_llama_checkpoint(tmp_path / "llama", num_hidden_layers=n_layers),
                              dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 20, (2, 9), generator=gen)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :3] = False  # row 1: a shorter, left-padded prefix
    mask[0, -1] = False  # row 0: one padded response position
    full, cached = _split_forward(decoder, decoder.embed(ids), mask, response_length=4)
    valid = mask[:, -4:]
    if n_layers == 1:
        torch.testing.assert_close(cached[valid], full[valid])
    else:
        assert not torch.allclose(cached[valid], full[valid], atol=1e-6)
