"""Cutting long audio at pauses: hand-built signals whose pauses are known."""

import numpy as np
import pytest

from dllm_asr.audio.segment import frame_loudness, speech_span, split_at_pauses, windows

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


@pytest.mark.parametrize("block_seconds", [0.37, 1.0, 7.3, 60.0])
def test_audio_arriving_in_blocks_is_cut_exactly_as_the_whole_clip(block_seconds):
    rng = np.random.default_rng(1)
    parts = [np.concatenate([tone(rng.uniform(1, 4), level=rng.uniform(0.05, 0.5)), pause(rng.uniform(0.2, 0.8))])
             for _ in range(12)]
    audio = np.concatenate(parts + [(0.1 * rng.standard_normal(SR * 13)).astype(np.float32)])
    step = int(block_seconds * SR)
    streamed = list(windows((audio[i: i + step] for i in range(0, len(audio), step)), 6.0))
    assert [(start, start + len(piece)) for start, piece, _ in streamed] == split_at_pauses(audio, 6.0)
    assert np.array_equal(np.concatenate([piece for _, piece, _ in streamed]), audio)
    assert not any(whole for _, _, whole in streamed)


def test_speech_span_skips_the_silence_around_the_sound():
    clip = np.concatenate([pause(1.0), tone(2.0), pause(1.5)])
    start, end = speech_span(clip)
    assert start == pytest.approx(0.9, abs=0.03) and end == pytest.approx(3.1, abs=0.03)
    assert speech_span(tone(0.01)) == (0.0, pytest.approx(0.01))


def test_a_stream_is_cut_at_each_pause_and_read_only_as_far_as_needed():
    sentence = np.concatenate([tone(2.0), pause(0.8)])
    pulled = []

    def blocks():
        for i in range(1000):  # 2800 s of audio, if it were all read
            pulled.append(i)
            yield sentence

    first = next(iter(windows(blocks(), 10.0)))
    assert first[0] == 0 and len(first[1]) == pytest.approx(2.4 * SR, abs=0.1 * SR)  # cut in the pause
    assert first[2] is False
    assert len(pulled) <= 5  # one window's worth, not the whole stream


def test_short_pauses_and_leading_silence_do_not_cut_and_a_clip_within_the_window_is_never_cut():
    audio = np.concatenate([pause(1.0), tone(2.0), pause(0.3), tone(2.0), pause(1.0), tone(2.0)])
    assert split_at_pauses(audio, 12.0) == [(0, len(audio))]
    assert [whole for _, _, whole in windows([audio], 12.0)] == [True]
    assert split_at_pauses(audio, 7.0) == [(0, int(5.8 * SR)), (int(5.8 * SR), len(audio))]  # the 1-s pause only
