"""Tests for dllm_asr.model.whisper_modules: Whisper's parts built without transformers keep
transformers' parameter names, shapes, initialisation and outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import WhisperConfig
from transformers.models.whisper import modeling_whisper

from dllm_asr.model.decoders.whisper import WhisperTextDecoder, causal_mask
from dllm_asr.model.encoders import WhisperEncoder, load_whisper_encoder
from dllm_asr.model.whisper_modules import WhisperDims, build_uninitialised, init_whisper_weights, sinusoids

SMALL = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
             decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=128, vocab_size=300,
             num_mel_bins=80, max_source_positions=50, max_target_positions=40, pad_token_id=255,
             bos_token_id=256, eos_token_id=255, decoder_start_token_id=256)


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def test_dims_read_a_transformers_config_a_dict_and_a_config_json():
    config = WhisperConfig(**SMALL)
    dims = WhisperDims.of(config)
    assert dims == WhisperDims(**SMALL) == WhisperDims.of(dict(SMALL, architectures=["x"], use_cache=True))
    assert WhisperDims.of(dims) is dims
    assert WhisperDims() == WhisperDims.of(WhisperConfig())  # the same defaults
    with pytest.raises(ValueError, match="activation_function 'relu'"):
        WhisperDims(activation_function="relu")


def test_sinusoids_are_whispers_positions():
    assert torch.equal(sinusoids(50, 64), modeling_whisper.sinusoids(50, 64))
    # hand-worked: position 0 is sin 0 = 0 then cos 0 = 1; position 1's first channel is sin 1
    table = sinusoids(3, 4)
    assert table[0].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert table[1, 0].item() == pytest.approx(0.8414710)  # sin(1), timescale 1
    assert table[1, 1].item() == pytest.approx(0.0001)  # sin(1 / 10000), the slowest timescale
    with pytest.raises(ValueError, match="even width"):
        sinusoids(3, 5)


def test_the_parts_have_transformers_names_and_shapes():
    config = WhisperConfig(**SMALL)
    assert shapes(WhisperEncoder(config)) == shapes(modeling_whisper.WhisperEncoder(config))
    ours = shapes(WhisperTextDecoder(config, eos_token_id=255))
    assert ours.pop("mask_embedding") == (64,)
    assert ours == shapes(modeling_whisper.WhisperDecoder(config))


def test_random_weights_are_initialised_as_transformers_does():
    torch.manual_seed(0)
    encoder = load_whisper_encoder(WhisperDims(**SMALL))
    decoder = WhisperTextDecoder(WhisperDims(**SMALL), eos_token_id=255)
    assert torch.equal(encoder.embed_positions.weight, sinusoids(50, 64))
    assert not encoder.embed_positions.weight.requires_grad
    assert encoder.layers[0].fc1.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert encoder.layers[0].fc1.bias.abs().max().item() == 0.0
    assert torch.equal(encoder.layer_norm.weight, torch.ones(64))
    assert decoder.embed_tokens.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert decoder.embed_tokens.weight[255].abs().max().item() == 0.0  # the padding row
    assert decoder.embed_tokens.padding_idx == 255


def test_build_uninitialised_skips_initialisation_and_puts_it_back():
    before = {part: part.__dict__.get("reset_parameters") for part in (nn.Linear, nn.Conv1d, nn.Embedding)}
    filled = torch.full((64,), 7.0)

    def make() -> nn.Module:
        layer = nn.Linear(64, 64)
        layer.bias.data.copy_(filled)
        init_whisper_weights(layer, 0.02)  # skipped here: it would zero the bias
        return layer

    layer = build_uninitialised(make)
    assert torch.equal(layer.bias.data, filled)
    assert {part: part.__dict__.get("reset_parameters") for part in before} == before
    assert nn.Linear(64, 64).bias.abs().max().item() > 0.0  # initialised again after the builder
    init_whisper_weights(layer, 0.02)  # and not skipped outside it
    assert layer.bias.abs().max().item() == 0.0


def test_a_decoder_loaded_into_the_uninitialised_parts_computes_as_transformers():
    torch.manual_seed(0)
    config = WhisperConfig(**SMALL)
    reference = modeling_whisper.WhisperDecoder(config).eval()
    decoder = build_uninitialised(lambda: WhisperTextDecoder(config, eos_token_id=255))
    state = dict(reference.state_dict(), mask_embedding=torch.zeros(64))
    decoder.load_state_dict(state, strict=True)
    decoder.eval()
    ids = torch.tensor([[256, 12, 40, 7, 99]])
    audio = torch.randn(1, 30, 64)
    with torch.no_grad():
        expected = reference(input_ids=ids, encoder_hidden_states=audio).last_hidden_state
        cross = decoder.cross_cache(audio, torch.tensor([30]))
        hidden, _ = decoder(ids, torch.arange(5)[None], causal_mask(5, 0, ids.device), cross)
    torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=1e-4)
