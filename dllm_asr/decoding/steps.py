"""Step schedules: how many tokens commit at each step, and which sub-block a row is in.

docs/algorithms.md 3a (tokens per step) and 3b (semi-autoregressive sub-blocks).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from dllm_asr.decoding.options import DecodeOptions


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` split into `parts` integers: total // parts each, the first total % parts one more."""
    if parts < 1:
        raise ValueError(f"split_evenly: parts must be >= 1, got {parts}")
    base, extra = divmod(total, parts)
    return [base + 1 if i < extra else base for i in range(parts)]


def num_transfer_tokens(mask_count: int, steps: int) -> list[int]:
    """Tokens to commit at each of a block's `steps` steps (docs/algorithms.md 3a).

    LLaDA's linear noise schedule commits the same expected number per step: the block's mask
    count split evenly, the first `mask_count % steps` steps taking one extra. Trailing zeros
    (more steps than masks) are steps the decoder skips without a forward pass.
    """
    return split_evenly(mask_count, steps)


def block_bounds(length: int, options: DecodeOptions) -> list[tuple[int, int]]:
    """Half-open sub-blocks [lo, hi) of a row of `length` positions, left to right (docs/algorithms.md 3b).

    num_blocks M: cut at (j * length) // M (equal blocks when M divides the length, as in LLaDA);
    block_length b: [0, b), [b, 2b), ... with a shorter last block; neither: one block.
    Empty blocks (a row shorter than M) are dropped.
    """
    if options.num_blocks is not None:
        cuts = [(j * length) // options.num_blocks for j in range(options.num_blocks + 1)]
    elif options.block_length is not None:
        cuts = list(range(0, length, options.block_length)) + [length]
    else:
        cuts = [0, length]
    return [(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo]


def steps_per_block(steps: int, num_blocks: int) -> list[int]:
    """The step budget N split over the sub-blocks (N/M each in the paper), at least one each.

    LLaDA asserts that M divides N; we split the remainder over the first blocks instead, which is
    the same schedule whenever M divides N.
    """
    if num_blocks == 0:
        return []
    return [max(1, s) for s in split_evenly(steps, num_blocks)]


@dataclass
class RowSchedule:
    """Where one row stands: its sub-blocks, the current one, and the step inside it.

    adaptive=True is threshold decoding (docs/algorithms.md 3d): a block takes as many steps as it needs.
    """

    blocks: list[tuple[int, int]]
    block_steps: list[int]
    adaptive: bool
    block: int = 0
    step: int = 0
    quota: list[int] | None = None

    @classmethod
    def for_row(cls, length: int, options: DecodeOptions) -> RowSchedule:
        blocks = block_bounds(length, options)
        return cls(blocks, steps_per_block(options.steps, len(blocks)), options.threshold is not None)

    def next_window(self, row: Tensor, mask_id: int) -> tuple[int, int, int | None] | None:
        """(lo, hi, k) for the row's next step, k None when adaptive; None once the row is done.

        A block is entered when the previous one has no mask left; its quota is computed from
        the masks it holds at that moment, as LLaDA does.
        """
        while self.block < len(self.blocks):
            lo, hi = self.blocks[self.block]
            masked = int((row[lo:hi] == mask_id).sum())
            if masked > 0 and self.adaptive:
                return lo, hi, None
            if masked > 0:
                if self.quota is None:
                    self.quota, self.step = num_transfer_tokens(masked, self.block_steps[self.block]), 0
                if self.step >= len(self.quota) or self.quota[self.step] == 0:
                    # Unreachable: the quota sums to the block's mask count and masks only decrease.
                    raise RuntimeError(f"schedule exhausted with {masked} masks left in block {lo}:{hi}")
                return lo, hi, self.quota[self.step]
            self.block, self.quota = self.block + 1, None
        return None

    def advance(self) -> None:
        """Mark the current step as taken."""
        self.step += 1
