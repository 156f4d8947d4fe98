"""Progress for long loops: a tqdm bar on a terminal, a few plain lines in a log file (a bar
redrawn into a file by nohup or a cluster job is megabytes of noise)."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], total: int, desc: str, unit: str = "it", lines: int = 10) -> Iterator[T]:
    """Yield `items` while reporting progress on stderr: a bar when stderr is a terminal, else
    about `lines` lines such as 'eval: 40/200 batch (20%), 12 s'. A loop of one item reports nothing."""
    if total <= 1:
        yield from items
        return
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, unit=unit)
        return
    every = max(1, -(-total // max(lines, 1)))
    started = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        if done % every == 0 or done == total:
            percent = f" ({100 * done // total}%)" if total else ""
            print(f"{desc}: {done}/{total} {unit}{percent}, {time.perf_counter() - started:.0f} s",
                  file=sys.stderr, flush=True)
