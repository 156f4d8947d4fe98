"""Shared fixtures: a tiny random SpeechLLM (random Whisper encoder, Q-Former, random LLaDA
decoder with SmolLM2's real tokenizer) and real audio clips."""

from __future__ import annotations

import os

import pytest

from tests.helpers import ASSETS, DATA, tiny_model_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def float32_for_auto_dtype(monkeypatch):
    """dtype "auto" (the CLI's default) is bfloat16 on CPUs with native bf16 matrix instructions;
    the suite runs float32 on every machine, so that its outcomes do not depend on the CPU.
    tests/test_whisper_diffusion.py checks the bfloat16 path itself."""
    from dllm_asr.model.decoders import base

    monkeypatch.setattr(base, "cpu_has_bf16_matmul", lambda: False)


@pytest.fixture(scope="session")
def tiny_config():
    return tiny_model_config()


@pytest.fixture()
def tiny_model(tiny_config):
    import torch

    from dllm_asr.model.loading import build_model

    torch.manual_seed(0)
    return build_model(tiny_config).eval()


@pytest.fixture(scope="session")
def real_clips():
    """Real speech clips (16 kHz float32) and their transcripts."""
    from dllm_asr.audio.io import load_audio

    example = load_audio(ASSETS / "example.wav")
    return [example, example[: len(example) // 2], load_audio(DATA / "stereo_44k.flac"), load_audio(DATA / "mono_22k.mp3")]
