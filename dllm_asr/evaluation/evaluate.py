"""Evaluation: decode a data set, score it (WER with a named normaliser) and time it (RTF).

`dllm-asr eval` writes into its output folder
    hyps.jsonl        {"id", "hyp", "ref", "nfe", "steps"} per utterance
    errors.jsonl      per-utterance alignment and error counts
    report.md         corpus WER (normaliser named), S/D/I, most frequent errors, RTF and RTFx
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dllm_asr.audio.features import SAMPLE_RATE
from dllm_asr.data.clips import AudioDataset
from dllm_asr.data.manifests import Utterance, load_dataset
from dllm_asr.evaluation.metrics import ScoreReport, rtf, score
from dllm_asr.files import remove_stale_temps, written_together
from dllm_asr.model.speech_llm import AudioContext, SpeechLLM
from dllm_asr.progress import progress
from dllm_asr.timer import Timer
from dllm_asr.training.objectives import response_loss
from dllm_asr.transcription.long_form import transcribe_batch
from dllm_asr.transcription.options import DeliberationOptions
from dllm_asr.transcription.options import TranscribeOptions
from dllm_asr.transcription.result import Transcript
from dllm_asr.transcription.strategies import deliberate_batch


@dataclass
class EvalReport:
    """Scores and costs of one strategy on one data set."""

    options: dict
    scores: ScoreReport
    hyps: dict[str, str]
    transcripts: dict[str, Transcript]
    refs: dict[str, str]
    audio_seconds: float
    decode_seconds: float
    skipped: list[str] = field(default_factory=list)
    encoder_seconds: float | None = None
    """The part of `decode_seconds` spent in the encoder (every encoder pass), None when unknown."""

    @property
    def wer(self) -> float:
        return self.scores.wer

    @property
    def rtf(self) -> float:
        return rtf(self.decode_seconds, self.audio_seconds)[0]

    @property
    def decoder_ms_per_clip(self) -> float | None:
        """Decoding time per clip without the encoder passes, in milliseconds (None when unknown)."""
        if self.encoder_seconds is None or not self.hyps:
            return None
        return 1000 * (self.decode_seconds - self.encoder_seconds) / len(self.hyps)

    @property
    def mean_nfe(self) -> float:
        return float(np.mean([t.nfe for t in self.transcripts.values()])) if self.transcripts else 0.0

    def summary(self) -> str:
        factor, speed = rtf(self.decode_seconds, self.audio_seconds)
        return (f"WER {100 * self.wer:.2f}% ({self.scores.normalizer} normaliser, "
                f"{self.scores.ref_words} words, {len(self.hyps)} utterances) | RTF {factor:.4f} "
                f"(RTFx {speed:.1f}) | mean NFE {self.mean_nfe:.1f}")

    def write(self, out_dir: str | Path) -> None:
        """Write hyps.jsonl, errors.jsonl and report.md into `out_dir`, all or none: each is
        written aside and moved in, report.md last, so a report.md always describes the
        hyps.jsonl and errors.jsonl beside it (a killed write leaves no report.md, or the old one)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        names = ("hyps.jsonl", "errors.jsonl", "report.md")
        for name in names:  # what an earlier killed write left behind
            remove_stale_temps(out / name)
        with written_together([out / name for name in names]) as (hyps, errors, report):
            with open(hyps, "w", encoding="utf-8") as handle:
                for utt_id, hyp in self.hyps.items():
                    t = self.transcripts[utt_id]
                    handle.write(json.dumps({"id": utt_id, "hyp": hyp, "ref": self.refs.get(utt_id, ""),
                                             "nfe": t.nfe, "steps": t.steps}) + "\n")
            self.scores.write_jsonl(errors)
            report.write_text(self.to_markdown(), encoding="utf-8")

    def to_markdown(self) -> str:
        """The text of report.md: options, summary, skipped clips and the scores."""
        options = ", ".join(f"{k}={v}" for k, v in self.options.items())
        skipped = f"\nSkipped (unreadable): {', '.join(self.skipped)}\n" if self.skipped else ""
        return f"# Evaluation\n\nOptions: {options}\n\n{self.summary()}\n{skipped}\n{self.scores.to_markdown()}\n"


def _batches(utterances: Sequence[Utterance], batch_size: int) -> list[list[int]]:
    """Indices grouped by similar duration (less padding), in a stable order."""
    order = sorted(range(len(utterances)), key=lambda i: (utterances[i].duration or 0.0, i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def evaluate_utterances(model: SpeechLLM, utterances: Sequence[Utterance], options: TranscribeOptions,
                        batch_size: int = 8, deliberation: DeliberationOptions | None = None,
                        normalizer: str = "whisper_english", warmup: bool = True,
                        priors_from_data: bool = False) -> EvalReport:
    """Decode and score `utterances`. `deliberation` deliberates
    each utterance's `prior` instead of decoding from scratch; `priors_from_data` feeds those
    priors to prior-guided decoding instead of the CTC head's. The first batch is decoded once
    untimed when `warmup` (allocations, kernel selection), then everything is timed."""
    dataset = AudioDataset(utterances, on_error="skip")
    hyps, transcripts, skipped = {}, {}, []
    audio_seconds, encoder_seconds, timer = 0.0, 0.0, Timer()
    batches = _batches(utterances, batch_size)
    for batch_number, indices in enumerate(progress(batches, len(batches), "decode", "batch")):
        items = [dataset[i] for i in indices]
        skipped += [utterances[i].id for i, item in zip(indices, items) if item is None]
        items = [item for item in items if item is not None]
        if not items:
            continue
        audios = [item["audio"] for item in items]
        priors = [item["prior"] for item in items]
        if (deliberation or priors_from_data) and any(p is None for p in priors):
            raise ValueError("each utterance needs a prior transcript (manifest field 'prior' or --prior)")
        run = _runner(model, audios, priors, options, deliberation, priors_from_data)
        if warmup and batch_number == 0:
            run()
        encoder_before = model.encoder_seconds
        with timer:
            results = run()
        encoder_seconds += model.encoder_seconds - encoder_before
        audio_seconds += sum(len(a) for a in audios) / SAMPLE_RATE
        for item, result in zip(items, results):
            hyps[item["id"]], transcripts[item["id"]] = result.text, result
    refs = {u.id: u.text for u in utterances if u.id not in skipped}
    return EvalReport(options=_describe(options, deliberation), scores=score(refs, hyps, normalizer), hyps=hyps,
                      transcripts=transcripts, refs=refs, audio_seconds=max(audio_seconds, 1e-9),
                      decode_seconds=timer.seconds, skipped=skipped, encoder_seconds=encoder_seconds)


def _runner(model, audios, priors, options, deliberation, priors_from_data):
    if deliberation is None:
        return lambda: transcribe_batch(model, audios, options, priors=priors if priors_from_data else None)
    return lambda: deliberate_batch(model, audios, priors, deliberation, options)


def _describe(options: TranscribeOptions, deliberation: DeliberationOptions | None) -> dict:
    described = {k: v for k, v in vars(options).items() if k != "trace"}
    if deliberation:
        described.update({f"deliberation_{k}": v for k, v in asdict(deliberation).items()})
    return described


def evaluate_model(model: SpeechLLM, data: str | Path, options: TranscribeOptions,
                   max_utterances: int | None = None, batch_size: int = 8, **kwargs) -> EvalReport:
    """Evaluate on a data set path (JSONL manifest, LibriSpeech folder or Kaldi dir)."""
    utterances = load_dataset(data, on_error="skip")
    if max_utterances:
        utterances = utterances[:max_utterances]
    return evaluate_utterances(model, utterances, options, batch_size=batch_size, **kwargs)


@torch.no_grad()
def audio_gain(model: SpeechLLM, audios: Sequence[np.ndarray], texts: Sequence[str],
               seeds: Sequence[int] = (0, 1, 2)) -> tuple[float, float]:
    """Does the decoder read the audio? Returns (matched, mismatched) mean response loss in nats.

    Each transcript is scored once with its own audio and once with its neighbour's (the batch
    rotated by one); the gap is what the audio tells the decoder beyond the prompt and the
    language prior. Early in LLM-ASR training it is ~0 (WER near 100%) while the loss already
    falls, because the decoder first learns the transcripts' language. Diffusion models are
    scored with unweighted masked-token loss over the same mask draws (`seeds`) in both
    conditions, AR models with next-token loss. Needs at least 2 utterances.
    """
    if len(texts) < 2:
        raise ValueError("audio_gain needs at least 2 utterances (it swaps their audio)")
    audio = model.encode_audio(audios)
    order = torch.roll(torch.arange(len(texts), device=audio.embeds.device), 1)
    swapped = AudioContext(audio.embeds[order], audio.lengths[order], None, audio.encoder_lengths[order])
    return _mean_loss(model, audio, texts, seeds), _mean_loss(model, swapped, texts, seeds)


def _mean_loss(model: SpeechLLM, audio: AudioContext, texts: Sequence[str], seeds: Sequence[int]) -> float:
    """`response_loss` unweighted, averaged over one mask draw per seed (AR models: no draw)."""
    if model.config.objective == "ar":
        return response_loss(model, audio, list(texts)).item()
    losses = [response_loss(model, audio, list(texts), "none",
                            generator=torch.Generator(device=model.device).manual_seed(seed)).item()
              for seed in seeds]
    return float(np.mean(losses))


def data_audio_gain(model: SpeechLLM, data: str | Path, count: int = 16) -> tuple[float, float, int]:
    """`audio_gain` on the first `count` readable clips of a data set: (matched, swapped, clips)."""
    dataset = AudioDataset(load_dataset(data, on_error="skip")[:count], on_error="skip")
    items = [item for item in (dataset[i] for i in range(len(dataset))) if item is not None]
    matched, swapped = audio_gain(model, [item["audio"] for item in items], [item["text"] for item in items])
    return matched, swapped, len(items)
