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


class FileProgress:
    """Files done and audio seconds transcribed per second of wall time, on stderr: a tqdm bar on
    a terminal (from two files on), else about `lines` plain lines ('transcribe: 40/200 files,
    812.5 s of audio, 31.2 audio s/s, 26 s') once there are more files than `lines`."""

    def __init__(self, total: int, desc: str = "transcribe", lines: int = 10) -> None:
        self.total, self.desc, self.lines, self.done, self.audio_seconds = total, desc, lines, 0, 0.0
        self.every = max(1, -(-total // max(lines, 1)))
        self.started = time.perf_counter()
        self.bar = tqdm(total=total, desc=desc, unit="file") if total > 1 and sys.stderr.isatty() else None

    def update(self, audio_seconds: float) -> None:
        """One more file done, `audio_seconds` long."""
        self.done += 1
        self.audio_seconds += audio_seconds
        speed = self.audio_seconds / max(time.perf_counter() - self.started, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{speed:.1f} audio s/s", refresh=False)
            self.bar.update(1)
        elif self.total > self.lines and (self.done % self.every == 0 or self.done == self.total):
            print(f"{self.desc}: {self.done}/{self.total} files, {self.audio_seconds:.1f} s of audio, "
                  f"{speed:.1f} audio s/s, {time.perf_counter() - self.started:.0f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
