"""Whisper's log-mel features, for one clip or a batch.

``log_mel_spectrogram`` reproduces Whisper's front end (openai/whisper ``audio.py`` and
``transformers.WhisperFeatureExtractor``): a centred 400-point STFT with a periodic Hann window
and hop 160, power spectrum, Slaney-normalised mel filters on the Slaney mel scale over
0-8 kHz, ``log10`` floored at 1e-10, dynamic range limited to 8 (x10 dB) below the maximum,
then ``(x + 4) / 4``.

Frame count rule: a clip of ``n`` samples gives ``n // 160`` frames (Whisper's centred STFT
yields ``1 + n // 160`` frames and drops the last one). With ``pad_to_30s=True`` the clip is
zero-padded (or trimmed) to 480 000 samples first, giving 3000 frames.

Variable-length features (``pad_to_30s=False``) are *identical* to the first ``n // 160``
frames of the 30 s features of a clip up to 30 s long: the clip is zero-padded on the right
before the STFT exactly as the 30 s version is, and the "max - 8" clamp uses the maximum over
every frame that touches the clip, which is the global maximum of the 30 s version (the frames
past it see only zeros and sit at the floor).

Two ways to fill a 30 s window exist in Whisper's own code: padding the *audio* with zeros before
the STFT (``pad_to_30s=True``, as ``whisper.pad_or_trim(audio)`` and transformers'
``WhisperFeatureExtractor`` do), and padding the finished *features* with zeros
(``zero_pad_frames_to_30s``, as Whisper's ``transcribe`` and faster-whisper do). The pretrained
decoder is far steadier on clips of a second or two with the second (on Asterisk's prompts it
turns "FALL.PA.PA.PA..." back into "Followed by the pound key."), so the Whisper AR baseline uses it.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES_30S = CHUNK_SECONDS * SAMPLE_RATE  # 480 000
N_FRAMES_30S = N_SAMPLES_30S // HOP_LENGTH  # 3000
LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # log10 units, i.e. 80 dB


def num_frames(num_samples: int) -> int:
    """Number of log-mel frames of a clip of ``num_samples`` samples (without 30 s padding)."""
    return num_samples // HOP_LENGTH


def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear (3 mel per 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = 3.0 * hz / 200.0
    log_step = math.log(6.4) / 27.0
    above = hz >= 1000.0
    return np.where(above, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step, mel)


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_hz_to_slaney_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), 200.0 * mel / 3.0)


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Triangular mel filter bank, Slaney scale and area normalisation (as librosa/Whisper).

    Returns:
        float32 array (n_mels, n_fft // 2 + 1).
    """
    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    top_mel = float(_hz_to_slaney_mel(sample_rate / 2.0))
    edges_mel = np.linspace(float(_hz_to_slaney_mel(0.0)), top_mel, n_mels + 2)
    edges_hz = _slaney_mel_to_hz(edges_mel)
    widths = np.diff(edges_hz)
    distance = edges_hz[:, None] - fft_hz[None, :]  # (n_mels + 2, n_freq)
    rising = -distance[:-2] / widths[:-1, None]
    falling = distance[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalisation: each triangle has unit area in Hz / 2.
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    weights = weights.astype(np.float32)
    weights.setflags(write=False)  # shared through the cache
    return weights


def _as_float64_tensor(audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(samples,) array or tensor -> float64 CPU tensor; rejects other shapes."""
    tensor = torch.as_tensor(audio).detach().to("cpu", torch.float64)
    if tensor.ndim != 1:
        raise ValueError(f"audio must have shape (samples,), got {tuple(tensor.shape)}")
    return tensor


def _log_mel_frames(padded: torch.Tensor, n_mels: int) -> torch.Tensor:
    """log10 mel power of every centred STFT frame of ``padded`` (last frame dropped).

    float64 throughout: quiet bins near the floor lose precision in float32.
    Returns (n_mels, len(padded) // HOP_LENGTH) float64.
    """
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64)
    stft = torch.stft(padded, N_FFT, HOP_LENGTH, window=window, center=True,
                      pad_mode="reflect", return_complex=True)
    power = stft[:, :-1].abs() ** 2  # (n_freq, frames)
    filters = torch.tensor(mel_filters(n_mels), dtype=torch.float64)
    return torch.clamp(filters @ power, min=LOG_FLOOR).log10()


def log_mel_spectrogram(audio: np.ndarray | torch.Tensor, n_mels: int = 80,
                        pad_to_30s: bool = True) -> torch.Tensor:
    """Whisper log-mel features of one 16 kHz clip.

    Args:
        audio: (samples,) float waveform at 16 kHz.
        n_mels: 80 (Whisper up to large-v2) or 128 (large-v3).
        pad_to_30s: zero-pad or trim to 30 s (Whisper's training input, 3000 frames); otherwise
            return ``samples // 160`` frames equal to the first frames of the 30 s version
            (see the module docstring for why the clamp agrees too).
    Returns:
        float32 tensor (n_mels, frames).
    """
    if n_mels not in (80, 128):
        raise ValueError(f"n_mels must be 80 or 128 (Whisper's two front ends), got {n_mels}")
    samples = _as_float64_tensor(audio)
    if pad_to_30s:
        samples = samples[:N_SAMPLES_30S]
        padded = torch.nn.functional.pad(samples, (0, N_SAMPLES_30S - samples.shape[0]))
        log_mel = _log_mel_frames(padded, n_mels)
        reference_max = log_mel.max()
    else:
        count = num_frames(samples.shape[0])
        if count == 0:
            raise ValueError(f"audio of {samples.shape[0]} samples is shorter than one "
                             f"{HOP_LENGTH}-sample hop")
        # Right zeros as in the 30 s version, so every frame touching the clip sees the same
        # samples; the clamp then takes its max over all those frames.
        padded = torch.nn.functional.pad(samples, (0, N_FFT))
        log_mel = _log_mel_frames(padded, n_mels)
        touching = (samples.shape[0] + N_FFT // 2 - 1) // HOP_LENGTH + 1
        reference_max = log_mel[:, :touching].max()
        log_mel = log_mel[:, :count]
    log_mel = torch.maximum(log_mel, reference_max - DYNAMIC_RANGE)
    return ((log_mel + 4.0) / 4.0).to(torch.float32)


def zero_pad_frames_to_30s(features: torch.Tensor) -> torch.Tensor:
    """(..., n_mels, T) features -> (..., n_mels, 3000): zeros appended in the feature domain, or
    trimmed (Whisper's ``transcribe`` window; see the module docstring)."""
    frames = features.shape[-1]
    if frames >= N_FRAMES_30S:
        return features[..., :N_FRAMES_30S]
    return torch.nn.functional.pad(features, (0, N_FRAMES_30S - frames))


def zero_pad_frames_to_at_least(features: torch.Tensor, lengths: torch.Tensor,
                                min_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (B, n_mels, T) and frame counts (B,) with every row shorter than `min_frames`
    extended to it by zero frames, Whisper's feature-domain padding (see the module docstring);
    longer rows are left as they are. Frames past a row's length must already be zeros, as
    `log_mel_batch` leaves them."""
    if min_frames <= 0 or int(lengths.min()) >= min_frames:
        return features, lengths
    width = max(features.shape[-1], min_frames)
    padded = torch.nn.functional.pad(features, (0, width - features.shape[-1]))
    return padded, lengths.clamp(min=min_frames)


def log_mel_batch(audios: Sequence[np.ndarray | torch.Tensor], n_mels: int = 80,
                  pad_to_30s: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel features of a batch of clips, right-padded with zeros to the longest.

    Returns:
        features: float32 (B, n_mels, T_max); T_max = 3000 with ``pad_to_30s``.
        feature_lengths: long (B,): the frames the encoder should read. With ``pad_to_30s``
            this is 3000 for every row (Whisper reads its 30 s window whole, padding included);
            otherwise ``samples // 160``. Frames past a row's length are zeros.
    """
    if len(audios) == 0:
        raise ValueError("log_mel_batch needs at least one clip")
    per_clip = [log_mel_spectrogram(audio, n_mels, pad_to_30s) for audio in audios]
    lengths = torch.tensor([mel.shape[1] for mel in per_clip], dtype=torch.long)
    features = torch.zeros(len(per_clip), n_mels, int(lengths.max()), dtype=torch.float32)
    for row, mel in enumerate(per_clip):
        features[row, :, : mel.shape[1]] = mel
    return features, lengths
