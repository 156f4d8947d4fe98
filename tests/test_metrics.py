from __future__ import annotations

import json
import time

import pytest

from dllm_asr.evaluation.metrics import (align_words, normalize, read_transcripts, rtf, score, score_files,
                                         word_error_rate)
from dllm_asr.timer import Timer


# ----------------------------------------------------------------------------- normalisers


def test_english_normalizer_expands_titles_spelling_and_numbers():
    # Whisper's English normaliser: "Mr." -> "mister", British -> American spelling,
    # punctuation removed, and the "'s" after a name expanded to "is" (its known rule).
    assert normalize("Mr. Smith's 2 colours!") == "mister smith is 2 colors"
    assert normalize("I have twenty-five dollars") == "i have $25"


def test_basic_normalizer_only_lowercases_and_strips_symbols():
    assert normalize("Mr. Smith's 2 colours!", "whisper_basic") == "mr smith s 2 colours"


def test_none_normalizer_keeps_text_but_collapses_spaces():
    assert normalize("  Hello,   World ", "none") == "Hello, World"


def test_unknown_normalizer_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown normalizer 'klingon'"):
        normalize("x", "klingon")


# ----------------------------------------------------------------------------- WER


def test_hand_worked_wer_one_substitution_one_deletion():
    # ref a b c d / hyp a x c: b->x substituted, d deleted: 2 edits / 4 words.
    report = score({"u": "a b c d"}, {"u": "a x c"}, normalizer="none")
    assert report.wer == pytest.approx(0.5)
    assert (report.substitutions, report.deletions, report.insertions) == (1, 1, 0)
    assert (report.utterances[0].ref, report.utterances[0].hyp) == ("a b c d", "a x c")
    assert report.utterances[0].alignment == [
        ("equal", "a", "a"), ("sub", "b", "x"), ("equal", "c", "c"), ("del", "d", None)]


def test_corpus_wer_is_total_edits_over_total_words_not_mean_of_rates():
    # u1: 1 error / 1 word (100%); u2: 0 / 9 words. Mean of rates = 50%, corpus = 10%.
    refs = {"u1": "a", "u2": "one two three four five six seven eight nine"}
    hyps = {"u1": "b", "u2": "one two three four five six seven eight nine"}
    assert score(refs, hyps, normalizer="none").wer == pytest.approx(0.1)


def test_insertions_can_push_wer_above_one():
    report = score({"u": "a"}, {"u": "x y z"}, normalizer="none")
    assert report.errors == 3 and report.wer == pytest.approx(3.0)
    assert report.substitutions == 1 and report.insertions == 2


def test_normaliser_is_applied_to_both_sides_and_named_in_report():
    refs = {"u": "Mr. Smith has 2 colours."}
    hyps = {"u": "mister smith has two colors"}
    english = score(refs, hyps, normalizer="whisper_english")
    assert english.wer == 0.0
    assert "normalizer=whisper_english" in english.summary()
    raw = score(refs, hyps, normalizer="none")
    assert raw.wer == pytest.approx(4 / 5)  # Mr./mister, Smith/smith, 2/two, colours./colors
    assert "normalizer=none" in raw.to_markdown()


def test_missing_hypothesis_counts_as_all_deletions_and_extra_ids_are_reported():
    refs = {"u1": "a b", "u2": "c d e"}
    hyps = {"u1": "a b", "zz": "spurious"}
    report = score(refs, hyps, normalizer="none")
    assert report.missing_ids == ["u2"] and report.extra_ids == ["zz"]
    assert report.deletions == 3 and report.wer == pytest.approx(3 / 5)
    text = report.to_markdown()
    assert "Missing hypotheses (1, scored as all deletions): u2" in text
    assert "not scored): zz" in text


def test_frequent_errors_are_counted_and_sorted():
    refs = {"1": "the cat sat", "2": "the cat ran", "3": "a dog"}
    hyps = {"1": "the hat sat", "2": "the hat ran um", "3": "dog"}
    errors = score(refs, hyps, normalizer="none").frequent_errors()
    assert errors["substitutions"] == [("cat -> hat", 2)]
    assert errors["insertions"] == [("um", 1)]
    assert errors["deletions"] == [("a", 1)]


def test_empty_reference_and_hypothesis():
    assert align_words("", "") == []
    report = score({"u": ""}, {"u": ""}, normalizer="none")
    assert report.wer == 0.0
    assert score({"u": ""}, {"u": "x"}, normalizer="none").wer == float("inf")


def test_word_error_rate_on_lists():
    assert word_error_rate(["a b c d", "e"], ["a x c", "e"], normalizer="none") == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])


def test_write_jsonl_per_utterance(tmp_path):
    report = score({"u1": "a b c d", "u2": "x"}, {"u1": "a x c", "u2": "x"}, normalizer="none")
    out = tmp_path / "per_utt.jsonl"
    report.write_jsonl(out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["u1", "u2"]
    assert records[0]["sub"] == 1 and records[0]["del"] == 1 and records[0]["wer"] == 0.5
    assert records[0]["alignment"][1] == ["sub", "b", "x"]
    assert records[1]["normalizer"] == "none"


def test_text_report_lists_errors():
    text = score({"u": "a b"}, {"u": "a c"}, normalizer="none").to_text()
    assert text.startswith("WER 50.00% (1/2: S=1 D=0 I=0)")
    assert "b -> c" in text


# ----------------------------------------------------------------------------- transcript files


def test_read_transcripts_jsonl_text_and_hyp_fields(tmp_path):
    path = tmp_path / "hyp.jsonl"
    path.write_text('{"id": "a", "text": "hello"}\n\n{"id": "b", "hyp": "world"}\n')
    assert read_transcripts(path) == {"a": "hello", "b": "world"}


def test_read_transcripts_kaldi_text(tmp_path):
    path = tmp_path / "text"
    path.write_text("utt-1 HELLO THERE\nutt-2\n")
    assert read_transcripts(path) == {"utt-1": "HELLO THERE", "utt-2": ""}


@pytest.mark.parametrize("content, message", [
    ('{"id": "a", "text": "x"}\n{"id": "b", "text": \n', r"hyp.jsonl:2: invalid JSON"),
    ('{"id": "a", "text": "x"}\n{"text": "y"}\n', r'hyp.jsonl:2: expected a JSON object with an "id"'),
    ('{"id": "a", "text": 3}\n', r'hyp.jsonl:1: expected a string "text" or "hyp"'),
    ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', r"hyp.jsonl:2: repeated utterance id 'a'"),
])
def test_read_transcripts_malformed_jsonl_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "hyp.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_transcripts(path)


def test_read_transcripts_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nope.txt: cannot read transcripts"):
        read_transcripts(tmp_path / "nope.txt")


def test_score_files_end_to_end(tmp_path):
    (tmp_path / "ref.txt").write_text("u1 THE CAT SAT\nu2 HELLO\n")
    (tmp_path / "hyp.jsonl").write_text('{"id": "u1", "hyp": "The cat sat."}\n{"id": "u2", "hyp": "yellow"}\n')
    report = score_files(tmp_path / "ref.txt", tmp_path / "hyp.jsonl")
    assert report.wer == pytest.approx(1 / 4)
    assert report.normalizer == "whisper_english"


# ----------------------------------------------------------------------------- RTF


def test_rtf_and_rtfx():
    assert rtf(2.0, 10.0) == (pytest.approx(0.2), pytest.approx(5.0))
    assert rtf(0.0, 1.0)[1] == float("inf")
    with pytest.raises(ValueError, match="audio_seconds must be positive"):
        rtf(1.0, 0.0)


def test_timer_measures_and_accumulates():
    timer = Timer()
    with timer:
        time.sleep(0.02)
    first = timer.seconds
    assert 0.015 < first < 1.0
    with timer:
        time.sleep(0.01)
    assert timer.seconds > first


@pytest.mark.gpu
def test_timer_waits_for_cuda_kernels():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    with Timer() as timer:
        for _ in range(20):
            x = x @ x / 64.0
    # 20 matmuls of 4096^2 are ~2.7 TFLOP: well over a millisecond once the kernels are waited for
    assert timer.seconds > 1e-3
