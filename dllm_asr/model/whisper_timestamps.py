"""Whisper's timestamp rules, for its decoder decoding with timestamps (Radford et al., 2022,
sec. 2.3: a transcript is segments, each opened and closed by a time token in 20-ms steps).

Without `<|notimestamps|>` in its prompt, Whisper's decoder writes `<|t0|> text <|t1|><|t1|> text
<|t2|> ...`; its reference decoding constrains each step so that the time tokens stay well formed:
1. the first token is a time token, at most `MAX_INITIAL_TIMESTAMP_INDEX` (1 s);
2. time tokens come in pairs: after a lone time token (one that closes a segment) comes another
   one or EOS, never text; after a pair comes text or EOS, never a third;
3. time never goes back: a time token below the last one is barred (equal to it only where it
   opens the next segment after a closing one);
4. where the time tokens' summed probability beats every other token's, one of them is taken.

Here the logits cover a compact vocabulary: ids up to and including EOS are text (and EOS), and
`first_timestamp` onwards are the time tokens 0.00, 0.02, ... s (`WhisperDiffusionASR._sample_ar`).
"""
from __future__ import annotations

import torch
from torch import Tensor

MAX_INITIAL_TIMESTAMP_INDEX = 50
"""The first time token is at most 1.0 s (50 steps of 20 ms), as in Whisper's transcribe."""
TIME_STEP_SECONDS = 0.02
"""The time tokens' resolution."""


def apply_timestamp_rules(logits: Tensor, generated: list[list[int]], first_timestamp: int, eos: int) -> Tensor:
    """logits (B, V) of the next token, in place, with -inf where Whisper's timestamp rules bar
    a token; `generated`: each row's tokens so far (compact ids, prompt excluded);
    `first_timestamp`: the compact id of the 0.00-s time token; `eos`: the EOS id, below it."""
    barred = float("-inf")
    for row, tokens in zip(logits, generated):
        times = [t for t in tokens if t >= first_timestamp]
        last_is_time = len(tokens) >= 1 and tokens[-1] >= first_timestamp
        before_last_is_time = len(tokens) < 2 or tokens[-2] >= first_timestamp
        if last_is_time and before_last_is_time:
            row[first_timestamp:] = barred  # a pair (or the opening token): text or EOS next
        elif last_is_time:
            row[:eos] = barred  # a closing token: its pair or EOS next
        if times:
            row[first_timestamp: times[-1] + (0 if last_is_time and not before_last_is_time else 1)] = barred
        if not tokens:
            row[:first_timestamp] = barred
            row[first_timestamp + MAX_INITIAL_TIMESTAMP_INDEX + 1:] = barred
        logprobs = row.float().log_softmax(-1)
        if logprobs[first_timestamp:].logsumexp(-1) > logprobs[:first_timestamp].max():
            row[:first_timestamp] = barred
    return logits


def unfinished_at(tokens: list[int], first_timestamp: int) -> float | None:
    """Where Whisper's `transcribe` goes on from after a window decoded with timestamps: a
    transcript that ends with a pair of time tokens (a segment closed, the next one opened, then
    EOS) stopped before the window's end, and the next window starts at that time; one that ends
    with a single closing time token, or with no time token, covers its window. `tokens`: the
    row's compact ids, EOS excluded. Returns the time in seconds from the window's start, or None.
    """
    if len(tokens) >= 2 and tokens[-1] >= first_timestamp and tokens[-2] >= first_timestamp:
        return (tokens[-2] - first_timestamp) * TIME_STEP_SECONDS
    return None


def timed_spans(tokens: list[int], first_timestamp: int) -> list[tuple[float, float | None, int]]:
    """The segments a transcript decoded with timestamps marks, over its text tokens: (start s,
    end s, or None where the transcript ends inside the segment, index one past the segment's
    last text token among the row's text tokens). `<|0.00|> A B<|1.20|><|1.20|> C<|2.00|>` ->
    [(0.0, 1.2, 2), (1.2, 2.0, 3)]; segments with no text are left out."""
    spans, opened, count, closed_at = [], 0.0, 0, 0
    for token in tokens:
        if token < first_timestamp:
            count += 1
            continue
        time = (token - first_timestamp) * TIME_STEP_SECONDS
        if count > closed_at:
            spans.append((opened, time, count))
            closed_at = count
        opened = time
    if count > closed_at:
        spans.append((opened, None, count))
    return spans
