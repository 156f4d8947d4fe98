import math

import pytest
import torch

from dllm_asr.evaluation.evaluate import audio_gain
from dllm_asr.model.loading import build_model
from tests.helpers import tiny_model_config


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


def test_cli_eval_prints_the_audio_gain(tiny_model, tmp_path, capsys):
    import json

    from dllm_asr.model.checkpoint import save_model
    from dllm_asr.cli import main
    from tests.helpers import ASSETS, DATA

    save_model(tiny_model, tmp_path / "ckpt")
    manifest = tmp_path / "dev.jsonl"
    rows = [{"id": "a", "audio": str(ASSETS / "example.wav"), "text": "the quick brown fox"},
            {"id": "b", "audio": str(DATA / "stereo_44k.flac"), "text": "another clip"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "--model", str(tmp_path / "ckpt"), "--data", str(manifest), "--steps", "2",
                 "--length", "4", "--out", str(tmp_path / "eval"), "--audio-gain", "8"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("audio gain"))
    assert line.endswith("; 2 clips)")
    gain = float(line.split()[2])
    matched, swapped = (float(line.split("loss ")[1].split()[0]), float(line.split(", ")[1].split()[0]))
    assert gain == pytest.approx(swapped - matched, abs=2e-3)
