"""A wall-clock timer that counts GPU work too; the model times its encoder with it and the
benchmarks time everything else."""

from __future__ import annotations

import time


def _synchronize_cuda() -> None:
    # Kernels run asynchronously; without a sync the clock stops before the GPU has finished.
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Timer:
    """Wall-clock timer for `with Timer() as t: ...`; `t.seconds` is the elapsed time.

    Synchronises CUDA on entry and exit (when CUDA is in use) so GPU work is counted.
    Re-entering accumulates, so one Timer can sum several timed sections.
    """

    def __init__(self, synchronize: bool = True) -> None:
        self.synchronize = synchronize
        self.seconds = 0.0
        self._start: float | None = None

    def __enter__(self) -> "Timer":
        if self.synchronize:
            _synchronize_cuda()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.synchronize:
            _synchronize_cuda()
        self.seconds += time.perf_counter() - self._start
        self._start = None
