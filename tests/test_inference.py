import json

import numpy as np
import pytest
import torch

from dllm_asr.audio.io import AudioError, load_audio
from dllm_asr.cli import main
from dllm_asr.model.checkpoint import save_model
from dllm_asr.model.loading import build_model
from dllm_asr.transcription.file_batches import transcribe_files
from dllm_asr.transcription.long_form import transcribe_batch
from dllm_asr.transcription.options import DeliberationOptions
from dllm_asr.transcription.options import TranscribeOptions
from dllm_asr.transcription.strategies import block_lengths, deliberate_batch
from tests.helpers import ASSETS, DATA, tiny_model_config


@pytest.mark.parametrize("strategy", ["diffusion", "semi-ar", "threshold", "prior"])
def test_every_strategy_runs_end_to_end(tiny_model, real_clips, strategy):
    options = TranscribeOptions(strategy=strategy, steps=4, num_blocks=2, length=8)
    results = transcribe_batch(tiny_model, real_clips[:2], options)
    assert len(results) == 2
    # The prior (here the random CTC head's) anchors the block length of prior-guided decoding.
    limit = tiny_model.config.max_response_tokens if strategy == "prior" else 8
    for r in results:
        assert isinstance(r.text, str) and r.nfe >= 1 and len(r.tokens) <= limit


def test_an_ar_model_is_decoded_only_autoregressively(real_clips):
    torch.manual_seed(0)
    ar_model = build_model(tiny_model_config(objective="ar")).eval()
    assert len(transcribe_batch(ar_model, real_clips[:1], TranscribeOptions(strategy="ar", length=4))) == 1
    with pytest.raises(ValueError, match="objective 'ar'.*--strategy ar, not 'diffusion'"):
        transcribe_batch(ar_model, real_clips[:1], TranscribeOptions(steps=2, length=4))
    with pytest.raises(ValueError, match="objective 'ar'"):
        deliberate_batch(ar_model, real_clips[:1], ["a prior"], DeliberationOptions(mask="random"))
    with pytest.raises(ValueError, match="--ar-timestamps: only Whisper-family models"):
        transcribe_batch(ar_model, real_clips[:1], TranscribeOptions(strategy="ar", length=4, ar_timestamps=True))


def test_a_diffusion_model_refuses_the_ar_strategy(tiny_model, real_clips):
    """Its decoder never learned left-to-right decoding: `ar` would print fluent garbage."""
    with pytest.raises(ValueError, match="--strategy ar: this model's decoder was trained for masked diffusion"):
        transcribe_batch(tiny_model, real_clips[:1], TranscribeOptions(strategy="ar", length=4))


def test_batched_rows_equal_single_rows(tiny_model, real_clips):
    options = TranscribeOptions(strategy="diffusion", steps=4, length=6)
    batched = transcribe_batch(tiny_model, real_clips, options)
    for clip, row in zip(real_clips, batched):
        assert transcribe_batch(tiny_model, [clip], options)[0].tokens == row.tokens


def test_block_length_follows_duration(tiny_model, real_clips):
    sizes = block_lengths(tiny_model, real_clips[:2], TranscribeOptions())
    # 3.83 s * 6 tokens/s + 8 = 31; half the clip -> 20
    assert sizes.tolist() == [31, 20]


def test_deliberation_keeps_unmasked_prior_tokens(tiny_model, real_clips):
    prior = "the quick brown fox jumps"
    ids = tiny_model.tokenizer(prior, add_special_tokens=False)["input_ids"]
    options = TranscribeOptions(steps=4)
    out = deliberate_batch(tiny_model, real_clips[:1], [prior], DeliberationOptions(mask="random", ratio=0.4), options)[0]
    kept = [i for i, (a, b) in enumerate(zip(ids, out.tokens)) if a == b]
    assert len(kept) >= len(ids) - round(0.4 * len(ids))
    for mask in ("low-confidence", "semi-ar"):
        for use_audio in (True, False):
            how = DeliberationOptions(mask=mask, ratio=0.4, use_audio=use_audio)
            r = deliberate_batch(tiny_model, real_clips[:1], [prior], how, options)[0]
            assert r.nfe >= 1
    with pytest.raises(ValueError, match="--mask"):
        DeliberationOptions(mask="everything")


def test_bad_file_does_not_kill_the_batch(tiny_model):
    paths = [ASSETS / "example.wav", DATA / "corrupt.wav", DATA / "empty.wav", DATA / "stereo_44k.flac"]
    results = list(transcribe_files(tiny_model, paths, TranscribeOptions(steps=2, length=4), batch_size=4))
    assert [r.path for r in results] == [str(p) for p in paths]  # in the order given
    assert [r.error is None for r in results] == [True, False, False, True]
    assert "corrupt.wav" in results[1].error and "\n" not in results[1].error


def test_cli_transcribe_eval_and_score(tiny_model, tmp_path, capsys):
    save_model(tiny_model, tmp_path / "ckpt")
    code = main(["transcribe", "--model", str(tmp_path / "ckpt"), "--steps", "2", "--length", "4",
                 "--format", "jsonl", str(ASSETS / "example.wav"), str(DATA / "corrupt.wav")])
    captured = capsys.readouterr()
    assert code == 1  # one of the two files failed
    line = json.loads(captured.out.strip().splitlines()[0])
    assert line["audio"].endswith("example.wav") and line["nfe"] >= 1
    assert "corrupt.wav" in captured.err
    manifest = tmp_path / "dev.jsonl"
    manifest.write_text(json.dumps({"id": "ex", "audio": str(ASSETS / "example.wav"),
                                    "text": (ASSETS / "example.txt").read_text().strip()}) + "\n")
    assert main(["eval", "--model", str(tmp_path / "ckpt"), "--data", str(manifest), "--steps", "2",
                 "--length", "4", "--out", str(tmp_path / "eval")]) == 0
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "whisper_english" in report and "RTF" in report
    assert f"Options: model={tmp_path / 'ckpt'}, dtype=float32, device=cpu, strategy=" in report  # auto -> float32 here
    hyp = json.loads((tmp_path / "eval" / "hyps.jsonl").read_text())
    assert hyp["id"] == "ex" and hyp["ref"].startswith("The quick")
    capsys.readouterr()
    assert main(["score", str(manifest), str(tmp_path / "eval" / "hyps.jsonl")]) == 0
    assert "WER" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["transcribe", "--model", str(tmp_path / "missing"), str(ASSETS / "example.wav")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing" in err


def test_cli_deliberate_skips_a_corrupt_clip(tiny_model, tmp_path, capsys):
    save_model(tiny_model, tmp_path / "ckpt")
    prior = tmp_path / "prior.jsonl"
    prior.write_text(json.dumps({"id": "example", "text": "the quick brown fox"}) + "\n"
                     + json.dumps({"id": "corrupt", "text": "anything"}) + "\n")
    code = main(["deliberate", "--model", str(tmp_path / "ckpt"), "--prior", str(prior), "--mask", "semi-ar",
                 "--chunks", "2", "--steps", "2", str(ASSETS / "example.wav"), str(DATA / "corrupt.wav")])
    captured = capsys.readouterr()
    assert code == 1  # the corrupt clip failed
    line = json.loads(captured.out.strip())
    assert line["id"] == "example" and line["prior"] == "the quick brown fox" and line["nfe"] >= 1
    assert "corrupt.wav" in captured.err and captured.err.count("\n") == 1
    assert main(["deliberate", "--model", str(tmp_path / "ckpt"), "--prior", str(prior), "--mask", "random",
                 str(DATA / "stereo_44k.flac")]) == 2
    assert "no prior for stereo_44k" in capsys.readouterr().err


def test_a_transcript_that_fills_its_block_is_decoded_again_in_a_longer_one(tiny_model, real_clips):
    """The random decoder rarely writes EOS, so every duration-sized block comes back full: it is
    regrown (doubling up to max_response_tokens) and, still full at the cap, marked truncated."""
    options = TranscribeOptions(strategy="diffusion", steps=2, tokens_per_second=0.5)
    first = int(block_lengths(tiny_model, real_clips[:1], options)[0])
    (result,) = transcribe_batch(tiny_model, real_clips[:1], options)
    cap = tiny_model.config.max_response_tokens
    assert first < cap and result.truncated
    assert len(result.tokens) == cap and result.nfe > 2
    fixed = transcribe_batch(tiny_model, real_clips[:1], TranscribeOptions(strategy="diffusion", steps=2, length=6))[0]
    assert len(fixed.tokens) == 6 and fixed.truncated  # a length the user chose is never changed


def test_cli_reads_a_directory_and_says_when_a_file_failed(tiny_model, tmp_path, capsys):
    save_model(tiny_model, tmp_path / "ckpt")
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "sub").mkdir()
    (folder / "sub" / "a.wav").write_bytes((ASSETS / "example.wav").read_bytes())
    (folder / "notes.txt").write_text("not audio")
    code = main(["transcribe", "--model", str(tmp_path / "ckpt"), "--steps", "2", "--length", "4", str(folder),
                 str(DATA / "corrupt.wav")])
    captured = capsys.readouterr()
    assert code == 1  # the good clip is transcribed, and the status says one file was not
    assert captured.out.startswith(str(folder / "sub" / "a.wav") + "\t") and captured.out.count("\n") == 1
    assert "corrupt.wav" in captured.err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["transcribe", "--model", str(tmp_path / "ckpt"), str(empty)]) == 2
    assert "is a directory with no audio files" in capsys.readouterr().err


def test_load_audio_names_a_directory(tmp_path):
    with pytest.raises(AudioError, match="is a directory, not an audio file"):
        load_audio(tmp_path)


def test_verbose_works_after_the_command_and_help_needs_no_torch():
    import subprocess
    import sys

    from dllm_asr.cli import build_parser

    assert build_parser().parse_args(["eval", "--data", "d", "--out", "o", "-v"]).verbose is True
    assert build_parser().parse_args(["-v", "score", "r", "h"]).verbose is True
    assert build_parser().parse_args(["score", "r", "h"]).verbose is False
    check = ("import sys; from dllm_asr.cli import build_parser; build_parser().format_help(); "
             "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", check]).returncode == 0


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps must be >= 1"), (["--threshold", "1.5"], "--threshold must be in (0, 1]"),
    (["--exit-threshold", "0"], "--exit-threshold must be in (0, 1]"),
    (["--no-speech-threshold", "2"], "--no-speech-threshold must be in [0, 1]"),
])
def test_bad_decoding_options_are_refused_before_the_model_loads(flags, message, capsys, tmp_path):
    assert main(["transcribe", "--model", str(tmp_path / "not-loaded"), *flags, str(ASSETS / "example.wav")]) == 2
    err = capsys.readouterr().err
    assert message in err and "not-loaded" not in err and err.count("\n") == 1


def test_a_long_clip_is_cut_at_pauses_and_its_windows_joined(tiny_model, real_clips):
    from dllm_asr.audio.segment import speech_span, split_at_pauses

    gap = np.zeros(8000, dtype=np.float32)
    long_clip = np.concatenate([real_clips[0], gap, real_clips[0], gap, real_clips[0]])
    seconds = len(real_clips[0]) / 16000 + 0.6
    options = TranscribeOptions(steps=2, length=4, window_seconds=seconds)
    whole, alone = transcribe_batch(tiny_model, [long_clip, real_clips[0]], options)
    windows = split_at_pauses(long_clip, seconds)
    assert len(whole.segments) == len(windows) == 3 and len(alone.segments) == 1
    span = speech_span(real_clips[0])
    # each window holds one copy of the clip: its segment is timed by the clip's own sound
    for segment, (start, _), copy in zip(whole.segments, windows, (0, 1, 2)):
        offset = copy * (len(real_clips[0]) + len(gap)) / 16000
        assert segment.start == pytest.approx(offset + span[0], abs=0.05)
        assert segment.end == pytest.approx(offset + span[1], abs=0.05)
    # a piece cut from the clip is decoded from its sound (`speech_span`) only
    spans = [speech_span(long_clip[a:b]) for a, b in windows]
    pieces = transcribe_batch(tiny_model, [long_clip[a + round(s * 16000): a + round(e * 16000)]
                                           for (a, _), (s, e) in zip(windows, spans)], options)
    assert whole.text == " ".join(p.text for p in pieces if p.text)
    assert whole.nfe == sum(p.nfe for p in pieces) and whole.tokens == [t for p in pieces for t in p.tokens]
    assert whole.confidences == pytest.approx([c for p in pieces for c in p.confidences], rel=1e-4)
    assert len(whole.confidences) == len(whole.tokens)
    assert whole.segments[0].confidence == pytest.approx(np.mean(pieces[0].confidences), rel=1e-4)
    # the window is the model's own unless the options name one
    assert len(transcribe_batch(tiny_model, [long_clip], TranscribeOptions(steps=2, length=4))[0].segments) == 1


def test_missing_files_are_reported_before_the_model_loads(tmp_path, capsys):
    # the model path does not exist either: had it been loaded first, that would be the error
    assert main(["transcribe", "--model", str(tmp_path / "not-loaded"), str(tmp_path / "gone.wav")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: audio file not found: {tmp_path / 'gone.wav'}\n"


@pytest.mark.slow
def test_cli_reads_standard_input_prints_segments_with_v_and_writes_confidences(tiny_model, tmp_path):
    import subprocess
    import sys

    save_model(tiny_model, tmp_path / "ckpt")
    with open(ASSETS / "example.wav", "rb") as stdin:
        done = subprocess.run([sys.executable, "-m", "dllm_asr.cli", "transcribe", "--model", str(tmp_path / "ckpt"),
                               "--steps", "2", "--length", "4", "--output-format", "json", "--output-dir",
                               str(tmp_path / "out"), "-v", "-"], stdin=stdin, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    path, text = done.stdout.rstrip("\n").split("\t")
    assert path == "-"
    record = json.loads((tmp_path / "out" / "stdin.json").read_text())
    assert record["text"] == text and len(record["token_confidences"]) == len(record["tokens"]) == 4
    assert all(0 < p <= 1 for p in record["token_confidences"])
    segment = record["segments"][0]
    assert segment["confidence"] == pytest.approx(sum(record["token_confidences"]) / 4)
    assert f"- [00:00.{round(segment['start'] * 1000):03d} --> 00:0{segment['end']:.3f}] {text}" in done.stderr


def test_a_clip_too_short_for_the_encoder_gets_an_empty_transcript_and_spares_the_batch(tiny_model, real_clips):
    tiny = np.zeros(160, dtype=np.float32)  # 10 ms: fewer frames than the encoder takes
    options = TranscribeOptions(steps=2, length=4)
    out = transcribe_batch(tiny_model, [tiny, real_clips[0]], options)
    assert out[0].text == "" and out[0].tokens == [] and out[0].nfe == 0
    assert out[1].tokens == transcribe_batch(tiny_model, [real_clips[0]], options)[0].tokens


def test_the_strategy_table_holds_every_strategy_and_sets_its_own_decode_options(tiny_model):
    from dllm_asr.transcription.options import STRATEGIES
    from dllm_asr.transcription.strategies import STRATEGY_TABLE, decode_options

    assert list(STRATEGY_TABLE) == list(STRATEGIES)
    options = TranscribeOptions(steps=4, num_blocks=8, threshold=0.7, margin=3, exit_threshold=0.95, prune=False)
    got = {name: decode_options(tiny_model, TranscribeOptions(**{**options.__dict__, "strategy": name}))
           for name in ("diffusion", "semi-ar", "threshold", "prior")}
    assert (got["diffusion"].num_blocks, got["diffusion"].threshold, got["diffusion"].prior_guided) == (None, None, False)
    assert got["semi-ar"].num_blocks == 4  # never more blocks than steps
    assert got["threshold"].threshold == 0.7 and got["threshold"].num_blocks is None
    assert got["prior"].prior_guided and (got["prior"].margin, got["prior"].exit_threshold) == (3, 0.95)
    assert got["prior"].prune is False and all(o.steps == 4 for o in got.values())


class _Tokenizer:
    """Decodes ids through a fixed table, as a real tokenizer would for these ids."""
    TABLE = {10: "Please", 11: " enter", 12: " followed", 13: " by", 14: " 5", 15: "."}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.TABLE[i] for i in ids)


def test_collapse_repeats_drops_a_token_equal_to_the_one_before_it_but_not_a_number():
    from types import SimpleNamespace

    from dllm_asr.transcription.result import Transcript
    from dllm_asr.transcription.strategies import collapse_repeats

    tokens = [10, 11, 12, 12, 12, 13, 14, 14, 15, 15]
    confidences = [0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.4, 0.3, 0.2, 0.1]
    transcript = Transcript("unused", tokens, 3, 3, confidences=confidences)
    untouched = Transcript("Please enter", [10, 11], 1, 1)
    collapse_repeats(SimpleNamespace(tokenizer=_Tokenizer()), [transcript, untouched])
    assert transcript.tokens == [10, 11, 12, 13, 14, 14, 15]
    assert transcript.confidences == [0.9, 0.8, 0.7, 0.5, 0.4, 0.3, 0.2]  # each run keeps its first token's
    assert transcript.text == "Please enter followed by 5 5."
    assert (untouched.tokens, untouched.text) == ([10, 11], "Please enter")


def test_collapse_repeats_applies_to_the_diffusion_strategies_only_when_asked(tiny_model, real_clips):
    from dllm_asr.transcription.strategies import collapse_repeats

    options = TranscribeOptions(strategy="diffusion", steps=4, length=12)
    plain = transcribe_batch(tiny_model, real_clips, options)
    repeated = sum(a == b for t in plain for a, b in zip(t.tokens, t.tokens[1:]))
    assert repeated > 0  # the random model repeats tokens, so the option has work to do
    collapsed = transcribe_batch(tiny_model, real_clips, TranscribeOptions(**{**options.__dict__, "collapse_repeats": True}))
    collapse_repeats(tiny_model, plain)
    assert [t.tokens for t in collapsed] == [t.tokens for t in plain]
    assert [t.text for t in collapsed] == [t.text for t in plain]


def test_the_shipped_models_default_decoding_collapses_the_example_clips_repeated_word():
    """Its threshold decoding writes "jumps jumps" for the bundled example's "jumps" (kept by
    `collapse_repeats=False`); the decoding the model's config names drops the repeat."""
    from dllm_asr.config import DEFAULT_MODEL
    from dllm_asr.transcription.long_form import cached_model
    from dllm_asr.transcription.strategies import model_options

    model = cached_model(DEFAULT_MODEL, "cpu")
    example = load_audio(ASSETS / "example.wav")
    shipped = model_options(model)
    words = lambda options: transcribe_batch(model, [example], options)[0].text.lower().split()  # noqa: E731
    kept = words(TranscribeOptions(**{**shipped.__dict__, "collapse_repeats": False}))
    collapsed = words(shipped)
    assert shipped.collapse_repeats and kept.count("jumps") == 2
    assert collapsed.count("jumps") == 1 and collapsed[:2] == ["the", "quick"]
    assert all(a != b for a, b in zip(collapsed, collapsed[1:]))
