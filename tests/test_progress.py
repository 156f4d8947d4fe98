"""Progress reporting: plain lines when stderr is not a terminal."""

from dllm_asr.progress import FileProgress, progress


def test_plain_lines_when_not_a_terminal(capsys):
    assert list(progress(iter(range(20)), 20, "decode", "batch", lines=4)) == list(range(20))
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "decode: 5/20 batch (25%)", "decode: 10/20 batch (50%)", "decode: 15/20 batch (75%)",
        "decode: 20/20 batch (100%)"]


def test_fewer_items_than_lines_and_loops_too_short_to_report(capsys):
    assert list(progress([1, 2], 2, "corpus", "batch")) == [1, 2]
    assert capsys.readouterr().err.count("\n") == 2
    assert list(progress([], 0, "corpus", "batch")) == [] and list(progress([7], 1, "corpus", "batch")) == [7]
    assert capsys.readouterr().err == ""


def test_transcribing_many_batches_reports_progress(tiny_model, capsys):
    from dllm_asr.transcription.options import TranscribeOptions
    from dllm_asr.transcription.file_batches import transcribe_files
    from tests.helpers import ASSETS

    results = list(transcribe_files(tiny_model, [ASSETS / "example.wav"] * 12, TranscribeOptions(steps=2, length=4),
                                    batch_size=4))
    assert len(results) == 12
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 6 and lines[0].startswith("transcribe: 2/12 files, 7.7 s of audio, ")
    assert lines[-1].startswith("transcribe: 12/12 files, 46.0 s of audio, ") and " audio s/s, " in lines[-1]


def test_file_progress_is_quiet_for_a_few_files(capsys):
    bar = FileProgress(3)
    for _ in range(3):
        bar.update(1.0)
    bar.close()
    assert capsys.readouterr().err == ""
