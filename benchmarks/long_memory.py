"""Peak memory and wall time of `dllm-asr transcribe` on long recordings (issue 13).

A benchmark that prints a table, not a test: nothing passes or fails, and the wall times depend
on the machine and whatever else runs on it. Each file is transcribed by a fresh child process,
`python -m dllm_asr transcribe FILE --device cpu --output-format txt --output-dir OUT/<stem>`
(plus any `--args`), one after another. Per file it prints:
  * audio min: the recording's length (soundfile's header; ffmpeg-only formats show "?");
  * wall s: from starting the child to its exit (imports and model loading included), and RTF;
  * peak RSS MiB: the child's own ru_maxrss from os.wait4. Linux carries a parent's resident
    set into a forked child's high-water mark, so this script imports neither torch nor
    dllm_asr and stays small.
Streaming keeps the peak independent of the recording's length: a 120-min file should peak
about where a 10-min one does.

    python benchmarks/long_memory.py /work/longaudio/long10.wav /work/longaudio/long30.wav --out /tmp/lm
    python benchmarks/long_memory.py talk.flac --pythonpath /tmp/old_tree   # another copy of the package
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path


def audio_minutes(path: Path) -> float | None:
    """The file's length in minutes from its header, None when soundfile cannot read it."""
    try:
        import soundfile

        info = soundfile.info(str(path))
    except Exception:  # mp3, g722, ...: only ffmpeg knows; the table shows "?"
        return None
    return info.frames / info.samplerate / 60


def transcribe_command(path: Path, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "dllm_asr", "transcribe", "--device", "cpu", "--output-format", "txt",
            "--output-dir", str(out), "--overwrite", *extra, str(path)]


def run_child(command: list[str], log: Path, env: dict[str, str]) -> tuple[int, float, float]:
    """Run `command` to its end; (exit code, wall seconds, peak RSS MiB of that process alone)."""
    with open(log, "w") as log_file:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        # wait4, not child.wait(): it also returns the rusage of exactly this child
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
    return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss / 1024  # Linux: KiB


def child_env(pythonpath: str | None) -> dict[str, str]:
    """This process's environment, with `pythonpath` first on PYTHONPATH when given."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="recordings to transcribe, one child each")
    parser.add_argument("--out", type=Path, default=Path("long_memory_out"),
                        help="folder for the transcripts (OUT/<stem>/<stem>.txt) and the children's logs")
    parser.add_argument("--args", default="", help="more `dllm-asr transcribe` flags, one quoted string")
    parser.add_argument("--pythonpath", help="put this folder first on the children's PYTHONPATH "
                                             "(to measure another copy of the dllm_asr package)")
    args = parser.parse_args(argv)
    env, extra = child_env(args.pythonpath), shlex.split(args.args)
    print(f"{'file':<28} {'audio min':>9} {'wall s':>8} {'RTF':>6} {'peak RSS MiB':>12} {'exit':>4}", flush=True)
    failed = 0
    for path in args.files:
        out = args.out / path.stem
        out.mkdir(parents=True, exist_ok=True)
        code, wall, peak = run_child(transcribe_command(path, out, extra), out / "log.txt", env)
        minutes = audio_minutes(path)
        rtf = f"{wall / (60 * minutes):6.2f}" if minutes else f"{'?':>6}"
        shown = f"{minutes:9.1f}" if minutes is not None else f"{'?':>9}"
        print(f"{path.name:<28} {shown} {wall:8.0f} {rtf} {peak:12.0f} {code:>4}", flush=True)
        failed += code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
