"""Cutting long audio at pauses into pieces a model decodes one at a time, and where speech lies.

An energy detector (documented, no extra dependency). Loudness is measured in 100-ms frames (RMS,
in dB) counted from each piece's start. Looking at the next `max_seconds` of audio, a piece ends:
1. in the middle of the first pause there: a run of at least `PAUSE_SECONDS` of frames more than
   `SILENCE_DB` below the loudest frame of that stretch, starting at least `MIN_PIECE_SECONDS`
   into it and followed by sound. A model trained on single sentences (the default model) then
   sees one sentence or phrase at a time, as in training;
2. else, when more than `max_seconds` remain, at the quietest frame of the last half of the
   stretch (continuous or noisy speech: a word may then be split between two pieces);
3. else at the end of the audio.

Audio no longer than `max_seconds` is not cut at all: a clip the model can take whole is decoded
as it was trained and as the papers evaluate. `windows` does this on audio that arrives in blocks (a 2-hour file read piece by piece): it
holds one stretch plus one block at a time, and cuts exactly where `split_at_pauses` cuts the
whole clip, because a cut depends only on the stretch's own samples and the two frames after it.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from dllm_asr.audio.features import SAMPLE_RATE

FRAME_SECONDS = 0.1
PAUSE_SECONDS = 0.5
SILENCE_DB = 35.0
MIN_PIECE_SECONDS = 0.5
SPEECH_FRAME_SECONDS = 0.02
SPEECH_RANGE_DB = 35.0
"""`speech_span`: frames within this many dB of the window's loudest frame count as sound."""
SPEECH_PAD_SECONDS = 0.1


def frame_loudness(audio: np.ndarray, frame: int) -> np.ndarray:
    """RMS level in dB of each whole `frame`-sample frame of `audio` (n_frames,)."""
    count = len(audio) // frame
    frames = audio[: count * frame].astype(np.float64).reshape(count, frame)
    return 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-10)


def next_cut(audio: np.ndarray, limit: int, frame: int) -> int | None:
    """Where the first piece of `audio` ends (see the module docstring), in samples; None: the
    whole of `audio` (no longer than `limit` samples) is one piece. Reads at most the first
    `limit` samples and two frames after them."""
    loudness = frame_loudness(audio[: min(limit, len(audio))], frame)
    pause = first_pause(loudness, frame)
    if pause is not None:
        return pause
    if len(audio) <= limit:
        return None
    first = -(-(limit // 2) // frame)  # frames wholly inside the last half,
    last = min(limit, len(audio) - 2 * frame) // frame - 1  # leaving a tail of 2 frames or more
    if last < first:
        return limit
    return (first + int(np.argmin(loudness[first: last + 1]))) * frame + frame // 2


def first_pause(loudness: np.ndarray, frame: int, sample_rate: int = SAMPLE_RATE) -> int | None:
    """The middle, in samples, of the first run of at least PAUSE_SECONDS of silent frames (more
    than SILENCE_DB below the loudest) that starts MIN_PIECE_SECONDS in or later and has sound
    after it; None if there is none."""
    if len(loudness) == 0:
        return None
    silent = loudness < loudness.max() - SILENCE_DB
    shortest = max(1, round(PAUSE_SECONDS * sample_rate / frame))
    earliest = MIN_PIECE_SECONDS * sample_rate / frame
    start = None
    for index, quiet in enumerate(silent):
        if quiet and start is None:
            start = index
        elif not quiet and start is not None:
            if index - start >= shortest and start >= earliest:
                return (start + index) * frame // 2
            start = None
    return None


def windows(blocks: Iterable[np.ndarray], max_seconds: float,
            sample_rate: int = SAMPLE_RATE) -> Iterator[tuple[int, np.ndarray, bool]]:
    """(start sample, samples, whole) of each piece, in order, none longer than `max_seconds`,
    from audio arriving as consecutive `blocks` (float arrays); see the module docstring. Audio
    no longer than `max_seconds` is one piece, its pauses uncut, with `whole` True."""
    if max_seconds <= 0:
        raise ValueError(f"window length must be > 0 s, got {max_seconds}")
    limit = int(max_seconds * sample_rate)
    frame = max(1, int(FRAME_SECONDS * sample_rate))
    buffer, offset = np.zeros(0, dtype=np.float32), 0
    for block in blocks:
        buffer = np.concatenate([buffer, np.asarray(block, dtype=np.float32)])
        while len(buffer) >= limit + 2 * frame:  # the cut cannot depend on what is still to come
            cut = next_cut(buffer, limit, frame)
            yield offset, buffer[:cut].copy(), False
            buffer, offset = buffer[cut:], offset + cut
    while (offset > 0 or len(buffer) > limit) and (cut := next_cut(buffer, limit, frame)) is not None:
        yield offset, buffer[:cut].copy(), False
        buffer, offset = buffer[cut:], offset + cut
    yield offset, buffer.copy(), offset == 0


def split_at_pauses(audio: np.ndarray, max_seconds: float, sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """Windows [(start, end)] in samples covering `audio` in order (see `windows`)."""
    return [(start, start + len(piece)) for start, piece, _ in windows([audio], max_seconds, sample_rate)]


def speech_span(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> tuple[float, float]:
    """(start, end) in seconds of the sound in `audio`: from the first to the last 20-ms frame
    within 35 dB of its loudest, widened by 0.1 s each side (inside the clip); the whole clip
    when it is shorter than a frame. A segment's times come from here, not from the cut points,
    so a subtitle does not start in the pause before its words."""
    frame = max(1, int(SPEECH_FRAME_SECONDS * sample_rate))
    duration = len(audio) / sample_rate
    loudness = frame_loudness(audio, frame)
    if len(loudness) == 0:
        return 0.0, duration
    sound = np.flatnonzero(loudness >= loudness.max() - SPEECH_RANGE_DB)
    start = max(0.0, sound[0] * frame / sample_rate - SPEECH_PAD_SECONDS)
    end = min(duration, (sound[-1] + 1) * frame / sample_rate + SPEECH_PAD_SECONDS)
    return start, end
