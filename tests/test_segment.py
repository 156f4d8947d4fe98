"""Cutting long audio at pauses: hand-built signals whose pauses are known."""

import numpy as np
import pytest

from dllm_asr.segment import frame_loudness, split_at_pauses

SR = 16000


def tone(seconds: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (level * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def pause(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def test_short_clip_is_one_window():
    assert split_at_pauses(tone(3.0), 10.0) == [(0, 3 * SR)]
    assert split_at_pauses(tone(10.0), 10.0) == [(0, 10 * SR)]


def test_cuts_fall_in_the_pauses():
    # speech 0-4 s, pause 4-4.5 s, speech 4.5-9 s, pause 9-9.5 s, speech 9.5-14 s
    audio = np.concatenate([tone(4), pause(0.5), tone(4.5), pause(0.5), tone(4.5)])
    windows = split_at_pauses(audio, 6.0)
    assert windows[0][0] == 0 and windows[-1][1] == len(audio)
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))  # contiguous, in order
    cuts = [end / SR for _, end in windows[:-1]]
    assert len(cuts) == 2 and 4.0 <= cuts[0] <= 4.5 and 9.0 <= cuts[1] <= 9.5
    assert all(end - start <= 6 * SR for start, end in windows)


def test_continuous_speech_is_still_cut_within_the_limit_and_leaves_a_tail():
    rng = np.random.default_rng(0)
    audio = (0.2 * rng.standard_normal(int(25.05 * SR))).astype(np.float32)
    windows = split_at_pauses(audio, 10.0)
    assert all(0.2 * SR <= end - start <= 10 * SR for start, end in windows)
    assert windows[-1][1] == len(audio) and windows[0][0] == 0


def test_loudness_is_rms_in_db():
    levels = frame_loudness(np.concatenate([np.full(1600, 0.1, np.float32), np.zeros(1600, np.float32)]), 1600)
    assert levels[0] == pytest.approx(-20.0, abs=1e-3) and levels[1] == pytest.approx(-100.0, abs=1e-3)


def test_a_window_length_must_be_positive():
    with pytest.raises(ValueError, match="window length"):
        split_at_pauses(tone(1.0), 0)
