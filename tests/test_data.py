from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile

from dllm_asr.data import (
    DEFAULT_PROMPT,
    AudioDataset,
    Augmenter,
    AugmentConfig,
    DataError,
    DurationBatchSampler,
    Utterance,
    add_noise,
    collate_utterances,
    exponential_decay_ir,
    load_clip,
    load_dataset,
    make_loader,
    prompt_text,
    read_jsonl_manifest,
    read_kaldi_dir,
    read_librispeech,
    reverberate,
    speed_perturb,
    utterance_durations,
    write_jsonl_manifest,
)

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
    with caplog.at_level(logging.WARNING, logger="dllm_asr.data"):
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
    with caplog.at_level(logging.WARNING, logger="dllm_asr.data"):
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
    batches = list(make_loader(dataset, sampler))
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
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(durations)))
    for batch in batches:
        assert len(batch) <= 8
        assert len(batch) == 1 or len(batch) * max(durations[i] for i in batch) <= 60.0
    # bucketing keeps a batch's durations close: spread far below the corpus range of ~19.5 s
    spreads = [max(durations[i] for i in b) - min(durations[i] for i in b) for b in batches]
    assert np.mean(spreads) < 3.0


def test_long_utterance_gets_its_own_batch_and_none_durations_are_left_out():
    sampler = DurationBatchSampler([1.0, 50.0, None, 1.0], max_batch_seconds=10.0, shuffle=False)
    assert list(sampler) == [[0, 3], [1]]


def test_batches_are_a_function_of_seed_and_epoch():
    durations = random_durations()
    a = DurationBatchSampler(durations, max_batch_seconds=60.0, seed=7)
    b = DurationBatchSampler(durations, max_batch_seconds=60.0, seed=7)
    assert a.batches_for_epoch(0) == b.batches_for_epoch(0)
    assert a.batches_for_epoch(0) != a.batches_for_epoch(1)
    assert a.batches_for_epoch(0) != DurationBatchSampler(durations, max_batch_seconds=60.0, seed=8).batches_for_epoch(0)
    epoch0, epoch1 = list(a), list(a)  # a second pass moves on to the next epoch
    assert epoch0 == a.batches_for_epoch(0) and epoch1 == a.batches_for_epoch(1)


def test_resume_from_state_dict_continues_exactly():
    durations = random_durations()
    reference = DurationBatchSampler(durations, max_batch_seconds=45.0, seed=11)
    full = [list(reference), list(reference)]  # epochs 0 and 1

    killed = DurationBatchSampler(durations, max_batch_seconds=45.0, seed=11)
    list(killed)  # epoch 0 done
    iterator = iter(killed)
    served = [next(iterator) for _ in range(5)]
    state = json.loads(json.dumps(killed.state_dict()))  # as saved in a checkpoint
    assert state == {"seed": 11, "epoch": 1, "index": 5}

    resumed = DurationBatchSampler(durations, max_batch_seconds=45.0, seed=0)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # a training loop's set_epoch for the current epoch keeps the position
    assert served + list(resumed) == full[1]


def test_state_dict_with_batches_consumed_and_end_of_epoch():
    durations = random_durations(50)
    sampler = DurationBatchSampler(durations, max_batch_size=4, seed=2)
    prefetched = list(sampler)  # a prefetching loader has drawn the whole epoch
    state = sampler.state_dict(batches_consumed=3)
    resumed = DurationBatchSampler(durations, max_batch_size=4, seed=2)
    resumed.load_state_dict(state)
    assert list(resumed) == prefetched[3:]
    assert list(resumed) == sampler.batches_for_epoch(1)


def test_replicas_split_batches_evenly():
    durations = random_durations(101)
    ranks = [DurationBatchSampler(durations, max_batch_size=4, seed=5, num_replicas=2, rank=r) for r in range(2)]
    b0, b1 = (r.batches_for_epoch(0) for r in ranks)
    assert len(b0) == len(b1)
    assert not set(i for b in b0 for i in b) & set(i for b in b1 for i in b)


def test_sampler_rejects_bad_options():
    with pytest.raises(ValueError, match="max_batch_seconds and/or max_batch_size"):
        DurationBatchSampler([1.0])
    with pytest.raises(ValueError, match="rank 2 not in"):
        DurationBatchSampler([1.0], max_batch_size=1, num_replicas=2, rank=2)


# ----------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturb_changes_length_and_pitch(factor):
    wave = tone(1.0, freq=500.0)
    fast = speed_perturb(wave, factor)
    assert abs(len(fast) - len(wave) / factor) <= 1
    spectrum = np.abs(np.fft.rfft(fast))
    peak_hz = np.argmax(spectrum) * SR / len(fast)
    assert peak_hz == pytest.approx(500.0 * factor, abs=3.0)  # pitch moves with speed
    assert speed_perturb(wave, 1.0) is wave


def test_add_noise_hits_the_requested_snr():
    wave = tone(1.0)
    rng = np.random.default_rng(0)
    noisy = add_noise(wave, 10.0, rng)
    noise = noisy - wave
    assert 10 * np.log10(np.mean(wave ** 2) / np.mean(noise ** 2)) == pytest.approx(10.0, abs=1e-3)
    looped = add_noise(wave, 0.0, rng, noise=np.ones(100, dtype=np.float32))
    assert np.mean((looped - wave) ** 2) == pytest.approx(np.mean(wave ** 2), rel=1e-4)
    silence = np.zeros(10, np.float32)
    np.testing.assert_array_equal(add_noise(silence, 10.0, rng), silence)


def test_reverberation_with_synthetic_ir():
    ir = exponential_decay_ir(SR, rt60=0.3)
    assert ir.shape == (int(0.3 * SR),) and ir[0] == 1.0
    # envelope decays 60 dB over rt60: the last 10% is far quieter than the first 10%
    head, tail = np.abs(ir[1:480]).mean(), np.abs(ir[-480:]).mean()
    assert 20 * np.log10(head / tail) > 40
    impulse = np.zeros(SR, np.float32)
    impulse[100] = 1.0
    wet = reverberate(impulse, ir)
    assert wet.shape == impulse.shape
    assert np.argmax(np.abs(wet)) == 100  # aligned on the direct path
    assert np.mean(wet ** 2) == pytest.approx(np.mean(impulse ** 2), rel=1e-4)
    assert np.count_nonzero(np.abs(wet[101:]) > 1e-4) > 1000  # a reverberant tail


def test_augmenter_is_seeded_and_uses_files(tmp_path):
    noise_file = write_audio(tmp_path / "noise.wav", 0.3, freq=3000.0)
    ir_file = tmp_path / "ir.wav"
    soundfile.write(ir_file, exponential_decay_ir(SR, 0.2), SR)
    config = AugmentConfig(speed_factors=(0.9, 1.1), noise_prob=1.0, noise_files=(str(noise_file),),
                           reverb_prob=1.0, ir_files=(str(ir_file),))
    augment = Augmenter(config)
    wave = tone(1.0)
    first = augment(wave, np.random.default_rng([1, 0, 5]))
    again = augment(wave, np.random.default_rng([1, 0, 5]))
    other = augment(wave, np.random.default_rng([1, 1, 5]))
    np.testing.assert_array_equal(first, again)
    assert len(first) in (round(SR / 0.9), round(SR / 1.1))
    assert len(first) != len(other) or not np.array_equal(first, other)
    with pytest.raises(ValueError, match="noise_prob must be in"):
        Augmenter(AugmentConfig(noise_prob=2.0))


def test_dataset_augmentation_depends_on_seed_epoch_index(tmp_path):
    write_audio(tmp_path / "a.wav", 1.0)
    dataset = AudioDataset([Utterance("a", str(tmp_path / "a.wav"), "x")], seed=4,
                           augment=Augmenter(AugmentConfig(noise_prob=1.0)))
    first, again = dataset[0]["audio"], dataset[0]["audio"]
    np.testing.assert_array_equal(first, again)
    dataset.set_epoch(1)
    assert not np.array_equal(first, dataset[0]["audio"])


# ----------------------------------------------------------------------------- prompts


def test_prompt_templates():
    utt = Utterance("spk1-0001", "a.wav", "x", duration=2.5, prior="a first guess", speaker="spk1")
    assert prompt_text() == DEFAULT_PROMPT == "Transcribe the audio."
    assert prompt_text("Transcribe {id} ({duration}s). Draft: {prior}", utt) == \
        "Transcribe spk1-0001 (2.50s). Draft: a first guess"
    with pytest.raises(ValueError, match=r"unknown field \{lang\}"):
        prompt_text("Transcribe in {lang}", utt)
