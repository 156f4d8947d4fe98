"""Whisper's timestamp rules on hand-worked cases: a compact vocabulary of three text tokens (0-2),
EOS (3) and 60 time tokens (4 = 0.00 s, 5 = 0.02 s, ...)."""
import pytest
import torch

from dllm_asr.model.whisper_timestamps import MAX_INITIAL_TIMESTAMP_INDEX, apply_timestamp_rules, timed_spans, unfinished_at

EOS, T0, VOCAB = 3, 4, 64
TEXT = {0, 1, 2}
TIMES = set(range(T0, VOCAB))


def allowed(tokens: list[int], text_logit: float = 10.0) -> set[int]:
    """The tokens left possible after `tokens`, text and EOS scored `text_logit`, time tokens 0."""
    logits = torch.zeros(1, VOCAB)
    logits[0, :T0] = text_logit
    out = apply_timestamp_rules(logits, [tokens], T0, EOS)
    return {i for i in range(VOCAB) if out[0, i] > float("-inf")}


def test_a_transcript_opens_with_a_time_token_of_at_most_one_second():
    assert allowed([]) == set(range(T0, T0 + MAX_INITIAL_TIMESTAMP_INDEX + 1))


def test_text_follows_the_opening_time_token_and_a_pair():
    assert allowed([T0]) == TEXT | {EOS}
    assert allowed([T0, 1, T0 + 5, T0 + 5]) == TEXT | {EOS}


def test_after_text_time_moves_forward():
    assert allowed([T0 + 2, 1]) == TEXT | {EOS} | (TIMES - {T0, T0 + 1, T0 + 2})


def test_a_closing_time_token_is_followed_by_its_pair_or_eos_never_by_text():
    assert allowed([T0, 1, T0 + 5]) == {EOS} | (TIMES - set(range(T0, T0 + 5)))


def test_a_time_token_is_forced_where_the_time_tokens_together_beat_every_text_token():
    """Text and EOS at logit 0 against 59 open time tokens at 0: their summed probability wins."""
    assert allowed([T0, 1], text_logit=0.0) == TIMES - {T0}
    assert allowed([T0, 1], text_logit=5.0) == TEXT | {EOS} | (TIMES - {T0})  # log 59 < 5: not forced


def test_a_transcript_ending_with_a_pair_of_time_tokens_stopped_short_of_its_window():
    """Whisper's seek: `<|0.00|> a <|0.10|><|0.10|>` EOS opened a segment and wrote nothing in
    it, so the window is read on from 0.10 s; one ending with a single closing time token, or
    with text, covers its window."""
    assert unfinished_at([T0, 1, T0 + 5, T0 + 5], T0) == pytest.approx(0.1)
    assert unfinished_at([T0, 1, T0 + 5, T0 + 5, 2, T0 + 9, T0 + 12], T0) == pytest.approx(0.18)  # the closing one's
    assert unfinished_at([T0, 1, T0 + 5], T0) is None
    assert unfinished_at([T0, 1, T0 + 5, T0 + 5, 2], T0) is None
    assert unfinished_at([1, 2], T0) is None and unfinished_at([], T0) is None


def test_the_time_tokens_mark_segments_over_the_text_tokens():
    """`<|0.00|> 1 2 <|0.10|><|0.10|> 0 <|0.18|>`: two segments, 0.00-0.10 s over text tokens 0-1 and
    0.10-0.18 s over token 2; a transcript that ends inside a segment leaves its end open; a
    segment with no text (an opening pair at the end) is no segment."""
    assert timed_spans([T0, 1, 2, T0 + 5, T0 + 5, 0, T0 + 9], T0) == [(0.0, pytest.approx(0.1), 2),
                                                                       (pytest.approx(0.1), pytest.approx(0.18), 3)]
    assert timed_spans([T0, 1, T0 + 5, T0 + 5, 2], T0) == [(0.0, pytest.approx(0.1), 1), (pytest.approx(0.1), None, 2)]
    assert timed_spans([T0, 1, T0 + 5, T0 + 5], T0) == [(0.0, pytest.approx(0.1), 1)]
    assert timed_spans([], T0) == []
