import os
import stat

import pytest
import torch
from peft.tuners.lora import LoraLayer

from dllm_asr.model.checkpoint import WEIGHTS_FILE, export_model, save_model
from dllm_asr.model.loading import build_model, load_model
from dllm_asr.training.objectives import forward_mask, masked_diffusion_loss
from dllm_asr.training.objectives import encode_transcripts, transcript_and_eos


def test_forward_shapes_and_lora_count(tiny_model, real_clips):
    feats, lengths = tiny_model.features(real_clips[:2])
    tokens = torch.full((2, 10), tiny_model.mask_id)
    logits = tiny_model(feats, lengths, tokens)
    assert logits.shape == (2, 10, tiny_model.decoder.vocab_size)
    adapted = sum(isinstance(m, LoraLayer) for m in tiny_model.decoder.modules())
    assert adapted == 3 * tiny_model.decoder.num_layers


def test_prompt_uses_chat_template(tiny_model):
    text = tiny_model.tokenizer.decode(tiny_model.prompt_ids)
    assert "Transcribe the audio." in text and "assistant" in text


def test_row_logits_do_not_depend_on_the_rest_of_the_batch(tiny_model, real_clips):
    tokens = torch.randint(0, 1000, (1, 12))
    alone = tiny_model.response_logits(tiny_model.encode_audio(real_clips[1:2]), tokens)
    audio = tiny_model.encode_audio([real_clips[0], real_clips[1], real_clips[2]])
    others = torch.cat([torch.randint(0, 1000, (1, 12)), tokens, torch.randint(0, 1000, (1, 12))])
    lengths = torch.tensor([12, 12, 7])
    batched = tiny_model.response_logits(audio, others, lengths)
    torch.testing.assert_close(batched[1], alone[0], atol=1e-4, rtol=1e-4)


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


def test_ar_loss_scores_the_transcript_and_its_first_eos_only():
    ids = torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]])  # 0 = EOS padding
    valid = transcript_and_eos(ids, torch.tensor([2, 1]))
    assert valid.tolist() == [[True, True, True, False], [True, True, False, False]]


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


@pytest.mark.slow
def test_tiny_model_overfits_four_utterances(tiny_config, real_clips):
    torch.manual_seed(0)
    model = build_model(tiny_config)
    texts = ["the quick brown fox", "a lazy dog", "river bank near", "jumps over"]
    feats, feat_lengths = model.features(real_clips)
    ids, _ = encode_transcripts(model.tokenizer, texts, model.eos_id)
    valid = torch.ones_like(ids, dtype=torch.bool)
    # The whole tiny decoder trains (its random base cannot be steered by LoRA alone).
    trainable = [p for n, p in model.named_parameters() if not n.startswith(("encoder.", "ctc_head."))]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=3e-3, weight_decay=0.0)

    def fixed_loss() -> float:
        with torch.no_grad():
            batch = forward_mask(ids, valid, model.mask_id, full_mask_fraction=1.0,
                                 generator=torch.Generator().manual_seed(123))
            return masked_diffusion_loss(model(feats, feat_lengths, batch.noisy), ids, batch, valid, "none").item()

    model.train()
    before = fixed_loss()
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch = forward_mask(ids, valid, model.mask_id, generator=gen)
        loss = masked_diffusion_loss(model(feats, feat_lengths, batch.noisy), ids, batch, valid)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    after = fixed_loss()
    assert after < before / 10, (before, after)


@pytest.mark.parametrize("kind", ["llada", "hf"])
def test_num_logits_equals_slicing_the_full_logits(kind, tmp_path):
    from dllm_asr.model.decoders import load_decoder
    from tests.tiny_checkpoints import write_tiny_llada_checkpoint, write_tiny_llama_checkpoint

    if kind == "llada":
        decoder = load_decoder("llada", write_tiny_llada_checkpoint(tmp_path / "m"), dtype=torch.float64)
    else:
        decoder = load_decoder("hf", write_tiny_llama_checkpoint(tmp_path / "m"), dtype=torch.float64)
    ids = torch.randint(0, 20, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :3] = False
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    embeds = decoder.embed(ids)
    for causal in (False, True):
        full = decoder(embeds, mask, positions, causal=causal)
        torch.testing.assert_close(decoder(embeds, mask, positions, causal=causal, num_logits=4), full[:, -4:])


def test_decoder_slice_keeps_the_first_pretrained_layers(tiny_config, tmp_path):
    import dataclasses

    from dllm_asr.config import DecoderConfig

    full = build_model(tiny_config)
    sliced_config = dataclasses.replace(tiny_config, decoder=dataclasses.replace(tiny_config.decoder, num_layers=1))
    sliced = build_model(sliced_config)
    assert sliced.decoder.num_layers == 1
    kept = dict(sliced.decoder.named_parameters())
    for name, param in full.decoder.named_parameters():
        if name in kept:
            assert torch.equal(param, kept[name]), name
    assert not any(".blocks.1." in name for name in kept)
    bad = dataclasses.replace(tiny_config, decoder=DecoderConfig(**{**vars(tiny_config.decoder), "num_layers": 5}))
    with pytest.raises(ValueError, match="decoder.num_layers"):
        build_model(bad)


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
