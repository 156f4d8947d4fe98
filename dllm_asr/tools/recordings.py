"""Real English speech with exact transcripts that a Debian machine can install offline.

The synthetic corpus (corpus.py) measures a model on voices it may never meet again; this module
turns real recordings into a manifest the `eval` and `bench` commands read. The source is
Debian's `asterisk-core-sounds-en` (with `asterisk-core-sounds-en-g722` for 16-kHz audio): the
prompts of the Asterisk telephone exchange, read by one professional human speaker (Allison
Smith), about 25 minutes, CC-BY-SA 3.0, with the transcript of every file in
`core-sounds-en.txt.gz`.

Which prompts are kept: spoken words whose transcript says exactly what is spoken. Dropped are
tone and sound-effect files (bracketed transcripts such as `[this is a simple beep tone]`), the
`silence/` files, the spelled `letters/` (one letter or symbol: how it should be written is not
defined) and prompts whose transcript writes a key as `*` or `#` (the speaker says "star" or
"pound"). Numbers are written as words in some transcripts and as digits in others; Whisper's
English normaliser, which scoring uses, maps both to digits.

    apt-get install asterisk-core-sounds-en asterisk-core-sounds-en-g722
    dllm-asr corpus data/asterisk --asterisk
"""
from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

from dllm_asr.audio.features import SAMPLE_RATE
from dllm_asr.audio.io import AudioError, load_audio
from dllm_asr.files import atomic_writer

ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en")
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
ASTERISK_VOICE = "asterisk:allison"
# 16-kHz G.722 first (the -g722 package); the base package's 8-kHz formats otherwise.
AUDIO_EXTENSIONS = (".g722", ".wav", ".gsm", ".ulaw", ".alaw")
SKIPPED_FOLDERS = ("letters", "silence")
_BRACKETED = re.compile(r"\[[^\]]*\]")


def read_transcripts(path: str | os.PathLike = ASTERISK_TRANSCRIPTS) -> dict[str, str]:
    """`name: text` lines (gzip or plain; `;` starts a comment) -> {name: text}."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    transcripts = {}
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            name, sep, text = line.partition(":")
            if sep and not line.startswith(";") and name.strip():
                transcripts[name.strip()] = text.strip()
    return transcripts


def spoken_text(name: str, text: str) -> str | None:
    """The transcript of a prompt as spoken, or None when the prompt is not kept (see module doc)."""
    if name.split("/")[0] in SKIPPED_FOLDERS or "*" in text or "#" in text:
        return None
    text = " ".join(_BRACKETED.sub(" ", text).split())
    return text if any(ch.isalpha() or ch.isdigit() for ch in text) else None


def _audio_file(sounds_dir: Path, name: str) -> Path | None:
    for extension in AUDIO_EXTENSIONS:
        candidate = sounds_dir / f"{name}{extension}"
        if candidate.is_file():
            return candidate
    return None


def build_asterisk_manifest(out_path: str | os.PathLike, sounds_dir: str | os.PathLike | None = None,
                            transcripts: str | os.PathLike | None = None,
                            overwrite: bool = False, max_seconds: float | None = 30.0) -> dict:
    """Write a JSONL manifest of the kept Asterisk prompts to `out_path`; return a summary
    {"utterances", "minutes", "skipped_text", "too_long", "missing_audio", "unreadable"}.

    Rows point at the installed audio files (nothing is copied): {"id", "audio", "text",
    "duration", "voice"}. `sounds_dir`, `transcripts`: the Debian package's by default. Prompts longer than `max_seconds` (None: no limit) are left out: 30 s is
    the longest input a Whisper encoder takes in one window. An existing `out_path` is refused unless `overwrite`.
    """
    out_path = Path(out_path)
    sounds_dir = Path(sounds_dir or ASTERISK_SOUNDS)  # the Debian package's paths by default
    transcripts = Path(transcripts or ASTERISK_TRANSCRIPTS)
    if not transcripts.is_file():
        raise ValueError(f"no transcript list at {transcripts}: apt-get install asterisk-core-sounds-en")
    if out_path.exists() and not overwrite:
        raise ValueError(f"{out_path} exists (pass overwrite=True / --overwrite to replace it)")
    rows, skipped, too_long, missing, unreadable = [], 0, 0, 0, 0
    for name, text in sorted(read_transcripts(transcripts).items()):
        spoken = spoken_text(name, text)
        if spoken is None:
            skipped += 1
            continue
        audio_path = _audio_file(sounds_dir, name)
        if audio_path is None:
            missing += 1
            continue
        try:
            duration = len(load_audio(audio_path)) / SAMPLE_RATE
        except AudioError:
            unreadable += 1
            continue
        if max_seconds is not None and duration > max_seconds:
            too_long += 1
            continue
        rows.append({"id": "asterisk-" + name.replace("/", "-"), "audio": str(audio_path.resolve()),
                     "text": spoken, "duration": round(duration, 4), "voice": ASTERISK_VOICE})
    if not rows:
        raise ValueError(f"no Asterisk prompt audio found under {sounds_dir}: "
                         f"apt-get install asterisk-core-sounds-en-g722")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(out_path) as handle:  # a killed run leaves no manifest that lacks prompts
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"utterances": len(rows), "minutes": round(sum(r["duration"] for r in rows) / 60, 2),
            "skipped_text": skipped, "too_long": too_long, "missing_audio": missing, "unreadable": unreadable}
