"""Audio of any length: `transcribe_batch`, `transcribe_stream`, and `transcribe`, the one-line API.

A recording is cut at pauses into windows (`dllm_asr.audio.segment.windows`), the windows are
decoded a batch at a time (`dllm_asr.transcription.strategies.transcribe_windows`) and joined
into one `Transcript` with a `Segment` per window. A file is read as a stream of blocks, so
memory holds one block, one batch of windows and the text so far, however long it is.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import platform
import sys
from dataclasses import fields
from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from dllm_asr.audio.features import CHUNK_SECONDS
from dllm_asr.audio.io import read_blocks
from dllm_asr.audio.segment import windows
from dllm_asr.config import DEFAULT_MODEL
from dllm_asr.model.speech_llm import SpeechLLM
from dllm_asr.transcription.options import TranscribeOptions
from dllm_asr.transcription.result import (Segment, Transcript, join_windows, segments_of, speech_samples,
                                           whole_clip_segments)
from dllm_asr.transcription.strategies import (transcribe_windows, check_strategy, check_word_timestamps,
                                             model_options)


@torch.no_grad()
def transcribe_batch(model: SpeechLLM, audios: Sequence[np.ndarray], options: TranscribeOptions = TranscribeOptions(),
                     priors: Sequence[str] | None = None) -> list[Transcript]:
    """Transcribe a batch of 16 kHz waveforms. `priors` (texts) replace the model's own prior for `prior`.

    A clip longer than the window (`options.window_seconds`, else the model's) is cut at pauses
    (`dllm_asr.audio.segment.windows`); its windows are decoded in batches of `len(audios)` and
    their transcripts joined, one `Segment` per window. Clips the model judges silent
    (no-speech probability above `options.no_speech_threshold`, for models that have the
    signal) get an empty transcript and cost no decoding; a transcript that fills its whole block
    without an EOS is decoded again in a longer block (see `regrow`).
    """
    check_strategy(model, options.strategy)
    check_word_timestamps(model, options)
    if priors is not None:  # a prior text belongs to its whole clip: never cut
        decoded = transcribe_windows(model, audios, options, priors)
        return [join_windows([(whole_clip_segments(audio, t), t)]) for audio, t in zip(audios, decoded)]
    seconds = window_seconds(model, options)
    pieces = ((i, *piece) for i, audio in enumerate(audios) for piece in windows([audio], seconds))
    per_clip: list[list[tuple[list[Segment], Transcript]]] = [[] for _ in audios]
    for i, segments, transcript in decode_windows(model, pieces, options, max(1, len(audios))):
        per_clip[i].append((segments, transcript))
    return [join_windows(clip) for clip in per_clip]


def transcribe_stream(model: SpeechLLM, blocks: Iterable[np.ndarray], options: TranscribeOptions = TranscribeOptions(),
                      batch_size: int = 8, on_segment: Callable[[Segment], None] | None = None) -> Transcript:
    """Transcribe one recording arriving as consecutive 16 kHz blocks (`dllm_asr.audio.io.read_blocks`):
    windows are cut as they arrive and decoded `batch_size` at a time, so memory holds one block,
    one batch of windows and the text so far, however long the recording. `on_segment` is called
    with each window's segment as soon as it is decoded."""
    check_strategy(model, options.strategy)
    check_word_timestamps(model, options)
    pieces = ((0, *piece) for piece in windows(blocks, window_seconds(model, options)))
    parts = []
    for _, segments, transcript in decode_windows(model, pieces, options, batch_size):
        parts.append((segments, transcript))
        for segment in segments if on_segment is not None else []:
            if segment.text:
                on_segment(segment)
    return join_windows(parts)


AudioInput = Union[str, os.PathLike, np.ndarray, Tensor]
"""A path (any format ffmpeg reads; "-" for standard input) or a 16 kHz mono waveform (samples,)."""


def transcribe(audio: AudioInput, model: SpeechLLM | str | os.PathLike | None = None, device: str = "cpu",
               batch_size: int = 8, on_segment: Callable[[Segment], None] | None = None, **options) -> Transcript:
    """Transcribe one recording of any length: `dllm_asr.transcribe("talk.mp3").text`.

    model: a loaded model, a checkpoint directory or shipped name (loaded once and cached per
    name and device), or None for the default model. options: any `TranscribeOptions` field
    (strategy="ar", steps=16, threshold=0.8, window_seconds=20, ...), over the model's own
    settings. Returns a `Transcript`: `.text`, `.segments` (start, end, text, confidence),
    `.tokens` and `.confidences`. A long file is read and decoded as a stream.
    """
    if model is None or isinstance(model, (str, os.PathLike)):
        model = cached_model(str(model or DEFAULT_MODEL), device)
    return transcribe_audio(model, audio, batch_size, on_segment, **options)


def transcribe_audio(model: SpeechLLM, audio: AudioInput, batch_size: int = 8,
                     on_segment: Callable[[Segment], None] | None = None, **options) -> Transcript:
    """`transcribe` with a loaded model (also `model.transcribe(audio, **options)`)."""
    known = {f.name for f in fields(TranscribeOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown transcription option(s) {', '.join(unknown)}; the options are {', '.join(sorted(known))}")
    chosen = model_options(model, **options)
    if isinstance(audio, (str, os.PathLike)):
        return transcribe_stream(model, read_blocks(audio), chosen, batch_size, on_segment)
    waveform = np.asarray(audio.detach().cpu() if isinstance(audio, Tensor) else audio, dtype=np.float32)
    if waveform.ndim != 1 or waveform.size == 0:
        raise ValueError(f"audio must be a path or a non-empty 16 kHz mono waveform of shape (samples,), "
                         f"got shape {waveform.shape}")
    return transcribe_stream(model, [waveform], chosen, batch_size, on_segment)


@functools.lru_cache(maxsize=2)
def cached_model(path_or_name: str, device: str) -> SpeechLLM:
    """`load_model`, once per (name, device) in a process: a checkpoint rewritten since is not
    reread. dtype "auto": bfloat16 on a CPU with native bf16 matrix instructions, as the CLI."""
    from dllm_asr.model.loading import load_model

    return load_model(path_or_name, device=device, dtype="auto")


def window_seconds(model: SpeechLLM, options: TranscribeOptions) -> float:
    """The longest piece decoded at once: `options.window_seconds`, else Whisper's 30 s for
    `--strategy ar --ar-timestamps` (Whisper's own long-form decoding, which goes on from a
    window's last time token where its transcript stops short), else the model's own."""
    if options.window_seconds:
        return options.window_seconds
    if options.strategy == "ar" and options.ar_timestamps:
        return CHUNK_SECONDS
    return model.config.window_seconds


def decode_windows(model: SpeechLLM, pieces: Iterable[tuple[int, int, np.ndarray, bool]], options: TranscribeOptions,
                   batch_size: int) -> Iterator[tuple[int, list[Segment], Transcript]]:
    """Decode (clip index, start sample, samples, whole) pieces (`dllm_asr.audio.segment.windows`)
    `batch_size` at a time, in order; yields (clip index, the piece's segments, its transcript)."""
    pieces = iter(pieces)
    bound_heap_growth()
    while batch := list(itertools.islice(pieces, batch_size)):
        decoded = _decode_batch(model, batch, options)
        del batch  # its audio is not needed while the caller takes the texts and the next batch is read
        release_freed_memory()  # once per batch: the batch's tensors are gone, only its texts remain
        yield from decoded


def _decode_batch(model: SpeechLLM, batch: list[tuple[int, int, np.ndarray, bool]],
                  options: TranscribeOptions) -> list[tuple[int, list[Segment], Transcript]]:
    """`decode_windows` for one batch of pieces: (clip index, segments, transcript) per piece.
    Nothing here outlives the call (no loop variable keeps a window's samples alive)."""
    spans = [speech_samples(piece) for _, _, piece, _ in batch]
    # A piece cut from a longer clip is decoded from its sound only: the pauses around it
    # would lengthen the block. A clip short enough to be one piece (start 0, never cut) is
    # decoded whole, as the model was trained.
    decoded = transcribe_windows(model, [piece if whole else piece[a:b]
                                          for (_, _, piece, whole), (a, b) in zip(batch, spans)], options)
    return [(i, segments_of(start + a, b - a, transcript, start if whole else start + a), transcript)
            for (i, start, _, whole), (a, b), transcript in zip(batch, spans, decoded)]


def release_freed_memory() -> bool:
    """Give the pages of freed C-heap memory back to the OS (glibc's `malloc_trim`); True if it ran.

    Why: every batch of windows allocates tensors of new shapes (window and block lengths vary).
    glibc raises its mmap threshold as large blocks are freed, so these land in its heap, and the
    freed gaps between them stay resident: a long recording's resident set grew with the number
    of batches although the memory in use did not. Trimming after each batch bounds it. A no-op
    (False) off Linux/glibc."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


MMAP_THRESHOLD_BYTES = 4 << 20


@functools.lru_cache(maxsize=1)
def bound_heap_growth() -> bool:
    """Have glibc give every allocation of `MMAP_THRESHOLD_BYTES` or more its own pages, handed back
    to the system when it is freed; True if set (once per process; a no-op off glibc, or when the
    user set `MALLOC_MMAP_THRESHOLD_` or `GLIBC_TUNABLES` themselves).

    Why: a batch of long windows allocates logits of up to (8 * 68, 51,864) floats per step. By
    default glibc raises its mmap threshold as such blocks are freed, so later ones land in its heap,
    which then only grows with fragmentation: a long recording's peak kept rising, though the memory
    in use did not (docs/default-model.md, "Memory"). A fixed threshold ends that. The large
    blocks' fresh pages cost no time beyond the noise of benchmarks/long_memory.py's runs; on
    batches of short clips an interleaved check suggested up to ~10%, within the machine's drift
    (docs/default-model.md, "Decoding cost on a CPU")."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    mallopt = _glibc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    return mallopt is not None and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def _glibc_function(name: str, argtypes: list) -> Callable[..., int] | None:
    """A glibc function returning int, None where there is no glibc (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, ctypes.c_int
    return function


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, None where there is none (macOS, Windows, musl)."""
    return _glibc_function("malloc_trim", [ctypes.c_size_t])
