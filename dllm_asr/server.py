"""A transcription server: OpenAI's `/v1/audio/transcriptions`, dynamic batching, a web page.

`dllm-asr serve` runs `create_app` under uvicorn. Requests speak OpenAI's audio API (multipart
`file`, `model`, `response_format` json | text | srt | vtt | verbose_json, `language`, `prompt`
(the initial prompt of the AR strategies, ignored by the diffusion ones), `temperature`,
`timestamp_granularities[]` ("word" adds verbose_json's `words`); unknown fields are ignored,
as OpenAI does), so the official `openai` client and the apps built on it work
unchanged. Extensions under their own names: `strategy`, `steps`,
`threshold` (any `TranscribeOptions` field, in fact), `prior` with `mask` / `chunks` (deliberate
a given transcript), and `POST /v1/audio/transcriptions/steps`, which streams the decoding trace
as server-sent events for the web page at `/`.

Dynamic batching (`Batcher`): a diffusion decoder decodes a batch in the same few parallel steps
as one clip, so requests that arrive within `max_wait_seconds` of each other (up to `max_batch`)
with the same options are decoded in one `transcribe_batch` call. One thread owns the model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import os
import queue
import socket
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from dllm_asr.audio.features import SAMPLE_RATE
from dllm_asr.audio.io import AudioError, load_audio
from dllm_asr.paths import package_file
from dllm_asr.transcription.file_batches import FileResult
from dllm_asr.transcription.long_form import transcribe_batch
from dllm_asr.transcription.options import DeliberationOptions, TranscribeOptions, field_type
from dllm_asr.transcription.result import Transcript
from dllm_asr.transcription.strategies import deliberate_batch, model_options

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
ENGLISH = {"en", "english"}


@dataclass(frozen=True)
class ServerLimits:
    """What one server accepts and how it batches."""

    max_upload_bytes: int = 25 * 2 ** 20
    """Largest upload (OpenAI's own cap, 25 MiB); larger ones get 413."""
    max_audio_seconds: float = 3600.0
    max_batch: int = 8
    """Requests decoded together at most."""
    max_wait_seconds: float = 0.02
    """How long the first request of a batch waits for others (0: no waiting; requests that queued
    while the previous batch decoded are still taken; `max_batch` 1 decodes each alone)."""
    timeout_seconds: float = 300.0
    """A request not answered by then gets 504."""
    api_key: str | None = None
    """If set, every /v1 request needs `Authorization: Bearer <key>`."""


class RequestError(Exception):
    """A bad request: its HTTP status and a one-line message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    audio: object
    options: TranscribeOptions
    deliberation: tuple[str, DeliberationOptions] | None  # (prior text, how)
    future: concurrent.futures.Future

    def key(self) -> str:
        """Jobs with equal keys can share one batch."""
        return json.dumps([asdict(self.options), self.deliberation and asdict(self.deliberation[1])])


LENGTH_RATIO = 2.0
"""A batch's longest clip is at most this many times its shortest (above `SHORT_SECONDS`)."""
SHORT_SECONDS = 5.0
"""Clips up to this long share a batch whatever their lengths (each decodes in well under a second)."""


def length_groups(jobs: list[Job]) -> list[list[Job]]:
    """The jobs split into groups of similar audio length, shortest group first: a job joins the
    current group while it is within `LENGTH_RATIO` of the group's shortest clip or at most
    `SHORT_SECONDS` long. A batch is answered when its slowest clip is decoded, so this keeps a
    1-s request from waiting for a 25-s one."""
    groups: list[list[Job]] = []
    for job in sorted(jobs, key=lambda j: len(j.audio)):
        seconds = len(job.audio) / SAMPLE_RATE
        if groups and seconds <= max(SHORT_SECONDS, LENGTH_RATIO * len(groups[-1][0].audio) / SAMPLE_RATE):
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


class Batcher:
    """One thread that owns the model and decodes queued jobs in batches: whatever arrives
    within `max_wait_seconds` of the first job, up to `max_batch` jobs, grouped by options and
    then by audio length (`length_groups`)."""

    def __init__(self, model, limits: ServerLimits) -> None:
        self.model, self.limits = model, limits
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.batch_sizes: list[int] = []
        self.thread = threading.Thread(target=self._run, name="dllm-asr-batcher", daemon=True)
        self.thread.start()

    def submit(self, audio, options: TranscribeOptions, deliberation: tuple | None = None) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.jobs.put(Job(audio, options, deliberation, future))
        return future

    def close(self) -> None:
        """Finish the queued jobs, then stop the thread."""
        self.jobs.put(None)
        self.thread.join()

    def _run(self) -> None:
        while (first := self.jobs.get()) is not None:
            batch, stop = self._collect(first)
            groups: dict[str, list[Job]] = {}
            for job in batch:
                groups.setdefault(job.key(), []).append(job)
            for jobs in groups.values():
                for similar in length_groups(jobs):  # shortest first: short clips never wait for a long one
                    self._decode(similar)
            if stop:
                return

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        batch, deadline = [first], time.monotonic() + self.limits.max_wait_seconds
        while len(batch) < self.limits.max_batch:
            try:
                job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _decode(self, jobs: list[Job]) -> None:
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        self.batch_sizes.append(len(live))
        audios, options = [job.audio for job in live], live[0].options
        try:
            if live[0].deliberation is None:
                transcripts = transcribe_batch(self.model, audios, options)
            else:
                priors = [job.deliberation[0] for job in live]
                transcripts = deliberate_batch(self.model, audios, priors, live[0].deliberation[1], options)
        except Exception as error:  # the clients hear of it; the server goes on
            for job in live:
                job.future.set_exception(error)
            return
        for job, transcript in zip(live, transcripts):
            job.future.set_result(transcript)


# ----------------------------------------------------------------------------- requests


def check_api_key(limits: ServerLimits, authorization: str | None) -> None:
    if limits.api_key and authorization != f"Bearer {limits.api_key}":
        raise RequestError(401, "missing or wrong API key (send the header 'Authorization: Bearer <key>')")


def read_upload(data: bytes, filename: str, limits: ServerLimits):
    """The uploaded bytes -> 16 kHz waveform; RequestError 400/413 naming the problem."""
    if len(data) > limits.max_upload_bytes:
        raise RequestError(413, f"upload of {len(data)} bytes is over this server's limit of {limits.max_upload_bytes}")
    if not data:
        raise RequestError(400, f"the uploaded file {filename!r} is empty")
    suffix = Path(filename).suffix if Path(filename).suffix.isascii() else ""
    with tempfile.TemporaryDirectory(prefix="dllm_asr_upload_") as folder:
        path = Path(folder) / f"upload{suffix[:16]}"
        path.write_bytes(data)
        try:
            audio = load_audio(path)
        except AudioError as error:
            raise RequestError(400, str(error).replace(str(path), repr(filename))) from None
    seconds = len(audio) / SAMPLE_RATE
    if seconds > limits.max_audio_seconds:
        raise RequestError(400, f"{filename!r} is {seconds:.0f} s long; this server takes at most "
                                f"{limits.max_audio_seconds:.0f} s")
    return audio


def request_options(model, form: dict) -> tuple[TranscribeOptions, tuple | None]:
    """TranscribeOptions from the form's fields over the model's own settings, and the
    deliberation (prior, DeliberationOptions from the form's fields of that name) if a `prior`
    was given. RequestError 400 on a bad value."""
    language = str(form.get("language") or "en").lower()
    if language not in ENGLISH:
        raise RequestError(400, f"language {language!r}: this model transcribes English only (en)")
    changes = {}
    for f in fields(TranscribeOptions):
        if f.name in form and f.name != "trace":
            changes[f.name] = parse_field(f.name, form[f.name], field_type(f))
    if form.get("prompt") and "initial_prompt" not in changes and \
            changes.get("strategy", model.config.decoding.get("strategy")) in ("ar", "prior"):
        changes["initial_prompt"] = str(form["prompt"])  # OpenAI's `prompt`; the diffusion decoder takes none
    try:
        options = model_options(model, **changes)
    except ValueError as error:
        raise RequestError(400, str(error).replace("--", "").replace("-", "_")) from None
    prior = form.get("prior")
    if prior is None:
        return options, None
    changes = {f.name: parse_field(f.name, form[f.name], field_type(f))
               for f in fields(DeliberationOptions) if f.name in form}
    try:
        return options, (str(prior), DeliberationOptions(**changes))
    except ValueError as error:
        raise RequestError(400, str(error).replace("--deliberation-rules", "rules").replace("--", "")) from None


def parse_field(name: str, value, kind: type):
    """A form string as a value of type `kind`."""
    try:
        if kind is bool:
            return str(value).lower() in ("1", "true", "yes", "on")
        return kind(value)
    except (TypeError, ValueError):
        raise RequestError(400, f"{name}: {value!r} is not a valid {kind.__name__}") from None


def render_response(transcript: Transcript, fmt: str, duration: float, options: TranscribeOptions,
                    seconds: float) -> tuple[str, str]:
    """(body, media type) of a transcript in one of RESPONSE_FORMATS."""
    from dllm_asr.transcription.outputs import render
    from dllm_asr.model.whisper_fallback import compression_ratio

    result = FileResult("upload", transcript, seconds, duration=duration)
    if fmt == "json":
        return json.dumps({"text": transcript.text}), "application/json"
    if fmt == "text":
        return transcript.text + "\n", "text/plain"
    if fmt in ("srt", "vtt"):
        return render(result, fmt, options), "text/plain"
    segments = [{"id": i, "seek": 0, "start": s.start, "end": s.end, "text": s.text, "tokens": [],
                 "temperature": options.temperature,
                 "avg_logprob": math.log(s.confidence) if s.confidence else 0.0,
                 "compression_ratio": compression_ratio(s.text), "no_speech_prob": transcript.no_speech_prob or 0.0,
                 "confidence": s.confidence} for i, s in enumerate(transcript.segments or [])]
    body = {"task": "transcribe", "language": "english", "duration": duration, "text": transcript.text,
            "segments": segments,
            **({} if transcript.words is None else
               {"words": [{"word": w.text, "start": w.start, "end": w.end} for w in transcript.words]}),
            "dllm_asr": {"strategy": options.strategy, "nfe": transcript.nfe, "steps": transcript.steps,
                         "decode_seconds": seconds, "tokens": transcript.tokens,
                         "token_confidences": transcript.confidences, "truncated": transcript.truncated}}
    return json.dumps(body), "application/json"


# ----------------------------------------------------------------------------- the app


def create_app(model, limits: ServerLimits = ServerLimits(), model_name: str = "dllm-asr-tiny-en"):
    """The FastAPI application serving `model` (see the module docstring)."""
    batcher: Batcher | None = None

    @asynccontextmanager
    async def lifespan(app):
        nonlocal batcher
        batcher = Batcher(model, limits)
        app.state.batcher = batcher
        yield
        await asyncio.to_thread(batcher.close)  # uvicorn has let in-flight requests finish

    app = FastAPI(title="dllm-asr", lifespan=lifespan, docs_url=None, redoc_url=None)

    def error(status: int, message: str) -> JSONResponse:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

    @app.exception_handler(RequestError)
    async def request_error(_, exc: RequestError):
        return error(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def server_error(_, exc: Exception):  # never a stack trace in a response
        return error(500, f"internal error: {type(exc).__name__}")

    async def transcribe_request(request: Request, trace: bool = False):
        check_api_key(limits, request.headers.get("authorization"))
        length = int(request.headers.get("content-length") or 0)
        if length > limits.max_upload_bytes + 64 * 1024:  # refused before the body is read
            raise RequestError(413, f"request of {length} bytes is over this server's limit of {limits.max_upload_bytes}")
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise RequestError(400, "no audio: send the file as the multipart field 'file'")
        fields_ = {k: v for k, v in form.items() if isinstance(v, str)}
        if "word" in form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities"):
            fields_["word_timestamps"] = "true"  # OpenAI's way of asking for verbose_json's `words`
        fmt = fields_.get("response_format", "json")
        if fmt not in RESPONSE_FORMATS:
            raise RequestError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}")
        options, deliberation = request_options(model, fields_)
        if trace:
            options = TranscribeOptions(**{**asdict(options), "trace": True})
        data = await upload.read(limits.max_upload_bytes + 1)
        audio = await asyncio.to_thread(read_upload, data, upload.filename or "upload", limits)
        started = time.perf_counter()
        future = batcher.submit(audio, options, deliberation)
        try:
            transcript = await asyncio.wait_for(asyncio.wrap_future(future), limits.timeout_seconds)
        except asyncio.TimeoutError:
            future.cancel()
            raise RequestError(504, f"not decoded within {limits.timeout_seconds:.0f} s") from None
        except ValueError as exc:  # what the model cannot do with these options (e.g. ar on a diffusion-only model)
            raise RequestError(400, str(exc)) from None
        return transcript, fmt, len(audio) / SAMPLE_RATE, options, time.perf_counter() - started

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        transcript, fmt, duration, options, seconds = await transcribe_request(request)
        body, media = render_response(transcript, fmt, duration, options, seconds)
        return Response(body, media_type=media)

    @app.post("/v1/audio/transcriptions/steps")
    async def steps(request: Request):
        transcript, _, duration, options, seconds = await transcribe_request(request, trace=True)
        return StreamingResponse(trace_events(model, transcript, options, seconds), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models(request: Request):
        check_api_key(limits, request.headers.get("authorization"))
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "dllm-asr"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "batches": len(batcher.batch_sizes) if batcher else 0}

    @app.get("/")
    async def page():
        return HTMLResponse(package_file("assets", "web", "index.html").read_text(encoding="utf-8"))

    return app


def trace_events(model, transcript: Transcript, options: TranscribeOptions, seconds: float):
    """Server-sent events: one `step` per decoding step (each position's token text, null while
    masked), then `done` with the transcript and its cost. A clip decoded in pieces (longer than
    the window) or by the AR decoder has no trace: only `done`."""
    for index, block in enumerate(transcript.trace or []):
        tokens = [None if t == model.mask_id else ("" if t == model.eos_id else model.tokenizer.decode([t]))
                  for t in block]
        yield f"event: step\ndata: {json.dumps({'step': index + 1, 'tokens': tokens})}\n\n"
    done = {"text": transcript.text, "nfe": transcript.nfe, "steps": transcript.steps,
            "seconds": round(seconds, 3), "strategy": options.strategy}
    yield f"event: done\ndata: {json.dumps(done)}\n\n"


def serve(model_path: str, host: str = "127.0.0.1", port: int = 8000, limits: ServerLimits = ServerLimits(),
          device: str = "cpu", dtype: str = "auto") -> None:
    """Load the model and serve it until interrupted (SIGINT/SIGTERM finish in-flight requests).

    The port is taken before the model loads, so a busy one is reported at once, not after it."""
    import uvicorn

    from dllm_asr.model.loading import load_model

    listening = listen_on(host, port)
    try:
        model = load_model(model_path, device=device, dtype=dtype)
        app = create_app(model, limits, model_name=Path(str(model_path)).name)
        config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=int(limits.timeout_seconds),
                                log_level=os.environ.get("DLLM_ASR_LOG_LEVEL", "info"))
        uvicorn.Server(config).run(sockets=[listening])
    finally:
        listening.close()


def listen_on(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port); OSError naming --host or --port when it cannot be."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as error:
        raise OSError(f"--host {host}: {error.strerror}") from None
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart may rebind at once
    try:
        listening.bind((host, port))
    except OSError as error:
        listening.close()
        raise OSError(f"--port {port}: cannot listen on {host}:{port} ({error.strerror})") from None
    return listening
