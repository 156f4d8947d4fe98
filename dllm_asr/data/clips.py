"""Clips of a dataset: an utterance's audio and duration, a torch Dataset with a bad-input
policy, and duration-bucketed batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import soundfile
import torch

from dllm_asr.audio.features import SAMPLE_RATE
from dllm_asr.audio.io import MIN_SAMPLES, load_audio, too_short
from dllm_asr.data.manifests import DataError, LoadFn, Utterance, check_policy, handle_bad_item


def load_clip(utt: Utterance, sample_rate: int = 16000, load_fn: LoadFn | None = None) -> np.ndarray:
    """The utterance's clip as float32 (samples,), or DataError naming its manifest line."""
    label = f"{utt.origin}: {utt.audio}" if utt.origin else utt.audio
    if not Path(utt.audio).is_file():
        raise DataError(f"{label}: audio file not found")
    try:
        wave = (load_fn or load_audio)(utt.audio, sample_rate)
    except (ValueError, OSError, RuntimeError, EOFError) as error:  # AudioError is a ValueError
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if utt.origin and utt.audio in reason:  # the loader's message already names the file
            raise DataError(f"{utt.origin}: cannot load audio: {reason}") from None
        raise DataError(f"{label}: cannot load audio: {reason}") from None
    start = int(round(utt.offset * sample_rate))
    end = len(wave) if utt.duration is None else start + int(round(utt.duration * sample_rate))
    clip = np.asarray(wave[start:end], dtype=np.float32)
    if clip.size == 0:
        raise DataError(f"{label}: empty audio (0 samples from offset {utt.offset}s; file has "
                        f"{len(wave) / sample_rate:.3f}s)")
    if clip.size * SAMPLE_RATE < MIN_SAMPLES * sample_rate:  # the encoder would fail, and its batch with it
        reason = too_short(utt.audio, round(clip.size * SAMPLE_RATE / sample_rate))
        raise DataError(f"{utt.origin}: {reason}" if utt.origin else str(reason))
    return clip


def utterance_duration(utt: Utterance, sample_rate: int = 16000, load_fn: LoadFn | None = None) -> float:
    """Clip duration in seconds: from the manifest, else the file header, else by loading it."""
    if utt.duration is not None:
        return utt.duration
    try:
        return max(0.0, soundfile.info(utt.audio).duration - utt.offset)
    except (RuntimeError, OSError, ValueError):  # not a format libsndfile reads: decode it
        return len(load_clip(utt, sample_rate, load_fn)) / sample_rate


def utterance_durations(utterances: Sequence[Utterance], sample_rate: int = 16000,
                        on_error: str = "skip", load_fn: LoadFn | None = None) -> list[float | None]:
    """Durations for a sampler; an unreadable item is None under "skip" (the sampler leaves it out)."""
    check_policy(on_error)
    durations: list[float | None] = []
    for utt in utterances:
        try:
            durations.append(utterance_duration(utt, sample_rate, load_fn))
        except DataError as error:
            handle_bad_item(error, on_error)
            durations.append(None)
    return durations


class AudioDataset(torch.utils.data.Dataset):
    """Utterances -> `{"id", "index", "audio": float32 (samples,), "text", "prior"}` items.

    An item that cannot be used (missing/corrupt file, empty clip, empty transcript, or a text
    that `validate_text` rejects) is handled by `on_error`: "skip" logs one warning line naming
    the file and manifest line and returns None (`collate_utterances` drops it), "stop" raises
    DataError with that message. `augment(wave, rng)` is applied with a generator seeded by
    (seed, epoch, index), so augmentation is reproducible whatever the worker layout.
    """

    def __init__(self, utterances: Sequence[Utterance], sample_rate: int = 16000, on_error: str = "skip",
                 augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
                 validate_text: Callable[[str], Any] | None = None, seed: int = 0,
                 load_fn: LoadFn | None = None) -> None:
        check_policy(on_error)
        self.utterances = list(utterances)
        self.sample_rate = sample_rate
        self.on_error = on_error
        self.augment = augment
        self.validate_text = validate_text
        self.seed = seed
        self.epoch = 0
        self.load_fn = load_fn

    def __len__(self) -> int:
        return len(self.utterances)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (call once per epoch)."""
        self.epoch = epoch

    def check_text(self, utt: Utterance) -> None:
        """Raise DataError if the transcript is empty or `validate_text` rejects it."""
        if not utt.text.strip():
            raise DataError(f"{utt.origin or utt.audio}: empty transcript for utterance {utt.id!r}")
        if self.validate_text is None:
            return
        try:
            accepted = self.validate_text(utt.text)
        except ValueError as error:
            raise DataError(f"{utt.origin or utt.audio}: transcript of {utt.id!r} rejected: {error}") from None
        if accepted is False:
            raise DataError(f"{utt.origin or utt.audio}: transcript of {utt.id!r} rejected by validate_text")

    def __getitem__(self, index: int) -> dict | None:
        utt = self.utterances[index]
        try:
            self.check_text(utt)
            wave = load_clip(utt, self.sample_rate, self.load_fn)
        except DataError as error:
            handle_bad_item(error, self.on_error)
            return None
        if self.augment is not None:
            wave = self.augment(wave, np.random.default_rng([self.seed, self.epoch, index]))
        return {"id": utt.id, "index": index, "audio": wave.astype(np.float32, copy=False),
                "text": utt.text, "prior": utt.prior}


def collate_utterances(items: Sequence[dict | None]) -> dict[str, list]:
    """Drop skipped (None) items and gather the rest into lists:
    `{"ids", "indices", "audio" (list of float32 (samples,)), "texts", "priors"}`.
    A batch whose items were all skipped has empty lists; a training loop should pass over it."""
    kept = [item for item in items if item is not None]
    return {"ids": [item["id"] for item in kept], "indices": [item["index"] for item in kept],
            "audio": [item["audio"] for item in kept], "texts": [item["text"] for item in kept],
            "priors": [item["prior"] for item in kept]}


class DurationBatchSampler:
    """Batches of dataset indices with similar durations, a pure function of (seed, epoch).

    Utterances are split into `num_buckets` duration quantile buckets; each epoch, the members
    of a bucket are shuffled and packed greedily so that a batch's padded length
    `len(batch) * max(duration)` stays within `max_batch_seconds` and its size within
    `max_batch_size` (an utterance longer than `max_batch_seconds` gets a batch of its own);
    then the batch order is shuffled, all from a generator seeded by (seed, epoch). With
    `shuffle=False` batches are ordered by duration (for evaluation). Indices whose duration is
    None (unreadable) are never yielded. The trainer addresses batches by (epoch, index)
    (`training.batches`), which is what makes a killed run resume exactly and spreads them over ranks.
    """

    def __init__(self, durations: Sequence[float | None], max_batch_seconds: float | None = None,
                 max_batch_size: int | None = None, num_buckets: int = 10, shuffle: bool = True,
                 seed: int = 0) -> None:
        if max_batch_seconds is None and max_batch_size is None:
            raise ValueError("DurationBatchSampler: give max_batch_seconds and/or max_batch_size")
        if (max_batch_seconds is not None and max_batch_seconds <= 0) or \
                (max_batch_size is not None and max_batch_size < 1):
            raise ValueError("DurationBatchSampler: max_batch_seconds and max_batch_size must be positive")
        if num_buckets < 1:
            raise ValueError(f"DurationBatchSampler: num_buckets must be at least 1, got {num_buckets}")
        self.durations = [None if d is None else float(d) for d in durations]
        self.max_batch_seconds, self.max_batch_size = max_batch_seconds, max_batch_size
        self.shuffle, self.seed = shuffle, seed
        self._valid = np.array([i for i, d in enumerate(self.durations) if d is not None], dtype=np.int64)
        valid_durations = np.array([self.durations[i] for i in self._valid], dtype=np.float64)
        # Bucket edges at duration quantiles, so buckets hold about as many utterances each.
        quantiles = np.linspace(0, 1, num_buckets + 1)[1:-1]
        inner_edges = np.quantile(valid_durations, quantiles) if len(self._valid) else np.zeros(0)
        bucket_ids = np.searchsorted(inner_edges, valid_durations, side="right")
        self._bucket = dict(zip(self._valid.tolist(), bucket_ids.tolist()))
        self._num_buckets = num_buckets
        self._plans: dict[int, list[list[int]]] = {}

    def _pack(self, members: Sequence[int]) -> list[list[int]]:
        batches, batch, longest = [], [], 0.0
        for i in members:
            longest_if_added = max(longest, self.durations[i])
            padded_seconds = (len(batch) + 1) * longest_if_added
            too_long = self.max_batch_seconds is not None and padded_seconds > self.max_batch_seconds
            too_many = self.max_batch_size is not None and len(batch) + 1 > self.max_batch_size
            if batch and (too_long or too_many):
                batches.append(batch)
                batch, longest_if_added = [], self.durations[i]
            batch.append(i)
            longest = longest_if_added
        return batches + ([batch] if batch else [])

    def batches_for_epoch(self, epoch: int) -> list[list[int]]:
        """All batches of `epoch`, in order (lists of dataset indices)."""
        if epoch in self._plans:
            return self._plans[epoch]
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle:
            order = rng.permutation(self._valid).tolist()
            buckets: list[list[int]] = [[] for _ in range(self._num_buckets)]
            for i in order:
                buckets[self._bucket[i]].append(i)
        else:  # stable sort: equal durations keep dataset order
            buckets = [sorted(self._valid.tolist(), key=lambda i: self.durations[i])]
        batches = [batch for members in buckets for batch in self._pack(members)]
        if self.shuffle:
            batches = [batches[k] for k in rng.permutation(len(batches))]
        # Keep two epochs: data-loading workers straddle an epoch boundary.
        self._plans = {e: plan for e, plan in self._plans.items() if e == epoch - 1}
        self._plans[epoch] = batches
        return batches
