"""Text for the synthetic corpus: English prose from Debian packages (fortunes, the King James
Bible, WordNet glosses, GCIDE) cut into sentences a speech synthesiser reads as written, and, on
request, short utterances of one or two words (`words`: WordNet's common lemmas).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple


from dllm_asr.tools.textnorm import normalize_sentence, split_sentences


TEXT_SOURCES = ("fortunes", "bible", "wordnet", "gcide")
"""The default sources: prose, cut into sentences of 3 to 25 words."""
OPTIONAL_SOURCES = ("words",)
"""Sources used only when named: `words`, one- and two-word utterances (a word, a name, a command:
what the prose sentences never hold, and what a decoder trained on them mis-sizes)."""


FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
GCIDE_FILE = Path("/usr/share/dictd/gcide.dict.dz")
# Fortune files that are not prose (pictures, code, other languages).
_SKIPPED_FORTUNE_FILES = {"ascii-art", "translate-me", "perl", "linux", "computers", "debian"}


def _read_fortunes(directory: Path = FORTUNES_DIR) -> Iterator[str]:
    """Yield the prose of each fortune, attribution lines ("-- Author") removed."""
    for path in sorted(directory.glob("*")):
        if path.suffix or path.is_symlink() or path.name in _SKIPPED_FORTUNE_FILES:
            continue
        for fortune in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            lines = [ln for ln in fortune.splitlines() if not ln.strip().startswith("--")]
            yield " ".join(lines)


def _read_bible() -> Iterator[str]:
    """Yield each chapter of the King James Bible (via the `bible` program of bible-kjv)."""
    result = subprocess.run(["bible", "Gen1:1-Rev22:21"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, check=True)
    for chapter in re.split(r"\n\s*\n", result.stdout):
        lines = [ln for ln in chapter.splitlines() if not re.fullmatch(r"\S.* \d+", ln)]
        yield re.sub(r"(?m)^\s*\d+\s", " ", "\n".join(lines))


def _read_wordnet(directory: Path = WORDNET_DIR) -> Iterator[str]:
    """Yield WordNet usage examples (the quoted phrases of the glosses) as sentences."""
    for part in ("noun", "verb", "adj", "adv"):
        with open(directory / f"data.{part}", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(" ") or " | " not in line:
                    continue  # licence header
                for example in re.findall(r'"([^"]+)"', line.split(" | ", 1)[1]):
                    example = example.strip()
                    if example[-1:] not in ".?!":
                        example += "."
                    yield example[:1].upper() + example[1:]


def _read_words(directory: Path = WORDNET_DIR, min_tagged_senses: int = 1) -> Iterator[str]:
    """Yield WordNet lemmas of one or two plain words ("Chair.", "Go away.") that occur in its
    sense-tagged corpus at least `min_tagged_senses` times (about 20,000 common ones of ~150,000)."""
    for part in ("noun", "verb", "adj", "adv"):
        with open(directory / f"index.{part}", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if line.startswith(" ") or len(fields) < 6 or not re.fullmatch(r"[a-z]{3,}|[a-z]{2,}_[a-z]{2,}", fields[0]):
                    continue  # licence header; a letter or abbreviation; digits, hyphens or three words
                pointers = int(fields[3])
                if int(fields[5 + pointers]) >= min_tagged_senses:
                    words = fields[0].replace("_", " ")
                    yield words[:1].upper() + words[1:] + "."


def _read_gcide(path: Path = GCIDE_FILE) -> Iterator[str]:
    """Yield the literary quotations of the 1913 Webster (indented blocks, '--Author' removed)."""
    block: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            indent = len(line) - len(line.lstrip(" "))
            if 9 <= indent < 40 and line.strip():
                block.append(re.sub(r"\s(?:\s+|)--\s?[A-Z].*$", "", line.strip()))
                continue
            if indent >= 40 and line.strip():
                continue  # right-aligned continuation of an attribution
            if block:
                yield " ".join(block)
                block = []
    if block:
        yield " ".join(block)


class TextSource(NamedTuple):
    """A named source: its reader, whether it is installed, the Debian package that installs it,
    and the words a kept sentence may have (least, most)."""

    read: Callable[[], Iterator[str]]
    installed: Callable[[], bool]
    package: str
    words: tuple[int, int] = (3, 25)


_SOURCES = {
    "fortunes": TextSource(_read_fortunes, lambda: FORTUNES_DIR.is_dir(), "fortunes"),
    "bible": TextSource(_read_bible, lambda: shutil.which("bible") is not None, "bible-kjv"),
    "wordnet": TextSource(_read_wordnet, lambda: (WORDNET_DIR / "data.noun").is_file(), "wordnet-base"),
    "gcide": TextSource(_read_gcide, lambda: GCIDE_FILE.is_file(), "dict-gcide"),
    "words": TextSource(_read_words, lambda: (WORDNET_DIR / "index.noun").is_file(), "wordnet-base", (1, 2)),
}


def sentences_from_passages(passages: Iterable[str], min_words: int = 3, max_words: int = 25) -> list[str]:
    """Split passages into sentences and keep the TTS-safe ones of `min_words`..`max_words` words,
    deduplicated, in first-seen order."""
    seen: set[str] = set()
    kept: list[str] = []
    for passage in passages:
        for sentence in split_sentences(passage):
            clean = normalize_sentence(sentence, min_words, max_words)
            if clean is not None and _dedupe_key(clean) not in seen:
                seen.add(_dedupe_key(clean))
                kept.append(clean)
    return kept


def _dedupe_key(sentence: str) -> str:
    """Sentences with the same words (ignoring case and punctuation) count as one."""
    return " ".join(re.sub(r"[^a-z' ]", " ", sentence.lower()).split())


def _sentences_of(source: str) -> list[str]:
    """Clean sentences of one named source or one plain-text file (paragraphs = blank-line blocks)."""
    if source in _SOURCES:
        return sentences_from_passages(_SOURCES[source].read(), *_SOURCES[source].words)
    return sentences_from_passages(Path(source).read_text(errors="replace").split("\n\n"))


def load_sentences(sources: Sequence[str] = TEXT_SOURCES, text_files: Sequence[str | os.PathLike] = (),
                   jobs: int = 1) -> dict[str, list[str]]:
    """Clean sentences per source: Debian corpora by name plus any plain-text files of prose.

    A named source whose Debian package is not installed raises ValueError naming the package.
    Sentences are deduplicated across sources (the first source keeps a shared sentence).
    `jobs` > 1 reads the sources in parallel processes; the result does not depend on it.
    """
    for source in sources:
        if source not in _SOURCES:
            raise ValueError(f"unknown text source {source!r}; choose from "
                             f"{', '.join(TEXT_SOURCES + OPTIONAL_SOURCES)}")
        if not _SOURCES[source].installed():
            raise ValueError(f"text source {source!r} needs `apt-get install {_SOURCES[source].package}`")
    for text_file in text_files:
        if not Path(text_file).is_file():
            raise ValueError(f"text file {text_file} does not exist")
    names = list(sources) + [str(p) for p in text_files]
    if jobs > 1 and len(names) > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, len(names)), mp_context=get_context("spawn")) as pool:
            lists = list(pool.map(_sentences_of, names))
    else:
        lists = [_sentences_of(name) for name in names]
    seen: set[str] = set()
    by_source: dict[str, list[str]] = {}
    for name, sentences in zip(names, lists):
        by_source[name] = []
        for sentence in sentences:
            if _dedupe_key(sentence) not in seen:
                seen.add(_dedupe_key(sentence))
                by_source[name].append(sentence)
    return by_source
