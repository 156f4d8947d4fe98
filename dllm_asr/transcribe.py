"""Inference: audio -> text with any decoding strategy of the two papers.

`transcribe_batch` binds a batch's audio into a mask predictor and hands it to
`dllm_asr.decoding.decode`; `deliberate_batch` re-masks a prior transcript and lets the model
fill it in; `transcribe_files` adds file loading that skips (and reports) unreadable clips.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .audio import AudioError, SAMPLE_RATE, load_audio
from .decoding import DecodeOptions, decode, deliberate_semi_ar, mask_low_confidence, mask_random, pack_priors
from .encoders import ctc_greedy_decode
from .model import AudioContext, SpeechLLM
from .options import MASKINGS, TranscribeOptions
from .progress import progress
from .segment import split_at_pauses


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
    """The windows a long clip was cut into (`dllm_asr.segment`), in order; None: decoded whole."""


@dataclass
class Segment:
    """One window of a long clip: its start and end in seconds and its transcript."""

    start: float
    end: float
    text: str


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
                remasking=options.remasking, seed=options.seed, trace=options.trace)
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
    for row, tokens in enumerate(result.sequences()):
        text = model.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        trace = [step[row].tolist() for step in result.trace] if traces and result.trace else None
        out.append(Transcript(text, tokens, int(result.nfe[row]), int(result.steps[row]), trace))
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


def model_priors(model: SpeechLLM, audios: Sequence[np.ndarray], audio: AudioContext,
                 options: TranscribeOptions) -> list[str]:
    """The model's own prior transcripts for prior-guided decoding: its CTC head's greedy output
    (dLLM-ASR's ASR prior) or, without one, its AR decoder's greedy output."""
    if audio.ctc_log_probs is not None:
        return ctc_greedy_decode(audio.ctc_log_probs, audio.encoder_lengths)
    if model.supports_ar:
        max_new = int(block_lengths(model, audios, options).max())
        return [model.tokenizer.decode(row) for row in model.generate_ar(audios, max_new, audio=audio)]
    raise ValueError("prior-guided decoding needs a prior: a model with a CTC head or an AR decoder, "
                     "or priors given with the clips")


@torch.no_grad()
def transcribe_batch(model: SpeechLLM, audios: Sequence[np.ndarray], options: TranscribeOptions = TranscribeOptions(),
                     priors: Sequence[str] | None = None) -> list[Transcript]:
    """Transcribe a batch of 16 kHz waveforms. `priors` (texts) replace the model's own prior for `prior`.

    A clip longer than the window (`options.window_seconds`, else the model's) is cut at pauses
    (`dllm_asr.segment.split_at_pauses`); its windows are decoded in batches of `len(audios)` and
    their transcripts joined, with the windows in `Transcript.segments`. Clips the model judges
    silent (no-speech probability above `options.no_speech_threshold`, for models that have the
    signal) get an empty transcript and cost no decoding; a transcript that fills its whole block
    without an EOS is decoded again in a longer block (see `regrow`).
    """
    check_strategy(model, options.strategy)
    seconds = options.window_seconds or model.config.window_seconds
    windows = [[(0, len(a))] if priors is not None else split_at_pauses(a, seconds) for a in audios]
    if all(len(w) == 1 for w in windows):  # a prior text belongs to its whole clip: never cut
        return _transcribe_windows(model, audios, options, priors)
    pieces = [(i, start, end) for i, clip in enumerate(windows) for start, end in clip]
    decoded = []
    for first in range(0, len(pieces), len(audios)):
        batch = pieces[first: first + len(audios)]
        decoded += _transcribe_windows(model, [audios[i][start:end] for i, start, end in batch], options)
    per_clip: list[list[tuple[int, int, Transcript]]] = [[] for _ in audios]
    for (i, start, end), transcript in zip(pieces, decoded):
        per_clip[i].append((start, end, transcript))
    return [join_windows(clip) for clip in per_clip]


def model_options(model: SpeechLLM, **changes) -> TranscribeOptions:
    """TranscribeOptions with the model's own recommended settings (`ModelConfig.decoding`), then
    `changes` on top: `transcribe_batch(model, audios, model_options(model, steps=8))`."""
    return TranscribeOptions(**{**model.config.decoding, **changes})


def join_windows(windows: list[tuple[int, int, Transcript]]) -> Transcript:
    """One clip's transcript from its windows' [(start sample, end sample, transcript)], in order."""
    if len(windows) == 1:
        return windows[0][2]
    parts = [t for _, _, t in windows]
    no_speech = [t.no_speech_prob for t in parts if t.no_speech_prob is not None]
    return Transcript(text=" ".join(t.text for t in parts if t.text), tokens=[tok for t in parts for tok in t.tokens],
                      nfe=sum(t.nfe for t in parts), steps=sum(t.steps for t in parts),
                      no_speech_prob=min(no_speech) if no_speech else None,
                      truncated=any(t.truncated for t in parts),
                      segments=[Segment(s / SAMPLE_RATE, e / SAMPLE_RATE, t.text) for s, e, t in windows])


def _transcribe_windows(model: SpeechLLM, audios: Sequence[np.ndarray], options: TranscribeOptions,
                        priors: Sequence[str] | None = None) -> list[Transcript]:
    """`transcribe_batch` for clips no longer than one window."""
    model.eval()
    audio = model.encode_audio(audios)
    probs = model.no_speech_probs(audio) if options.no_speech_threshold is not None else None
    out = [Transcript("", [], 0, 0, no_speech_prob=None if probs is None else float(probs[i])) for i in range(len(audios))]
    speech = [i for i in range(len(audios)) if probs is None or float(probs[i]) <= options.no_speech_threshold]
    if not speech:
        return out
    rows = torch.tensor(speech, device=audio.lengths.device)
    decoded = decode_speech(model, [audios[i] for i in speech], audio.select(rows), options,
                            None if priors is None else [priors[i] for i in speech])
    for i, transcript in zip(speech, decoded):
        transcript.no_speech_prob = out[i].no_speech_prob
        out[i] = transcript
    return out


def decode_speech(model: SpeechLLM, audios: Sequence[np.ndarray], audio: AudioContext, options: TranscribeOptions,
                  priors: Sequence[str] | None = None) -> list[Transcript]:
    """Decode clips already encoded in `audio` with `options.strategy`."""
    if options.strategy == "ar":
        max_new = int(block_lengths(model, audios, options).max())
        rows = model.generate_ar(audios, max_new, options.num_beams, audio=audio)
        return [Transcript(model.tokenizer.decode(r, skip_special_tokens=True).strip(), list(r), rows.nfe, len(r),
                           truncated=len(r) >= max_new) for r in rows]
    predictor = model.mask_predictor(audio, prefix_cache=options.prefix_cache)
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
def deliberate_batch(model: SpeechLLM, audios: Sequence[np.ndarray], priors: Sequence[str], mask: str = "semi-ar",
                     ratio: float = 0.3, chunks: int = 2, use_audio: bool = True,
                     options: TranscribeOptions = TranscribeOptions()) -> list[Transcript]:
    """Deliberation (Whisper-LLaDA sec. 3.3.1): re-mask a prior transcript and let the model fill it.

    mask: "random" (ratio p at random positions), "low-confidence" (one scoring pass, the lowest
    p(prior token) masked) or "semi-ar" (C chunks fully masked and re-decoded left to right).
    use_audio=False conditions on the prompt alone (the paper's text-only control).
    """
    if mask not in MASKINGS:
        raise ValueError(f"--mask must be one of {', '.join(MASKINGS)}, got {mask!r}")
    check_strategy(model, "diffusion")
    model.eval()
    audio = model.encode_audio(audios)
    if not use_audio:
        audio = model.audio_free(audio)
    predictor = model.mask_predictor(audio, prefix_cache=options.prefix_cache)
    prior, lengths = tokenize_texts(model, priors)
    options = replace(options, strategy="diffusion")
    if mask == "semi-ar":
        chunk_size = -(-int(lengths.max()) // chunks)
        steps = max(1, min(options.steps, chunk_size))
        result = deliberate_semi_ar(predictor, prior, lengths, chunks, decode_options(model, options, steps=steps))
        return _texts(model, result, options.trace)
    if mask == "random":
        init = mask_random(prior, lengths, ratio, model.mask_id, seed=options.seed)
    else:
        neutral = model.eos_id
        init, _ = mask_low_confidence(predictor, prior, lengths, ratio, model.mask_id, neutral)
    masked = int((init == model.mask_id).sum(dim=1).max())
    steps = max(1, min(options.steps, masked))
    result = decode(predictor, init, decode_options(model, options, steps=steps), lengths)
    return _texts(model, result, options.trace)


@dataclass
class FileResult:
    path: str
    transcript: Transcript | None
    seconds: float
    """Decoding time per clip of the file's batch."""
    error: str | None = None
    duration: float = 0.0
    """Length of the audio in seconds (0 when it could not be read)."""


def transcribe_files(model: SpeechLLM, paths: Sequence[str | Path], options: TranscribeOptions = TranscribeOptions(),
                     batch_size: int = 8, priors: Sequence[str] | None = None,
                     deliberation: dict | None = None) -> list[FileResult]:
    """Transcribe files in batches; an unreadable file gets an error entry and the rest go on.

    With `deliberation` ({mask, ratio, chunks, use_audio}: `deliberate_batch`'s options), each
    file's prior transcript `priors[i]` is deliberated instead of decoding from scratch.
    """
    results: list[FileResult] = []
    starts = range(0, len(paths), batch_size)
    for start in progress(starts, len(starts), "transcribe", f"batch of {batch_size}"):
        loaded, errors = [], {}
        for index in range(start, min(start + batch_size, len(paths))):
            try:
                loaded.append((str(paths[index]), load_audio(paths[index]), index))
            except AudioError as err:
                errors[str(paths[index])] = str(err)
        audios = [audio for _, audio, _ in loaded]
        started = time.perf_counter()
        if not loaded:
            transcripts = []
        elif deliberation is None:
            transcripts = transcribe_batch(model, audios, options)
        else:
            batch_priors = [priors[index] for _, _, index in loaded]
            transcripts = deliberate_batch(model, audios, batch_priors, options=options, **deliberation)
        per_clip = (time.perf_counter() - started) / max(len(loaded), 1)
        done = {p: FileResult(p, t, per_clip, duration=len(a) / SAMPLE_RATE)
                for (p, a, _), t in zip(loaded, transcripts)}
        for path in paths[start:start + batch_size]:
            results.append(done.get(str(path)) or FileResult(str(path), None, 0.0, errors[str(path)]))
    return results
