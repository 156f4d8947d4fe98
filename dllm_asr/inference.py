"""Inference: audio -> text with any decoding strategy of the two papers.

`transcribe_batch` binds a batch's audio into a mask predictor and hands it to
`dllm_asr.decoding.decode`; `deliberate_batch` re-masks a prior transcript and lets the model
fill it in; `transcribe_files` adds file loading that skips (and reports) unreadable clips.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .audio import MIN_SAMPLES, AudioError, SAMPLE_RATE, load_audio, read_blocks
from .decoding import DecodeOptions, decode, deliberate, pack_priors
from .encoders import ctc_greedy_decode
from .config import DEFAULT_MODEL
from .model import AudioContext, SpeechLLM
from .options import DeliberationOptions, TranscribeOptions
from .progress import FileProgress
from .segment import speech_span, windows
from .word_times import Word, clip_frames, word_timestamps


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
    """The clip's speech, in order: one per window a long clip was cut into (`dllm_asr.segment`),
    one for a clip decoded whole, none for silence; times in seconds from the clip's start."""
    confidences: list[float | None] | None = None
    """Per token of `tokens`, the probability the model gave it when it chose it (None: a token
    that was given, e.g. by deliberation, not predicted); None: not recorded."""
    words: list[Word] | None = None
    """The transcript's words timed in seconds from the clip's start (the `word_timestamps`
    option, `dllm_asr.word_times`); None: not asked for."""


@dataclass
class Segment:
    """A stretch of speech: start and end in seconds (where the sound of its window begins and
    ends, `dllm_asr.segment.speech_span`), its transcript and the mean confidence of its tokens;
    with the `word_timestamps` option, its words, timed from the clip's start and within the segment."""

    start: float
    end: float
    text: str
    confidence: float | None = None
    words: list[Word] | None = None


def block_lengths(model: SpeechLLM, audios: Sequence[np.ndarray], options: TranscribeOptions) -> Tensor:
    """Response block length per clip: `options.length`, or ceil(seconds * tokens_per_second) + 8,
    capped at the model's `max_response_tokens` (short clips need far fewer than 128 positions)."""
    cap = model.config.max_response_tokens
    if options.length is not None:
        return torch.full((len(audios),), options.length, dtype=torch.long)
    sizes = [min(cap, math.ceil(len(a) / SAMPLE_RATE * options.tokens_per_second) + 8) for a in audios]
    return torch.tensor(sizes, dtype=torch.long)


def decode_options(model: SpeechLLM, options: TranscribeOptions, **changes) -> DecodeOptions:
    """The DecodeOptions of a strategy (diffusion, semi-ar, threshold or prior)."""
    base = dict(mask_id=model.mask_id, eos_id=model.eos_id, steps=options.steps, temperature=options.temperature,
                remasking=options.remasking, seed=options.seed, trace=options.trace, numerics=options.numerics)
    if options.strategy == "semi-ar":
        base["num_blocks"] = min(options.num_blocks, options.steps)
    elif options.strategy == "threshold":
        base["threshold"] = options.threshold
    elif options.strategy == "prior":
        base.update(prior_guided=True, margin=options.margin, exit_threshold=options.exit_threshold,
                    prune=options.prune)
    base.update(changes)
    return DecodeOptions(**base)


def _texts(model: SpeechLLM, result, traces: bool) -> list[Transcript]:
    out = []
    confidences = result.confidences() or [None] * len(result.lengths)
    for row, tokens in enumerate(result.sequences()):
        text = model.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        trace = [step[row].tolist() for step in result.trace] if traces and result.trace else None
        out.append(Transcript(text, tokens, int(result.nfe[row]), int(result.steps[row]), trace,
                              confidences=confidences[row]))
    return out


def tokenize_texts(model: SpeechLLM, texts: Sequence[str], max_tokens: int | None = None) -> tuple[Tensor, Tensor]:
    """Texts -> token ids (B, L) padded with EOS (each cut to `max_tokens`), lengths (B,)."""
    ids = [model.tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens] for t in texts]
    tokens, lengths = pack_priors(ids, model.eos_id)
    return tokens.to(model.device), lengths.to(model.device)


def check_strategy(model: SpeechLLM, strategy: str) -> None:
    """A model trained with the AR objective is a causal LM: only the `ar` strategy can decode it;
    and `ar` needs a model that has a causal decoder (an AR-objective model, or the Whisper
    family, which keeps Whisper's pretrained decoder)."""
    if model.config.objective == "ar" and strategy != "ar":
        raise ValueError(f"this model was trained with objective 'ar' (a causal LM): decode it with "
                         f"--strategy ar, not {strategy!r}")
    if strategy == "ar" and not model.supports_ar:
        raise ValueError("--strategy ar: this model's decoder was trained for masked diffusion, not left to right; "
                         "decode it with diffusion, semi-ar, threshold or prior")


def check_word_timestamps(model: SpeechLLM, options: TranscribeOptions) -> None:
    """Word times come from the pretrained Whisper decoder's alignment heads: only the Whisper
    family keeps that decoder."""
    if options.word_timestamps and not getattr(model, "supports_word_timestamps", False):
        raise ValueError("--word-timestamps: this model has no pretrained Whisper decoder to align words with; "
                         "use a Whisper-family model such as dllm-asr-tiny-en")


def attach_words(model: SpeechLLM, audios: Sequence[np.ndarray], audio: AudioContext,
                 transcripts: list[Transcript]) -> None:
    """Set each transcript's words, timed from the start of its clip (`audios`, encoded in `audio`,
    one row per transcript): one teacher-forced pass of the pretrained decoder (`dllm_asr.word_times`)."""
    frames = [clip_frames(len(clip)) for clip in audios]
    for transcript, words in zip(transcripts, word_timestamps(model, audio, [t.tokens for t in transcripts], frames)):
        transcript.words = words


def model_priors(model: SpeechLLM, audios: Sequence[np.ndarray], audio: AudioContext,
                 options: TranscribeOptions) -> list[str]:
    """The model's own prior transcripts for prior-guided decoding: its CTC head's greedy output
    (dLLM-ASR's ASR prior) or, without one, its AR decoder's greedy output."""
    if audio.ctc_log_probs is not None:
        return ctc_greedy_decode(audio.ctc_log_probs, audio.encoder_lengths)
    if model.supports_ar:
        max_new = int(block_lengths(model, audios, options).max())
        rows = model.generate_ar(audios, max_new, audio=audio, initial_prompt=options.initial_prompt)
        return [model.tokenizer.decode(row) for row in rows]
    raise ValueError("prior-guided decoding needs a prior: a model with a CTC head or an AR decoder, "
                     "or priors given with the clips")


@torch.no_grad()
def transcribe_batch(model: SpeechLLM, audios: Sequence[np.ndarray], options: TranscribeOptions = TranscribeOptions(),
                     priors: Sequence[str] | None = None) -> list[Transcript]:
    """Transcribe a batch of 16 kHz waveforms. `priors` (texts) replace the model's own prior for `prior`.

    A clip longer than the window (`options.window_seconds`, else the model's) is cut at pauses
    (`dllm_asr.segment.windows`); its windows are decoded in batches of `len(audios)` and
    their transcripts joined, one `Segment` per window. Clips the model judges silent
    (no-speech probability above `options.no_speech_threshold`, for models that have the
    signal) get an empty transcript and cost no decoding; a transcript that fills its whole block
    without an EOS is decoded again in a longer block (see `regrow`).
    """
    check_strategy(model, options.strategy)
    check_word_timestamps(model, options)
    if priors is not None:  # a prior text belongs to its whole clip: never cut
        decoded = _transcribe_windows(model, audios, options, priors)
        return [join_windows([(whole_clip_segment(audio, t), t)]) for audio, t in zip(audios, decoded)]
    seconds = window_seconds(model, options)
    pieces = ((i, *piece) for i, audio in enumerate(audios) for piece in windows([audio], seconds))
    per_clip: list[list[tuple[Segment, Transcript]]] = [[] for _ in audios]
    for i, segment, transcript in decode_windows(model, pieces, options, max(1, len(audios))):
        per_clip[i].append((segment, transcript))
    return [join_windows(clip) for clip in per_clip]


def transcribe_stream(model: SpeechLLM, blocks: Iterable[np.ndarray], options: TranscribeOptions = TranscribeOptions(),
                      batch_size: int = 8, on_segment: Callable[[Segment], None] | None = None) -> Transcript:
    """Transcribe one recording arriving as consecutive 16 kHz blocks (`dllm_asr.audio.read_blocks`):
    windows are cut as they arrive and decoded `batch_size` at a time, so memory holds one block,
    one batch of windows and the text so far, however long the recording. `on_segment` is called
    with each window's segment as soon as it is decoded."""
    check_strategy(model, options.strategy)
    check_word_timestamps(model, options)
    pieces = ((0, *piece) for piece in windows(blocks, window_seconds(model, options)))
    parts = []
    for _, segment, transcript in decode_windows(model, pieces, options, batch_size):
        parts.append((segment, transcript))
        if on_segment is not None and segment.text:
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
    """`load_model`, once per (name, device) in a process: a checkpoint rewritten since is not reread."""
    from .loading import load_model

    return load_model(path_or_name, device=device)


def window_seconds(model: SpeechLLM, options: TranscribeOptions) -> float:
    return options.window_seconds or model.config.window_seconds


def decode_windows(model: SpeechLLM, pieces: Iterable[tuple[int, int, np.ndarray, bool]], options: TranscribeOptions,
                   batch_size: int) -> Iterator[tuple[int, Segment, Transcript]]:
    """Decode (clip index, start sample, samples, whole) pieces (`dllm_asr.segment.windows`)
    `batch_size` at a time, in order; yields (clip index, the piece's segment, its transcript)."""
    pieces = iter(pieces)
    while batch := list(itertools.islice(pieces, batch_size)):
        decoded = _decode_batch(model, batch, options)
        del batch  # its audio is not needed while the caller takes the texts and the next batch is read
        release_freed_memory()  # once per batch: the batch's tensors are gone, only its texts remain
        yield from decoded


def _decode_batch(model: SpeechLLM, batch: list[tuple[int, int, np.ndarray, bool]],
                  options: TranscribeOptions) -> list[tuple[int, Segment, Transcript]]:
    """`decode_windows` for one batch of pieces: (clip index, segment, transcript) per piece.
    Nothing here outlives the call (no loop variable keeps a window's samples alive)."""
    spans = [speech_samples(piece) for _, _, piece, _ in batch]
    # A piece cut from a longer clip is decoded from its sound only: the pauses around it
    # would lengthen the block. A clip short enough to be one piece (start 0, never cut) is
    # decoded whole, as the model was trained.
    decoded = _transcribe_windows(model, [piece if whole else piece[a:b]
                                          for (_, _, piece, whole), (a, b) in zip(batch, spans)], options)
    return [(i, segment_of(start + a, b - a, transcript, start if whole else start + a), transcript)
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


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, None where there is none (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def speech_samples(piece: np.ndarray) -> tuple[int, int]:
    """`speech_span` of a piece, in samples."""
    begin, end = speech_span(piece)
    return round(begin * SAMPLE_RATE), round(end * SAMPLE_RATE)


def whole_clip_segment(audio: np.ndarray, transcript: Transcript) -> Segment:
    """The segment of a clip decoded whole: timed by its sound."""
    begin, end = speech_samples(audio)
    return segment_of(begin, end - begin, transcript, 0)


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


def shifted_word(word: Word, shift: float, segment: Segment) -> Word:
    """`word` moved `shift` seconds later and clamped into the segment's [start, end], to the ms:
    the alignment may put a first or last word a few frames into the silence around the speech."""
    def clamp(seconds: float) -> float:
        return round(min(max(seconds + shift, segment.start), segment.end), 3)

    return Word(clamp(word.start), clamp(word.end), word.text, word.probability)


def model_options(model: SpeechLLM, **changes) -> TranscribeOptions:
    """TranscribeOptions with the model's own recommended settings (`ModelConfig.decoding`), then
    `changes` on top: `transcribe_batch(model, audios, model_options(model, steps=8))`."""
    return TranscribeOptions(**{**model.config.decoding, **changes})


def join_windows(parts: list[tuple[Segment, Transcript]]) -> Transcript:
    """One clip's transcript from its windows' (segment, transcript), in order; segments
    without words are left out."""
    segments = [segment for segment, _ in parts if segment.text]
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


def clip_words(parts: list[tuple[Segment, Transcript]]) -> list[Word] | None:
    """A clip's words from its windows' segments (timed from the clip's start); None when any
    window's transcript has none (word timestamps were not asked for)."""
    if any(transcript.words is None for _, transcript in parts):
        return None
    return [word for segment, _ in parts for word in segment.words or []]


def _transcribe_windows(model: SpeechLLM, audios: Sequence[np.ndarray], options: TranscribeOptions,
                        priors: Sequence[str] | None = None) -> list[Transcript]:
    """`transcribe_batch` for clips no longer than one window. A clip under 20 ms (`MIN_SAMPLES`,
    less than the encoder can take) gets an empty transcript, as a silent one does."""
    model.eval()
    # a silent clip has no words ([]) when they are asked for
    out = [Transcript("", [], 0, 0, words=[] if options.word_timestamps else None) for _ in audios]
    heard = [i for i, clip in enumerate(audios) if len(clip) >= MIN_SAMPLES]
    if not heard:
        return out
    clips = [audios[i] for i in heard]
    audio = model.encode_audio(clips)
    probs = model.no_speech_probs(audio) if options.no_speech_threshold is not None else None
    for j, i in enumerate(heard):
        out[i].no_speech_prob = None if probs is None else float(probs[j])
    speech = [j for j in range(len(clips)) if probs is None or float(probs[j]) <= options.no_speech_threshold]
    if not speech:
        return out
    rows = torch.tensor(speech, device=audio.lengths.device)
    decoded = decode_speech(model, [clips[j] for j in speech], audio.select(rows), options,
                            None if priors is None else [priors[heard[j]] for j in speech])
    if options.word_timestamps:
        attach_words(model, [clips[j] for j in speech], audio.select(rows), decoded)
    for j, transcript in zip(speech, decoded):
        transcript.no_speech_prob = out[heard[j]].no_speech_prob
        out[heard[j]] = transcript
    return out


def decode_speech(model: SpeechLLM, audios: Sequence[np.ndarray], audio: AudioContext, options: TranscribeOptions,
                  priors: Sequence[str] | None = None) -> list[Transcript]:
    """Decode clips already encoded in `audio` with `options.strategy`."""
    if options.strategy == "ar":
        max_new = int(block_lengths(model, audios, options).max())
        rows = model.generate_ar(audios, max_new, options.num_beams, audio=audio, initial_prompt=options.initial_prompt)
        confidences = rows.confidences or [None] * len(rows)
        return [Transcript(model.tokenizer.decode(r, skip_special_tokens=True).strip(), list(r), rows.nfe, len(r),
                           truncated=len(r) >= max_new, confidences=c) for r, c in zip(rows, confidences)]
    predictor = model.mask_predictor(audio, cache=options.cache)
    if options.strategy == "prior":
        texts = list(priors) if priors is not None else model_priors(model, audios, audio, options)
        cap = max(1, model.config.max_response_tokens - options.margin)
        prior, lengths = tokenize_texts(model, texts, max_tokens=cap)
        return _texts(model, decode(predictor, prior, decode_options(model, options), lengths), options.trace)
    lengths = block_lengths(model, audios, options).to(model.device)
    init = torch.full((len(audios), int(lengths.max())), model.mask_id, dtype=torch.long, device=model.device)
    transcripts = _texts(model, decode(predictor, init, decode_options(model, options), lengths), options.trace)
    return regrow(model, audios, audio, options, transcripts, lengths)


def regrow(model: SpeechLLM, audios: Sequence[np.ndarray], audio: AudioContext, options: TranscribeOptions,
           transcripts: list[Transcript], lengths: Tensor) -> list[Transcript]:
    """Decode again, in a block twice as long (up to `max_response_tokens`), every row whose
    transcript filled its duration-sized block without an EOS: the block was too short for what
    was said. A row still full at the cap, or at a length the user set, is kept and marked
    `truncated` (the CLI warns)."""
    cap = model.config.max_response_tokens if options.length is None else 0  # a length the user set is kept
    sizes = [int(n) for n in lengths]
    grow = [i for i, t in enumerate(transcripts) if len(t.tokens) >= sizes[i] and sizes[i] < cap]
    while grow:
        size = min(cap, 2 * max(sizes[i] for i in grow))
        rows = torch.tensor(grow, device=audio.lengths.device)
        again = decode_speech(model, [audios[i] for i in grow], audio.select(rows), replace(options, length=size))
        for i, transcript in zip(grow, again):
            transcript.nfe += transcripts[i].nfe
            transcripts[i], sizes[i] = transcript, size
        grow = [i for i in grow if len(transcripts[i].tokens) >= size and size < cap]
    for i, transcript in enumerate(transcripts):
        transcript.truncated = len(transcript.tokens) >= sizes[i]
    return transcripts


@torch.no_grad()
def deliberate_batch(model: SpeechLLM, audios: Sequence[np.ndarray], priors: Sequence[str],
                     deliberation: DeliberationOptions = DeliberationOptions(),
                     options: TranscribeOptions = TranscribeOptions()) -> list[Transcript]:
    """Deliberation (Whisper-LLaDA sec. 3.3.1): re-mask a prior transcript and let the model fill it.

    deliberation.mask: "random" (ratio p at random positions), "low-confidence" (one scoring
    pass, the lowest p(prior token) masked) or "semi-ar" (C chunks fully masked and re-decoded
    left to right); `deliberation.rules` says how counts, chunks and steps are taken.
    """
    transcripts = _deliberate(model, audios, priors, deliberation, options)
    return [join_windows([(whole_clip_segment(audio, t), t)]) for audio, t in zip(audios, transcripts)]


def _deliberate(model: SpeechLLM, audios: Sequence[np.ndarray], priors: Sequence[str],
                how: DeliberationOptions, options: TranscribeOptions) -> list[Transcript]:
    check_strategy(model, "diffusion")
    check_word_timestamps(model, options)
    model.eval()
    heard = model.encode_audio(audios)
    audio = heard if how.use_audio else model.audio_free(heard)
    predictor = model.mask_predictor(audio, cache=options.cache)
    prior, lengths = tokenize_texts(model, priors)
    options = replace(options, strategy="diffusion")
    result = deliberate(predictor, prior, lengths, decode_options(model, options), how.mask, how.ratio, how.chunks,
                        how.rules)
    transcripts = _texts(model, result, options.trace)
    if options.word_timestamps:  # timed against the real audio, even when the text was decoded without it
        attach_words(model, audios, heard, transcripts)
    return transcripts


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
