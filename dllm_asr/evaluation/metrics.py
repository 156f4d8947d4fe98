"""Scoring: text normalisation, word error rate with an error report, and real-time factor.

Conventions (docs/algorithms.md section 5): reference and hypothesis are both passed through the
same normaliser (Whisper's English normaliser by default), words are aligned by Levenshtein
edit distance (jiwer), and the corpus WER is total edits / total reference words, not a mean of
per-utterance rates. Every report names the normaliser that produced its number.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Mapping

import jiwer

NORMALIZERS = ("whisper_english", "whisper_basic", "none")


@lru_cache(maxsize=None)
def get_normalizer(name: str) -> Callable[[str], str]:
    """Return the text normaliser called `name` (one of NORMALIZERS)."""
    if name == "whisper_english":
        from whisper_normalizer.english import EnglishTextNormalizer

        return EnglishTextNormalizer()
    if name == "whisper_basic":
        from whisper_normalizer.basic import BasicTextNormalizer

        return BasicTextNormalizer()
    if name == "none":
        return lambda text: text
    raise ValueError(f"unknown normalizer {name!r}: choose one of {', '.join(NORMALIZERS)}")


def normalize(text: str, normalizer: str = "whisper_english") -> str:
    """Normalise `text` and collapse whitespace, so that word splitting is well defined."""
    return " ".join(get_normalizer(normalizer)(text).split())


# ----------------------------------------------------------------------------- alignment


@dataclass
class UtteranceScore:
    """The alignment of one normalised reference with its hypothesis.

    `alignment` lists (op, ref_word, hyp_word) with op in {"equal", "sub", "del", "ins"};
    ref_word is None for an insertion and hyp_word is None for a deletion.
    `missing` is True when no hypothesis was given: it is scored as an empty hypothesis,
    so every reference word counts as a deletion.
    """

    id: str
    reference: str
    hypothesis: str
    alignment: list[tuple[str, str | None, str | None]]
    missing: bool = False

    @property
    def ref(self) -> str:
        """The normalised reference (same name as in the JSONL records)."""
        return self.reference

    @property
    def hyp(self) -> str:
        """The normalised hypothesis."""
        return self.hypothesis

    def _count(self, op: str) -> int:
        return sum(1 for step in self.alignment if step[0] == op)

    @property
    def ref_words(self) -> int:
        return len(self.reference.split())

    @property
    def hits(self) -> int:
        return self._count("equal")

    @property
    def substitutions(self) -> int:
        return self._count("sub")

    @property
    def deletions(self) -> int:
        return self._count("del")

    @property
    def insertions(self) -> int:
        return self._count("ins")

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        """Edits / reference words; an empty reference gives 0 if the hypothesis is empty, else inf."""
        if self.ref_words == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.ref_words

    def to_json(self) -> dict:
        return {
            "id": self.id, "ref": self.reference, "hyp": self.hypothesis, "missing": self.missing,
            "ref_words": self.ref_words, "sub": self.substitutions, "del": self.deletions,
            "ins": self.insertions, "wer": self.wer,
            "alignment": [list(step) for step in self.alignment],
        }


_JIWER_OPS = {"equal": "equal", "substitute": "sub", "delete": "del", "insert": "ins"}


def align_words(reference: str, hypothesis: str) -> list[tuple[str, str | None, str | None]]:
    """Word-level minimum-edit alignment of two (already normalised) strings, one step per word."""
    ref_words, hyp_words = reference.split(), hypothesis.split()
    if not ref_words and not hyp_words:
        return []
    output = jiwer.process_words(" ".join(ref_words), " ".join(hyp_words))
    steps: list[tuple[str, str | None, str | None]] = []
    for chunk in output.alignments[0]:
        op = _JIWER_OPS[chunk.type]
        refs = ref_words[chunk.ref_start_idx:chunk.ref_end_idx]
        hyps = hyp_words[chunk.hyp_start_idx:chunk.hyp_end_idx]
        if op == "del":
            steps.extend(("del", word, None) for word in refs)
        elif op == "ins":
            steps.extend(("ins", None, word) for word in hyps)
        else:  # equal / substitute chunks pair words one to one
            steps.extend((op, r, h) for r, h in zip(refs, hyps))
    return steps


# ----------------------------------------------------------------------------- corpus report


@dataclass
class ScoreReport:
    """Corpus scores: WER = (S + D + I) / N over all reference words N.

    `missing_ids` are reference ids without a hypothesis (scored as all deletions);
    `extra_ids` are hypothesis ids without a reference (not scored).
    """

    normalizer: str
    utterances: list[UtteranceScore]
    missing_ids: list[str] = field(default_factory=list)
    extra_ids: list[str] = field(default_factory=list)

    @property
    def ref_words(self) -> int:
        return sum(u.ref_words for u in self.utterances)

    @property
    def substitutions(self) -> int:
        return sum(u.substitutions for u in self.utterances)

    @property
    def deletions(self) -> int:
        return sum(u.deletions for u in self.utterances)

    @property
    def insertions(self) -> int:
        return sum(u.insertions for u in self.utterances)

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        if self.ref_words == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.ref_words

    @property
    def sentence_error_rate(self) -> float:
        """Fraction of utterances with at least one error."""
        if not self.utterances:
            return 0.0
        return sum(1 for u in self.utterances if u.errors) / len(self.utterances)

    def frequent_errors(self, top: int = 10) -> dict[str, list[tuple[str, int]]]:
        """The `top` most frequent substitutions ("ref -> hyp"), insertions and deletions."""
        subs, ins, dels = Counter(), Counter(), Counter()
        for utt in self.utterances:
            for op, ref, hyp in utt.alignment:
                if op == "sub":
                    subs[f"{ref} -> {hyp}"] += 1
                elif op == "ins":
                    ins[hyp] += 1
                elif op == "del":
                    dels[ref] += 1
        return {"substitutions": _most_common(subs, top), "insertions": _most_common(ins, top),
                "deletions": _most_common(dels, top)}

    def summary(self) -> str:
        """One line: the WER, its counts and the normaliser."""
        return (f"WER {100 * self.wer:.2f}% ({self.errors}/{self.ref_words}: "
                f"S={self.substitutions} D={self.deletions} I={self.insertions}) "
                f"over {len(self.utterances)} utterances, normalizer={self.normalizer}")

    def to_markdown(self, top: int = 10) -> str:
        """A Markdown report: summary, missing/extra ids, most frequent errors."""
        lines = [f"**{self.summary()}**", "",
                 f"Sentence error rate: {100 * self.sentence_error_rate:.2f}%"]
        if self.missing_ids:
            lines.append(f"Missing hypotheses ({len(self.missing_ids)}, scored as all deletions): "
                         + ", ".join(self.missing_ids[:top]) + (" ..." if len(self.missing_ids) > top else ""))
        if self.extra_ids:
            lines.append(f"Hypotheses without a reference ({len(self.extra_ids)}, not scored): "
                         + ", ".join(self.extra_ids[:top]) + (" ..." if len(self.extra_ids) > top else ""))
        for kind, items in self.frequent_errors(top).items():
            lines += ["", f"| {kind} | count |", "|---|---:|"]
            lines += [f"| {_md_escape(word)} | {count} |" for word, count in items] or ["| (none) | 0 |"]
        return "\n".join(lines)

    def to_text(self, top: int = 10) -> str:
        """A plain-text report: summary, missing/extra ids, most frequent errors."""
        lines = [self.summary(), f"sentence error rate {100 * self.sentence_error_rate:.2f}%"]
        if self.missing_ids:
            lines.append(f"missing hypotheses (scored as all deletions): {len(self.missing_ids)}")
        if self.extra_ids:
            lines.append(f"hypotheses without a reference (not scored): {len(self.extra_ids)}")
        for kind, items in self.frequent_errors(top).items():
            lines.append(f"most frequent {kind}:")
            lines += [f"  {count:6d}  {word}" for word, count in items] or ["  (none)"]
        return "\n".join(lines)

    def write_jsonl(self, path: str | Path) -> None:
        """Write one JSON object per utterance (normalised ref/hyp, counts, alignment)."""
        with open(path, "w", encoding="utf-8") as out:
            for utt in self.utterances:
                record = utt.to_json()
                record["normalizer"] = self.normalizer
                out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _most_common(counter: Counter, top: int) -> list[tuple[str, int]]:
    # Ties broken alphabetically so that reports are reproducible.
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:top]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def score(refs: Mapping[str, str], hyps: Mapping[str, str],
          normalizer: str = "whisper_english") -> ScoreReport:
    """Score hypotheses against references, both keyed by utterance id.

    Each text is normalised with `normalizer` first. A reference id with no hypothesis is scored
    against an empty hypothesis (all its words count as deletions) and listed in `missing_ids`;
    hypothesis ids with no reference are listed in `extra_ids` and not scored.
    """
    get_normalizer(normalizer)  # fail fast on an unknown name
    utterances = []
    for utt_id, ref_text in refs.items():
        missing = utt_id not in hyps
        ref = normalize(ref_text, normalizer)
        hyp = "" if missing else normalize(hyps[utt_id], normalizer)
        utterances.append(UtteranceScore(utt_id, ref, hyp, align_words(ref, hyp), missing))
    return ScoreReport(
        normalizer=normalizer,
        utterances=utterances,
        missing_ids=[u.id for u in utterances if u.missing],
        extra_ids=[utt_id for utt_id in hyps if utt_id not in refs],
    )


def score_files(ref_path: str | Path, hyp_path: str | Path,
                normalizer: str = "whisper_english") -> ScoreReport:
    """Score two transcript files (JSONL or Kaldi `text`, see `read_transcripts`)."""
    return score(read_transcripts(ref_path), read_transcripts(hyp_path), normalizer)


def word_error_rate(refs: str | Iterable[str], hyps: str | Iterable[str],
                    normalizer: str = "whisper_english") -> float:
    """Corpus WER of paired lists of strings (or of one pair of strings)."""
    refs = [refs] if isinstance(refs, str) else list(refs)
    hyps = [hyps] if isinstance(hyps, str) else list(hyps)
    if len(refs) != len(hyps):
        raise ValueError(f"word_error_rate: {len(refs)} references but {len(hyps)} hypotheses")
    keys = [str(i) for i in range(len(refs))]
    return score(dict(zip(keys, refs)), dict(zip(keys, hyps)), normalizer).wer


# ----------------------------------------------------------------------------- transcript files


def read_transcripts(path: str | Path) -> dict[str, str]:
    """Read `{id: text}` from a JSONL file (`{"id", "text"}` or `{"id", "hyp"}` per line) or a
    Kaldi `text` file (`utt-id word word ...` per line).

    JSONL is chosen when the file ends in .jsonl/.json or its first non-blank line starts with
    "{". Raises ValueError naming the file and line on a malformed line or a repeated id.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ValueError(f"{path}: cannot read transcripts: {error.strerror or error}") from None
    first = next((line.strip() for line in lines if line.strip()), "")
    as_jsonl = path.suffix in (".jsonl", ".json") or first.startswith("{")
    parse = _parse_jsonl_transcript if as_jsonl else _parse_kaldi_transcript
    transcripts: dict[str, str] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        utt_id, text = parse(line, where)
        if utt_id in transcripts:
            raise ValueError(f"{where}: repeated utterance id {utt_id!r}")
        transcripts[utt_id] = text
    return transcripts


def _parse_jsonl_transcript(line: str, where: str) -> tuple[str, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: invalid JSON ({error.msg})") from None
    if not isinstance(record, dict) or "id" not in record:
        raise ValueError(f'{where}: expected a JSON object with an "id" field')
    text = record.get("text", record.get("hyp"))
    if not isinstance(text, str):
        raise ValueError(f'{where}: expected a string "text" or "hyp" field')
    return str(record["id"]), text


def _parse_kaldi_transcript(line: str, where: str) -> tuple[str, str]:
    parts = line.strip().split(maxsplit=1)
    if parts[0].startswith("{"):
        raise ValueError(f"{where}: looks like JSON in a Kaldi text file")
    return parts[0], parts[1] if len(parts) > 1 else ""


# ----------------------------------------------------------------------------- real-time factor


def rtf(processing_seconds: float, audio_seconds: float) -> tuple[float, float]:
    """Real-time factor = processing / audio seconds, and RTFx = 1 / RTF (x faster than real time)."""
    if audio_seconds <= 0:
        raise ValueError(f"rtf: audio_seconds must be positive, got {audio_seconds}")
    if processing_seconds < 0:
        raise ValueError(f"rtf: processing_seconds must be non-negative, got {processing_seconds}")
    factor = processing_seconds / audio_seconds
    return factor, (1.0 / factor if factor > 0 else float("inf"))
