"""Waveform augmentation: speed perturbation, reverberation and additive noise, for training and
for the synthetic corpus (one implementation for both)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np
from scipy.fft import irfft, next_fast_len, rfft
from scipy.signal import fftconvolve, resample_poly

from dllm_asr.audio.features import SAMPLE_RATE
from dllm_asr.audio.io import AudioError, load_audio


def speed_perturb(wave: np.ndarray, factor: float) -> np.ndarray:
    """Play `wave` (samples,) `factor` times faster by resampling, as Kaldi/ESPnet speed
    perturbation does (tempo and pitch both change): output length ~ len(wave) / factor."""
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    if factor == 1.0:
        return wave
    ratio = Fraction(factor).limit_denominator(100)  # 1.1 -> 11/10: keep 10 of every 11 samples
    return resample_poly(wave, up=ratio.denominator, down=ratio.numerator).astype(np.float32)


def add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator,
              noise: np.ndarray | None = None) -> np.ndarray:
    """Add `noise` (white Gaussian if None; a random excerpt, looped if short) scaled so that
    10*log10(P_speech / P_noise) = snr_db, with P the mean square. Silence is returned as is."""
    speech_power = float(np.mean(wave.astype(np.float64) ** 2))
    if speech_power == 0.0:
        return wave
    if noise is None:
        excerpt = rng.standard_normal(len(wave))
    else:
        if len(noise) == 0:
            raise ValueError("add_noise: empty noise signal")
        start = int(rng.integers(len(noise)))
        excerpt = np.take(noise, np.arange(start, start + len(wave)), mode="wrap").astype(np.float64)
    noise_power = float(np.mean(excerpt ** 2))
    if noise_power == 0.0:
        return wave
    scale = math.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))
    return (wave + scale * excerpt).astype(np.float32)


def reverberate(wave: np.ndarray, impulse_response: np.ndarray) -> np.ndarray:
    """Convolve `wave` (samples,) with a room impulse response. The output is aligned on the
    IR's direct path (its peak), cut to the input length and rescaled to the input's power."""
    if impulse_response.size == 0:
        raise ValueError("reverberate: empty impulse response")
    direct = int(np.argmax(np.abs(impulse_response)))
    wet = fftconvolve(wave.astype(np.float64), impulse_response.astype(np.float64))[direct:direct + len(wave)]
    dry_power, wet_power = float(np.mean(wave.astype(np.float64) ** 2)), float(np.mean(wet ** 2))
    if wet_power > 0:
        wet *= math.sqrt(dry_power / wet_power)
    return wet.astype(np.float32)


def room_impulse_response(rt60: float, rng: np.random.Generator, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A synthetic room: a unit direct path, then a Gaussian noise tail whose amplitude envelope
    exp(-6.908 t / rt60) falls by 60 dB (a factor 1000) after rt60 seconds, the definition of the
    reverberation time; the tail's energy is 0.09 of the direct path's. Shape (1.2 * rt60 * rate,)."""
    times = np.arange(int(1.2 * rt60 * rate)) / rate
    tail = rng.standard_normal(times.size) * np.exp(-6.908 * times / rt60)
    tail *= 0.3 / max(np.sqrt(np.sum(tail**2)), 1e-9)
    tail[0] = 1.0
    return tail.astype(np.float32)


def coloured_noise(size: int, rng: np.random.Generator, pink: bool = False) -> np.ndarray:
    """Gaussian noise (size,), white, or pink (power falling as 1/f) when `pink`."""
    fft_size = next_fast_len(size, real=True)  # FFTs of prime lengths are slow
    spectrum = rfft(rng.standard_normal(fft_size))
    if pink:  # amplitude 1/sqrt(f)
        spectrum[1:] /= np.sqrt(np.arange(1, spectrum.size))
    return irfft(spectrum, n=fft_size)[:size]


@dataclass
class AugmentConfig:
    """Waveform augmentation settings (all off except speed perturbation by default)."""

    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)
    """Speed factors, one drawn uniformly per utterance."""
    noise_prob: float = 0.0
    """Probability of adding noise."""
    snr_db: tuple[float, float] = (10.0, 30.0)
    """Signal-to-noise ratio range (dB), drawn uniformly."""
    noise_files: tuple[str, ...] = ()
    """Noise recordings; white noise when empty."""
    reverb_prob: float = 0.0
    """Probability of reverberation."""
    ir_files: tuple[str, ...] = ()
    """Impulse-response wav files; a synthetic room (`room_impulse_response`, rt60 0.2-0.8 s) when empty."""
    sample_rate: int = 16000


class Augmenter:
    """`augmenter(wave, rng) -> wave`: speed perturbation, then reverberation, then noise."""

    def __init__(self, config: AugmentConfig,
                 load_fn: Callable[[str, int], np.ndarray] | None = None) -> None:
        for name in ("noise_prob", "reverb_prob"):
            if not 0.0 <= getattr(config, name) <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be in [0, 1], got {getattr(config, name)}")
        if not config.speed_factors or min(config.speed_factors) <= 0:
            raise ValueError(f"AugmentConfig.speed_factors must be positive, got {config.speed_factors}")
        self.config = config
        self.load_fn = load_fn or load_audio
        self._cache: dict[str, np.ndarray] = {}

    def _signal(self, path: str) -> np.ndarray:
        if path not in self._cache:
            try:
                self._cache[path] = self.load_fn(path, self.config.sample_rate)
            except (ValueError, OSError, RuntimeError) as error:
                raise AudioError(f"{path}: cannot load augmentation audio: {error}") from None
        return self._cache[path]

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        config = self.config
        wave = speed_perturb(wave, float(rng.choice(config.speed_factors)))
        if rng.random() < config.reverb_prob:
            if config.ir_files:
                ir = self._signal(config.ir_files[int(rng.integers(len(config.ir_files)))])
            else:
                ir = room_impulse_response(float(rng.uniform(0.2, 0.8)), rng, config.sample_rate)
            wave = reverberate(wave, ir)
        if rng.random() < config.noise_prob:
            noise = None
            if config.noise_files:
                noise = self._signal(config.noise_files[int(rng.integers(len(config.noise_files)))])
            wave = add_noise(wave, float(rng.uniform(*config.snr_db)), rng, noise)
        return wave
