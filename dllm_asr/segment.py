"""Cutting long audio at pauses into windows a model decodes in one piece.

An energy detector (documented, no extra dependency): the clip's loudness is measured in 100-ms
frames (RMS, in dB), and a clip longer than `max_seconds` is cut, window after window, at the
quietest frame of the last half of each window, so a cut falls in a pause whenever the window
holds one. Continuous speech with no pause in that half is cut at its quietest point anyway
(a word may then be split between two windows).
"""

from __future__ import annotations

import numpy as np

from .audio import SAMPLE_RATE

FRAME_SECONDS = 0.1


def frame_loudness(audio: np.ndarray, frame: int) -> np.ndarray:
    """RMS level in dB of each whole `frame`-sample frame of `audio` (n_frames,)."""
    count = len(audio) // frame
    frames = audio[: count * frame].astype(np.float64).reshape(count, frame)
    return 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-10)


def split_at_pauses(audio: np.ndarray, max_seconds: float, sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """Windows [(start, end)] in samples covering `audio` in order, none longer than
    `max_seconds`, each cut in the middle of the quietest 100-ms frame of the last half of
    its window (and leaving at least 0.2 s for the next). A clip no longer than `max_seconds` is
    one window."""
    if max_seconds <= 0:
        raise ValueError(f"window length must be > 0 s, got {max_seconds}")
    limit = int(max_seconds * sample_rate)
    frame = max(1, int(FRAME_SECONDS * sample_rate))
    loudness = frame_loudness(audio, frame)
    windows, start = [], 0
    while len(audio) - start > limit:
        first = -(-(start + limit // 2) // frame)  # frames wholly inside the last half,
        last = (min(start + limit, len(audio) - 2 * frame)) // frame - 1  # leaving a tail of 2 frames or more
        if last < first:  # a window shorter than two frames: cut at the limit
            cut = start + limit
        else:
            quietest = first + int(np.argmin(loudness[first: last + 1]))
            cut = quietest * frame + frame // 2
        windows.append((start, cut))
        start = cut
    windows.append((start, len(audio)))
    return windows
