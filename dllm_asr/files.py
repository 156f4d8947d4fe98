"""Result files written whole or not at all.

Each file is written to a hidden temporary file beside it (`.<name>.<random>.tmp`, same folder,
so the final rename never crosses file systems) and renamed into place only once complete: a
process killed mid-write leaves the previous file, or none, never half of one. This guards
against kills and exceptions, not power loss (nothing is fsynced: a corpus has thousands of
files and a synced write each would cost more than the whole guarantee is worth here).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Sequence


def _temp_beside(path: Path) -> Path:
    """A new empty file in `path`'s folder that no other writer will pick."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def give_normal_mode(path: Path) -> None:
    """mkstemp and safetensors create files owner-only (0600): give the mode any new file gets
    under this umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _commit(temp: Path, path: Path) -> None:
    """Move a finished temporary file into place (one atomic rename)."""
    give_normal_mode(temp)
    os.replace(temp, path)


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Delete the temporary files that killed writers of `path` left beside it."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


@contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8",
                  newline: str | None = None) -> Iterator[IO]:
    """Yield an open handle on a temporary file beside `path` that replaces `path` once the
    block ends; an exception (or a kill) in the block leaves `path` as it was.

    `mode` is "w" (text, in `encoding`) or "wb" (bytes)."""
    path = Path(path)
    temp = _temp_beside(path)
    try:
        binary = "b" in mode
        with open(temp, mode, encoding=None if binary else encoding, newline=None if binary else newline) as handle:
            yield handle
        _commit(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """`Path(path).write_text(text)`, but whole or not at all."""
    with atomic_writer(path, "w", encoding=encoding) as handle:
        handle.write(text)


@contextmanager
def written_together(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Yield one temporary path per target, to be written by the block; then move them all into
    place, the last target last: it vouches for the others.

    Before anything is moved, every target (the last first) is deleted, so the folder never mixes
    files of two runs, and the last target exists only once all the others do. A kill while the
    block writes leaves the previous files untouched; a kill while they are moved leaves some of
    the new files but not the last. An exception in the block deletes the temporary files."""
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for target in targets:
            temps.append(_temp_beside(target))
        yield temps
        for target in reversed(targets):
            target.unlink(missing_ok=True)
        for temp, target in zip(temps, targets):
            _commit(temp, target)
    finally:  # after an exception: the temporary files not moved (none remain after success)
        for temp in temps:
            temp.unlink(missing_ok=True)
