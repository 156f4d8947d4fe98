"""Decoding a batch of clips, each no longer than one window, with any strategy of the two papers.

`transcribe_windows` encodes the clips once, leaves out those the model judges silent, and
hands the rest to `decode_speech`: Whisper's own decoder (`ar`), or a mask predictor bound to
the batch's audio and `dllm_asr.decoding.decode` (diffusion, semi-ar, threshold, prior-guided);
a transcript that fills its block is decoded again in a longer one (`regrow`).
`deliberate_batch` re-masks a prior transcript and lets the model fill it in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from dllm_asr.audio.features import SAMPLE_RATE
from dllm_asr.audio.io import MIN_SAMPLES
from dllm_asr.decoding import DecodeOptions, decode, deliberate, pack_priors
from dllm_asr.model.speech_llm import AudioContext, SpeechLLM
from dllm_asr.transcription.options import DeliberationOptions, TranscribeOptions
from dllm_asr.transcription.result import TimedPart, Transcript, join_windows, whole_clip_segments
from dllm_asr.transcription.word_times import clip_frames, word_timestamps


def block_lengths(model: SpeechLLM, audios: Sequence[np.ndarray], options: TranscribeOptions) -> Tensor:
    """Response block length per clip: `options.length`, or ceil(seconds * tokens_per_second) + 8,
    capped at the model's `max_response_tokens` (short clips need far fewer than 128 positions)."""
    cap = model.config.max_response_tokens
    if options.length is not None:
        return torch.full((len(audios),), options.length, dtype=torch.long)
    sizes = [min(cap, math.ceil(len(a) / SAMPLE_RATE * options.tokens_per_second) + 8) for a in audios]
    return torch.tensor(sizes, dtype=torch.long)


def decode_options(model: SpeechLLM, options: TranscribeOptions, **changes) -> DecodeOptions:
    """The DecodeOptions of `options.strategy`: the shared settings, the strategy's own, then `changes`."""
    base = dict(mask_id=model.mask_id, eos_id=model.eos_id, steps=options.steps, temperature=options.temperature,
                remasking=options.remasking, seed=options.seed, trace=options.trace, numerics=options.numerics)
    base.update(STRATEGY_TABLE[options.strategy].settings(options))
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


def collapse_repeats(model: SpeechLLM, transcripts: list[Transcript]) -> None:
    """Drop, in place, every token equal to the token before it, number tokens excepted (a digit
    said twice, "5 5", is common speech; a word said twice is rare); text and confidences follow.
    (`TranscribeOptions.collapse_repeats`.)"""
    for transcript in transcripts:
        tokens = transcript.tokens
        keep = [i for i, token in enumerate(tokens)
                if i == 0 or token != tokens[i - 1] or model.tokenizer.decode([token]).strip().isdigit()]
        if len(keep) == len(tokens):
            continue
        transcript.tokens = [tokens[i] for i in keep]
        if transcript.confidences is not None:
            transcript.confidences = [transcript.confidences[i] for i in keep]
        transcript.text = model.tokenizer.decode(transcript.tokens, skip_special_tokens=True).strip()


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
    one row per transcript): one teacher-forced pass of the pretrained decoder (`dllm_asr.transcription.word_times`)."""
    frames = [clip_frames(len(clip)) for clip in audios]
    for transcript, words in zip(transcripts, word_timestamps(model, audio, [t.tokens for t in transcripts], frames)):
        transcript.words = words


def model_priors(model: SpeechLLM, audios: Sequence[np.ndarray], audio: AudioContext,
                 options: TranscribeOptions) -> list[str]:
    """The model's own prior transcripts for prior-guided decoding: its CTC head's greedy output
    (dLLM-ASR's ASR prior) or, without one, its AR decoder's greedy output."""
    ctc = model.ctc_transcripts(audio)
    if ctc is not None:
        return ctc
    if model.supports_ar:
        max_new = int(block_lengths(model, audios, options).max())
        rows = model.generate_ar(audios, max_new, audio=audio, initial_prompt=options.initial_prompt,
                                 pad_to_seconds=options.ar_pad_to_seconds, timestamps=options.ar_timestamps)
        return [model.tokenizer.decode(row) for row in rows]
    raise ValueError("prior-guided decoding needs a prior: a model with a CTC head or an AR decoder, "
                     "or priors given with the clips")


def model_options(model: SpeechLLM, **changes) -> TranscribeOptions:
    """TranscribeOptions with the model's own recommended settings (`ModelConfig.decoding`), then
    `changes` on top: `transcribe_batch(model, audios, model_options(model, steps=8))`."""
    return TranscribeOptions(**{**model.config.decoding, **changes})


def transcribe_windows(model: SpeechLLM, audios: Sequence[np.ndarray], options: TranscribeOptions,
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
    audio = model.encode_for(clips, options)
    probs = model.no_speech_probs(audio) if options.no_speech_threshold is not None else None
    for j, i in enumerate(heard):
        out[i].no_speech_prob = None if probs is None else float(probs[j])
    speech = [j for j in range(len(clips)) if probs is None or float(probs[j]) <= options.no_speech_threshold]
    if not speech:
        return out
    rows = torch.tensor(speech, device=audio.lengths.device)
    decoded = decode_speech(model, [clips[j] for j in speech], audio.select(rows), options,
                            None if priors is None else [priors[heard[j]] for j in speech])
    if options.collapse_repeats and options.strategy != "ar":
        collapse_repeats(model, decoded)
    if options.word_timestamps:
        attach_words(model, [clips[j] for j in speech], audio.select(rows), decoded)
    for j, transcript in zip(speech, decoded):
        transcript.no_speech_prob = out[heard[j]].no_speech_prob
        out[heard[j]] = transcript
    return out


def decode_speech(model: SpeechLLM, audios: Sequence[np.ndarray], audio: AudioContext, options: TranscribeOptions,
                  priors: Sequence[str] | None = None) -> list[Transcript]:
    """Decode clips already encoded in `audio` with `options.strategy` (`STRATEGY_TABLE`)."""
    return STRATEGY_TABLE[options.strategy].run(model, audios, audio, options, priors)


def _left_to_right(model: SpeechLLM, audios: Sequence[np.ndarray], audio: AudioContext,
                   options: TranscribeOptions, priors: Sequence[str] | None) -> list[Transcript]:
    """`ar`: the model's causal decoder, greedy or beam search."""
    max_new = int(block_lengths(model, audios, options).max())
    rows = model.generate_ar(audios, max_new, options.num_beams, audio=audio, initial_prompt=options.initial_prompt,
                             pad_to_seconds=options.ar_pad_to_seconds, timestamps=options.ar_timestamps)
    confidences = rows.confidences or [None] * len(rows)
    spans = rows.spans or [None] * len(rows)
    return [Transcript(model.tokenizer.decode(r, skip_special_tokens=True).strip(), list(r), rows.nfe, len(r),
                       truncated=len(r) >= max_new, confidences=c, timed=timed_parts(model, r, c, s))
            for r, c, s in zip(rows, confidences, spans)]


def timed_parts(model: SpeechLLM, tokens: list[int], confidences: list[float] | None,
                spans: list[tuple[float, float | None, int]] | None) -> list[TimedPart] | None:
    """A row's `TimedPart`s from the segments its decoder timed, (start s, end s or None, one
    past the last token) each (`GeneratedTokens.spans`); None when it timed none."""
    if spans is None:
        return None
    parts, first = [], 0
    for start, end, last in spans:
        text = model.tokenizer.decode(tokens[first:last]).strip()
        known = [p for p in (confidences or [])[first:last] if p is not None]
        if text:
            parts.append(TimedPart(start, end, text, sum(known) / len(known) if known else None))
        first = last
    return parts


def _from_prior(model: SpeechLLM, audios: Sequence[np.ndarray], audio: AudioContext,
                options: TranscribeOptions, priors: Sequence[str] | None) -> list[Transcript]:
    """`prior`: the given prior texts (or the model's own) refined by prior-guided decoding."""
    texts = list(priors) if priors is not None else model_priors(model, audios, audio, options)
    cap = max(1, model.config.max_response_tokens - options.margin)
    prior, lengths = tokenize_texts(model, texts, max_tokens=cap)
    predictor = model.mask_predictor(audio, cache=options.cache)
    return _texts(model, decode(predictor, prior, decode_options(model, options), lengths), options.trace)


def _from_masks(model: SpeechLLM, audios: Sequence[np.ndarray], audio: AudioContext,
                options: TranscribeOptions, priors: Sequence[str] | None) -> list[Transcript]:
    """`diffusion`, `semi-ar`, `threshold`: a fully masked block sized by the clip's duration."""
    lengths = block_lengths(model, audios, options).to(model.device)
    init = torch.full((len(audios), int(lengths.max())), model.mask_id, dtype=torch.long, device=model.device)
    predictor = model.mask_predictor(audio, cache=options.cache)
    transcripts = _texts(model, decode(predictor, init, decode_options(model, options), lengths), options.trace)
    return regrow(model, audios, audio, options, transcripts, lengths)


@dataclass(frozen=True)
class Strategy:
    """A decoding strategy: the DecodeOptions fields it sets from TranscribeOptions, and how it
    decodes a batch of encoded clips: run(model, audios, audio, options, priors) -> transcripts."""

    settings: Callable[[TranscribeOptions], dict]
    run: Callable[..., list[Transcript]]


STRATEGY_TABLE: dict[str, Strategy] = {
    "diffusion": Strategy(lambda o: {}, _from_masks),
    "semi-ar": Strategy(lambda o: {"num_blocks": min(o.num_blocks, o.steps)}, _from_masks),
    "threshold": Strategy(lambda o: {"threshold": o.threshold}, _from_masks),
    "prior": Strategy(lambda o: {"prior_guided": True, "margin": o.margin, "exit_threshold": o.exit_threshold,
                                 "prune": o.prune}, _from_prior),
    "ar": Strategy(lambda o: {}, _left_to_right),
}
"""Every `--strategy`, by name (the names are `transcription.options.STRATEGIES`)."""


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
    return [join_windows([(whole_clip_segments(audio, t), t)]) for audio, t in zip(audios, transcripts)]


def _deliberate(model: SpeechLLM, audios: Sequence[np.ndarray], priors: Sequence[str],
                how: DeliberationOptions, options: TranscribeOptions) -> list[Transcript]:
    check_strategy(model, "diffusion")
    check_word_timestamps(model, options)
    model.eval()
    heard = model.encode_audio(audios, options.pad_to_seconds)
    audio = heard if how.use_audio else model.audio_free(heard)
    predictor = model.mask_predictor(audio, cache=options.cache)
    prior, lengths = tokenize_texts(model, priors)
    options = replace(options, strategy="diffusion")
    result = deliberate(predictor, prior, lengths, decode_options(model, options), how.mask, how.ratio, how.chunks,
                        how.rules)
    transcripts = _texts(model, result, options.trace)
    if options.collapse_repeats:
        collapse_repeats(model, transcripts)
    if options.word_timestamps:  # timed against the real audio, even when the text was decoded without it
        attach_words(model, audios, heard, transcripts)
    return transcripts


