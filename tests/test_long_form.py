"""Long recordings with the shipped default model: sixteen sentences of known text, read by flite
(deterministic) and joined with pauses, so each sentence's offset in the recording is known."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile

import dllm_asr
from dllm_asr.audio.features import SAMPLE_RATE
from dllm_asr.audio.io import load_audio
from dllm_asr.config import DEFAULT_MODEL
from dllm_asr.evaluation.metrics import word_error_rate
from dllm_asr.transcription.file_batches import transcribe_files
from dllm_asr.transcription.long_form import cached_model, transcribe_batch, window_seconds
from dllm_asr.transcription.options import TranscribeOptions
from dllm_asr.transcription.strategies import model_options

pytestmark = pytest.mark.slow

SENTENCES = [
    "The weather was cold and the wind blew all night.", "She opened the window and looked at the garden.",
    "We will meet at the station after lunch.", "He bought three apples and a loaf of bread.",
    "The children played in the park until dark.", "Please call me when you get home.",
    "The old house at the end of the road is empty.", "They walked along the river for an hour.",
    "My brother works in a small shop in town.", "The train was late again this morning.",
    "I left my keys on the kitchen table.", "The teacher asked the class a simple question.",
    "A black dog ran across the street.", "We had fish and potatoes for dinner.",
    "The meeting will start at ten o'clock.", "Her car is parked behind the hotel."]
PAUSE_SECONDS = 0.7


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[np.ndarray]:
    if shutil.which("flite") is None:
        pytest.skip("needs flite (apt-get install flite)")
    folder = tmp_path_factory.mktemp("sentences")
    out = []
    for i, sentence in enumerate(SENTENCES):
        subprocess.run(["flite", "-voice", "slt", "-t", sentence, "-o", str(folder / f"{i}.wav")], check=True)
        out.append(load_audio(folder / f"{i}.wav"))
    return out


@pytest.fixture(scope="module")
def recording(clips) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The sentences joined with pauses, and each sentence's (start, end) in it, in seconds."""
    pause = np.zeros(int(PAUSE_SECONDS * SAMPLE_RATE), dtype=np.float32)
    audio = np.concatenate([part for clip in clips for part in (clip, pause)])
    starts = np.cumsum([0] + [len(c) + len(pause) for c in clips])[:-1] / SAMPLE_RATE
    return audio, [(float(s), float(s + len(c) / SAMPLE_RATE)) for s, c in zip(starts, clips)]


@pytest.fixture(scope="module")
def model():
    return cached_model(DEFAULT_MODEL, "cpu")


def test_a_long_recording_loses_no_sentence_and_scores_as_its_sentences_one_by_one(model, clips, recording):
    audio, times = recording
    one_by_one = transcribe_batch(model, clips, model_options(model))
    whole = dllm_asr.transcribe(audio, model=model)
    alone, joined = word_error_rate(SENTENCES, [t.text for t in one_by_one]), word_error_rate(" ".join(SENTENCES), whole.text)
    assert joined <= alone + 0.02, (alone, joined, whole.text)
    # one segment per sentence, none dropped or repeated, each timed within 0.5 s of its sentence
    assert len(whole.segments) == len(SENTENCES)
    for segment, (start, end), sentence in zip(whole.segments, times, SENTENCES):
        assert abs(segment.start - start) <= 0.5 and abs(segment.end - end) <= 0.5, (segment, start, end)
        assert word_error_rate(sentence, segment.text) <= 0.5, (sentence, segment.text)
        assert 0 < segment.confidence <= 1
    assert whole.text == " ".join(s.text for s in whole.segments)


def test_a_file_read_as_a_stream_gives_what_the_waveform_gives(model, recording, tmp_path):
    audio, _ = recording
    soundfile.write(tmp_path / "talk.wav", audio, SAMPLE_RATE)
    expected = dllm_asr.transcribe(audio, model=model)
    heard = []
    streamed = list(transcribe_files(model, [tmp_path / "talk.wav"], model_options(model), batch_size=4,
                                     on_segment=lambda path, segment: heard.append(segment), stream_seconds=7.0))
    assert streamed[0].error is None and streamed[0].duration == pytest.approx(len(audio) / SAMPLE_RATE)
    assert streamed[0].transcript.text == expected.text
    assert [(s.start, s.end) for s in streamed[0].transcript.segments] == [(s.start, s.end) for s in expected.segments]
    assert heard == streamed[0].transcript.segments  # each segment reported as it was decoded
    assert model.transcribe(str(tmp_path / "talk.wav")).text == expected.text


def test_whispers_decoder_with_timestamps_reads_whispers_30s_windows_unless_told_otherwise():
    """`--strategy ar --ar-timestamps` is Whisper's own long-form decoding (30-s windows, read on
    from a window's last time token); every other setting keeps the model's window, and
    `--window-seconds` always wins."""
    from types import SimpleNamespace

    model = SimpleNamespace(config=SimpleNamespace(window_seconds=10.0))
    assert window_seconds(model, TranscribeOptions(strategy="ar", ar_timestamps=True)) == 30
    assert window_seconds(model, TranscribeOptions(strategy="ar", ar_timestamps=True, window_seconds=12)) == 12
    assert window_seconds(model, TranscribeOptions(strategy="ar")) == 10
    assert window_seconds(model, TranscribeOptions(strategy="prior", ar_timestamps=True)) == 10
