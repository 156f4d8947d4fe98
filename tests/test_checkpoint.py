"""Tests for dllm_asr.model.checkpoint: deltas-only checkpoints, export, and files written whole
or not at all."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from dllm_asr.model.checkpoint import WEIGHTS_FILE, export_model, save_model
from dllm_asr.model.loading import load_model


def test_checkpoint_round_trip_stores_only_deltas(tiny_config, tiny_model, real_clips, tmp_path):
    with torch.no_grad():
        for name, p in tiny_model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # make LoRA non-trivial so the round trip is meaningful
    save_model(tiny_model, tmp_path / "ckpt")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ckpt" / WEIGHTS_FILE), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith(("adapter.", "ctc_head.")) or "lora_" in k for k in keys)
    loaded = load_model(tmp_path / "ckpt")
    tokens = torch.randint(0, 1000, (1, 6))
    a = tiny_model.response_logits(tiny_model.encode_audio(real_clips[:1]), tokens)
    b = loaded.response_logits(loaded.encode_audio(real_clips[:1]), tokens)
    torch.testing.assert_close(a, b)


def test_export_to_fp16_halves_the_file_and_loads_into_fp32(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path / "ckpt", train_state={"step": 3})
    export_model(tmp_path / "ckpt", tmp_path / "ship", dtype="fp16")
    assert sorted(p.name for p in (tmp_path / "ship").iterdir()) == ["config.json", WEIGHTS_FILE]
    full, half = ((tmp_path / d / WEIGHTS_FILE).stat().st_size for d in ("ckpt", "ship"))
    assert half < 0.55 * full
    loaded = load_model(tmp_path / "ship")
    original, params = dict(tiny_model.named_parameters()), dict(loaded.named_parameters())
    for name in loaded.delta_parameter_names():
        assert params[name].dtype == torch.float32
        torch.testing.assert_close(params[name], original[name].half().float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="--dtype must be one of"):
        export_model(tmp_path / "ckpt", tmp_path / "x", dtype="int8")
    with pytest.raises(ValueError, match="not a dllm-asr checkpoint"):
        export_model(tmp_path, tmp_path / "x")


def test_export_and_save_never_replace_what_they_did_not_write(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path / "ckpt")
    models = tmp_path / "models"  # a user's folder of other things
    models.mkdir()
    (models / "other-model.bin").write_bytes(b"theirs")
    with pytest.raises(ValueError, match="holds more than a dllm-asr checkpoint"):
        export_model(tmp_path / "ckpt", models)
    with pytest.raises(ValueError, match="holds more than a dllm-asr checkpoint"):
        save_model(tiny_model, models)
    assert sorted(p.name for p in models.iterdir()) == ["other-model.bin"]
    assert (models / "other-model.bin").read_bytes() == b"theirs"
    (tmp_path / "ship.tmp").mkdir()  # a sibling the swap would use, holding the user's file
    (tmp_path / "ship.tmp" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="ship.tmp"):
        export_model(tmp_path / "ckpt", tmp_path / "ship")
    assert (tmp_path / "ship.tmp" / "notes.txt").read_text() == "keep"
    export_model(tmp_path / "ckpt", tmp_path / "ship2")
    export_model(tmp_path / "ckpt", tmp_path / "ship2")  # an earlier export of ours is replaced
    umask = os.umask(0)
    os.umask(umask)
    for directory in ("ckpt", "ship2"):
        for path in (tmp_path / directory).iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_bad_checkpoint_directories_give_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="no-such-dir: no such checkpoint"):
        load_model(tmp_path / "no-such-dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: not a dllm-asr checkpoint"):
        load_model(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not a readable"):
        load_model(tmp_path / "bad")


def test_a_full_disk_or_a_kill_while_saving_leaves_the_previous_checkpoint_loadable(tiny_model, tmp_path, monkeypatch):
    import errno

    from dllm_asr.model import checkpoint

    save_model(tiny_model, tmp_path / "last")
    before = (tmp_path / "last" / WEIGHTS_FILE).read_bytes()
    real_save_file = checkpoint.save_file

    def disk_full(tensors, path):
        with open(path, "wb") as f:
            f.write(b"\0" * 100)  # what fitted
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_model(tiny_model, tmp_path / "last")
    assert (tmp_path / "last" / WEIGHTS_FILE).read_bytes() == before
    load_model(tmp_path / "last")

    # killed between the two renames of the swap: only last.old holds the previous checkpoint
    monkeypatch.setattr(checkpoint, "save_file", real_save_file)
    real_replace, calls = os.replace, []

    def killed_after_the_first_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", killed_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        save_model(tiny_model, tmp_path / "last")
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    assert not (tmp_path / "last").exists() and (tmp_path / "last.old" / WEIGHTS_FILE).read_bytes() == before
    load_model(tmp_path / "last")  # the interrupted swap is undone
    assert (tmp_path / "last" / WEIGHTS_FILE).read_bytes() == before and not (tmp_path / "last.old").exists()
    save_model(tiny_model, tmp_path / "last")  # and the next save goes through
