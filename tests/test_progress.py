"""Progress reporting: plain lines when stderr is not a terminal."""

from dllm_asr.progress import progress


def test_plain_lines_when_not_a_terminal(capsys):
    assert list(progress(iter(range(20)), 20, "decode", "batch", lines=4)) == list(range(20))
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "decode: 5/20 batch (25%)", "decode: 10/20 batch (50%)", "decode: 15/20 batch (75%)",
        "decode: 20/20 batch (100%)"]


def test_fewer_items_than_lines_and_an_empty_loop(capsys):
    assert list(progress([1, 2], 2, "corpus", "batch")) == [1, 2]
    assert list(progress([], 0, "corpus", "batch")) == []
    assert capsys.readouterr().err.count("\n") == 2
