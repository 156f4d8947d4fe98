"""Transcription speed on CPU: dllm-asr against faster-whisper tiny.en int8, same audio, same run.

This is a benchmark that prints a table, not a test: nothing passes or fails, and the figures
depend on the machine and whatever else runs on it.

Inputs, built under --out from a JSONL manifest ({"id", "audio", "text"} per line):
  * long.wav: clips in manifest order with 0.6 s of silence between them, up to --minutes
    (whole clips only, so long.txt is its exact reference);
  * clips/: the first --clips clips as 16 kHz WAV files; clips.jsonl holds their references;
  * the first of those clips alone: a cold call on one short clip, whose wall time is mostly
    the fixed cost of a call (interpreter start, imports, model loading).

Each system reads each input in a fresh child process of its own:
  * dllm-asr: the CLI, `python -m dllm_asr transcribe --device cpu --output-format json`, once per
    --strategy ("default" = no --strategy flag, the model's own) and --dtype;
  * faster-whisper: tiny.en int8 (the CTranslate2 model that `dllm_asr.evaluation.external` loads), greedy,
    `model.transcribe(path, beam_size=1, language="en")` with faster-whisper's own long-form
    defaults (30-s windows, condition_on_previous_text), one file after another for clips/.
What is measured, per child:
  * wall s: from starting the child to its exit, so interpreter start, imports, model loading
    and audio decoding are included (a user's cold `transcribe` call);
  * RTF: wall s / audio s (below 1 = faster than real time);
  * peak RSS: the child's ru_maxrss from os.wait4 (that child only, not this script). Linux
    carries the parent's resident set into a forked child's high-water mark, so this script keeps
    its own small (no torch: the inputs are built in a separate spawned process) and prints that
    floor;
  * WER: `dllm_asr.evaluation.metrics.score` (Whisper's English normaliser), clips matched by file stem.
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MARKER = ".transcribe_speed"
GAP_SECONDS = 0.6

# The faster-whisper child. It builds WhisperModel as `dllm_asr.evaluation.external.load_faster_whisper`
# does, but without importing dllm_asr: that import pulls in torch (~360 MiB of RSS) and would
# inflate faster-whisper's peak memory. argv: model_dir compute_type threads out.jsonl input
FASTER_WHISPER_CHILD = r"""
import json, sys
from pathlib import Path
from faster_whisper import WhisperModel
model_dir, compute_type, threads, out_path, source = sys.argv[1:]
model = WhisperModel(model_dir, device="cpu", compute_type=compute_type, cpu_threads=int(threads))
source = Path(source)
paths = sorted(source.glob("*.wav")) if source.is_dir() else [source]
with open(out_path, "w", encoding="utf-8") as out:
    for path in paths:
        segments, _ = model.transcribe(str(path), beam_size=1, language="en")
        text = " ".join(s.text.strip() for s in segments).strip()
        out.write(json.dumps({"id": path.stem, "text": text}) + "\n")
"""


@dataclass
class Row:
    system: str
    input: str
    audio_seconds: float
    wall_seconds: float
    peak_rss_mib: float
    wer: float | None  # None: the child failed


# ----------------------------------------------------------------------------- inputs


def claim_out_dir(out: Path) -> None:
    """Refuse a non-empty folder this script did not make, then mark it as ours."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        sys.exit(f"error: {out} is not empty and was not made by this script (no {MARKER}); "
                 "give an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by benchmarks/transcribe_speed.py; its files may be replaced\n")
    for ours in ("clips", "runs"):  # stale outputs of an earlier run would hide a failed one
        shutil.rmtree(out / ours, ignore_errors=True)


def prepare_inputs(manifest: str, out: Path, minutes: float, n_clips: int) -> None:
    """Write long.wav/long.txt, clips/ + clips.jsonl and prepared.json (run in a spawned process,
    so that torch, which dllm_asr.audio.io imports, never enters this script's own memory)."""
    import numpy as np
    import soundfile

    from dllm_asr.audio.io import load_audio
    from dllm_asr.audio.features import SAMPLE_RATE
    from dllm_asr.model.encoders import resolve_short_name
    from dllm_asr.evaluation.external import FasterWhisperOptions

    records = [json.loads(line) for line in open(manifest, encoding="utf-8") if line.strip()]
    gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
    pieces, texts, long_samples = [], [], 0
    (out / "clips").mkdir()
    with open(out / "clips.jsonl", "w", encoding="utf-8") as refs:
        for index, record in enumerate(records):
            need_long = not pieces or long_samples < minutes * 60 * SAMPLE_RATE  # at least one clip
            if not need_long and index >= n_clips:
                break
            audio = load_audio(record["audio"])
            if need_long:
                pieces += [audio, gap]
                texts.append(record["text"])
                long_samples += len(audio) + len(gap)
            if index < n_clips:
                stem = str(record["id"]).replace("/", "_")
                soundfile.write(out / "clips" / f"{stem}.wav", audio, SAMPLE_RATE)
                refs.write(json.dumps({"id": stem, "text": record["text"],
                                       "duration": len(audio) / SAMPLE_RATE}) + "\n")
    long_audio = np.concatenate(pieces[:-1])  # no trailing silence
    soundfile.write(out / "long.wav", long_audio, SAMPLE_RATE)
    (out / "long.txt").write_text(" ".join(texts) + "\n", encoding="utf-8")
    if len(long_audio) < minutes * 60 * SAMPLE_RATE:
        print(f"note: the manifest holds only {len(long_audio) / SAMPLE_RATE / 60:.1f} min; long.wav is that long")
    options = FasterWhisperOptions()
    (out / "prepared.json").write_text(json.dumps({
        "long_seconds": len(long_audio) / SAMPLE_RATE,
        "faster_whisper_model": str(resolve_short_name(options.model)),
        "faster_whisper_compute_type": options.compute_type}))


def build_inputs(args: argparse.Namespace, out: Path) -> dict:
    process = multiprocessing.get_context("spawn").Process(
        target=prepare_inputs, args=(args.data, out, args.minutes, args.clips))
    process.start()
    process.join()
    if process.exitcode != 0:
        sys.exit(f"error: building the inputs failed (exit code {process.exitcode})")
    return json.loads((out / "prepared.json").read_text())


# ----------------------------------------------------------------------------- children


def run_child(command: list[str], log: Path) -> tuple[int, float, float]:
    """Run `command` to its end; (exit code, wall seconds, peak RSS MiB of that process)."""
    with open(log, "w") as log_file:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        # wait4, not child.wait(): it also returns the rusage of exactly this child.
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, wall, usage.ru_maxrss / 1024  # Linux: KiB


def dllm_asr_command(source: Path, run_dir: Path, strategy: str, threads: int, dtype: str = "auto") -> list[str]:
    command = [sys.executable, "-m", "dllm_asr", "transcribe", "--device", "cpu", "--threads", str(threads),
               "--dtype", dtype, "--output-format", "json", "--output-dir", str(run_dir)]
    if strategy != "default":
        command += ["--strategy", *shlex.split(strategy)]  # "ar --ar-pad-to-seconds 10": a strategy and its flags
    return command + [str(source)]


def dllm_asr_hyps(run_dir: Path) -> dict[str, str]:
    return {path.stem: json.loads(path.read_text(encoding="utf-8"))["text"] for path in run_dir.glob("*.json")}


def faster_whisper_command(source: Path, run_dir: Path, prepared: dict, threads: int) -> list[str]:
    return [sys.executable, "-c", FASTER_WHISPER_CHILD, prepared["faster_whisper_model"],
            prepared["faster_whisper_compute_type"], str(threads), str(run_dir / "hyps.jsonl"), str(source)]


def faster_whisper_hyps(run_dir: Path) -> dict[str, str]:
    lines = (run_dir / "hyps.jsonl").read_text(encoding="utf-8").splitlines()
    return {record["id"]: record["text"] for record in map(json.loads, lines)}


# ----------------------------------------------------------------------------- main


def benchmark(args: argparse.Namespace, out: Path, prepared: dict) -> list[Row]:
    """Every system on every input, one child each, then the scores (after the children, so that
    jiwer and the normaliser are not in this script's memory while they run)."""
    clip_refs = {r["id"]: r for r in map(json.loads, (out / "clips.jsonl").read_text().splitlines())}
    first = next(iter(clip_refs.values()))
    inputs = {  # label: (run folder suffix, path, audio seconds, references by stem)
        f"{prepared['long_seconds'] / 60:.1f}-min file": (
            "long", out / "long.wav", prepared["long_seconds"], {"long": (out / "long.txt").read_text().strip()}),
        f"{len(clip_refs)} clips": (
            "clips", out / "clips", sum(r["duration"] for r in clip_refs.values()),
            {stem: r["text"] for stem, r in clip_refs.items()}),
        "1 clip (start-up)": (
            "one", out / "clips" / f"{first['id']}.wav", first["duration"], {first["id"]: first["text"]}),
    }
    systems = [(f"dllm-asr ({'model default' if s == 'default' else '--strategy ' + s}, --dtype {d})", s, d)
               for s in args.strategy for d in args.dtype] + [("faster-whisper tiny.en int8", None, None)]
    runs = []
    for system, strategy, dtype in systems:
        for label, (suffix, source, seconds, refs) in inputs.items():
            name = "fw" if strategy is None else "-".join([*shlex.split(strategy), dtype]).replace("--", "")
            run_dir = out / "runs" / f"{name}-{suffix}"
            run_dir.mkdir(parents=True)
            command = (faster_whisper_command(source, run_dir, prepared, args.threads) if strategy is None
                       else dllm_asr_command(source, run_dir, strategy, args.threads, dtype))
            print(f"running {system} on {label} ...", flush=True)
            code, wall, rss = run_child(command, run_dir / "log.txt")
            if code != 0:
                print(f"  failed (exit code {code}); see {run_dir / 'log.txt'}", file=sys.stderr)
            runs.append((system, label, seconds, wall, rss, code, run_dir, strategy, refs))

    from dllm_asr.evaluation.metrics import score

    rows = []
    for system, label, seconds, wall, rss, code, run_dir, strategy, refs in runs:
        wer = None
        if code == 0:
            hyps = faster_whisper_hyps(run_dir) if strategy is None else dllm_asr_hyps(run_dir)
            wer = score(refs, hyps).wer
        rows.append(Row(system, label, seconds, wall, rss, wer))
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| system | input | audio s | wall s | RTF | peak RSS MiB | WER % |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        wer = "failed" if r.wer is None else f"{100 * r.wer:.2f}"
        lines.append(f"| {r.system} | {r.input} | {r.audio_seconds:.1f} | {r.wall_seconds:.1f} | "
                     f"{r.wall_seconds / r.audio_seconds:.3f} | {r.peak_rss_mib:.0f} | {wer} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help='JSONL manifest: {"id", "audio", "text"} per line')
    p.add_argument("--out", required=True, help="folder for the inputs, transcripts and results.md")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the long file")
    p.add_argument("--clips", type=int, default=100, help="number of short clips")
    p.add_argument("--strategy", nargs="+", default=["default", "ar"],
                   help="dllm-asr strategies to run, one child each ('default': the model's own); a strategy may "
                        "carry its flags, quoted: 'ar --ar-pad-to-seconds 10'")
    p.add_argument("--dtype", nargs="+", default=["auto"],
                   help="dllm-asr --dtype values; each strategy runs once per dtype (auto: bfloat16 on a CPU "
                        "with native bf16 matrix instructions, else float32)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for both systems (0: each library's default)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    claim_out_dir(out)
    prepared = build_inputs(args, out)
    own_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = benchmark(args, out, prepared)
    result = table(rows)
    print("\n" + result)
    command = shlex.join([sys.executable, *sys.argv])
    (out / "results.md").write_text(
        f"# Transcription speed ({datetime.datetime.now().isoformat(timespec='seconds')})\n\n"
        f"`{command}`\n\n{os.cpu_count()} CPUs, threads={args.threads}. Wall includes interpreter start and "
        f"model loading; peak RSS of each child via wait4 (floor: this script's own {own_rss:.0f} MiB).\n\n"
        f"{result}\n", encoding="utf-8")
    print(f"\n(peak RSS floor, this script's own: {own_rss:.0f} MiB; written to {out / 'results.md'})")


if __name__ == "__main__":
    main()
