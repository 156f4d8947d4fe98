"""Transcript files as the Whisper CLI writes them: txt, json, srt, vtt and tsv.

Subtitle cues are the transcript's segments (`Transcript.segments`: one per window a long clip
was cut into at pauses, one for a short clip, timed where the window's sound begins and ends).
The json file also holds each token's confidence, and each segment's words with their times
when they were asked for (`--word-timestamps`). srt and vtt are composed with the `srt` and
`webvtt-py` libraries. A file that already exists is never overwritten unless asked
(`overwrite`): it may be the user's.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

from dllm_asr.audio.io import STDIN
from dllm_asr.files import remove_stale_temps, write_text_atomic
from dllm_asr.transcription.file_batches import FileResult
from dllm_asr.transcription.options import OUTPUT_FORMATS as FORMATS
from dllm_asr.transcription.options import TranscribeOptions
from dllm_asr.transcription.result import Segment


def segments_of(result: FileResult) -> list[Segment]:
    """The cues of a transcribed file: its windows, or one segment over the whole clip."""
    transcript = result.transcript
    if transcript.segments is not None:
        return [s for s in transcript.segments if s.text]
    return [Segment(0.0, result.duration, transcript.text)] if transcript.text else []


def segment_record(segment: Segment) -> dict:
    """A segment as json: start, end, text, confidence and, when timed, its words as Whisper's
    json writes them (start, end, word, probability)."""
    record = {k: v for k, v in asdict(segment).items() if k != "words"}
    if segment.words is not None:
        record["words"] = [{"start": w.start, "end": w.end, "word": w.text, "probability": w.probability}
                           for w in segment.words]
    return record


def vtt_time(seconds: float) -> str:
    """'HH:MM:SS.mmm' (WebVTT cue time)."""
    millis = round(seconds * 1000)
    return f"{millis // 3_600_000:02d}:{millis // 60_000 % 60:02d}:{millis // 1000 % 60:02d}.{millis % 1000:03d}"


def render(result: FileResult, fmt: str, options: TranscribeOptions) -> str:
    """The text of `result` in format `fmt` (one of FORMATS)."""
    import srt
    import webvtt

    transcript, cues = result.transcript, segments_of(result)
    if fmt == "txt":
        return transcript.text + "\n"
    if fmt == "json":
        return json.dumps({"audio": result.path, "text": transcript.text, "duration": result.duration,
                           "segments": [segment_record(s) for s in cues], "tokens": transcript.tokens,
                           "token_confidences": transcript.confidences,
                           "nfe": transcript.nfe, "steps": transcript.steps,
                           "no_speech_prob": transcript.no_speech_prob, "truncated": transcript.truncated,
                           "decode_seconds": result.seconds, "options": asdict(options)}, indent=2) + "\n"
    if fmt == "srt":
        return srt.compose([srt.Subtitle(i + 1, timedelta(seconds=c.start), timedelta(seconds=c.end), c.text)
                            for i, c in enumerate(cues)])
    if fmt == "vtt":
        return webvtt.WebVTT(captions=[webvtt.Caption(vtt_time(c.start), vtt_time(c.end), c.text)
                                       for c in cues]).content
    if fmt == "tsv":  # the Whisper CLI's columns: integer milliseconds
        rows = [f"{round(1000 * c.start)}\t{round(1000 * c.end)}\t{c.text}" for c in cues]
        return "start\tend\ttext\n" + "".join(row + "\n" for row in rows)
    raise ValueError(f"--output-format must be one of {', '.join(FORMATS)} or all, got {fmt!r}")


def write_outputs(result: FileResult, out_dir: str | Path, formats: list[str], options: TranscribeOptions,
                  overwrite: bool = False) -> list[Path]:
    """Write `result` as OUT_DIR/<audio stem>.<fmt> for each format (stem `stdin` for audio read
    from standard input); returns the paths written.
    An existing file is refused (ValueError naming it) unless `overwrite`, before any is written."""
    out = Path(out_dir)
    stem = "stdin" if result.path == STDIN else Path(result.path).stem
    targets = [out / f"{stem}.{fmt}" for fmt in formats]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise ValueError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    out.mkdir(parents=True, exist_ok=True)
    for target, fmt in zip(targets, formats):  # each whole or not at all: a kill leaves no half subtitle file
        remove_stale_temps(target)  # what a killed earlier run left beside this file
        write_text_atomic(target, render(result, fmt, options))
    return targets
