"""Speech datasets on disk: manifest readers and the JSONL writer (the clips themselves:
`dllm_asr.data.clips`).

Three on-disk formats become one `list[Utterance]`:

- JSONL manifests, one object per line: `{"audio", "text"}` plus optional `"id"`, `"duration"`,
  `"offset"` (seconds), `"prior"` (a first-pass transcript), `"speaker"`. Relative audio paths
  are resolved against the manifest's folder.
- The LibriSpeech layout: `root/speaker/chapter/*.flac` with `speaker-chapter.trans.txt`.
- Kaldi data directories: `wav.scp` (plain paths), `text`, and optional `segments`, `utt2spk`,
  `utt2dur`.

Every error names the file and line it comes from. Items that cannot be used are handled by a
policy, `on_error="skip"` (log one warning line and drop the item) or `"stop"` (raise).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dllm_asr.files import atomic_writer

log = logging.getLogger(__name__)

ON_ERROR = ("skip", "stop")

LoadFn = Callable[[str, int], np.ndarray]


class DataError(ValueError):
    """A dataset problem; the message is one line that names the file (and line) at fault."""


@dataclass
class Utterance:
    """One training/evaluation item.

    `offset` and `duration` (seconds) select a clip of `audio`; `duration=None` means "to the
    end of the file". `origin` is "file:line" of the manifest entry, used in error messages.
    """

    id: str
    audio: str
    text: str
    duration: float | None = None
    offset: float = 0.0
    prior: str | None = None
    speaker: str | None = None
    origin: str = ""


def check_policy(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def handle_bad_item(error: DataError, on_error: str) -> None:
    """Raise under "stop"; under "skip" log the one-line message and carry on."""
    if on_error == "stop":
        raise error
    log.warning("skipping: %s", error)


# ----------------------------------------------------------------------------- JSONL manifests


def read_jsonl_manifest(path: str | Path, on_error: str = "stop") -> list[Utterance]:
    """Read a JSONL manifest (see module docstring). A line without an `id` gets the audio
    file's stem (plus `-L<line>` if that stem is already taken)."""
    check_policy(on_error)
    path = Path(path)
    utterances: list[Utterance] = []
    seen: set[str] = set()
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            utt = _utterance_from_json(line, path.parent, where)
            if utt.id in seen:
                if _has_explicit_id(line):
                    raise DataError(f"{where}: repeated utterance id {utt.id!r}")
                utt.id = f"{utt.id}-L{lineno}"
            seen.add(utt.id)
            utterances.append(utt)
        except DataError as error:
            handle_bad_item(error, on_error)
    return utterances


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read: {error}") from None


def _has_explicit_id(line: str) -> bool:
    return "id" in json.loads(line)


def _utterance_from_json(line: str, base: Path, where: str) -> Utterance:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: invalid JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object")
    for key in ("audio", "text"):
        if not isinstance(record.get(key), str):
            raise DataError(f'{where}: missing or non-string "{key}" field')
    audio = Path(record["audio"]).expanduser()
    audio = audio if audio.is_absolute() else base / audio
    return Utterance(
        id=str(record.get("id", audio.stem)),
        audio=str(audio),
        text=record["text"],
        duration=_optional_seconds(record, "duration", where, positive=True),
        offset=_optional_seconds(record, "offset", where) or 0.0,
        prior=_optional_string(record, "prior", where),
        speaker=_optional_string(record, "speaker", where),
        origin=where,
    )


def _optional_seconds(record: dict, key: str, where: str, positive: bool = False) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f'{where}: "{key}" must be a number of seconds, got {value!r}')
    if value < 0 or (positive and value == 0):
        raise DataError(f'{where}: "{key}" must be {"positive" if positive else "non-negative"}, got {value}')
    return float(value)


def _optional_string(record: dict, key: str, where: str) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise DataError(f'{where}: "{key}" must be a string, got {value!r}')
    return value


# ----------------------------------------------------------------------------- LibriSpeech


def read_librispeech(root: str | Path, on_error: str = "stop") -> list[Utterance]:
    """Read the LibriSpeech layout under `root`: every `*.trans.txt` lists `utt-id TRANSCRIPT`
    lines, and the audio `utt-id.flac` (or `.wav`) sits beside it. Speaker = the id's first part."""
    check_policy(on_error)
    root = Path(root)
    transcript_files = sorted(root.rglob("*.trans.txt"))
    if not transcript_files:
        raise DataError(f"{root}: no *.trans.txt files "
                        "(LibriSpeech layout: speaker/chapter/speaker-chapter.trans.txt)")
    utterances = []
    for transcript_file in transcript_files:
        for lineno, line in enumerate(_read_lines(transcript_file), start=1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            audio = transcript_file.parent / f"{utt_id}.flac"
            if not audio.exists() and audio.with_suffix(".wav").exists():
                audio = audio.with_suffix(".wav")
            utterances.append(Utterance(id=utt_id, audio=str(audio), text=text.strip(),
                                        speaker=utt_id.split("-")[0], origin=f"{transcript_file}:{lineno}"))
    return utterances


# ----------------------------------------------------------------------------- Kaldi data dirs


def _read_kaldi_table(path: Path, on_error: str, allow_empty: bool = False) -> dict[str, tuple[str, str]]:
    """`key value...` lines -> {key: (value, "file:line")}."""
    table: dict[str, tuple[str, str]] = {}
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        key, _, value = line.strip().partition(" ")
        try:
            if not value.strip() and not allow_empty:
                raise DataError(f"{where}: expected '<id> <value>', got {line.strip()!r}")
            if key in table:
                raise DataError(f"{where}: repeated id {key!r}")
            table[key] = (value.strip(), where)
        except DataError as error:
            handle_bad_item(error, on_error)
    return table


def _kaldi_recordings(data_dir: Path, on_error: str) -> dict[str, tuple[str, str]]:
    recordings = {}
    for rec_id, (value, where) in _read_kaldi_table(data_dir / "wav.scp", on_error).items():
        try:
            if value.endswith("|"):
                raise DataError(f"{where}: command pipes in wav.scp are not supported; "
                                "write the audio to files and list their paths")
            audio = Path(value).expanduser()
            recordings[rec_id] = (str(audio if audio.is_absolute() else data_dir / audio), where)
        except DataError as error:
            handle_bad_item(error, on_error)
    return recordings


def _kaldi_segment(value: str, where: str) -> tuple[str, float, float | None]:
    """`rec-id start end` -> (rec-id, offset, duration); end -1 means "to the end of the file"."""
    parts = value.split()
    try:
        rec_id, start, end = parts[0], float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        raise DataError(f"{where}: expected '<utt-id> <rec-id> <start> <end>'") from None
    if end == -1:
        return rec_id, start, None
    if start < 0 or end <= start:
        raise DataError(f"{where}: segment times must satisfy 0 <= start < end, got {start} {end}")
    return rec_id, start, end - start


def read_kaldi_dir(data_dir: str | Path, on_error: str = "stop") -> list[Utterance]:
    """Read a Kaldi data directory (`wav.scp`, `text`, optional `segments`, `utt2spk`,
    `utt2dur`). Relative paths in wav.scp are resolved against the data directory."""
    check_policy(on_error)
    data_dir = Path(data_dir)
    recordings = _kaldi_recordings(data_dir, on_error)
    texts = _read_kaldi_table(data_dir / "text", on_error, allow_empty=True)
    optional = {name: _read_kaldi_table(data_dir / name, on_error) if (data_dir / name).exists() else None
                for name in ("segments", "utt2spk", "utt2dur")}
    utterances = []
    for utt_id, (text, where) in texts.items():
        try:
            utterances.append(_kaldi_utterance(utt_id, text, where, recordings, optional))
        except DataError as error:
            handle_bad_item(error, on_error)
    return utterances


def _kaldi_utterance(utt_id: str, text: str, where: str, recordings: dict,
                     optional: dict[str, dict | None]) -> Utterance:
    offset, duration = 0.0, None
    if optional["segments"] is not None:
        if utt_id not in optional["segments"]:
            raise DataError(f"{where}: utterance {utt_id!r} has no line in segments")
        rec_id, offset, duration = _kaldi_segment(*optional["segments"][utt_id])
    else:
        rec_id = utt_id
    if rec_id not in recordings:
        raise DataError(f"{where}: recording {rec_id!r} of utterance {utt_id!r} is not in wav.scp")
    if duration is None and optional["utt2dur"] and utt_id in optional["utt2dur"]:
        value, dur_where = optional["utt2dur"][utt_id]
        duration = _optional_seconds({"duration": _to_float(value, dur_where)}, "duration", dur_where, True)
    speaker = optional["utt2spk"][utt_id][0] if optional["utt2spk"] and utt_id in optional["utt2spk"] else None
    return Utterance(id=utt_id, audio=recordings[rec_id][0], text=text, duration=duration,
                     offset=offset, speaker=speaker, origin=where)


def _to_float(value: str, where: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{where}: expected a number, got {value!r}") from None


# ----------------------------------------------------------------------------- format detection


def load_dataset(path: str | Path, on_error: str = "stop") -> list[Utterance]:
    """Read a dataset, choosing the reader by what is at `path`: a JSONL manifest file, a Kaldi
    data dir (has `wav.scp`), or a LibriSpeech-style folder (has `*.trans.txt` below it)."""
    path = Path(path)
    if path.is_file():
        if path.name in ("wav.scp", "text"):
            return read_kaldi_dir(path.parent, on_error)
        return read_jsonl_manifest(path, on_error)
    if path.is_dir():
        if (path / "wav.scp").exists():
            return read_kaldi_dir(path, on_error)
        if next(path.rglob("*.trans.txt"), None) is not None:
            return read_librispeech(path, on_error)
        raise DataError(f"{path}: cannot tell the dataset format: expected a JSONL manifest, a Kaldi "
                        "data dir (wav.scp + text) or a LibriSpeech folder (*.trans.txt)")
    raise DataError(f"{path}: no such file or directory")


def write_jsonl_manifest(utterances: Sequence[Utterance], path: str | Path) -> None:
    """Write utterances as a JSONL manifest (absolute audio paths; unset fields left out), whole
    or not at all (`files.atomic_writer`)."""
    with atomic_writer(path) as out:
        for utt in utterances:
            record = {"id": utt.id, "audio": str(Path(utt.audio).resolve()), "text": utt.text,
                      "duration": utt.duration, "offset": utt.offset or None, "prior": utt.prior,
                      "speaker": utt.speaker}
            out.write(json.dumps({k: v for k, v in record.items() if v is not None}, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- audio loading


# ----------------------------------------------------------------------------- Dataset


# ----------------------------------------------------------------------------- batching


# ----------------------------------------------------------------------------- augmentation


