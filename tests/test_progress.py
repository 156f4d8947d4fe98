"""Progress reporting: plain lines when stderr is not a terminal."""

from dllm_asr.progress import progress


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
    from dllm_asr.options import TranscribeOptions
    from dllm_asr.transcribe import transcribe_files
    from tests.conftest import ASSETS

    results = transcribe_files(tiny_model, [ASSETS / "example.wav"] * 3, TranscribeOptions(steps=2, length=4),
                               batch_size=1)
    assert len(results) == 3
    assert capsys.readouterr().err.splitlines()[-1].startswith("transcribe: 3/3 batch of 1 (100%)")
