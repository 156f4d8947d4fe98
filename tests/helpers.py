"""Helpers the tests share (fixtures are in conftest.py): where the test data lies, and the
configuration of the tiny random model."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "dllm_asr" / "assets"
DATA = Path(__file__).resolve().parent / "data"


def tiny_model_config(adapter: str = "qformer", objective: str = "diffusion"):
    from dllm_asr.config import AdapterConfig, DecoderConfig, EncoderConfig, ModelConfig

    encoder = EncoderConfig(source="random", random_config=dict(
        d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, num_mel_bins=80,
        decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128, vocab_size=64))
    decoder = DecoderConfig(kind="llada", source="random", random_config=dict(
        d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128, seed=0))
    return ModelConfig(encoder=encoder, adapter=AdapterConfig(kind=adapter, hidden_size=64, num_heads=4, dropout=0.0),
                       decoder=decoder, objective=objective, max_response_tokens=48)
