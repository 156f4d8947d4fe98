"""Training stages and the learning-rate schedule of the papers.

Whisper-LLaDA: AdamW, weight decay 0.05, linear warmup 1e-6 -> 3e-5 over 3000 steps, cosine
decay to 1e-5. dLLM-ASR trains in two stages (adapter only, then adapter + LoRA); each stage
runs its own warmup and cosine decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

TRAINABLE_PARTS = ("adapter", "ctc_head", "lora", "encoder", "decoder")


@dataclass
class Stage:
    """One training stage."""

    name: str = "stage"
    steps: int = 1000
    """Optimiser steps in this stage."""
    train: tuple[str, ...] = ("adapter", "ctc_head", "lora")
    """Parts trained in this stage, from: adapter, ctc_head, lora, encoder, decoder (its base weights)."""

    def __post_init__(self) -> None:
        self.train = tuple(self.train)
        unknown = sorted(set(self.train) - set(TRAINABLE_PARTS))
        if unknown:
            raise ValueError(f"stage {self.name!r}: unknown trainable part(s) {unknown}; choose from {TRAINABLE_PARTS}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"stage {self.name!r}: steps must be an integer >= 1, got {self.steps!r}")


@dataclass
class LRSchedule:
    """Per-stage linear warmup then cosine decay."""

    lr: float = 3e-5
    warmup_start_lr: float = 1e-6
    min_lr: float = 1e-5
    warmup_steps: int = 3000

    def __post_init__(self) -> None:
        for key in ("lr", "warmup_start_lr", "min_lr", "warmup_steps"):
            value = getattr(self, key)
            if isinstance(value, (int, float)) and value < 0:
                raise ValueError(f"schedule.{key} must be >= 0, got {value}")


@dataclass
class StagePlan:
    stages: list[Stage] = field(default_factory=lambda: [Stage()])

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages)

    def locate(self, step: int) -> tuple[int, int]:
        """(stage index, step within that stage) for global optimiser step `step` (0-based)."""
        start = 0
        for index, stage in enumerate(self.stages):
            if step < start + stage.steps:
                return index, step - start
            start += stage.steps
        return len(self.stages) - 1, self.stages[-1].steps - 1


def learning_rate(schedule: LRSchedule, step_in_stage: int, stage_steps: int) -> float:
    """Learning rate at `step_in_stage` (0-based) of a stage of `stage_steps` steps."""
    warmup = min(schedule.warmup_steps, max(stage_steps - 1, 0))
    if step_in_stage < warmup:
        frac = step_in_stage / warmup
        return schedule.warmup_start_lr + frac * (schedule.lr - schedule.warmup_start_lr)
    decay_steps = max(stage_steps - warmup - 1, 1)
    progress = min((step_in_stage - warmup) / decay_steps, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return schedule.min_lr + cosine * (schedule.lr - schedule.min_lr)
