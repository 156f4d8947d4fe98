"""faster-whisper (CTranslate2) as a reference row of `dllm-asr bench`: the same Whisper checkpoint
that the default model is built on, decoded by the tool a CPU user would otherwise pick, on the
same waveforms, timed the same way (waveform in, text out; file decoding excluded for both).

faster-whisper is an optional dependency (the `dev` extra installs it); it is run with its
defaults for short-form transcription (greedy, temperature fallback on compression ratio and
log-probability, no-speech detection) and without timestamps or VAD.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from dllm_asr.audio.features import SAMPLE_RATE
from dllm_asr.data.clips import AudioDataset
from dllm_asr.data.manifests import Utterance
from dllm_asr.evaluation.metrics import score
from dllm_asr.timer import Timer
from dllm_asr.transcription.result import Transcript


@dataclass(frozen=True)
class FasterWhisperOptions:
    """How to run the reference. `model` is a packaged name or a CTranslate2 directory."""

    model: str = "whisper-tiny.en"
    compute_type: str = "int8"
    beam_size: int = 1
    threads: int = 0
    """CPU threads (0 = CTranslate2's default)."""


def load_faster_whisper(options: FasterWhisperOptions):
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        raise ValueError("the faster-whisper reference needs the faster-whisper package "
                         "(pip install faster-whisper)") from None
    from pathlib import Path

    from dllm_asr.model.encoders import SHORT_NAMES, resolve_short_name

    path = resolve_short_name(options.model) if options.model in SHORT_NAMES else Path(options.model)
    return WhisperModel(str(path), device="cpu", compute_type=options.compute_type, cpu_threads=options.threads)


def faster_whisper_transcribe(model, audio: np.ndarray, options: FasterWhisperOptions) -> Transcript:
    """One 16 kHz waveform -> Transcript (nfe: decoder steps, i.e. tokens + 1 per segment)."""
    segments, _ = model.transcribe(audio, beam_size=options.beam_size, without_timestamps=True,
                                   condition_on_previous_text=False, vad_filter=False, language="en")
    segments = list(segments)
    tokens = [t for s in segments for t in s.tokens]
    text = " ".join(s.text.strip() for s in segments).strip()
    return Transcript(text, tokens, nfe=len(tokens) + len(segments), steps=len(tokens))


def evaluate_faster_whisper(utterances: Sequence[Utterance], options: FasterWhisperOptions = FasterWhisperOptions(),
                            normalizer: str = "whisper_english", warmup: bool = True):
    """Decode and score `utterances` with faster-whisper; an `EvalReport` like `evaluate_utterances`'."""
    from dllm_asr.evaluation.evaluate import EvalReport

    model = load_faster_whisper(options)
    dataset = AudioDataset(utterances, on_error="skip")
    hyps, transcripts, skipped = {}, {}, []
    audio_seconds, timer = 0.0, Timer()
    for index, utterance in enumerate(utterances):
        item = dataset[index]
        if item is None:
            skipped.append(utterance.id)
            continue
        if warmup and not transcripts:
            faster_whisper_transcribe(model, item["audio"], options)
        with timer:
            result = faster_whisper_transcribe(model, item["audio"], options)
        audio_seconds += len(item["audio"]) / SAMPLE_RATE
        hyps[item["id"]], transcripts[item["id"]] = result.text, result
    refs = {u.id: u.text for u in utterances if u.id not in skipped}
    described = {"reference": "faster-whisper", **vars(options)}
    return EvalReport(options=described, scores=score(refs, hyps, normalizer), hyps=hyps, transcripts=transcripts,
                      refs=refs, audio_seconds=max(audio_seconds, 1e-9), decode_seconds=timer.seconds,
                      skipped=skipped)
