"""Transcript files: each format parsed back with a real reader."""

import json

import pytest
import srt
import webvtt

from dllm_asr.cli import main
from dllm_asr.model.checkpoint import save_model
from dllm_asr.transcription.file_batches import FileResult
from dllm_asr.transcription.options import OUTPUT_FORMATS
from dllm_asr.transcription.options import TranscribeOptions
from dllm_asr.transcription.options import OUTPUT_FORMATS as FORMATS
from dllm_asr.transcription.outputs import render, vtt_time, write_outputs
from dllm_asr.transcription.result import Segment, Transcript
from tests.helpers import ASSETS


def windowed() -> FileResult:
    segments = [Segment(0.0, 9.35, "Please press one to mute."), Segment(9.35, 14.0, ""),
                Segment(14.0, 21.5, "Or eight to exit.", confidence=0.8)]
    transcript = Transcript("Please press one to mute. Or eight to exit.", [1, 2, 3], nfe=7, steps=7, segments=segments,
                            confidences=[0.9, None, 0.5])
    return FileResult("/audio/menu prompt.wav", transcript, 0.25, duration=21.5)


def whole() -> FileResult:
    return FileResult("clip.flac", Transcript("Hello there.", [5], nfe=2, steps=2), 0.1, duration=1.25)


def test_the_cli_and_the_writers_name_the_same_formats():
    assert OUTPUT_FORMATS == FORMATS


def test_srt_and_vtt_parse_back_with_the_segments_times():
    cues = list(srt.parse(render(windowed(), "srt", TranscribeOptions())))
    assert [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in cues] == [
        (0.0, 9.35, "Please press one to mute."), (14.0, 21.5, "Or eight to exit.")]  # the silent window has no cue
    captions = webvtt.from_string(render(windowed(), "vtt", TranscribeOptions())).captions
    assert [(c.start, c.end, c.text) for c in captions] == [
        ("00:00:00.000", "00:00:09.350", "Please press one to mute."), ("00:00:14.000", "00:00:21.500", "Or eight to exit.")]
    single = list(srt.parse(render(whole(), "srt", TranscribeOptions())))
    assert [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in single] == [(0.0, 1.25, "Hello there.")]


def test_txt_tsv_and_json():
    options = TranscribeOptions(steps=8)
    assert render(windowed(), "txt", options) == "Please press one to mute. Or eight to exit.\n"
    assert render(windowed(), "tsv", options).splitlines() == [
        "start\tend\ttext", "0\t9350\tPlease press one to mute.", "14000\t21500\tOr eight to exit."]
    data = json.loads(render(windowed(), "json", options))
    assert data["segments"][1] == {"start": 14.0, "end": 21.5, "text": "Or eight to exit.", "confidence": 0.8}
    assert data["token_confidences"] == [0.9, None, 0.5]
    assert data["nfe"] == 7 and data["options"]["steps"] == 8 and data["duration"] == 21.5
    assert vtt_time(3723.4567) == "01:02:03.457"


def test_existing_files_are_never_overwritten_unless_asked(tmp_path):
    (tmp_path / "menu prompt.srt").write_text("the user's subtitles")
    with pytest.raises(ValueError, match="already exist"):
        write_outputs(windowed(), tmp_path, ["txt", "srt"], TranscribeOptions())
    assert (tmp_path / "menu prompt.srt").read_text() == "the user's subtitles"
    assert not (tmp_path / "menu prompt.txt").exists()  # nothing written when one is refused
    written = write_outputs(windowed(), tmp_path, ["txt", "srt"], TranscribeOptions(), overwrite=True)
    assert [p.name for p in written] == ["menu prompt.txt", "menu prompt.srt"]
    assert srt.parse((tmp_path / "menu prompt.srt").read_text())


def test_a_killed_runs_temporary_files_are_cleared_and_only_those(tmp_path):
    left = [tmp_path / ".menu prompt.txt.k3x9.tmp", tmp_path / ".menu prompt.srt.q1.tmp"]
    kept = [tmp_path / ".other.txt.k3x9.tmp", tmp_path / "menu prompt.txt.tmp"]  # another file's, or a user's
    for path in left + kept:
        path.write_text("half a transcript")
    write_outputs(windowed(), tmp_path, ["txt", "srt"], TranscribeOptions())
    assert not any(path.exists() for path in left) and all(path.exists() for path in kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["menu prompt.txt", "menu prompt.srt"] + [p.name for p in kept])


def test_cli_writes_every_format(tiny_model, tmp_path, capsys):
    save_model(tiny_model, tmp_path / "ckpt")
    out = tmp_path / "out"
    args = ["transcribe", "--model", str(tmp_path / "ckpt"), "--steps", "2", "--length", "4",
            "--output-format", "all", "--output-dir", str(out), str(ASSETS / "example.wav")]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"example.{f}" for f in FORMATS)
    text = (out / "example.txt").read_text().strip()
    assert json.loads((out / "example.json").read_text())["text"] == text
    capsys.readouterr()
    assert main(args) == 1  # a second run would overwrite them: refused, in one line
    assert "already exist" in capsys.readouterr().err
