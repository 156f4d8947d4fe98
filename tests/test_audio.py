"""Tests for dllm_asr.audio.io: file loading/conversion and Whisper's log-mel front end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from dllm_asr.audio import io as audio
from dllm_asr.audio.features import log_mel_batch, log_mel_spectrogram, mel_filters, zero_pad_frames_to_at_least
from dllm_asr.audio.io import AudioError, example_audio_path, example_transcript, load_audio, resample

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def example() -> np.ndarray:
    return load_audio(example_audio_path())


def _best_lag_correlation(signal: np.ndarray, reference: np.ndarray, max_lag: int = 1200) -> float:
    """Highest Pearson correlation of ``signal`` with ``reference`` over small time shifts
    (lossy codecs add a few ms of priming delay)."""
    length = min(len(signal), len(reference)) - 2 * max_lag
    ref = reference[max_lag: max_lag + length]
    return max(np.corrcoef(signal[max_lag + lag: max_lag + lag + length], ref)[0, 1]
               for lag in range(-max_lag, max_lag + 1, 8))


def test_example_clip_is_16k_mono_pcm16_with_transcript(example):
    info = soundfile.info(str(example_audio_path()))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert example.dtype == np.float32 and example.ndim == 1
    assert 3.0 < len(example) / 16000 < 5.0
    assert 0.1 < np.abs(example).max() <= 1.0
    assert example_transcript().startswith("The quick brown fox")


def test_stereo_44k_flac_is_downmixed_and_resampled(example):
    # Fixture: first 1.5 s of the example at 44.1 kHz, left = x, right = 0.5 x (made by ffmpeg).
    loaded = load_audio(DATA / "stereo_44k.flac")
    assert loaded.dtype == np.float32 and loaded.shape == (24000,)
    reference = example[:24000]
    inner = slice(500, -500)
    gain = np.dot(loaded[inner], reference[inner]) / np.dot(reference[inner], reference[inner])
    assert gain == pytest.approx(0.75, abs=0.01)  # mean of the two channels
    assert np.corrcoef(loaded[inner], reference[inner])[0, 1] > 0.999


@pytest.mark.parametrize("name", ["mono_22k.mp3", "mono_48k.ogg", "mono_8k.m4a"])
def test_compressed_formats_decode_to_16k(example, name):
    loaded = load_audio(DATA / name)
    assert loaded.dtype == np.float32
    assert abs(len(loaded) - 24000) <= 1024  # 1.5 s, up to one codec frame of priming
    # m4a is 8 kHz: only the band below 4 kHz survives, so its correlation is a bit lower.
    assert _best_lag_correlation(loaded, example[:24000]) > 0.99


@pytest.mark.parametrize("name, words", [
    ("does_not_exist.wav", "not found"),
    ("empty.wav", "empty"),
    ("corrupt.wav", "cannot decode"),
    ("zero_length.wav", "no samples"),
])
def test_bad_files_raise_one_line_audio_error(name, words):
    with pytest.raises(AudioError) as caught:
        load_audio(DATA / name)
    message = str(caught.value)
    assert name in message and words in message and "\n" not in message
    assert isinstance(caught.value, ValueError)


def test_missing_ffmpeg_is_reported(monkeypatch):
    monkeypatch.setattr(audio.shutil, "which", lambda _name: None)
    with pytest.raises(AudioError, match="needs ffmpeg"):
        load_audio(DATA / "mono_8k.m4a")


def test_resample_keeps_passband_and_removes_aliases():
    seconds = 0.5
    t44 = np.arange(int(44100 * seconds)) / 44100
    t16 = np.arange(int(16000 * seconds)) / 16000
    tone = resample(np.sin(2 * np.pi * 1000 * t44).astype(np.float32), 44100, 16000)
    assert tone.shape == t16.shape
    inner = slice(200, -200)
    np.testing.assert_allclose(tone[inner], np.sin(2 * np.pi * 1000 * t16)[inner], atol=2e-3)
    # 10 kHz is above the new Nyquist (8 kHz): a naive decimator would alias it to 6 kHz.
    t48 = np.arange(int(48000 * seconds)) / 48000
    high = resample(np.sin(2 * np.pi * 10000 * t48).astype(np.float32), 48000, 16000)
    assert np.sqrt(np.mean(high[inner] ** 2)) < 1e-2


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_transformers(n_mels):
    from transformers.audio_utils import mel_filter_bank

    expected = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0,
                               max_frequency=8000.0, sampling_rate=16000, norm="slaney",
                               mel_scale="slaney")
    np.testing.assert_allclose(mel_filters(n_mels), expected.T, atol=1e-7)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_whisper_feature_extractor(example, n_mels):
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    expected = extractor(example, sampling_rate=16000, return_tensors="np").input_features[0]
    features = log_mel_spectrogram(example, n_mels=n_mels)
    assert features.dtype == torch.float32 and features.shape == (n_mels, 3000)
    np.testing.assert_allclose(features.numpy(), expected, atol=1e-4)
    # A torch input gives the same result.
    assert torch.equal(log_mel_spectrogram(torch.from_numpy(example), n_mels=n_mels), features)


def test_silence_and_dynamic_range_hand_values():
    # All zeros: every mel power sits at the 1e-10 floor -> (log10(1e-10) + 4) / 4 = -1.5.
    silence = log_mel_spectrogram(np.zeros(16000, dtype=np.float32), pad_to_30s=False)
    assert torch.allclose(silence, torch.full_like(silence, -1.5))
    # A tone followed by 30 s padding: values span exactly 8 / 4 = 2 (the max - 8 clamp).
    tone = np.sin(2 * np.pi * 440 * np.arange(8000) / 16000).astype(np.float32)
    features = log_mel_spectrogram(tone)
    assert float(features.max() - features.min()) == pytest.approx(2.0, abs=1e-6)


def test_variable_length_equals_start_of_30s_version(example):
    for clip in (example, example[:16159], example[5000:5000 + 1601]):
        short = log_mel_spectrogram(clip, pad_to_30s=False)
        assert short.shape == (80, len(clip) // 160)
        full = log_mel_spectrogram(clip, pad_to_30s=True)
        np.testing.assert_allclose(short.numpy(), full[:, : short.shape[1]].numpy(), atol=1e-4)


def test_variable_length_clamp_uses_the_frames_past_the_end():
    # The loudest frame is the partial one just past samples // 160: the 30 s version clamps
    # against it, so the variable-length version must too (it looks at every touching frame).
    # (A max over the first samples // 160 frames alone would differ here by 0.62.)
    rng = np.random.default_rng(0)
    clip = np.zeros(16000 + 100, dtype=np.float32)
    clip[:4000] = 0.001 * rng.standard_normal(4000)
    clip[-100:] = 0.9 * np.sign(rng.standard_normal(100))
    short = log_mel_spectrogram(clip, pad_to_30s=False)
    full = log_mel_spectrogram(clip, pad_to_30s=True)
    np.testing.assert_allclose(short.numpy(), full[:, : short.shape[1]].numpy(), atol=1e-4)


def test_long_audio_is_trimmed_to_30s_when_padding():
    long_clip = np.zeros(16000 * 31, dtype=np.float32)
    assert log_mel_spectrogram(long_clip).shape == (80, 3000)
    assert log_mel_spectrogram(long_clip, pad_to_30s=False).shape == (80, 3100)


def test_log_mel_batch_pads_and_reports_lengths(example):
    clips = [example, example[:8000], example[:3210]]
    features, lengths = log_mel_batch(clips, n_mels=80, pad_to_30s=False)
    assert features.shape == (3, 80, len(example) // 160) and features.dtype == torch.float32
    assert lengths.tolist() == [len(example) // 160, 50, 20] and lengths.dtype == torch.long
    for row, clip in enumerate(clips):
        alone = log_mel_spectrogram(clip, pad_to_30s=False)
        assert torch.equal(features[row, :, : lengths[row]], alone)
        assert torch.all(features[row, :, lengths[row]:] == 0)
    padded, padded_lengths = log_mel_batch(clips, n_mels=128, pad_to_30s=True)
    assert padded.shape == (3, 128, 3000) and padded_lengths.tolist() == [3000] * 3


def test_short_rows_are_padded_with_zero_frames_up_to_the_minimum():
    features = torch.zeros(3, 2, 5)
    features[0, :, :5] = 1.0
    features[1, :, :2] = 2.0
    features[2, :, :4] = 3.0
    padded, lengths = zero_pad_frames_to_at_least(features, torch.tensor([5, 2, 4]), 7)
    assert padded.shape == (3, 2, 7) and lengths.tolist() == [7, 7, 7]
    assert torch.equal(padded[:, :, :5], features) and torch.all(padded[:, :, 5:] == 0)
    # rows already as long keep their length; nothing to do returns the inputs themselves
    _, lengths = zero_pad_frames_to_at_least(features, torch.tensor([5, 2, 4]), 3)
    assert lengths.tolist() == [5, 3, 4]
    same, same_lengths = zero_pad_frames_to_at_least(features, torch.tensor([5, 4, 4]), 4)
    assert same is features and same_lengths.tolist() == [5, 4, 4]


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="n_mels"):
        log_mel_spectrogram(np.zeros(1600, dtype=np.float32), n_mels=64)
    with pytest.raises(ValueError, match="shape"):
        log_mel_spectrogram(np.zeros((2, 1600), dtype=np.float32))
    with pytest.raises(ValueError, match="shorter than one"):
        log_mel_spectrogram(np.zeros(100, dtype=np.float32), pad_to_30s=False)
    with pytest.raises(ValueError, match="at least one"):
        log_mel_batch([])


def test_inputs_may_be_globs_manifests_folders_and_stdin(tmp_path):
    from dllm_asr.audio.io import STDIN, expand_audio_paths

    (tmp_path / "talks" / "day1").mkdir(parents=True)
    for name in ("talks/a.wav", "talks/day1/b.mp3", "talks/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    manifest = tmp_path / "list.jsonl"
    manifest.write_text('{"audio": "talks/a.wav", "text": "hi"}\n\n{"audio": "/abs/c.flac"}\n')
    assert expand_audio_paths([str(tmp_path / "talks" / "**" / "*.mp3"), str(manifest), "-", str(tmp_path / "talks")]) == [
        str(tmp_path / "talks/day1/b.mp3"), str(tmp_path / "talks/a.wav"), "/abs/c.flac", STDIN,
        str(tmp_path / "talks/a.wav"), str(tmp_path / "talks/day1/b.mp3")]
    with pytest.raises(ValueError, match=r"no file matches this pattern"):
        expand_audio_paths([str(tmp_path / "*.ogg")])
    (tmp_path / "bad.jsonl").write_text('{"text": "no audio"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not a JSON object with an \"audio\" path"):
        expand_audio_paths([str(tmp_path / "bad.jsonl")])
    (tmp_path / "segs.jsonl").write_text('{"audio": "a.wav", "offset": 3.0, "duration": 2.0}\n')
    with pytest.raises(ValueError, match="dllm-asr eval"):
        expand_audio_paths([str(tmp_path / "segs.jsonl")])


@pytest.mark.parametrize("name", ["mono_22k.mp3", "stereo_44k.flac", "mono_48k.ogg", "mono_8k.m4a"])
def test_a_file_read_in_blocks_is_the_file(name):
    from dllm_asr.audio.io import read_blocks

    whole = load_audio(DATA / name)
    blocks = list(read_blocks(DATA / name, block_seconds=0.25))
    assert max(len(b) for b in blocks) <= 4000 or len(blocks) == 1
    joined = np.concatenate(blocks)
    assert len(joined) == len(whole)
    # ffmpeg's resampler streams what the polyphase resampler converts whole: the same signal
    assert np.corrcoef(joined, whole)[0, 1] > 0.99


def test_a_16k_wav_streams_exactly_and_a_bad_file_fails_as_load_audio_does(tmp_path):
    from dllm_asr.audio.io import read_blocks

    audio = np.sin(np.arange(16000 * 3) / 7).astype(np.float32) * 0.3
    soundfile.write(tmp_path / "x.wav", audio, 16000, subtype="FLOAT")
    blocks = list(read_blocks(tmp_path / "x.wav", block_seconds=1.0))
    assert [len(b) for b in blocks] == [16000] * 3 and np.array_equal(np.concatenate(blocks), audio)
    for bad in ("corrupt.wav", "empty.wav", "zero_length.wav"):
        with pytest.raises(AudioError) as streamed:
            list(read_blocks(DATA / bad, block_seconds=0.1))
        with pytest.raises(AudioError) as whole:
            load_audio(DATA / bad)
        assert str(streamed.value) == str(whole.value)


def test_nan_samples_are_refused_whole_or_streamed(tmp_path):
    from dllm_asr.audio.io import read_blocks

    audio = np.zeros(16000 * 3, dtype=np.float32)
    audio[20000] = np.nan
    soundfile.write(tmp_path / "nan.wav", audio, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan.wav holds samples that are not numbers"):
        load_audio(tmp_path / "nan.wav")
    with pytest.raises(AudioError, match=r"nan.wav holds samples that are not numbers"):
        list(read_blocks(tmp_path / "nan.wav", block_seconds=1.0))
