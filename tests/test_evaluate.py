import math

import pytest
import torch

from dllm_asr.evaluate import audio_gain
from dllm_asr.loading import build_model
from tests.conftest import tiny_model_config


@pytest.mark.parametrize("objective", ["diffusion", "ar"])
def test_audio_gain_is_zero_when_every_row_has_the_same_audio(objective, real_clips):
    torch.manual_seed(0)
    model = build_model(tiny_model_config(objective=objective)).eval()
    texts = ["the quick brown fox", "a different sentence here", "third"]
    matched, mismatched = audio_gain(model, [real_clips[0]] * 3, texts)
    assert matched == mismatched and math.isfinite(matched) and matched > 0
    matched, mismatched = audio_gain(model, real_clips[:3], texts)
    assert matched != mismatched  # a random model already reacts to which audio it hears


def test_audio_gain_needs_two_utterances(tiny_model, real_clips):
    with pytest.raises(ValueError, match="at least 2 utterances"):
        audio_gain(tiny_model, real_clips[:1], ["one"])
