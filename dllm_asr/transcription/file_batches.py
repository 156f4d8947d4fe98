"""Many files: `transcribe_files` batches short files across files and streams long ones.

A file that cannot be read gets an error entry (one line naming it) and the rest go on.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from dllm_asr.audio.features import SAMPLE_RATE
from dllm_asr.audio.io import AudioError, load_audio, read_blocks
from dllm_asr.model.speech_llm import SpeechLLM
from dllm_asr.progress import FileProgress
from dllm_asr.transcription.long_form import transcribe_batch, transcribe_stream
from dllm_asr.transcription.options import DeliberationOptions, TranscribeOptions
from dllm_asr.transcription.result import Segment, Transcript
from dllm_asr.transcription.strategies import deliberate_batch


@dataclass
class FileResult:
    path: str
    transcript: Transcript | None
    seconds: float
    """Decoding time per clip of the file's batch."""
    error: str | None = None
    duration: float = 0.0
    """Length of the audio in seconds (0 when it could not be read)."""


STREAM_SECONDS = 60.0
"""A file longer than this is read and decoded as a stream (`transcribe_stream`); shorter ones
are batched across files."""


def transcribe_files(model: SpeechLLM, paths: Sequence[str | Path], options: TranscribeOptions = TranscribeOptions(),
                     batch_size: int = 8, priors: Sequence[str] | None = None,
                     deliberation: DeliberationOptions | None = None,
                     on_segment: Callable[[str, Segment], None] | None = None,
                     stream_seconds: float = STREAM_SECONDS) -> Iterator[FileResult]:
    """Transcribe files, yielding one FileResult per path in the order given, each as soon as
    it is done; an unreadable file gets an error entry and the rest go on.

    Files up to `stream_seconds` long are decoded `batch_size` at a time across files; a longer
    one streams, window by window (`transcribe_stream`), in memory bounded by one block and one
    batch. `on_segment(path, segment)` sees each segment of a streamed file when it is decoded,
    and the segments of the others when their batch is. With `deliberation` (see
    `deliberate_batch`), each file's prior transcript `priors[i]`
    is deliberated instead of decoding from scratch (files are then read whole).
    """
    pending: list[tuple[str, np.ndarray, int]] = []
    bar = FileProgress(len(paths))
    try:
        for index, path in enumerate(map(str, paths)):
            try:
                if deliberation is not None:
                    pending.append((path, load_audio(path), index))
                else:
                    blocks = read_blocks(path, stream_seconds)
                    head = list(itertools.islice(blocks, 2))
                    if len(head) == 1:
                        pending.append((path, head[0], index))
                    else:
                        yield from _flush(model, pending, options, priors, deliberation, on_segment, bar)
                        yield _stream_file(model, path, itertools.chain(head, blocks), options, batch_size, on_segment, bar)
                        continue
            except AudioError as err:
                yield from _flush(model, pending, options, priors, deliberation, on_segment, bar)
                bar.update(0.0)
                yield FileResult(path, None, 0.0, str(err))
                continue
            if len(pending) == batch_size:
                yield from _flush(model, pending, options, priors, deliberation, on_segment, bar)
        yield from _flush(model, pending, options, priors, deliberation, on_segment, bar)
    finally:
        bar.close()


def _stream_file(model: SpeechLLM, path: str, blocks: Iterable[np.ndarray], options: TranscribeOptions,
                 batch_size: int, on_segment: Callable[[str, Segment], None] | None, bar: FileProgress) -> FileResult:
    started = time.perf_counter()
    samples = 0

    def counted(stream: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        nonlocal samples
        for block in stream:
            samples += len(block)
            yield block

    report = None if on_segment is None else (lambda segment: on_segment(path, segment))
    try:
        transcript = transcribe_stream(model, counted(blocks), options, batch_size, report)
    except AudioError as err:  # the file broke off midway: what it gave is not a transcript of it
        bar.update(samples / SAMPLE_RATE)
        return FileResult(path, None, 0.0, str(err))
    bar.update(samples / SAMPLE_RATE)
    return FileResult(path, transcript, time.perf_counter() - started, duration=samples / SAMPLE_RATE)


def _flush(model: SpeechLLM, pending: list[tuple[str, np.ndarray, int]], options: TranscribeOptions,
           priors: Sequence[str] | None, deliberation: DeliberationOptions | None,
           on_segment: Callable[[str, Segment], None] | None, bar: FileProgress) -> Iterator[FileResult]:
    """Decode the files waiting in `pending` as one batch (and empty it)."""
    if not pending:
        return
    audios = [audio for _, audio, _ in pending]
    started = time.perf_counter()
    if deliberation is None:
        transcripts = transcribe_batch(model, audios, options)
    else:
        transcripts = deliberate_batch(model, audios, [priors[i] for _, _, i in pending], deliberation, options)
    per_clip = (time.perf_counter() - started) / len(pending)
    for (path, audio, _), transcript in zip(pending, transcripts):
        for segment in transcript.segments if on_segment is not None else []:
            on_segment(path, segment)
        bar.update(len(audio) / SAMPLE_RATE)
        yield FileResult(path, transcript, per_clip, duration=len(audio) / SAMPLE_RATE)
    pending.clear()
