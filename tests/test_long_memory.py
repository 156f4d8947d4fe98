"""Memory of a streamed long recording (issue 13): what decoding holds must not grow with length.

A synthetic recording of repeated 2-s pieces (a tone, then a pause the cutter cuts in) streams
through `transcribe_stream` with the tiny random model. No timing or RSS threshold: the tests
count the audio arrays still alive, compare Python-heap peaks of a short and a three-times
longer stream, and check that freed C-heap memory is handed back once per batch and that large
blocks are kept out of glibc's heap.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import tracemalloc
import weakref
from typing import Iterator

import numpy as np
import pytest

from dllm_asr.audio.features import SAMPLE_RATE
from dllm_asr.transcription import long_form
from dllm_asr.transcription.long_form import release_freed_memory, transcribe_stream
from dllm_asr.transcription.strategies import model_options

PIECE_SECONDS = 2.0
BATCH = 4


def piece(index: int) -> np.ndarray:
    """1.4 s of a tone (its pitch varies with `index`), then 0.6 s of silence."""
    t = np.arange(int(1.4 * SAMPLE_RATE)) / SAMPLE_RATE
    sound = 0.3 * np.sin(2 * np.pi * (200 + 20 * (index % 7)) * t)
    return np.concatenate([sound, np.zeros(int(0.6 * SAMPLE_RATE))]).astype(np.float32)


def blocks(count: int, tracked: list[weakref.ref] | None = None) -> Iterator[np.ndarray]:
    """`count` pieces, one block each, as `read_blocks` would give them; each block's weak
    reference goes into `tracked`."""
    for index in range(count):
        block = piece(index)
        if tracked is not None:
            tracked.append(weakref.ref(block))
        yield block


def alive(refs: list[weakref.ref]) -> int:
    gc.collect()  # a reference cycle is not a reference that decoding holds
    return sum(ref() is not None for ref in refs)


@pytest.fixture()
def options(tiny_model):
    # 4-s windows: each 2-s piece is cut at its pause, so the recording gives one window per piece;
    # a fixed short block: the random model never writes EOS, and would be decoded again (`regrow`)
    return model_options(tiny_model, window_seconds=4.0, steps=2, length=8)


def test_a_stream_holds_one_batch_of_windows_and_a_block_or_two_however_long(tiny_model, options, monkeypatch):
    block_refs: list[weakref.ref] = []
    window_refs: list[weakref.ref] = []
    live: list[tuple[int, int]] = []
    cut = long_form.windows

    def tracked_windows(stream, seconds):
        for start, samples, whole in cut(stream, seconds):
            window_refs.append(weakref.ref(samples))
            yield start, samples, whole

    decode = long_form.transcribe_windows

    def counting_decode(model, audios, *args, **kwargs):
        live.append((alive(window_refs), alive(block_refs)))
        return decode(model, audios, *args, **kwargs)

    monkeypatch.setattr(long_form, "windows", tracked_windows)
    monkeypatch.setattr(long_form, "transcribe_windows", counting_decode)
    transcript = transcribe_stream(tiny_model, blocks(20, block_refs), options, batch_size=BATCH)
    assert len(window_refs) >= 16 and len(live) == -(-len(window_refs) // BATCH)
    assert max(windows for windows, _ in live) <= BATCH, live
    assert max(held for _, held in live) <= 3, live  # the cutter's buffer spans at most a few blocks
    assert len(transcript.segments or []) <= len(window_refs)


def python_heap_peak(model, options, count: int) -> int:
    """tracemalloc's peak (bytes, numpy's arrays included) while `count` pieces stream through."""
    gc.collect()
    tracemalloc.start()
    try:
        transcribe_stream(model, blocks(count), options, batch_size=BATCH)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_what_a_stream_holds_grows_by_its_text_not_its_audio(tiny_model, options):
    transcribe_stream(tiny_model, blocks(BATCH), options, batch_size=BATCH)  # lazy imports and caches first
    short, long = python_heap_peak(tiny_model, options, 8), python_heap_peak(tiny_model, options, 24)
    per_window = (long - short) / 16
    # a window's audio is 2 s * 16 kHz * 4 bytes = 128 KB: kept windows would add that each;
    # its segment, tokens and confidences are a few KB
    assert per_window < 16_000, (short, long, per_window)


def test_freed_memory_is_given_back_once_per_batch(tiny_model, options, monkeypatch):
    calls = []
    monkeypatch.setattr(long_form, "release_freed_memory", lambda: calls.append(1))
    transcribe_stream(tiny_model, blocks(10), options, batch_size=BATCH)
    assert len(calls) == 3  # 10 windows in batches of 4


def test_release_freed_memory_is_safe_to_call_anywhere():
    assert release_freed_memory() in (True, False)
    assert release_freed_memory() == (long_form._malloc_trim() is not None)


def test_decoding_sets_the_mmap_threshold_before_its_first_batch(tiny_model, options, monkeypatch):
    calls = []
    monkeypatch.setattr(long_form, "bound_heap_growth", lambda: calls.append(1))
    transcribe_stream(tiny_model, blocks(6), options, batch_size=BATCH)
    assert calls == [1]  # once per stream, before its first batch


def bound_heap_growth_in_a_fresh_process(**env: str) -> str:
    code = "from dllm_asr.transcription.long_form import bound_heap_growth as b; print(b(), b())"
    environment = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
    return subprocess.run([sys.executable, "-c", code], env={**environment, **env}, capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.mark.skipif(long_form._malloc_trim() is None, reason="glibc only")
def test_the_mmap_threshold_is_set_by_glibc_unless_the_user_set_one():
    assert bound_heap_growth_in_a_fresh_process() == "True True"  # glibc's mallopt accepted it (the second call: cached)
    assert bound_heap_growth_in_a_fresh_process(MALLOC_MMAP_THRESHOLD_="65536") == "False False"
    assert bound_heap_growth_in_a_fresh_process(GLIBC_TUNABLES="glibc.malloc.mmap_threshold=65536") == "False False"
