"""Whisper's safeguards for its own left-to-right decoding (Radford et al., 2022, sec. 4.5): the
temperature fallback's thresholds and the scored transcripts (`ARSamples`) it chooses among."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable


FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)
"""Whisper's temperature fallback (Radford et al., 2022, sec. 4.5): a greedy transcript that
compresses too well (gzip ratio > 2.4: a loop) or is too unlikely (mean token log-probability
< -1) is decoded again by sampling at rising temperatures, `FALLBACK_BEST_OF` samples each, until
one passes; silence (no-speech probability > 0.6 with a low log-probability) is not retried. When
none passes, the likeliest of those under the compression limit is kept (as faster-whisper does)."""
FALLBACK_BEST_OF = 5
COMPRESSION_RATIO_LIMIT = 2.4
LOGPROB_LIMIT = -1.0
NO_SPEECH_LIMIT = 0.6


def compression_ratio(text: str) -> float:
    """len(text) / len(zlib(text)) in bytes: about 1-2 for speech, high for a repeated phrase."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass
class ARSamples:
    """The transcripts of one AR pass (one token list per row) with what the fallback reads:
    summed token log-probability, no-speech probability and compression ratio per row."""

    tokens: list[list[int]]
    logprobs: list[float]
    no_speech: list[float]
    ratios: list[float]
    token_probs: list[list[float]]
    """Per row, each token's probability when it was chosen."""
    nfe: int
    unfinished_at: list[float | None]
    """Per row decoded with timestamps, where its window's transcript stopped short of the
    window's end (`whisper_timestamps.unfinished_at`), in seconds; else None."""
    spans: list[list[tuple[float, float | None, int]] | None]
    """Per row decoded with timestamps, the segments its time tokens mark
    (`whisper_timestamps.timed_spans`); else None."""
    ROW_FIELDS = ("tokens", "logprobs", "no_speech", "ratios", "token_probs", "unfinished_at", "spans")

    @classmethod
    def scored(cls, tokens: list[list[int]], logprobs: list[float], no_speech: list[float],
               decode: Callable[[list[int]], str], nfe: int, token_probs: list[list[float]],
               unfinished_at: list[float | None] | None = None,
               spans: list[list[tuple[float, float | None, int]] | None] | None = None) -> "ARSamples":
        """A pass's rows, with the compression ratio of each decoded transcript."""
        return cls(tokens, logprobs, no_speech, [compression_ratio(decode(row)) for row in tokens], token_probs, nfe,
                   unfinished_at if unfinished_at is not None else [None] * len(tokens),
                   spans if spans is not None else [None] * len(tokens))

    def avg_logprob(self, i: int) -> float:
        return self.logprobs[i] / (len(self.tokens[i]) + 1)  # + 1: the EOS token

    def is_silent(self, i: int) -> bool:
        """Whisper's test for silence: no-speech probability over its limit and an unlikely transcript."""
        return self.no_speech[i] > NO_SPEECH_LIMIT and self.avg_logprob(i) < LOGPROB_LIMIT

    def needs_fallback(self, i: int) -> bool:
        if self.is_silent(i):
            return False  # Whisper does not retry silence
        return self.ratios[i] > COMPRESSION_RATIO_LIMIT or self.avg_logprob(i) < LOGPROB_LIMIT

    def best_of(self, group: int) -> "ARSamples":
        """Per group of `group` consecutive rows, the one with the highest log-probability per token."""
        keep = [max(range(first, first + group), key=lambda i: self.logprobs[i] / max(len(self.tokens[i]), 1))
                for first in range(0, len(self.tokens), group)]
        return ARSamples(**{name: [getattr(self, name)[i] for i in keep] for name in self.ROW_FIELDS}, nfe=self.nfe)

    def replace(self, rows: list[int], other: "ARSamples") -> None:
        """Row rows[j] takes other's j-th transcript."""
        for j, i in enumerate(rows):
            self._take(i, other, j)

    def keep_better(self, rows: list[int], tried: "ARSamples") -> None:
        """Row rows[j] takes tried's j-th transcript if it passes, or if neither passes and it is
        under the compression limit where the current one is not, or likelier."""
        for j, i in enumerate(rows):
            if not tried.needs_fallback(j) or self._is_better(tried, j, i):
                self._take(i, tried, j)

    def append(self, i: int, other: "ARSamples", j: int, seconds: float) -> None:
        """Row i goes on with other's j-th transcript, of audio that starts `seconds` into row i's:
        its tokens and confidences appended, its timed segments moved that much later and past
        row i's tokens."""
        count = len(self.tokens[i])
        moved = [(start + seconds, None if end is None else end + seconds, last + count)
                 for start, end, last in other.spans[j] or []]
        self.spans[i] = (self.spans[i] or []) + moved
        self.tokens[i] = self.tokens[i] + other.tokens[j]
        self.token_probs[i] = self.token_probs[i] + other.token_probs[j]

    def _take(self, i: int, other: "ARSamples", j: int) -> None:
        for name in self.ROW_FIELDS:
            getattr(self, name)[i] = getattr(other, name)[j]

    def _is_better(self, other: "ARSamples", j: int, i: int) -> bool:
        """Whether other's row j beats this row i, neither passing: under the compression limit first, then likelier."""
        mine_ok = self.ratios[i] <= COMPRESSION_RATIO_LIMIT
        other_ok = other.ratios[j] <= COMPRESSION_RATIO_LIMIT
        if mine_ok != other_ok:
            return other_ok
        return other.avg_logprob(j) > self.avg_logprob(i)
