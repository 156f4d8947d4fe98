from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile

from dllm_asr.audio.augment import Augmenter, AugmentConfig
from dllm_asr.data.clips import (AudioDataset, DurationBatchSampler, collate_utterances, load_clip,
                                 utterance_durations)
from dllm_asr.data.manifests import (DataError, Utterance, load_dataset, read_jsonl_manifest, read_kaldi_dir,
                                     read_librispeech, write_jsonl_manifest)

SR = 16000


def tone(seconds: float, freq: float = 440.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_audio(path: Path, seconds: float, sr: int = SR, freq: float = 440.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, tone(seconds, freq, sr), sr)
    return path


def write_manifest(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# ----------------------------------------------------------------------------- readers


def test_jsonl_manifest_fields_and_relative_paths(tmp_path):
    write_audio(tmp_path / "wavs" / "a.wav", 0.5)
    write_audio(tmp_path / "b.wav", 1.0)
    manifest = write_manifest(tmp_path / "train.jsonl", [
        {"audio": "wavs/a.wav", "text": "hello there"},
        {"id": "bee", "audio": str(tmp_path / "b.wav"), "text": "b", "duration": 0.4, "offset": 0.25,
         "prior": "bee", "speaker": "s1"},
    ])
    first, second = read_jsonl_manifest(manifest)
    assert first == Utterance(id="a", audio=str(tmp_path / "wavs" / "a.wav"), text="hello there",
                              origin=f"{manifest}:1")
    assert (second.id, second.duration, second.offset, second.prior, second.speaker) == ("bee", 0.4, 0.25, "bee", "s1")
    assert load_dataset(manifest) == [first, second]


def test_jsonl_default_ids_are_unique_but_explicit_repeats_are_errors(tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [
        {"audio": "x.wav", "text": "a", "offset": 0}, {"audio": "x.wav", "text": "b", "offset": 1}])
    assert [u.id for u in read_jsonl_manifest(manifest)] == ["x", "x-L2"]
    write_manifest(manifest, [{"id": "u", "audio": "x.wav", "text": "a"}, {"id": "u", "audio": "y.wav", "text": "b"}])
    with pytest.raises(DataError, match=r"m.jsonl:2: repeated utterance id 'u'"):
        read_jsonl_manifest(manifest)


@pytest.mark.parametrize("record, message", [
    ({"audio": "a.wav"}, r'm.jsonl:2: missing or non-string "text" field'),
    ({"text": "hi"}, r'm.jsonl:2: missing or non-string "audio" field'),
    ('{"audio": "a.wav", "text": ', r"m.jsonl:2: invalid JSON"),
    ("[1, 2]", r"m.jsonl:2: expected a JSON object"),
    ({"audio": "a.wav", "text": "x", "duration": "long"}, r'm.jsonl:2: "duration" must be a number'),
    ({"audio": "a.wav", "text": "x", "duration": 0}, r'm.jsonl:2: "duration" must be positive'),
    ({"audio": "a.wav", "text": "x", "offset": -1}, r'm.jsonl:2: "offset" must be non-negative'),
])
def test_malformed_manifest_lines_stop_or_skip(tmp_path, caplog, record, message):
    manifest = write_manifest(tmp_path / "m.jsonl", [{"audio": "ok.wav", "text": "fine"}, record])
    with pytest.raises(DataError, match=message):
        read_jsonl_manifest(manifest, on_error="stop")
    with caplog.at_level(logging.WARNING, logger="dllm_asr.data.manifests"):
        kept = read_jsonl_manifest(manifest, on_error="skip")
    assert [u.id for u in kept] == ["ok"]
    assert len(caplog.records) == 1 and "m.jsonl:2" in caplog.records[0].getMessage()


def test_librispeech_layout(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "dev-clean" / "84" / "121123"
    write_audio(chapter / "84-121123-0000.flac", 0.3)
    write_audio(chapter / "84-121123-0001.flac", 0.2)
    (chapter / "84-121123.trans.txt").write_text("84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS\n")
    utts = read_librispeech(tmp_path)
    assert [(u.id, u.text, u.speaker) for u in utts] == [
        ("84-121123-0000", "GO DO YOU HEAR", "84"), ("84-121123-0001", "BUT IN LESS", "84")]
    assert utts[0].audio == str(chapter / "84-121123-0000.flac")
    assert utts[1].origin.endswith("84-121123.trans.txt:2")
    assert load_dataset(tmp_path) == utts
    with pytest.raises(DataError, match="no \\*.trans.txt files"):
        read_librispeech(tmp_path / "LibriSpeech" / "nothing-here")


def test_kaldi_dir_plain_and_with_segments(tmp_path):
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    write_audio(tmp_path / "rec1.wav", 2.0)
    write_audio(tmp_path / "rec2.wav", 1.0)
    (data / "wav.scp").write_text(f"rec1 {tmp_path / 'rec1.wav'}\nrec2 ../../rec2.wav\n")
    (data / "text").write_text("rec1 ONE TWO\nrec2 THREE\n")
    (data / "utt2spk").write_text("rec1 alice\nrec2 bob\n")
    utts = load_dataset(data)
    assert [(u.id, u.text, u.speaker, u.offset, u.duration) for u in utts] == [
        ("rec1", "ONE TWO", "alice", 0.0, None), ("rec2", "THREE", "bob", 0.0, None)]
    assert Path(utts[1].audio).resolve() == (tmp_path / "rec2.wav").resolve()

    (data / "segments").write_text("u1 rec1 0.5 1.25\nu2 rec1 1.25 -1\n")
    (data / "text").write_text("u1 HELLO\nu2 WORLD\n")
    (data / "utt2spk").write_text("u1 alice\nu2 alice\n")
    u1, u2 = read_kaldi_dir(data)
    assert (u1.audio, u1.offset, u1.duration) == (str(tmp_path / "rec1.wav"), 0.5, 0.75)
    assert (u2.offset, u2.duration) == (1.25, None)
    assert len(load_clip(u1)) == int(0.75 * SR)
    assert len(load_clip(u2)) == int(0.75 * SR)


def test_kaldi_errors_name_file_and_line(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "wav.scp").write_text("r1 /x/r1.wav\nr2 sox /x/r2.sph -t wav - |\n")
    (data / "text").write_text("r1 A\nr2 B\nr3 C\n")
    with pytest.raises(DataError, match=r"wav.scp:2: command pipes in wav.scp are not supported"):
        read_kaldi_dir(data)
    assert [u.id for u in read_kaldi_dir(data, on_error="skip")] == ["r1"]  # r2: pipe, r3: no recording
    (data / "wav.scp").write_text("r1 /x/r1.wav\n")
    with pytest.raises(DataError, match=r"text:2: recording 'r2' of utterance 'r2' is not in wav.scp"):
        read_kaldi_dir(data)
    (data / "text").write_text("r1 A\n")
    (data / "segments").write_text("r1 r1 2.0 1.0\n")
    with pytest.raises(DataError, match=r"segments:1: segment times must satisfy"):
        read_kaldi_dir(data)


def test_load_dataset_unknown_layout(tmp_path):
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="no such file or directory"):
        load_dataset(tmp_path / "missing.jsonl")


def test_write_and_read_back_manifest(tmp_path):
    utts = [Utterance("a", str(tmp_path / "a.wav"), "hi", duration=1.5, offset=0.5, prior="hey", speaker="s")]
    write_jsonl_manifest(utts, tmp_path / "out.jsonl")
    back = read_jsonl_manifest(tmp_path / "out.jsonl")
    assert back[0].text == "hi" and back[0].offset == 0.5 and back[0].prior == "hey" and back[0].duration == 1.5


def test_a_manifest_is_written_whole_or_not_at_all(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("the previous manifest\n")

    good = Utterance("a", str(tmp_path / "a.wav"), "hi")
    broken = types.SimpleNamespace(id="b")  # fails after the first line is written
    with pytest.raises(AttributeError):
        write_jsonl_manifest([good, broken], path)
    assert path.read_text() == "the previous manifest\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary file left


# ----------------------------------------------------------------------------- dataset and bad input


@pytest.fixture
def bad_manifest(tmp_path):
    write_audio(tmp_path / "good.wav", 0.5)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage that is not audio" * 4)
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), SR)
    return write_manifest(tmp_path / "m.jsonl", [
        {"audio": "good.wav", "text": "good"},
        {"audio": "missing.wav", "text": "missing"},
        {"audio": "corrupt.wav", "text": "corrupt"},
        {"audio": "empty.wav", "text": "empty"},
        {"id": "notext", "audio": "good.wav", "text": "   "},
        {"id": "late", "audio": "good.wav", "text": "offset past the end", "offset": 3.0},
    ])


EXPECTED_PROBLEMS = ["m.jsonl:2: .*missing.wav: audio file not found",
                     "m.jsonl:3: cannot load audio: .*corrupt.wav",
                     "m.jsonl:4: cannot load audio: .*empty.wav",
                     "m.jsonl:5: empty transcript for utterance 'notext'",
                     "m.jsonl:6: .*good.wav: empty audio \\(0 samples from offset 3.0s"]


def test_bad_items_are_skipped_with_one_warning_each(bad_manifest, caplog):
    dataset = AudioDataset(read_jsonl_manifest(bad_manifest), on_error="skip")
    with caplog.at_level(logging.WARNING, logger="dllm_asr.data.manifests"):
        items = [dataset[i] for i in range(len(dataset))]
    assert [item["id"] for item in items if item is not None] == ["good"]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 5
    for message, expected in zip(messages, EXPECTED_PROBLEMS):
        assert "\n" not in message
        assert __import__("re").search(expected, message), message


@pytest.mark.parametrize("index", range(1, 6))
def test_bad_items_stop_with_the_same_message(bad_manifest, index):
    dataset = AudioDataset(read_jsonl_manifest(bad_manifest), on_error="stop")
    assert dataset[0]["audio"].shape == (SR // 2,)
    with pytest.raises(DataError, match=EXPECTED_PROBLEMS[index - 1]):
        dataset[index]


def test_loader_never_crashes_mid_epoch_on_bad_items(bad_manifest):
    dataset = AudioDataset(read_jsonl_manifest(bad_manifest), on_error="skip")
    sampler = DurationBatchSampler([1.0] * len(dataset), max_batch_size=4, shuffle=False)
    batches = [collate_utterances([dataset[i] for i in batch]) for batch in sampler.batches_for_epoch(0)]
    assert [b["ids"] for b in batches] == [["good"], []]
    assert batches[0]["audio"][0].dtype == np.float32


def test_validate_text_hook(tmp_path):
    write_audio(tmp_path / "a.wav", 0.2)
    utts = [Utterance("ok", str(tmp_path / "a.wav"), "hello"), Utterance("bad", str(tmp_path / "a.wav"), "héllo ☃")]

    def ascii_only(text: str) -> None:
        if not text.isascii():
            raise ValueError("characters the tokenizer cannot encode")

    dataset = AudioDataset(utts, on_error="stop", validate_text=ascii_only)
    assert dataset[0]["text"] == "hello"
    with pytest.raises(DataError, match="transcript of 'bad' rejected: characters the tokenizer cannot encode"):
        dataset[1]
    assert AudioDataset(utts, on_error="skip", validate_text=lambda t: t.isascii())[1] is None


def test_collate_drops_none():
    item = {"id": "a", "index": 0, "audio": np.zeros(3, np.float32), "text": "x", "prior": None}
    batch = collate_utterances([None, item, None])
    assert batch["ids"] == ["a"] and batch["texts"] == ["x"] and batch["priors"] == [None]


def test_durations_from_manifest_header_or_missing(tmp_path):
    write_audio(tmp_path / "a.wav", 1.5)
    utts = [Utterance("m", str(tmp_path / "a.wav"), "x", duration=0.7),
            Utterance("h", str(tmp_path / "a.wav"), "x", offset=0.5),
            Utterance("gone", str(tmp_path / "nope.wav"), "x", origin="m.jsonl:3")]
    assert utterance_durations(utts, on_error="skip") == [0.7, pytest.approx(1.0), None]
    with pytest.raises(DataError, match="m.jsonl:3: .*nope.wav: audio file not found"):
        utterance_durations(utts, on_error="stop")


# ----------------------------------------------------------------------------- batching


def random_durations(n: int = 200, seed: int = 1) -> list[float]:
    return np.random.default_rng(seed).uniform(0.5, 20.0, n).round(3).tolist()


def test_batches_respect_limits_and_cover_every_item_once():
    durations = random_durations()
    sampler = DurationBatchSampler(durations, max_batch_seconds=60.0, max_batch_size=8, seed=3)
    batches = sampler.batches_for_epoch(0)
    assert sorted(i for b in batches for i in b) == list(range(len(durations)))
    for batch in batches:
        assert len(batch) <= 8
        assert len(batch) == 1 or len(batch) * max(durations[i] for i in batch) <= 60.0
    # bucketing keeps a batch's durations close: spread far below the corpus range of ~19.5 s
    spreads = [max(durations[i] for i in b) - min(durations[i] for i in b) for b in batches]
    assert np.mean(spreads) < 3.0


def test_long_utterance_gets_its_own_batch_and_none_durations_are_left_out():
    sampler = DurationBatchSampler([1.0, 50.0, None, 1.0], max_batch_seconds=10.0, shuffle=False)
    assert sampler.batches_for_epoch(0) == [[0, 3], [1]]


def test_batches_are_a_function_of_seed_and_epoch():
    durations = random_durations()
    a = DurationBatchSampler(durations, max_batch_seconds=60.0, seed=7)
    b = DurationBatchSampler(durations, max_batch_seconds=60.0, seed=7)
    assert a.batches_for_epoch(0) == b.batches_for_epoch(0)
    assert a.batches_for_epoch(0) != a.batches_for_epoch(1)
    assert a.batches_for_epoch(0) != DurationBatchSampler(durations, max_batch_seconds=60.0, seed=8).batches_for_epoch(0)


def test_sampler_rejects_bad_options():
    with pytest.raises(ValueError, match="max_batch_seconds and/or max_batch_size"):
        DurationBatchSampler([1.0])
    with pytest.raises(ValueError, match="num_buckets must be at least 1"):
        DurationBatchSampler([1.0], max_batch_size=1, num_buckets=0)


# ----------------------------------------------------------------------------- augmentation


def test_dataset_augmentation_depends_on_seed_epoch_index(tmp_path):
    write_audio(tmp_path / "a.wav", 1.0)
    dataset = AudioDataset([Utterance("a", str(tmp_path / "a.wav"), "x")], seed=4,
                           augment=Augmenter(AugmentConfig(noise_prob=1.0)))
    first, again = dataset[0]["audio"], dataset[0]["audio"]
    np.testing.assert_array_equal(first, again)
    dataset.set_epoch(1)
    assert not np.array_equal(first, dataset[0]["audio"])
