"""Shared fixtures: a tiny random SpeechLLM (random Whisper encoder, Q-Former, random LLaDA
decoder with SmolLM2's real tokenizer) and real audio clips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

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


@pytest.fixture(scope="session")
def tiny_config():
    return tiny_model_config()


@pytest.fixture()
def tiny_model(tiny_config):
    import torch

    from dllm_asr.loading import build_model

    torch.manual_seed(0)
    return build_model(tiny_config).eval()


@pytest.fixture(scope="session")
def real_clips():
    """Real speech clips (16 kHz float32) and their transcripts."""
    from dllm_asr.audio import load_audio

    example = load_audio(ASSETS / "example.wav")
    return [example, example[: len(example) // 2], load_audio(DATA / "stereo_44k.flac"), load_audio(DATA / "mono_22k.mp3")]
