"""The real-speech manifest from Asterisk's prompts: which prompts are kept, and the counts."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dllm_asr.cli import main
from dllm_asr.data.manifests import load_dataset
from dllm_asr.tools import recordings
from dllm_asr.tools.recordings import build_asterisk_manifest, read_transcripts, spoken_text

TRANSCRIPTS = """; core-sounds-en: a comment line
activated: Activated.
agent-pass: Please enter your password followed by the pound key.
conf-star: Press * to leave the conference.
beep: [this is a simple beep tone]
digits/1: one
letters/a: A
silence/1: [one second of silence]
dir-intro: [Short pause] Welcome to the directory.
long-prompt: A prompt read for far too long.
no-audio: This prompt has no recording.
broken: This recording is not audio.
"""


@pytest.fixture()
def sounds(tmp_path: Path) -> tuple[Path, Path]:
    sounds_dir = tmp_path / "sounds"
    rng = np.random.default_rng(0)
    seconds = {"activated": 1.0, "agent-pass": 2.5, "conf-star": 2.0, "beep": 0.5, "digits/1": 0.6,
               "letters/a": 0.4, "silence/1": 1.0, "dir-intro": 2.0, "long-prompt": 3.0}
    for name, duration in seconds.items():
        path = sounds_dir / f"{name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, 0.1 * rng.standard_normal(int(16000 * duration)).astype(np.float32), 16000)
    (sounds_dir / "broken.wav").write_bytes(b"not a wave file at all")
    transcripts = tmp_path / "core-sounds-en.txt.gz"
    with gzip.open(transcripts, "wt", encoding="utf-8") as handle:
        handle.write(TRANSCRIPTS)
    return sounds_dir, transcripts


def test_read_transcripts_skips_comments_and_reads_gzip(sounds):
    transcripts = read_transcripts(sounds[1])
    assert transcripts["activated"] == "Activated."
    assert transcripts["digits/1"] == "one"
    assert not any(name.startswith(";") for name in transcripts)


@pytest.mark.parametrize("name, text, spoken", [
    ("activated", "Activated.", "Activated."),
    ("dir-intro", "[Short pause] Welcome to the directory.", "Welcome to the directory."),
    ("beep", "[this is a simple beep tone]", None),
    ("conf-star", "Press * to leave.", None),
    ("vm-pound", "Then press #.", None),
    ("letters/a", "A", None),
    ("silence/1", "one second", None),
])
def test_spoken_text_keeps_only_what_is_said_as_written(name, text, spoken):
    assert spoken_text(name, text) == spoken


def test_manifest_counts_every_prompt_and_loads_as_a_dataset(sounds, tmp_path):
    sounds_dir, transcripts = sounds
    out = tmp_path / "out" / "asterisk.jsonl"
    summary = build_asterisk_manifest(out, sounds_dir, transcripts, max_seconds=2.8)
    assert summary == {"utterances": 4, "minutes": round((1.0 + 2.5 + 0.6 + 2.0) / 60, 2), "skipped_text": 4,
                       "too_long": 1, "missing_audio": 1, "unreadable": 1}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["text"] for row in rows] == [
        "Activated.", "Please enter your password followed by the pound key.", "one", "Welcome to the directory."]
    assert rows[2]["id"] == "asterisk-digits-1" and rows[0]["duration"] == pytest.approx(1.0)
    assert all(Path(row["audio"]).is_file() and row["voice"] == "asterisk:allison" for row in rows)
    assert [u.text for u in load_dataset(out)] == [row["text"] for row in rows]


def test_existing_manifest_is_kept_unless_overwrite(sounds, tmp_path):
    out = tmp_path / "asterisk.jsonl"
    out.write_text("the user's file\n")
    with pytest.raises(ValueError, match="exists"):
        build_asterisk_manifest(out, *sounds)
    assert out.read_text() == "the user's file\n"
    build_asterisk_manifest(out, *sounds, overwrite=True)
    assert out.read_text().count("\n") == 5


def test_missing_package_gives_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="apt-get install asterisk-core-sounds-en"):
        build_asterisk_manifest(tmp_path / "a.jsonl", tmp_path, tmp_path / "none.txt.gz")
    (tmp_path / "t.txt").write_text("hello: Hello.\n")
    with pytest.raises(ValueError, match="no Asterisk prompt audio"):
        build_asterisk_manifest(tmp_path / "a.jsonl", tmp_path / "empty", tmp_path / "t.txt")
    assert not (tmp_path / "a.jsonl").exists()


def test_corpus_command_writes_the_manifest(sounds, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(recordings, "ASTERISK_SOUNDS", sounds[0])
    monkeypatch.setattr(recordings, "ASTERISK_TRANSCRIPTS", sounds[1])
    assert main(["corpus", str(tmp_path / "real"), "--asterisk"]) == 0
    assert "5 real utterances" in capsys.readouterr().out
    assert (tmp_path / "real" / "asterisk.jsonl").is_file()
    assert main(["corpus", str(tmp_path / "real"), "--asterisk"]) == 2
    assert "exists" in capsys.readouterr().err
