"""Tests for dllm_asr.audio.augment: speed, reverberation and noise, shared by training and the corpus."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from dllm_asr.audio.augment import (Augmenter, AugmentConfig, add_noise, coloured_noise, reverberate,
                                    room_impulse_response, speed_perturb)

SR = 16000


def tone(seconds: float, freq: float = 440.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_audio(path, seconds: float, freq: float = 440.0):
    soundfile.write(path, tone(seconds, freq), SR)
    return path


def test_room_impulse_response_decays_by_60_db_at_rt60() -> None:
    rir = room_impulse_response(0.5, np.random.default_rng(0))
    assert rir[0] == 1.0 and rir.size == int(1.2 * 0.5 * 16000)
    energy = lambda seg: float(np.mean(seg**2))  # noqa: E731
    early, late = rir[1:801], rir[7600:8400]  # ~0-0.05 s vs ~0.475-0.525 s
    assert 45 < 10 * np.log10(energy(early) / energy(late)) < 70  # ~-57 dB: 60 dB minus half a window


@pytest.mark.parametrize("pink", [False, True])
def test_coloured_noise_at_the_requested_snr(pink: bool) -> None:
    rng = np.random.default_rng(1)
    clean = np.sin(np.arange(16000) * 0.05).astype(np.float32)
    noise = coloured_noise(clean.size, rng, pink=pink)
    noisy = add_noise(clean, 10.0, rng, noise)
    snr = 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))
    assert abs(snr - 10.0) < 0.01
    power = np.abs(np.fft.rfft(noise)) ** 2
    low, high = power[10:100].mean(), power[4000:5000].mean()  # 10-100 Hz against 4-5 kHz
    assert (low / high > 10) if pink else (0.5 < low / high < 2)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturb_changes_length_and_pitch(factor):
    wave = tone(1.0, freq=500.0)
    fast = speed_perturb(wave, factor)
    assert abs(len(fast) - len(wave) / factor) <= 1
    spectrum = np.abs(np.fft.rfft(fast))
    peak_hz = np.argmax(spectrum) * SR / len(fast)
    assert peak_hz == pytest.approx(500.0 * factor, abs=3.0)  # pitch moves with speed
    assert speed_perturb(wave, 1.0) is wave


def test_add_noise_hits_the_requested_snr():
    wave = tone(1.0)
    rng = np.random.default_rng(0)
    noisy = add_noise(wave, 10.0, rng)
    noise = noisy - wave
    assert 10 * np.log10(np.mean(wave ** 2) / np.mean(noise ** 2)) == pytest.approx(10.0, abs=1e-3)
    looped = add_noise(wave, 0.0, rng, noise=np.ones(100, dtype=np.float32))
    assert np.mean((looped - wave) ** 2) == pytest.approx(np.mean(wave ** 2), rel=1e-4)
    silence = np.zeros(10, np.float32)
    np.testing.assert_array_equal(add_noise(silence, 10.0, rng), silence)


def test_reverberation_with_synthetic_ir():
    ir = room_impulse_response(0.3, np.random.default_rng(0))
    impulse = np.zeros(SR, np.float32)
    impulse[100] = 1.0
    wet = reverberate(impulse, ir)
    assert wet.shape == impulse.shape
    assert np.argmax(np.abs(wet)) == 100  # aligned on the direct path
    assert np.mean(wet ** 2) == pytest.approx(np.mean(impulse ** 2), rel=1e-4)
    assert np.count_nonzero(np.abs(wet[101:]) > 1e-4) > 1000  # a reverberant tail


def test_augmenter_is_seeded_and_uses_files(tmp_path):
    noise_file = write_audio(tmp_path / "noise.wav", 0.3, freq=3000.0)
    ir_file = tmp_path / "ir.wav"
    soundfile.write(ir_file, room_impulse_response(0.2, np.random.default_rng(0)), SR)
    config = AugmentConfig(speed_factors=(0.9, 1.1), noise_prob=1.0, noise_files=(str(noise_file),),
                           reverb_prob=1.0, ir_files=(str(ir_file),))
    augment = Augmenter(config)
    wave = tone(1.0)
    first = augment(wave, np.random.default_rng([1, 0, 5]))
    again = augment(wave, np.random.default_rng([1, 0, 5]))
    other = augment(wave, np.random.default_rng([1, 1, 5]))
    np.testing.assert_array_equal(first, again)
    assert len(first) in (round(SR / 0.9), round(SR / 1.1))
    assert len(first) != len(other) or not np.array_equal(first, other)
    with pytest.raises(ValueError, match="noise_prob must be in"):
        Augmenter(AugmentConfig(noise_prob=2.0))
