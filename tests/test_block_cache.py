"""Fast-dLLM's block-wise prefix and dual caches (dllm_asr/model/block_cache.py, docs/algorithms.md 3h).

Checked on both families that have them (LLaDA, the adapted Whisper decoder):
- right after a refresh, a window pass gives the full pass's logits (any depth): the column
  bookkeeping (left padding, Whisper's shift, rows of different lengths) is right;
- with one layer both caches are exact (cached keys/values depend on inputs that do not change
  inside a sub-block), so decoding gives the uncached tokens;
- a refresh happens exactly when a row enters a new sub-block.
"""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from dllm_asr.config import DEFAULT_MODEL
from dllm_asr.decoding import DecodeOptions, decode
from dllm_asr.model.block_cache import BlockCachePredictor, window_columns
from dllm_asr.model.loading import build_model, load_model
from dllm_asr.transcription.long_form import transcribe_batch
from dllm_asr.transcription.options import TranscribeOptions
from tests.helpers import tiny_model_config


@pytest.fixture(scope="module")
def default_model():
    return load_model(DEFAULT_MODEL)


def one_layer(model):
    """A copy of the model with its decoder cut to the first layer."""
    model = copy.deepcopy(model)
    decoder = model.decoder
    if hasattr(decoder, "layers"):  # Whisper
        decoder.layers = decoder.layers[:1]
    else:
        decoder.keep_first_layers(1)
    return model


def llada_model(layers: int = 2):
    config = tiny_model_config()
    config = replace(config, decoder=replace(config.decoder, random_config=dict(config.decoder.random_config,
                                                                              n_layers=layers)))
    torch.manual_seed(0)
    return build_model(config).eval()


def masked_response(model, lengths: list[int], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 200, (len(lengths), max(lengths)), generator=gen)
    return tokens.masked_fill(torch.rand(tokens.shape, generator=gen) < 0.5, model.mask_id)


def test_window_columns_pad_by_repeating_the_last():
    columns, valid = window_columns(torch.tensor([3, 10]), torch.tensor([6, 11]))
    assert columns.tolist() == [[3, 4, 5], [10, 10, 10]]
    assert valid.tolist() == [[True, True, True], [True, False, False]]


@pytest.mark.parametrize("family", ["llada", "whisper"])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
@torch.no_grad()
def test_a_window_pass_right_after_a_refresh_equals_the_full_pass(family, mode, default_model, real_clips):
    model = llada_model(layers=2) if family == "llada" else default_model
    audio = model.encode_audio(real_clips[:3])  # different lengths: left padding differs per row
    rows, lengths = torch.tensor([0, 1, 2]), torch.tensor([9, 6, 4])
    tokens = masked_response(model, lengths.tolist())
    windows = torch.tensor([[3, 6], [0, 3], [2, 4]])
    predictor = model.mask_predictor(audio, cache=mode)
    full = predictor(tokens, rows, lengths, windows=windows)
    window = predictor(tokens, rows, lengths, windows=windows)
    assert (predictor.full_passes, predictor.window_passes) == (1, 1)
    for i, (lo, hi) in enumerate(windows.tolist()):
        top = int(lengths[i]) if mode == "prefix" else hi
        torch.testing.assert_close(window[i, lo:top], full[i, lo:top], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llada", "whisper"])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_with_one_layer_both_caches_decode_the_uncached_tokens(family, mode, default_model, real_clips):
    model = one_layer(llada_model(layers=2) if family == "llada" else default_model)
    for strategy in (dict(strategy="semi-ar", steps=8, num_blocks=4), dict(strategy="threshold", threshold=0.7)):
        options = TranscribeOptions(length=12, no_speech_threshold=None, **strategy)
        plain = transcribe_batch(model, real_clips[:3], options)
        cached = transcribe_batch(model, real_clips[:3], replace(options, cache=mode))
        assert [t.tokens for t in cached] == [t.tokens for t in plain], (strategy, mode)


@torch.no_grad()
def test_a_refresh_happens_when_a_row_enters_a_sub_block(default_model, real_clips):
    model = default_model
    audio = model.encode_audio(real_clips[:1])
    predictor = model.mask_predictor(audio, cache="dual")
    assert isinstance(predictor, BlockCachePredictor)
    options = DecodeOptions(mask_id=model.mask_id, eos_id=model.eos_id, steps=12, num_blocks=3,
                            eos_early_stop=False)
    result = decode(predictor, torch.full((1, 12), model.mask_id), options)
    assert int(result.nfe[0]) == 12  # 3 sub-blocks x 4 steps
    assert (predictor.full_passes, predictor.window_passes) == (3, 9)


def test_cache_names_are_checked(tiny_model, real_clips):
    audio = tiny_model.encode_audio(real_clips[:1])
    with pytest.raises(ValueError, match="--cache must be one of"):
        tiny_model.mask_predictor(audio, cache="everything")
    with pytest.raises(ValueError, match="--cache must be one of"):
        TranscribeOptions(cache="everything")
