"""Audio in: any file (or standard input) as 16 kHz mono float32, whole or as a stream of blocks.

libsndfile reads wav/flac/ogg/aiff/au; everything else (mp3, m4a, opus, video...) is decoded by
ffmpeg. Every failure is an `AudioError` whose one line names the file.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import soundfile

from dllm_asr.audio.features import HOP_LENGTH, SAMPLE_RATE
from dllm_asr.paths import package_file

MIN_SAMPLES = 2 * HOP_LENGTH
"""The shortest clip a model transcribes (20 ms): Whisper's encoder halves the log-mel frames, so
it needs two to give one. `read_blocks` refuses a shorter file with an AudioError naming it."""

# Extensions libsndfile reads reliably; everything else (mp3, m4a, opus, video...) goes to ffmpeg.
SOUNDFILE_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au"}


AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | {".mp3", ".m4a", ".aac", ".opus", ".wma", ".webm", ".mp4", ".mkv",
                                           ".mov", ".g722", ".gsm", ".ulaw", ".alaw"}
"""What `expand_audio_paths` takes from a directory (any format ffmpeg decodes can be named directly)."""


STDIN = "-"
"""The path that means: read the audio from standard input (any format ffmpeg reads)."""


def expand_audio_paths(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The audio files that `paths` name, in order: a file as given; a directory replaced by the
    audio files in it and its subfolders (by extension, sorted); a glob pattern (`*`, `?`, `[`,
    `**` for any depth) that is not itself a file by its matches, sorted; a `.jsonl` manifest by
    the `audio` of each line (relative paths from the manifest's folder); `-` (standard input)
    kept. A directory, pattern or manifest that names no audio file is an error naming it."""
    expanded: list[str] = []
    for path in map(Path, paths):
        if str(path) == STDIN:
            expanded.append(STDIN)
        elif path.is_dir():
            found = sorted(str(f) for f in path.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                raise ValueError(f"{path} is a directory with no audio files in it "
                                 f"({', '.join(sorted(AUDIO_EXTENSIONS))})")
            expanded += found
        elif not path.exists() and any(c in str(path) for c in "*?["):
            found = sorted(f for f in glob.glob(str(path), recursive=True) if Path(f).is_file())
            if not found:
                raise ValueError(f"{path}: no file matches this pattern")
            expanded += found
        elif path.suffix == ".jsonl" and path.is_file():
            expanded += manifest_audio(path)
        else:
            expanded.append(str(path))
    return expanded


def manifest_audio(path: Path) -> list[str]:
    """The `audio` of each line of a JSONL manifest, relative paths taken from its folder."""
    audio = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            name = Path(str(record["audio"])).expanduser()
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{path}:{lineno}: not a JSON object with an \"audio\" path") from None
        if "offset" in record:
            raise ValueError(f"{path}:{lineno}: a manifest of segments of longer files (\"offset\") is for "
                             "`dllm-asr eval`, not `transcribe`")
        audio.append(str(name if name.is_absolute() else path.parent / name))
    if not audio:
        raise ValueError(f"{path}: a manifest with no audio in it")
    return audio


class AudioError(ValueError):
    """A file could not be read as audio (missing, empty, corrupt or zero-length)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def example_audio_path() -> Path:
    """Path of the bundled example clip (16 kHz mono, ~3.8 s, flite voice ``slt``)."""
    return package_file("assets", "example.wav")


def example_transcript() -> str:
    """The transcript of :func:`example_audio_path`."""
    return package_file("assets", "example.txt").read_text().strip()


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as mono float32 at ``sample_rate``.

    wav/flac/ogg are read with soundfile; anything else (mp3, m4a, ...) and files soundfile
    rejects are decoded by an ``ffmpeg`` subprocess. Channels are averaged; other sample rates
    are converted with a band-limited polyphase resampler (``scipy.signal.resample_poly``).

    Returns:
        float32 array of shape (samples,), nominally in [-1, 1].
    Raises:
        AudioError: missing, empty, corrupt or zero-length file (one line naming the file).
    """
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path} is a directory, not an audio file (give the files in it, or its path "
                         "to `dllm-asr transcribe`, which reads the audio files it holds)")
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    if path.stat().st_size == 0:
        raise AudioError(f"audio file is empty (0 bytes): {path}")
    samples, file_rate = _decode(path, sample_rate)
    if samples.shape[0] == 0:
        raise AudioError(f"audio file contains no samples: {path}")
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    return resample(finite(mono.astype(np.float32), path), file_rate, sample_rate)


def finite(samples: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """`samples`, or AudioError when any is NaN or infinite (a float file can hold them, and
    one would turn every feature of its clip, and the transcript, into garbage)."""
    if not np.isfinite(samples).all():
        raise AudioError(f"audio file {path} holds samples that are not numbers (NaN or infinity)")
    return samples


def _decode(path: Path, ffmpeg_rate: int) -> tuple[np.ndarray, int]:
    """Decode to (samples, channels) or (samples,) float32 and its sample rate (the file's
    for soundfile; ffmpeg converts to ``ffmpeg_rate`` itself)."""
    if path.suffix.lower() in SOUNDFILE_EXTENSIONS:
        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            return data, int(rate)
        except RuntimeError as error:  # soundfile.LibsndfileError is a RuntimeError
            # libsndfile rejects some valid files (odd WAV headers); ffmpeg gets a second try.
            soundfile_reason = _last_line(str(error)).replace(f"Error opening {str(path)!r}: ", "")
            try:
                return _decode_with_ffmpeg(path, ffmpeg_rate), ffmpeg_rate
            except AudioError as ffmpeg_error:
                raise AudioError(f"cannot decode audio file {path} (soundfile: {soundfile_reason}; "
                                 f"ffmpeg: {ffmpeg_error.reason})") from None
    return _decode_with_ffmpeg(path, ffmpeg_rate), ffmpeg_rate


def _ffmpeg_command(path: Path, sample_rate: int) -> list[str]:
    """ffmpeg decoding `path` to mono float32 at ``sample_rate`` (its own resampler) on stdout."""
    if shutil.which("ffmpeg") is None:
        raise AudioError(f"cannot decode {path}: it needs ffmpeg, which is not installed "
                         "(e.g. `apt-get install ffmpeg`)")
    source = ["-i", "pipe:0"] if str(path) == STDIN else ["-nostdin", "-i", str(path)]
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", *source,
            "-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"]


def _ffmpeg_error(path: Path, stderr: bytes) -> AudioError:
    reason = _last_line(stderr.decode(errors="replace")).replace(f"{path}: ", "")
    name = "from standard input" if str(path) == STDIN else f"file {path}"
    return AudioError(f"ffmpeg cannot decode audio {name}: {reason}", reason)


def _decode_with_ffmpeg(path: Path, sample_rate: int) -> np.ndarray:
    """Let ffmpeg decode and convert to mono float32 at ``sample_rate``."""
    result = subprocess.run(_ffmpeg_command(path, sample_rate), capture_output=True, check=False)
    if result.returncode != 0:
        raise _ffmpeg_error(path, result.stderr)
    return np.frombuffer(result.stdout, dtype=np.float32).copy()


def read_blocks(path: str | os.PathLike, block_seconds: float = 60.0) -> Iterator[np.ndarray]:
    """Read an audio file as consecutive 16 kHz mono float32 blocks of `block_seconds` (the last
    shorter), holding one block at a time: a 2-hour file never sits in memory whole.

    A file of at most one block, or one soundfile reads at a rate ffmpeg is needed to convert,
    when ffmpeg is missing, is read by `load_audio` and comes as one block. Longer files stream:
    16 kHz files soundfile reads, block by block; everything else through an ffmpeg pipe.
    `path` "-" reads standard input through ffmpeg. Raises AudioError as `load_audio` does (a
    stream that fails midway raises after the blocks it gave), and for a file shorter than
    `MIN_SAMPLES`, too short to transcribe.
    """
    block = max(1, int(block_seconds * SAMPLE_RATE))
    if str(path) == STDIN:
        yield from _stream_with_ffmpeg(STDIN, block)
        return
    path = Path(path)
    info = _soundfile_info(path)
    readable = path.is_file() and path.stat().st_size > 0
    if info is None and (not readable or path.suffix.lower() in SOUNDFILE_EXTENSIONS):
        yield long_enough(load_audio(path), path)  # its error, or a header soundfile rejects and ffmpeg may rescue
    elif info is None:
        yield from _stream_with_ffmpeg(path, block)
    elif info.frames * SAMPLE_RATE <= block * info.samplerate or (
            info.samplerate != SAMPLE_RATE and shutil.which("ffmpeg") is None):
        yield long_enough(load_audio(path), path)
    elif info.samplerate == SAMPLE_RATE:
        for samples in soundfile.blocks(str(path), blocksize=block, dtype="float32", always_2d=True):
            yield finite(samples.mean(axis=1), path)
    else:
        yield from _stream_with_ffmpeg(path, block)


def _soundfile_info(path: Path):
    """soundfile's header of a file it reads (frames, samplerate), else None."""
    if path.suffix.lower() not in SOUNDFILE_EXTENSIONS or not path.is_file():
        return None
    try:
        return soundfile.info(str(path))
    except RuntimeError:
        return None


def _stream_with_ffmpeg(path: Path | str, block: int) -> Iterator[np.ndarray]:
    """ffmpeg's output in blocks of `block` samples (`path` STDIN: it reads our standard input)."""
    with subprocess.Popen(_ffmpeg_command(path, SAMPLE_RATE), stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        count = 0
        while True:
            data = process.stdout.read(4 * block)
            if not data:
                break
            count += len(data) // 4
            yield finite(np.frombuffer(data[: len(data) // 4 * 4], dtype=np.float32).copy(), path)
        stderr = process.stderr.read()
        if process.wait() != 0:
            raise _ffmpeg_error(path, stderr)
    if count == 0:
        raise AudioError(f"audio file contains no samples: {path}")
    if count < MIN_SAMPLES:  # after its blocks, but before a window of them is decoded
        raise too_short(path, count)


def long_enough(samples: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """`samples`, or AudioError naming `path` when they are fewer than `MIN_SAMPLES` (a 10-ms
    clip would otherwise fail inside the encoder, and take the clips batched with it along)."""
    if len(samples) < MIN_SAMPLES:
        raise too_short(path, len(samples))
    return samples


def too_short(path: str | os.PathLike, count: int) -> AudioError:
    return AudioError(f"audio file {path} is too short to transcribe: {1000 * count / SAMPLE_RATE:g} ms "
                      f"(the least is {1000 * MIN_SAMPLES / SAMPLE_RATE:g} ms)")


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling of a (samples,) float array (polyphase FIR, Kaiser window)."""
    if orig_rate == target_rate:
        return np.ascontiguousarray(audio, dtype=np.float32)
    from scipy.signal import resample_poly  # imported here: scipy.signal adds ~0.6 s to every start

    ratio = Fraction(target_rate, orig_rate)
    out = resample_poly(audio.astype(np.float64), ratio.numerator, ratio.denominator)
    # resample_poly rounds the length up; keep floor(n * target / orig) samples.
    return out[: len(audio) * target_rate // orig_rate].astype(np.float32)


