"""Load benchmark of `dllm-asr serve`: latency and throughput under concurrent clients.

This is a benchmark that prints (and writes) a table, not a test: nothing passes or fails, and
the figures depend on the machine and whatever else runs on it. Loopback only: the server is
started here, on 127.0.0.1 and a free port, and every request goes to it.

For each server setting (batching on: the default flags; `--max-wait-ms 0`; batching off:
`--max-batch 1`; see SETTINGS) and each concurrency level, this script
  * starts a fresh server, `python -m dllm_asr serve --host 127.0.0.1 --port P ...` (the real CLI,
    as a child process), and waits for `GET /health`;
  * sends one warm-up request (not counted);
  * runs C closed-loop clients (threads): each sends `POST /v1/audio/transcriptions` (a 16 kHz WAV,
    `response_format=json`) and, once answered, the next, until `--requests` requests have been
    sent in all or `--level-seconds` have passed;
  * stops the server (SIGINT, then SIGKILL if it does not exit) and reads its peak RSS
    (ru_maxrss) with `os.wait4`.
What is measured, per (setting, concurrency):
  * latency: from sending a request to having its whole answer (p50, p95 over the answered ones);
  * req/s: answered requests / wall time of the level (first request sent to last answer);
  * audio s/s: sum of the answered clips' durations / the same wall time;
  * errors: requests that got no 200 answer (HTTP error, timeout, refused);
  * peak RSS: the server's high-water resident set over its whole life (load, warm-up, level).
    Linux carries the parent's resident set into a child's high-water mark, so this script keeps
    its own small (no torch: the clips are converted in a spawned process) and reports that floor.

Audio: the first --clips clips of a JSONL manifest ({"audio": path, "duration": s, ...} per line),
converted once to 16 kHz mono WAV bytes in memory (`dllm_asr.audio.io.load_audio` + soundfile),
cycled across requests; without a manifest, the bundled `dllm_asr/assets/example.wav`.

    python benchmarks/serve_load.py --manifest data/real/asterisk.jsonl \
        --requests 32 --concurrency 1 4 16 --out docs/serve-benchmark.md
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib.util
import io
import itertools
import json
import multiprocessing
import os
import platform
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
SETTINGS = {  # name: (label in the table, extra `serve` flags)
    "on": ("batching on (defaults)", []),
    "wait0": ("--max-wait-ms 0", ["--max-wait-ms", "0"]),
    "off": ("batching off (--max-batch 1)", ["--max-batch", "1"]),
}
"""`--max-wait-ms 0` is documented as "no batching", but the batcher still takes whatever is
already queued when it picks up a job (queue.get with a 0 s timeout returns queued items), so
under load it batches the requests that piled up during the previous decode. `--max-batch 1` is
the setting that decodes each request alone; both are measured."""


@dataclass(frozen=True)
class Clip:
    name: str
    wav: bytes
    seconds: float


@dataclass
class Level:
    """What one (setting, concurrency) run measured."""

    setting: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    audio_seconds: float = 0.0
    errors: int = 0
    wall: float = 0.0
    peak_rss_mib: float = 0.0
    batches: int = 0
    """Decoding batches the server ran during the level (from /health)."""
    error_samples: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- audio


def example_wav() -> Path:
    """The bundled example, found without importing dllm_asr (which imports torch)."""
    spec = importlib.util.find_spec("dllm_asr")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("dllm_asr is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "assets" / "example.wav"


def manifest_paths(manifest: Path | None, count: int) -> list[str]:
    if manifest is None:
        return [str(example_wav())]
    with manifest.open(encoding="utf-8") as lines:
        rows = [json.loads(line) for line in itertools.islice(lines, count * 2) if line.strip()]
    paths = [str(row["audio"]) for row in rows[:count]]
    if not paths:
        sys.exit(f"{manifest}: no clips")
    return paths


def convert(paths: list[str]) -> list[tuple[str, bytes, float]]:
    """(name, 16 kHz WAV bytes, seconds) per path. Runs in a spawned process: it imports torch."""
    import soundfile

    from dllm_asr.audio.io import load_audio
    from dllm_asr.audio.features import SAMPLE_RATE

    clips = []
    for path in paths:
        audio = load_audio(path)
        buffer = io.BytesIO()
        soundfile.write(buffer, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        clips.append((Path(path).stem + ".wav", buffer.getvalue(), len(audio) / SAMPLE_RATE))
    return clips


def load_clips(manifest: Path | None, count: int) -> list[Clip]:
    paths = manifest_paths(manifest, count)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return [Clip(*clip) for clip in pool.submit(convert, paths).result(timeout=600)]


# ----------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(port: int, extra: list[str], log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "dllm_asr", "serve", "--host", HOST, "--port", str(port), *extra]
    with log.open("ab") as sink:
        sink.write(f"\n$ {shlex.join(command)}\n".encode())
        sink.flush()
        return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def batches_run(port: int) -> int:
    """How many decoding batches the server has run (its /health says)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=10) as answer:
        return int(json.loads(answer.read()).get("batches", 0))


def wait_healthy(server: subprocess.Popen, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with status {server.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server not healthy within {timeout:.0f} s")


def stop_server(server: subprocess.Popen, grace: float) -> float:
    """SIGINT, then SIGKILL after `grace` s; returns the server's peak RSS in MiB (wait4)."""
    if server.returncode is not None:  # already reaped (by poll): its rusage is gone
        return float("nan")
    try:
        server.send_signal(signal.SIGINT)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while True:
        pid, status, usage = os.wait4(server.pid, os.WNOHANG)
        if pid == server.pid:
            server.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_maxrss / 1024  # Linux: KiB
        if time.monotonic() > deadline:
            server.kill()
            _, status, usage = os.wait4(server.pid, 0)
            server.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_maxrss / 1024
        time.sleep(0.1)


# ----------------------------------------------------------------------------- the clients


def multipart(clip: Clip, fields: dict[str, str]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data upload of `clip` with `fields`."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{clip.name}"\r\n'
                 f"Content-Type: audio/wav\r\n\r\n".encode() + clip.wav + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def transcribe(port: int, clip: Clip, fields: dict[str, str], timeout: float) -> tuple[float, str | None]:
    """(latency s, None) for an answered request, else (latency s, what went wrong)."""
    body, content_type = multipart(clip, fields)
    request = urllib.request.Request(f"http://{HOST}:{port}/v1/audio/transcriptions", data=body,
                                     headers={"Content-Type": content_type}, method="POST")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            json.loads(answer.read())
            return time.perf_counter() - started, None
    except urllib.error.HTTPError as error:
        return time.perf_counter() - started, f"HTTP {error.code}: {error.read()[:200]!r}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        return time.perf_counter() - started, f"{type(error).__name__}: {error}"


def run_level(level: Level, port: int, clips: list[Clip], fields: dict[str, str], requests: int,
              seconds: float, timeout: float) -> None:
    """`level.concurrency` closed-loop clients share `requests` requests; none is sent after
    `seconds` have passed. Fills in latencies, audio seconds, errors and wall time."""
    tickets = iter(range(requests))
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                index = next(tickets, None)
            if index is None:
                return
            clip = clips[index % len(clips)]
            latency, problem = transcribe(port, clip, fields, timeout)
            with lock:
                if problem is None:
                    level.latencies.append(latency)
                    level.audio_seconds += clip.seconds
                else:
                    level.errors += 1
                    if len(level.error_samples) < 3:
                        level.error_samples.append(problem)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(level.concurrency) as pool:
        for future in [pool.submit(client) for _ in range(level.concurrency)]:
            future.result()
    level.wall = time.perf_counter() - started
    level.errors = requests - len(level.latencies)  # failed, or never sent (the time cap)


def measure(setting: str, extra: list[str], concurrency: int, clips: list[Clip], args: argparse.Namespace) -> Level:
    """One fresh server, one warm-up request, one level; the server is stopped even on error."""
    level, port = Level(setting, concurrency), free_port()
    server = start_server(port, extra, args.server_log)
    try:
        wait_healthy(server, port, args.start_timeout)
        _, problem = transcribe(port, clips[0], args.fields, args.request_timeout)
        if problem is not None:
            raise RuntimeError(f"warm-up request failed: {problem}")
        before = batches_run(port)
        run_level(level, port, clips, args.fields, args.requests, args.level_seconds, args.request_timeout)
        level.batches = batches_run(port) - before
    finally:
        level.peak_rss_mib = stop_server(server, args.stop_timeout)
    return level


# ----------------------------------------------------------------------------- the report


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; nan when empty."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def table(levels: list[Level]) -> str:
    rows = ["| setting | clients | requests ok | errors | p50 latency s | p95 latency s | req/s | audio s/s "
            "| batches | mean batch | peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for level in levels:
        ok, wall = len(level.latencies), level.wall or float("nan")
        mean_batch = ok / level.batches if level.batches else float("nan")
        rows.append(f"| {level.setting} | {level.concurrency} | {ok} | {level.errors} "
                    f"| {percentile(level.latencies, 50):.2f} | {percentile(level.latencies, 95):.2f} "
                    f"| {ok / wall:.2f} | {level.audio_seconds / wall:.2f} "
                    f"| {level.batches} | {mean_batch:.1f} | {level.peak_rss_mib:.0f} |")
    return "\n".join(rows)


def report(levels: list[Level], clips: list[Clip], args: argparse.Namespace, command: str) -> str:
    own_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total = sum(c.seconds for c in clips)
    source = args.manifest or "dllm_asr/assets/example.wav"
    errors = [f"- {level.setting}, {level.concurrency} clients: {sample}"
              for level in levels for sample in level.error_samples]
    return "\n".join([
        "# `dllm-asr serve` load benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}. "
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (`nproc`: "
        f"{len(os.sched_getaffinity(0))}), Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}. Model: the server's default. Clients and server share these cores.",
        "",
        f"Audio: {len(clips)} clip(s) from {source} ({total:.1f} s in all, {total / len(clips):.2f} s mean, "
        f"{max(c.seconds for c in clips):.1f} s longest), sent as 16 kHz 16-bit WAV, cycled across requests; "
        f"form fields {args.fields}.",
        "",
        "How: for each server setting (batching on: the defaults, `--max-batch 8 --max-wait-ms 20`; "
        "`--max-wait-ms 0`, documented as no batching, which still batches requests already queued; "
        "batching off: `--max-batch 1`, each request decoded alone) and each client count, a fresh "
        "`python -m dllm_asr serve "
        "--host 127.0.0.1` on a free port, one uncounted warm-up request, then that many closed-loop "
        f"clients (threads, urllib) share {args.requests} requests (none sent after {args.level_seconds:.0f} s), "
        "then SIGINT.",
        "",
        "Measured: latency = from sending a request to having its whole answer (so it includes upload, "
        "queueing, batching wait and decoding); req/s = answered requests / wall time of the level (first "
        "request sent to last answer); audio s/s = sum of the answered clips' durations / that wall time; "
        "errors = requests without a 200 answer or never sent; peak RSS = the server process's ru_maxrss "
        f"(os.wait4) over its life: model load, warm-up and the level (floor carried over from this script: "
        f"{own_rss:.0f} MiB); batches = decoding batches the server ran during the level (its `/health` "
        "count), mean batch = answered requests / batches.",
        "",
        table(levels),
        "",
        *(["Errors (first few):", "", *errors, ""] if errors else []),
    ])


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--manifest", "--clips", dest="manifest", type=Path, default=None,
                   help="JSONL manifest of clips (default: the bundled example.wav)")
    p.add_argument("--num-clips", type=int, default=32, help="first N clips of the manifest")
    p.add_argument("--requests", type=int, default=32, help="requests per (setting, concurrency)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="client counts")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                   help="server settings to run: " + "; ".join(f"{k} = {v[0]}" for k, v in SETTINGS.items()))
    p.add_argument("--threads", type=int, default=0, help="the server's --threads (0: torch's default)")
    p.add_argument("--field", action="append", default=[], metavar="NAME=VALUE",
                   help="extra form field for every request (e.g. strategy=..., steps=...)")
    p.add_argument("--level-seconds", type=float, default=300.0, help="no request sent after this, per level")
    p.add_argument("--request-timeout", type=float, default=300.0, help="client timeout per request, s")
    p.add_argument("--start-timeout", type=float, default=180.0, help="wait this long for /health, s")
    p.add_argument("--stop-timeout", type=float, default=30.0, help="SIGKILL the server after this, s")
    p.add_argument("--server-log", type=Path, default=Path("/tmp/serve_load_server.log"),
                   help="the servers' output is appended here")
    p.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = p.parse_args(argv)
    if args.requests < 1 or min(args.concurrency) < 1 or args.num_clips < 1:
        p.error("--requests, --concurrency and --num-clips must be >= 1")
    args.fields = {"model": "dllm-asr", "response_format": "json",
                   **dict(f.split("=", 1) for f in args.field)}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", __file__, *argv])
    clips = load_clips(args.manifest, args.num_clips)
    print(f"{len(clips)} clip(s), {sum(c.seconds for c in clips):.1f} s of audio; server log: {args.server_log}",
          flush=True)
    levels = []
    for setting in args.settings:
        label, flags = SETTINGS[setting]
        extra = [*flags, *(["--threads", str(args.threads)] if args.threads else [])]
        for concurrency in args.concurrency:
            level = measure(label, extra, concurrency, clips, args)
            levels.append(level)
            print(table([level]).splitlines()[-1], flush=True)
    text = report(levels, clips, args, command)
    print("\n" + table(levels))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
