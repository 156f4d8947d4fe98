"""Bad inputs (issue 11, item 1): every kind of broken or unusual input, through the CLI and the
Python API, built in tmp_path by a small builder each.

What each kind must give:
- a file that cannot be transcribed: one stderr line naming it, no traceback, status 1, nothing
  written for it, and the good clip given in the same call still transcribed; through the API,
  an AudioError naming it;
- valid audio that is merely unusual (all silence, 8 or 96 kHz, 6 channels, 24-bit or float WAV,
  FLAC/OGG/MP3/M4A, a unicode name with spaces, a header longer than the data): transcribed,
  status 0, nothing on stderr;
- a manifest with bad lines (`dllm-asr eval`): one warning line per bad line naming the manifest
  line, the good lines scored, status 1;
- a broken checkpoint folder (`--model DIR`): one line naming the file, status 2, and no model
  built first.

The default model is loaded once for the module; the CLI is given it in place of loading it per
call. The audio kinds go through two CLI calls in all (the good clip with every failing kind, and
with every valid kind), each kind then checked on its own lines.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly

import dllm_asr
from dllm_asr import cli, commands
from dllm_asr.audio.features import SAMPLE_RATE
from dllm_asr.audio.io import AudioError, read_blocks
from dllm_asr.config import DEFAULT_MODEL
from dllm_asr.model.loading import MODELS_DIR
from dllm_asr.transcription.long_form import cached_model

GOOD = Path(dllm_asr.__file__).parent / "assets" / "example.wav"
SHIPPED = MODELS_DIR / DEFAULT_MODEL
FAST = ["--strategy", "diffusion", "--steps", "2"]
"""Short decoding: these tests are about inputs, not accuracy (the good clip still reads 'quick')."""

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


# ----------------------------------------------------------------------------- builders


def speech() -> np.ndarray:
    """The example clip, 16 kHz mono float32 (3.83 s)."""
    audio, rate = soundfile.read(GOOD, dtype="float32")
    assert rate == SAMPLE_RATE
    return audio


def wav_bytes() -> bytes:
    buffer = GOOD.read_bytes()
    assert buffer[:4] == b"RIFF" and buffer.find(b"data") > 0
    return buffer


def written(name: str, audio: np.ndarray, rate: int = SAMPLE_RATE, **settings) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        soundfile.write(folder / name, audio() if callable(audio) else audio, rate, **settings)
        return folder / name
    return build


def raw(name: str, content: Callable[[], bytes]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        (folder / name).write_bytes(content())
        return folder / name
    return build


def encoded(name: str, *ffmpeg_args: str) -> Callable[[Path], Path]:
    """The example clip converted by an ffmpeg subprocess (MP3, M4A)."""
    def build(folder: Path) -> Path:
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(GOOD), *ffmpeg_args,
                        str(folder / name)], check=True)
        return folder / name
    return build


def missing(folder: Path) -> Path:
    return folder / "never_written.wav"


def directory(folder: Path) -> Path:
    """A folder with no audio in it (CLI: expanded to nothing; API: not a file)."""
    (folder / "notes").mkdir()
    (folder / "notes" / "readme.txt").write_text("no audio here")
    return folder / "notes"


def lying_header(data_bytes: int) -> Callable[[], bytes]:
    """The example WAV whose RIFF and data chunk sizes say `data_bytes` (the samples stay as they are)."""
    def content() -> bytes:
        buffer = bytearray(wav_bytes())
        data = buffer.find(b"data")
        struct.pack_into("<I", buffer, data + 4, data_bytes)
        struct.pack_into("<I", buffer, 4, min(data_bytes + data, 2 ** 32 - 1))
        return bytes(buffer)
    return content


def with_sample(value: float) -> Callable[[], np.ndarray]:
    def audio() -> np.ndarray:
        samples = speech()
        samples[1000] = value
        return samples
    return audio


def resampled(rate: int) -> Callable[[], np.ndarray]:
    return lambda: resample_poly(speech(), rate, SAMPLE_RATE).astype(np.float32)


def channels(count: int) -> Callable[[], np.ndarray]:
    return lambda: np.stack([speech()] * count, axis=1)


@dataclass
class Kind:
    name: str
    build: Callable[[Path], Path]
    speech: bool = True
    """Valid kinds: the transcript must hold the clip's words ('quick')."""
    readable: bool = False
    """Failing kinds: `load_audio` reads it (valid audio that cannot be transcribed)."""
    marks: tuple = ()


FAILING = [
    Kind("missing path", missing),
    Kind("directory", directory),
    Kind("0-byte file", raw("zero.wav", lambda: b"")),
    Kind("text bytes as .wav", raw("text.wav", lambda: b"this is not audio at all\n" * 40)),
    Kind("text bytes as .mp3", raw("text.mp3", lambda: b"this is not audio at all\n" * 40), marks=(needs_ffmpeg,)),
    Kind("truncated WAV header", raw("truncated.wav", lambda: wav_bytes()[:30])),
    Kind("WAV header saying no data", raw("lying_zero.wav", lying_header(0))),
    Kind("NaN sample", written("nan.wav", with_sample(np.nan), subtype="FLOAT")),
    Kind("Inf sample", written("inf.wav", with_sample(np.inf), subtype="FLOAT")),
    Kind("10 ms clip", written("ten_ms.wav", lambda: speech()[8000:8160]), readable=True),
]

VALID = [
    Kind("all silence", written("silence.wav", np.zeros(2 * SAMPLE_RATE, dtype=np.float32)), speech=False),
    Kind("8 kHz", written("rate_8k.wav", resampled(8000), 8000)),
    Kind("96 kHz", written("rate_96k.wav", resampled(96000), 96000)),
    Kind("stereo", written("stereo.wav", channels(2))),
    Kind("6 channels", written("six_channels.wav", channels(6))),
    Kind("24-bit WAV", written("pcm24.wav", speech, subtype="PCM_24")),
    Kind("float WAV", written("float32.wav", speech, subtype="FLOAT")),
    Kind("FLAC", written("flac_clip.flac", speech)),
    Kind("OGG", written("ogg_clip.ogg", speech, subtype="VORBIS")),
    Kind("MP3", encoded("mp3_clip.mp3"), marks=(needs_ffmpeg,)),
    Kind("M4A", encoded("m4a_clip.m4a", "-c:a", "aac"), marks=(needs_ffmpeg,)),
    Kind("unicode and spaces in the name", written("résumé 日本語 clip.wav", speech)),
    Kind("WAV header longer than its data", raw("lying_long.wav", lying_header(2 ** 31))),
]


def params(kinds: list[Kind]):
    return [pytest.param(kind, id=kind.name, marks=kind.marks) for kind in kinds]


def available(kinds: list[Kind]) -> list[Kind]:
    return [k for k in kinds if needs_ffmpeg not in k.marks or shutil.which("ffmpeg")]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model():
    return cached_model(DEFAULT_MODEL, "cpu")


@pytest.fixture()
def cli_main(model, monkeypatch):
    """`dllm_asr.cli.main` with the default model already loaded (any other --model is loaded)."""
    real = commands.open_model
    monkeypatch.setattr(commands, "open_model", lambda args: model if args.model == DEFAULT_MODEL else real(args))
    return cli.main


@dataclass
class Run:
    code: int
    out: str
    err: str
    paths: dict[str, Path]
    written: set[str]


def transcribe_together(kinds: list[Kind], folder: Path, main, capsys) -> Run:
    """One `dllm-asr transcribe` call: the good clip, then every kind, txt files written."""
    folder.mkdir()
    paths = {kind.name: kind.build(folder) for kind in kinds}
    out_dir = folder / "out"
    code = main(["transcribe", *FAST, "--output-format", "txt", "--output-dir", str(out_dir), str(GOOD),
                 *map(str, paths.values())])
    captured = capsys.readouterr()
    outputs = {p.name for p in out_dir.iterdir()} if out_dir.is_dir() else set()
    return Run(code, captured.out, captured.err, paths, outputs)


class Capture:
    """capsys for a module-scoped fixture: stdout and stderr of the block, read with readouterr()."""

    def __enter__(self):
        import contextlib
        import io

        self.out, self.err = io.StringIO(), io.StringIO()
        self.stack = contextlib.ExitStack()
        self.stack.enter_context(contextlib.redirect_stdout(self.out))
        self.stack.enter_context(contextlib.redirect_stderr(self.err))
        return self

    def readouterr(self):
        from types import SimpleNamespace

        return SimpleNamespace(out=self.out.getvalue(), err=self.err.getvalue())

    def __exit__(self, *exc):
        return self.stack.__exit__(*exc)


@pytest.fixture(scope="module")
def failing_run(tmp_path_factory, model):
    with pytest.MonkeyPatch.context() as patch, Capture() as capsys:
        patch.setattr(commands, "open_model", lambda args: model)
        return transcribe_together(available(FAILING), tmp_path_factory.mktemp("failing") / "in", cli.main, capsys)


@pytest.fixture(scope="module")
def valid_run(tmp_path_factory, model):
    with pytest.MonkeyPatch.context() as patch, Capture() as capsys:
        patch.setattr(commands, "open_model", lambda args: model)
        return transcribe_together(available(VALID), tmp_path_factory.mktemp("valid") / "in", cli.main, capsys)


def messages(run: Run) -> list[str]:
    """Its stderr lines but the progress lines (more than ten files: 'transcribe: 4/14 files, ...')."""
    return [line for line in run.err.splitlines() if not line.startswith("transcribe: ")]


def good_line(run: Run) -> str:
    lines = [line for line in run.out.splitlines() if line.startswith(f"{GOOD}\t")]
    assert len(lines) == 1, run.out
    return lines[0]


# ----------------------------------------------------------------------------- audio through the CLI


@pytest.mark.parametrize("kind", params(FAILING))
def test_cli_a_failing_file_gives_one_line_and_the_good_clip_is_still_transcribed(kind, failing_run):
    run, path = failing_run, failing_run.paths[kind.name]
    assert run.code == 1
    assert "quick" in good_line(run).lower() and "example.txt" in run.written
    assert "Traceback" not in run.err
    mine = [line for line in messages(run) if str(path) in line]
    assert len(mine) == 1 and mine[0].startswith("error: "), run.err
    assert not [line for line in run.out.splitlines() if line.startswith(f"{path}\t")]
    assert f"{path.stem}.txt" not in run.written  # nothing half-written for it


def test_cli_failing_files_give_one_line_each_and_nothing_else(failing_run):
    assert len(messages(failing_run)) == len(failing_run.paths), failing_run.err
    assert failing_run.out.count("\n") == 1 and failing_run.written == {"example.txt"}


@pytest.mark.parametrize("kind", params(VALID))
def test_cli_valid_unusual_audio_is_transcribed(kind, valid_run):
    run, path = valid_run, valid_run.paths[kind.name]
    assert run.code == 0 and messages(run) == [], run.err
    assert "quick" in good_line(run).lower()
    (line,) = [line for line in run.out.splitlines() if line.startswith(f"{path}\t")]
    text = line.split("\t", 1)[1]
    assert ("quick" in text.lower()) if kind.speech else ("quick" not in text.lower())
    assert (path.parent / "out" / f"{path.stem}.txt").read_text(encoding="utf-8").strip() == text.strip()


def test_cli_a_folder_or_pattern_that_names_no_audio_is_reported_alone(tmp_path, cli_main, capsys):
    """It used to end the call (status 2) before any other file was read."""
    (tmp_path / "nothing").mkdir()
    code = cli_main(["transcribe", *FAST, str(tmp_path / "nothing"), str(tmp_path / "*.flac"), str(GOOD)])
    captured = capsys.readouterr()
    assert code == 1 and captured.out.startswith(f"{GOOD}\t")
    assert [line.split()[1] for line in captured.err.splitlines()] == [str(tmp_path / "nothing"),
                                                                      f"{tmp_path / '*.flac'}:"]
    assert cli_main(["transcribe", str(tmp_path / "nothing")]) == 2  # nothing to do at all: a usage error
    assert capsys.readouterr().err.count("\n") == 1


# ----------------------------------------------------------------------------- audio through the API


@pytest.mark.parametrize("kind", params(FAILING))
def test_api_a_failing_file_raises_an_audio_error_naming_it(kind, tmp_path, model):
    path = kind.build(tmp_path)
    if kind.readable:
        assert len(dllm_asr.load_audio(path)) > 0
    else:
        with pytest.raises(AudioError) as caught:
            dllm_asr.load_audio(path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(AudioError) as caught:
        dllm_asr.transcribe(path, model=model, strategy="diffusion", steps=2)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("kind", params(VALID))
def test_api_valid_unusual_audio_loads_as_16k_mono(kind, tmp_path):
    path = kind.build(tmp_path)
    audio = dllm_asr.load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()
    expected = 2 * SAMPLE_RATE if not kind.speech else len(speech())
    assert abs(len(audio) - expected) <= 0.01 * expected
    streamed = np.concatenate(list(read_blocks(path)))  # what `transcribe` reads
    assert len(streamed) == len(audio)


def test_api_transcribes_a_six_channel_96k_file_with_a_unicode_name(tmp_path, model):
    path = written("ünï cödé 96k 6ch.wav", lambda: np.stack([resampled(96000)()] * 6, axis=1), 96000)(tmp_path)
    assert "quick" in dllm_asr.transcribe(path, model=model, strategy="diffusion", steps=2).text.lower()


# ----------------------------------------------------------------------------- a 2-hour file


@pytest.fixture(scope="module")
def two_hours(tmp_path_factory) -> Path:
    """2 h of 16 kHz FLAC, one second of tone a minute and silence between (1 MB on disk; 460 MB
    as float32 samples)."""
    path = tmp_path_factory.mktemp("long") / "two_hours.flac"
    minute = np.zeros(60 * SAMPLE_RATE, dtype=np.float32)
    minute[:SAMPLE_RATE] = 0.1 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)
    with soundfile.SoundFile(path, "w", SAMPLE_RATE, 1, "PCM_16") as handle:
        for _ in range(120):
            handle.write(minute)
    return path


WHOLE_FILE_BYTES = 7200 * SAMPLE_RATE * 4
MEMORY_BOUND = 64 * 2 ** 20


@pytest.mark.slow
def test_a_two_hour_file_is_read_in_bounded_memory(two_hours):
    tracemalloc.start()
    try:
        total = longest = 0
        for block in read_blocks(two_hours):
            total, longest = total + len(block), max(longest, len(block))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == 7200 * SAMPLE_RATE and longest <= 60 * SAMPLE_RATE
    assert peak < MEMORY_BOUND < WHOLE_FILE_BYTES / 4


@pytest.mark.slow
def test_a_two_hour_file_streams_through_transcribe_files(two_hours, model, monkeypatch):
    """The whole file path (reading, cutting at pauses, decoding window batches, joining) in
    bounded memory; the decoding itself is replaced by an empty transcript per window, as 2 h of
    decoding would take an hour here."""
    from dllm_asr.transcription import long_form
    from dllm_asr.transcription.file_batches import transcribe_files
    from dllm_asr.transcription.result import Transcript
    from dllm_asr.transcription.strategies import model_options

    windows = []

    def decode_nothing(model, audios, options, priors=None):
        windows.extend(len(a) for a in audios)
        return [Transcript("", [], 0, 0) for _ in audios]

    monkeypatch.setattr(long_form, "transcribe_windows", decode_nothing)
    tracemalloc.start()
    try:
        (result,) = transcribe_files(model, [two_hours], model_options(model))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.error is None and result.duration == 7200
    assert len(windows) >= 720 and max(windows) <= model.config.window_seconds * SAMPLE_RATE
    assert peak < MEMORY_BOUND


# ----------------------------------------------------------------------------- manifests (eval)


BAD_LINES = {
    "malformed line": ('{"audio": "clip.wav", "text": ', "invalid JSON"),
    "missing field": (json.dumps({"audio": str(GOOD)}), 'missing or non-string "text" field'),
    "missing audio file": (json.dumps({"audio": "gone.wav", "text": "hello"}), "audio file not found"),
    "undecodable audio": (json.dumps({"audio": "text.wav", "text": "hello"}), "cannot load audio"),
    "10 ms clip": (json.dumps({"audio": "ten_ms.wav", "text": "hello"}), "too short"),
}


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory, model):
    """`dllm-asr eval` on a manifest: a good line first, then one line of each bad kind."""
    import logging

    folder = tmp_path_factory.mktemp("manifest")
    (folder / "text.wav").write_bytes(b"this is not audio at all\n" * 40)
    soundfile.write(folder / "ten_ms.wav", speech()[8000:8160], SAMPLE_RATE)
    manifest = folder / "dev.jsonl"
    lines = [json.dumps({"id": "good", "audio": str(GOOD), "text": "the quick brown fox"})]
    lines += [line for line, _ in BAD_LINES.values()]
    manifest.write_text("\n".join(lines) + "\n")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as patch, Capture() as capture:
            patch.setattr(commands, "open_model", lambda args: model)
            code = cli.main(["eval", *FAST, "--data", str(manifest), "--out", str(folder / "eval")])
    finally:
        logging.getLogger().removeHandler(handler)
    captured = capture.readouterr()
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    return code, captured, warnings, manifest, folder / "eval"


@pytest.mark.parametrize("kind", list(BAD_LINES))
def test_eval_a_bad_manifest_line_is_one_warning_naming_it(kind, eval_run):
    code, captured, warnings, manifest, out = eval_run
    line_number = list(BAD_LINES).index(kind) + 2
    mine = [w for w in warnings if f"{manifest}:{line_number}:" in w]
    assert len(mine) == 1 and BAD_LINES[kind][1] in mine[0] and "\n" not in mine[0], warnings
    assert code == 1 and "Traceback" not in captured.err


def test_eval_scores_the_good_lines_and_writes_whole_files(eval_run):
    code, captured, warnings, manifest, out = eval_run
    assert len(warnings) == len(BAD_LINES), warnings
    assert "1 utterances" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["errors.jsonl", "hyps.jsonl", "report.md"]
    (hyp,) = [json.loads(line) for line in (out / "hyps.jsonl").read_text().splitlines()]
    assert hyp["id"] == "good" and "quick" in hyp["hyp"].lower()


def test_eval_a_manifest_with_no_usable_line_is_one_error_and_writes_nothing(tmp_path, cli_main, capsys):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text('{"audio": \n')
    code = cli_main(["eval", *FAST, "--data", str(manifest), "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and not (tmp_path / "eval").exists()
    assert err == f"dllm-asr eval: error: {manifest}: no utterance could be decoded (each is named above)\n"


# ----------------------------------------------------------------------------- checkpoint folders


def truncated_weights(folder: Path) -> Path:
    data = (SHIPPED / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    return folder / "model.safetensors"


def no_weights(folder: Path) -> Path:
    (folder / "model.safetensors").unlink()
    return folder


def config_edit(change: Callable[[dict], object]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        config = json.loads((folder / "config.json").read_text())
        change(config)
        (folder / "config.json").write_text(json.dumps(config))
        return folder / "config.json"
    return build


def raw_config(text: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        (folder / "config.json").write_text(text)
        return folder / "config.json"
    return build


CHECKPOINTS = {
    "truncated model.safetensors": (truncated_weights, "unreadable safetensors file"),
    "missing model.safetensors": (no_weights, "no model.safetensors"),
    "config of another version": (config_edit(lambda c: c.update(version=99, tokenizer_revision="v9")),
                                  "unknown field(s) tokenizer_revision, version"),
    "config with an unknown key": (config_edit(lambda c: c["encoder"].update(flash=True)),
                                   "unknown EncoderConfig option(s): flash"),
    "config that is not an object": (raw_config("[1, 2]"), "JSON object expected"),
    "truncated config": (raw_config('{"encoder": {"source"'), "not a readable dllm-asr model config"),
}


def broken_checkpoint(kind: str, folder: Path) -> tuple[Path, Path]:
    """A copy of the shipped model folder broken as `kind`; (the folder, the file to name)."""
    shutil.copytree(SHIPPED, folder)
    return folder, CHECKPOINTS[kind][0](folder)


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_cli_a_broken_checkpoint_is_one_line_naming_the_file(kind, tmp_path, cli_main, capsys, monkeypatch):
    from dllm_asr.model import loading

    folder, named = broken_checkpoint(kind, tmp_path / "ckpt")
    built = []
    monkeypatch.setattr(loading, "build_model", lambda *a, **k: built.append(1) or pytest.fail("model built"))
    code = cli_main(["transcribe", "--model", str(folder), str(GOOD)])
    err = capsys.readouterr().err
    assert code == 2 and not built and "Traceback" not in err
    assert err.count("\n") == 1 and str(named) in err and CHECKPOINTS[kind][1] in err, err


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_api_a_broken_checkpoint_raises_a_value_error_naming_the_file(kind, tmp_path, monkeypatch):
    from dllm_asr.model import loading

    folder, named = broken_checkpoint(kind, tmp_path / "ckpt")
    monkeypatch.setattr(loading, "build_model", lambda *a, **k: pytest.fail("built before the checkpoint was checked"))
    with pytest.raises(ValueError) as caught:
        dllm_asr.load_model(folder)
    assert str(named) in str(caught.value) and CHECKPOINTS[kind][1] in str(caught.value)


def test_cli_debug_shows_the_traceback(tmp_path, cli_main):
    folder, _ = broken_checkpoint("truncated model.safetensors", tmp_path / "ckpt")
    with pytest.raises(ValueError, match="unreadable safetensors file"):
        cli_main(["--debug", "transcribe", "--model", str(folder), str(GOOD)])


def test_cli_an_unexpected_error_is_one_line_too(tmp_path, cli_main, capsys, monkeypatch):
    monkeypatch.setattr(cli, "cmd_score", lambda args: {}["boom"])
    assert cli_main(["score", "a", "b"]) == 2
    assert capsys.readouterr().err == "dllm-asr score: error: KeyError: 'boom'\n"
    with pytest.raises(KeyError):
        cli_main(["score", "a", "b", "--debug"])
