"""Micro-batches for training, addressed by a global index.

Micro-batch m of a run is a pure function of (seed, m): the duration-bucketed batches of each
epoch come from `DurationBatchSampler.batches_for_epoch(epoch)` and augmentation is seeded per
(epoch, utterance). Step s of a run with W processes and accumulation A uses the micro-batches
s*W*A ... s*W*A + W*A - 1, process r taking A consecutive ones, so resuming and changing the
number of processes (at a fixed global batch) never changes what is trained on.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from dllm_asr.audio.augment import Augmenter, AugmentConfig
from dllm_asr.data.clips import AudioDataset, DurationBatchSampler, collate_utterances, utterance_durations
from dllm_asr.data.manifests import load_dataset


class MicroBatchDataset(torch.utils.data.Dataset):
    """Item m -> {"audio": [...], "texts": [...], ...}: the m-th global micro-batch, loaded."""

    def __init__(self, dataset: AudioDataset, sampler: DurationBatchSampler):
        self.dataset = dataset
        self.sampler = sampler
        self._epoch_sizes: list[int] = []

    def locate(self, micro: int) -> tuple[int, int]:
        """(epoch, batch index in that epoch) of global micro-batch `micro`."""
        start, epoch = 0, 0
        while True:
            if epoch == len(self._epoch_sizes):
                self._epoch_sizes.append(len(self.sampler.batches_for_epoch(epoch)))
                if self._epoch_sizes[-1] == 0:
                    raise ValueError("the training set has no usable utterance")
            if micro < start + self._epoch_sizes[epoch]:
                return epoch, micro - start
            start += self._epoch_sizes[epoch]
            epoch += 1

    def __len__(self) -> int:  # effectively unbounded: training stops by step count
        return 2**62

    def __getitem__(self, micro: int) -> dict[str, list]:
        epoch, index = self.locate(micro)
        self.dataset.set_epoch(epoch)
        indices = self.sampler.batches_for_epoch(epoch)[index]
        return collate_utterances([self.dataset[i] for i in indices])


class MicroBatchLoader:
    """This process's micro-batches, prefetched by DataLoader workers."""

    def __init__(self, cfg, dist):
        data = cfg.data
        utterances = load_dataset(data.train, on_error=data.on_error)
        durations = utterance_durations(utterances, on_error=data.on_error)
        # Each duration bucket should hold at least a full batch, or small sets train on tiny batches.
        buckets = max(1, min(10, len(utterances) // (2 * data.max_batch_size)))
        sampler = DurationBatchSampler(durations, max_batch_seconds=data.max_batch_seconds,
                                       max_batch_size=data.max_batch_size, num_buckets=buckets, seed=cfg.seed)
        augment = Augmenter(AugmentConfig(**data.augment)) if data.augment else None
        dataset = AudioDataset(utterances, on_error=data.on_error, augment=augment, seed=cfg.seed)
        self.micro_batches = MicroBatchDataset(dataset, sampler)
        self.accum = cfg.grad_accum
        self.world, self.rank = dist.world_size, dist.rank
        self.num_workers = data.num_workers
        self._iterator: Iterator | None = None
        self._next_micro = -1

    def micro_indices(self, step: int) -> list[int]:
        first = (step * self.world + self.rank) * self.accum
        return list(range(first, first + self.accum))

    def _stream(self, start: int) -> Iterator:
        indices = (start + k + (k // self.accum) * (self.world - 1) * self.accum for k in range(2**62))
        loader = torch.utils.data.DataLoader(self.micro_batches, batch_size=None, sampler=indices,
                                             num_workers=self.num_workers, collate_fn=lambda x: x)
        return iter(loader)

    def load(self, micro: int) -> tuple[list[np.ndarray], list[str]]:
        """Waveforms and transcripts of global micro-batch `micro` (requested in increasing order)."""
        if self._iterator is None or micro != self._next_micro:
            self._iterator = self._stream(micro)
        batch = next(self._iterator)
        self._next_micro = micro + 1 if (micro + 1) % self.accum else micro + 1 + (self.world - 1) * self.accum
        return batch["audio"], batch["texts"]
