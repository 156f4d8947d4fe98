"""Tests for dllm_asr.transcription.result: a window's segments, cut where its decoder timed them."""

from __future__ import annotations

import pytest

from dllm_asr.transcription.result import TimedPart, Transcript, join_windows, segment_of, segments_of
from dllm_asr.transcription.word_times import Word

SECOND = 16000


def transcript(timed: list[TimedPart] | None, words: list[Word] | None = None) -> Transcript:
    return Transcript("A b. C d.", [1, 2, 3, 4], nfe=1, steps=4, confidences=[0.4, 0.6, 0.6, 0.8], timed=timed,
                      words=words)


TWO_PARTS = [TimedPart(0.0, 1.2, "A b.", 0.5), TimedPart(1.2, None, "C d.", 0.7)]
WORDS = [Word(0.6, 0.9, "A", 0.9), Word(0.9, 1.1, "b.", 0.9), Word(1.3, 1.6, "C", 0.9), Word(1.6, 1.9, "d.", 0.9)]


def test_each_timed_part_is_a_segment_moved_into_the_clips_time_and_kept_inside_the_stretch():
    """The stretch is 1.0-4.0 s of the clip; the audio was decoded from 0.5 s on: the first part
    (0.0-1.2 s) becomes 1.0 (not 0.5: before the stretch)-1.7 s, the second, left open, 1.7-4.0 s."""
    segments = segments_of(SECOND, 3 * SECOND, transcript(TWO_PARTS), origin=SECOND // 2)
    assert [(s.start, s.end, s.text, s.confidence) for s in segments] == [
        (1.0, 1.7, "A b.", 0.5), (1.7, 4.0, "C d.", 0.7)]
    assert all(s.words is None for s in segments)


def test_each_part_takes_its_own_words_or_where_the_counts_disagree_those_that_start_in_it():
    segments = segments_of(SECOND, 3 * SECOND, transcript(TWO_PARTS, WORDS), origin=SECOND // 2)
    assert [[(w.text, w.start, w.end) for w in s.words] for s in segments] == [
        [("A", 1.1, 1.4), ("b.", 1.4, 1.6)], [("C", 1.8, 2.1), ("d.", 2.1, 2.4)]]
    three_words = [WORDS[0], WORDS[1], Word(1.25, 1.9, "Cd.", 0.9)]  # 1.75 s in the clip: the second part
    segments = segments_of(SECOND, 3 * SECOND, transcript(TWO_PARTS, three_words), origin=SECOND // 2)
    assert [[w.text for w in s.words] for s in segments] == [["A", "b."], ["Cd."]]


def test_a_window_timed_once_or_not_at_all_is_one_segment():
    for timed in (None, [], [TimedPart(0.0, None, "A b. C d.", 0.6)]):
        expected = segment_of(SECOND, 3 * SECOND, transcript(timed))
        segments = segments_of(SECOND, 3 * SECOND, transcript(timed))
        assert len(segments) == 1 and segments[0] == expected
        assert expected.confidence == pytest.approx(0.6)


def test_a_clip_joins_every_windows_segments_in_order():
    first = transcript(TWO_PARTS)
    second = Transcript("E.", [5], nfe=1, steps=1, confidences=[1.0])
    joined = join_windows([(segments_of(0, 2 * SECOND, first), first), (segments_of(3 * SECOND, SECOND, second), second)])
    assert [(s.start, s.end, s.text) for s in joined.segments] == [(0.0, 1.2, "A b."), (1.2, 2.0, "C d."),
                                                                   (3.0, 4.0, "E.")]
    assert joined.text == "A b. C d. E."
