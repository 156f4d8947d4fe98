"""Word timestamps from the pretrained Whisper decoder's alignment heads (docs/algorithms.md).

Nothing in a masked-diffusion decoder follows the audio in time, but a few cross-attention heads
of Whisper's own decoder do (Radford et al. 2022, "Robust Speech Recognition via Large-Scale
Weak Supervision"; the checkpoint lists them as `alignment_heads`). Whatever strategy decoded a
transcript, the pretrained decoder reads it once, teacher-forced, and those heads' attention
(token x encoder frame) is turned into a monotonic token-to-frame path by dynamic time warping:

1. keep the clip's own encoder frames (one per 20 ms);
2. z-score each head's weights per frame across the tokens (a frame every token attends to says
   nothing about which token it belongs to), median-filter along frames (width 7), average the heads;
3. DTW over the negated matrix; a token starts where the path first enters its row;
4. tokens are grouped into words (a word starts at a token that begins with a space); a word
   starts at its first token's start and ends where the next word (or the end of text) starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dllm_asr.model.speech_llm import AudioContext

FRAME_SECONDS = 0.02
"""One Whisper encoder frame: 10-ms mel hop x the stride-2 convolution."""
FRAME_SAMPLES = 320
"""One encoder frame in 16 kHz samples."""
MEDIAN_WIDTH = 7
"""Frames of the median filter over the attention (Whisper's value)."""


@dataclass
class Word:
    """A word of a transcript: start and end in seconds, its text (no surrounding spaces) and the
    mean probability of its tokens under the teacher-forced pretrained decoder."""

    start: float
    end: float
    text: str
    probability: float


def median_filter(x: Tensor, width: int = MEDIAN_WIDTH) -> Tensor:
    """Median of each `width` (odd) window along the last axis, edges reflected; (..., T) -> (..., T).
    Rows of `width // 2` frames or fewer cannot be reflected and are returned as they are."""
    half = width // 2
    if x.shape[-1] <= half:
        return x
    padded = F.pad(x.reshape(-1, 1, x.shape[-1]), (half, half), mode="reflect")
    return padded.unfold(-1, width, 1).median(dim=-1).values.reshape(x.shape)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotonic path through `cost` (N, M) from (0, 0) to (N-1, M-1), moving one
    row down, one column right or both at each step; the path's cost is the sum of the cells it
    visits. Returns its (row indices, column indices), each (path length,). Ties prefer the
    diagonal step, then the step down."""
    rows, cols = cost.shape
    total = np.full((rows + 1, cols + 1), np.inf)
    total[0, 0] = 0.0
    for i in range(1, rows + 1):
        # total[i, j] = cost + min(total[i-1, j-1], total[i-1, j], total[i, j-1]) unrolled along the row:
        # a run of right steps from column k is a prefix-sum difference, so the row is one cumulative min.
        above = np.minimum(total[i - 1, :-1], total[i - 1, 1:])
        sums = np.cumsum(cost[i - 1])
        before = np.concatenate([[0.0], sums[:-1]])
        total[i, 1:] = sums + np.minimum.accumulate(above - before)
    return _trace(total)


def _trace(total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walk back from the last cell of DTW's cumulative table (N+1, M+1) to the first."""
    i, j = total.shape[0] - 1, total.shape[1] - 1
    path = []
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        step = int(np.argmin([total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]]))  # first minimum: diagonal
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    rows, cols = np.array(path[::-1]).T
    return rows, cols


def token_starts(matrix: Tensor) -> np.ndarray:
    """matrix (N, T): how well token i matches frame t -> the frame (N,) where each token starts:
    where the DTW path over -matrix first enters its row."""
    rows, cols = dtw(-matrix.double().cpu().numpy())
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    return cols[first]


def alignment_matrix(weights: Tensor) -> Tensor:
    """The heads' cross-attention (A, N, T) of one row -> one matrix (N, T): each head z-scored
    per frame across the tokens, median-filtered along frames, then the heads averaged."""
    std, mean = torch.std_mean(weights.float(), dim=-2, keepdim=True, correction=0)
    normed = (weights - mean) / (std + 1e-8)
    return median_filter(normed).mean(dim=0)


def group_words(pieces: Sequence[str]) -> list[range]:
    """Token texts -> the token index range of each word: a word starts at the first token and at
    every token whose text begins with a space; ["The", " qu", "ick", "."] -> [0:1, 1:4]."""
    firsts = [i for i, piece in enumerate(pieces) if i == 0 or piece.startswith(" ")]
    return [range(a, b) for a, b in zip(firsts, firsts[1:] + [len(pieces)])]


def row_words(tokens: list[int], starts: np.ndarray, probs: list[float], tokenizer) -> list[Word]:
    """One row's words: tokens (N,), token start frames (N + 1,; the last is EOT's), token
    probabilities (N,); times in seconds from the start of the row's audio."""
    pieces = [tokenizer.piece(t) for t in tokens]
    bounds = [int(frame) * FRAME_SECONDS for frame in starts]
    words = []
    for span in group_words(pieces):
        text = tokenizer.decode(tokens[span.start: span.stop])
        if text:
            words.append(Word(bounds[span.start], bounds[span.stop], text,
                              float(np.mean(probs[span.start: span.stop]))))
    return words


def clip_frames(samples: int) -> int:
    """Encoder frames that hold a clip of `samples` 16 kHz samples (at least one)."""
    return max(1, samples // FRAME_SAMPLES)


@torch.no_grad()
def word_timestamps(model, audio: AudioContext, token_ids_per_row: Sequence[Sequence[int]],
                    frames: Sequence[int] | None = None) -> list[list[Word]]:
    """Words with times for each row's transcript, in one batched pass of the pretrained decoder.

    model: a Whisper-family model (`alignment_weights`); audio: the rows' encoder output as the
    transcripts were decoded from (B rows); token_ids_per_row: B token lists (special tokens are
    dropped); frames: B counts of the encoder frames that hold each row's clip (`clip_frames`;
    default `audio.lengths`, which for 30-s padded input also counts the padding). Returns B word
    lists, times in seconds from the start of each row's audio, not yet clamped to anything.
    """
    eot = model.tokenizer.eot
    limit = model.base_decoder.max_positions - model.base_prompt_ids.shape[0] - 1
    texts = [[int(t) for t in row if int(t) < eot][:limit] for row in token_ids_per_row]
    lengths = torch.tensor([len(row) for row in texts], device=model.device)
    if not texts or int(lengths.max()) == 0:
        return [[] for _ in texts]
    tokens = torch.full((len(texts), int(lengths.max())), eot, dtype=torch.long, device=model.device)
    for b, row in enumerate(texts):
        tokens[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    weights, probs = model.alignment_weights(audio, tokens, lengths)
    out = []
    for b, row in enumerate(texts):
        if not row:
            out.append([])
            continue
        width = int(audio.lengths[b]) if frames is None else min(int(frames[b]), int(audio.lengths[b]))
        starts = token_starts(alignment_matrix(weights[b, :, : len(row) + 1, :width]))
        out.append(row_words(row, starts, probs[b, : len(row)].tolist(), model.tokenizer))
    return out


__all__ = ["Word", "clip_frames", "dtw", "group_words", "median_filter", "word_timestamps"]
