"""What transcription returns: a clip's `Transcript` and its `Segment`s, and how the windows of a
long clip are joined into one transcript (times in seconds from the clip's start).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from dllm_asr.audio.features import SAMPLE_RATE
from dllm_asr.audio.segment import speech_span
from dllm_asr.transcription.word_times import Word


@dataclass
class Transcript:
    """One utterance's result: text, token ids and the decoding cost."""

    text: str
    tokens: list[int]
    nfe: int
    steps: int
    trace: list[list[int]] | None = field(default=None, repr=False)
    no_speech_prob: float | None = None
    """The model's probability that the clip holds no speech (None: the model has no such signal)."""
    truncated: bool = False
    """The transcript filled the longest block allowed without ending: words may be missing."""
    segments: list[Segment] | None = None
    """The clip's speech, in order: one per window a long clip was cut into (`dllm_asr.audio.segment`),
    one for a clip decoded whole, none for silence, or one per part the decoder timed in a window
    (`timed`); times in seconds from the clip's start."""
    confidences: list[float | None] | None = None
    """Per token of `tokens`, the probability the model gave it when it chose it (None: a token
    that was given, e.g. by deliberation, not predicted); None: not recorded."""
    words: list[Word] | None = None
    """The transcript's words timed in seconds from the clip's start (the `word_timestamps`
    option, `dllm_asr.transcription.word_times`); None: not asked for."""
    timed: list[TimedPart] | None = None
    """The parts the decoder timed itself (Whisper's time tokens, `--ar-timestamps`), in seconds
    from the start of the audio it decoded; each becomes a segment. None: untimed."""


@dataclass
class TimedPart:
    """A stretch of a transcript its decoder timed (a segment between two of Whisper's time
    tokens): start and end in seconds from the start of the audio decoded (end None: the
    transcript ended inside it), its text and the mean confidence of its tokens."""

    start: float
    end: float | None
    text: str
    confidence: float | None = None


@dataclass
class Segment:
    """A stretch of speech: start and end in seconds (where the sound of its window begins and
    ends, `dllm_asr.audio.segment.speech_span`), its transcript and the mean confidence of its tokens;
    with the `word_timestamps` option, its words, timed from the clip's start and within the segment."""

    start: float
    end: float
    text: str
    confidence: float | None = None
    words: list[Word] | None = None


def speech_samples(piece: np.ndarray) -> tuple[int, int]:
    """`speech_span` of a piece, in samples."""
    begin, end = speech_span(piece)
    return round(begin * SAMPLE_RATE), round(end * SAMPLE_RATE)


def whole_clip_segments(audio: np.ndarray, transcript: Transcript) -> list[Segment]:
    """The segments of a clip decoded whole: timed by its sound (`segments_of`)."""
    begin, end = speech_samples(audio)
    return segments_of(begin, end - begin, transcript, 0)


def segment_of(start: int, length: int, transcript: Transcript, origin: int | None = None) -> Segment:
    """The segment of `length` samples that starts `start` samples into its clip. `origin`: the
    sample where the audio the transcript was decoded from begins (default `start`): its words
    are timed from there, and are moved into the clip's time and clamped to the segment."""
    known = [p for p in transcript.confidences or [] if p is not None]
    segment = Segment(start / SAMPLE_RATE, (start + length) / SAMPLE_RATE, transcript.text,
                      sum(known) / len(known) if known else None)
    if transcript.words is not None:
        shift = (start if origin is None else origin) / SAMPLE_RATE
        segment.words = [shifted_word(word, shift, segment) for word in transcript.words]
    return segment


def segments_of(start: int, length: int, transcript: Transcript, origin: int | None = None) -> list[Segment]:
    """`segment_of`, cut into the parts the decoder timed (`Transcript.timed`) where it timed
    two or more: each part's times moved into the clip's (from `origin`) and kept inside the
    stretch and in order. Each part takes its own words (counted in its text), or where the
    counts disagree, the words that start at or after it starts; they are kept inside it."""
    whole = segment_of(start, length, transcript, origin)
    if not transcript.timed or len(transcript.timed) < 2:
        return [whole]
    shift = (start if origin is None else origin) / SAMPLE_RATE
    segments, floor = [], whole.start
    for part in transcript.timed:
        begin = round(min(max(part.start + shift, floor), whole.end), 3)
        end = whole.end if part.end is None else round(min(max(part.end + shift, begin), whole.end), 3)
        segments.append(Segment(begin, end, part.text, part.confidence))
        floor = end
    if whole.words is not None:
        share_words(segments, whole.words)
    return segments


def share_words(segments: list[Segment], words: list[Word]) -> None:
    """Give each segment its words, in place: by count (each segment's text has as many words
    as it takes, in order) where the counts add up, else each word to the last segment starting
    at or before it; each word is then kept inside its segment."""
    counts = [len(segment.text.split()) for segment in segments]
    if sum(counts) == len(words):
        firsts = itertools.accumulate([0] + counts)
        shares = [words[first: first + count] for first, count in zip(firsts, counts)]
    else:
        shares = [[] for _ in segments]
        for word in words:
            starts = [k for k, segment in enumerate(segments) if k == 0 or segment.start <= word.start]
            shares[starts[-1]].append(word)
    for segment, share in zip(segments, shares):
        segment.words = [shifted_word(word, 0.0, segment) for word in share]


def shifted_word(word: Word, shift: float, segment: Segment) -> Word:
    """`word` moved `shift` seconds later and clamped into the segment's [start, end], to the ms:
    the alignment may put a first or last word a few frames into the silence around the speech."""
    def clamp(seconds: float) -> float:
        return round(min(max(seconds + shift, segment.start), segment.end), 3)

    return Word(clamp(word.start), clamp(word.end), word.text, word.probability)


def join_windows(parts: list[tuple[list[Segment], Transcript]]) -> Transcript:
    """One clip's transcript from its windows' (segments, transcript), in order; segments
    without words are left out."""
    segments = [segment for window, _ in parts for segment in window if segment.text]
    if len(parts) == 1:
        parts[0][1].segments = segments
        parts[0][1].words = clip_words(parts)
        return parts[0][1]
    texts = [t for _, t in parts]
    no_speech = [t.no_speech_prob for t in texts if t.no_speech_prob is not None]
    confidences = None
    if all(t.confidences is not None for t in texts):
        confidences = [p for t in texts for p in t.confidences]
    return Transcript(text=" ".join(t.text for t in texts if t.text), tokens=[tok for t in texts for tok in t.tokens],
                      nfe=sum(t.nfe for t in texts), steps=sum(t.steps for t in texts),
                      no_speech_prob=min(no_speech) if no_speech else None,
                      truncated=any(t.truncated for t in texts), segments=segments, confidences=confidences,
                      words=clip_words(parts))


def clip_words(parts: list[tuple[list[Segment], Transcript]]) -> list[Word] | None:
    """A clip's words from its windows' segments (timed from the clip's start); None when any
    window's transcript has none (word timestamps were not asked for)."""
    if any(transcript.words is None for _, transcript in parts):
        return None
    return [word for window, _ in parts for segment in window for word in segment.words or []]
