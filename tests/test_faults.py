"""Faults: a `kill -9` during export, corpus or eval leaves no result that looks complete and a
rerun succeeds; result files are written whole or not at all; inputs are checked before a model
loads (issue 11, items 2 and 4).

Each kill is deterministic: the child runs `dllm-asr` with one function replaced by a wrapper
that, at a chosen call, prints STALLED and sleeps; the test kills it with SIGKILL on that line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import wave
from pathlib import Path

import pytest

from dllm_asr import cli, commands

from dllm_asr.files import atomic_writer, write_text_atomic, written_together
from dllm_asr.tools import corpus
from tests.helpers import ASSETS, DATA, tiny_model_config

REPO = Path(__file__).resolve().parents[1]

DRIVER = """
import importlib, sys, time

def stall(target, trigger, let_through):
    # target "module:attr.attr": its calls whose arguments mention `trigger` go through
    # `let_through` times, then the next one announces itself and waits to be killed.
    module_name, _, attrs = target.partition(":")
    *path, name = attrs.split(".")
    owner = importlib.import_module(module_name)
    for attr in path:
        owner = getattr(owner, attr)
    real, seen = getattr(owner, name), [0]

    def wrapper(*args, **kwargs):
        if trigger in repr(args):
            seen[0] += 1
            if seen[0] > let_through:
                print("STALLED", flush=True)
                time.sleep(600)
        return real(*args, **kwargs)

    setattr(owner, name, wrapper)

stall(sys.argv[1], sys.argv[2], int(sys.argv[3]))
from dllm_asr.cli import main
sys.exit(main(sys.argv[4:]))
"""


def kill_at_stall(target: str, trigger: str, let_through: int, argv: list[str], log: Path) -> None:
    """Run `dllm-asr ARGV` in a child whose `target` stalls at the chosen call; SIGKILL it there."""
    with open(log, "w") as stderr:
        child = subprocess.Popen([sys.executable, "-c", DRIVER, target, trigger, str(let_through), *argv],
                                 stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPO)
    guard = threading.Timer(120, child.kill)  # a child that never stalls must not hang the suite
    guard.start()
    try:
        stalled = any(line.strip() == "STALLED" for line in child.stdout)  # stops reading at the marker
        if not stalled:
            child.wait()
            pytest.fail(f"the child ended (status {child.returncode}) before the stall:\n{log.read_text()}")
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    finally:
        guard.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()


def visible(folder: Path) -> dict[str, bytes]:
    """The files a user or a later run sees in `folder` (hidden temporary files left out)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from dllm_asr.model.checkpoint import save_model
    from dllm_asr.model.loading import build_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "ckpt"
    save_model(build_model(tiny_model_config()).eval(), folder)
    return folder


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "dev.jsonl"
    rows = [{"id": "a", "audio": str(ASSETS / "example.wav"), "text": "the quick brown fox"},
            {"id": "b", "audio": str(DATA / "stereo_44k.flac"), "text": "another clip"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- the helpers


def test_atomic_writer_failing_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "result.txt"
    target.write_text("old, whole\n")
    with pytest.raises(OSError, match="disk full"):
        with atomic_writer(target) as handle:
            handle.write("new, half")
            raise OSError("disk full")
    assert target.read_text() == "old, whole\n" and os.listdir(tmp_path) == ["result.txt"]
    write_text_atomic(target, "new\n")
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_text() == "new\n" and os.listdir(tmp_path) == ["result.txt"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only mode


def test_written_together_failing_while_moving_leaves_no_temp_and_never_the_last_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dllm_asr import files

    for name in ("a", "b", "marker"):
        (tmp_path / name).write_text("old")
    real, moved = files._commit, []

    def fail_on_second(temp: Path, target: Path) -> None:
        if moved:
            raise OSError("disk gone")
        moved.append(target.name)
        real(temp, target)

    monkeypatch.setattr(files, "_commit", fail_on_second)
    with pytest.raises(OSError, match="disk gone"):
        with written_together([tmp_path / n for n in ("a", "b", "marker")]) as temps:
            for temp in temps:
                temp.write_text("new")
    assert visible(tmp_path) == {"a": b"new"} and os.listdir(tmp_path) == ["a"]


def test_eval_report_failing_mid_write_keeps_the_old_report(checkpoint: Path, manifest: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from dllm_asr.evaluation.metrics import ScoreReport

    out = tmp_path / "eval"
    argv = ["eval", "--model", str(checkpoint), "--data", str(manifest), "--length", "4", "--out", str(out)]
    assert cli.main(argv + ["--steps", "2"]) == 0
    before = visible(out)

    def disk_full(self, path) -> None:
        Path(path).write_text("half a line")
        raise OSError("No space left on device")

    monkeypatch.setattr(ScoreReport, "write_jsonl", disk_full)
    assert cli.main(argv + ["--steps", "1"]) == 2
    assert visible(out) == before and sorted(os.listdir(out)) == sorted(before)


def test_bench_tables_failing_mid_write_keep_the_old_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import csv

    from dllm_asr.evaluation.bench import write_tables

    rows = [{"name": "a", "wer": 0.5, "rtf": 0.1, "rtfx": 10.0, "mean_nfe": 2.0, "utterances": 2}]
    write_tables(rows, tmp_path)
    before = visible(tmp_path)
    monkeypatch.setattr(csv.DictWriter, "writerows", lambda self, rows: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        write_tables(rows + [{"name": "b", "note": "x"}], tmp_path)
    assert visible(tmp_path) == before and sorted(os.listdir(tmp_path)) == sorted(before)


# ----------------------------------------------------------------------------- kill -9: export


@pytest.mark.parametrize("target, trigger", [
    ("dllm_asr.model.checkpoint:save_file", ""),  # while the new export is written aside
    ("os:replace", ".tmp"),                 # between the swap's two renames: the old export is in OUT.old
], ids=["writing", "swapping"])
def test_export_killed_leaves_the_old_export_or_none_and_a_rerun_succeeds(
        target: str, trigger: str, checkpoint: Path, tmp_path: Path) -> None:
    from dllm_asr.model.checkpoint import recover_interrupted_swap

    out = tmp_path / "export"
    assert cli.main(["export", str(checkpoint), str(out), "--dtype", "fp32"]) == 0
    old = visible(out)
    kill_at_stall(target, trigger, 0, ["export", str(checkpoint), str(out), "--dtype", "fp16"], tmp_path / "log")
    if out.exists():
        assert visible(out) == old  # never a half-written export under OUT's name
    else:  # the next load (or export) puts the old one back
        recover_interrupted_swap(out)
        assert visible(out) == old
    assert cli.main(["export", str(checkpoint), str(out), "--dtype", "fp16"]) == 0
    assert set(visible(out)) == set(old) and visible(out) != old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "log"]  # no .tmp or .old left


def test_export_killed_before_a_first_export_leaves_nothing_under_its_name(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    kill_at_stall("dllm_asr.model.checkpoint:save_file", "", 0, ["export", str(checkpoint), str(out)], tmp_path / "log")
    assert not out.exists()
    assert cli.main(["export", str(checkpoint), str(out)]) == 0 and (out / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- kill -9: corpus

needs_tts = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("flite") is None,
                               reason="espeak-ng and flite binaries not installed (apt-get install espeak-ng flite)")


def corpus_args(out: Path, text: Path) -> list[str]:
    return [str(out), "--utterances", "8", "--jobs", "1", "--sources", "--text-files", str(text)]


@needs_tts
@pytest.mark.parametrize("target, trigger, let_through", [
    ("dllm_asr.tools.voices:_write_wav", "", 2),        # after two clips of eight
    ("dllm_asr.files:_commit", "dev.jsonl", 0),   # every clip written, train.jsonl moved in, the rest not
], ids=["synthesising", "moving-manifests"])
def test_corpus_killed_leaves_no_corpus_json_and_a_rerun_says_so_then_rebuilds(
        target: str, trigger: str, let_through: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_corpus import PROSE

    text, out = tmp_path / "prose.txt", tmp_path / "corpus"
    text.write_text(PROSE)
    kill_at_stall(target, trigger, let_through, ["corpus", *corpus_args(out, text)], tmp_path / "log")
    assert not (out / "corpus.json").exists()
    for manifest in out.glob("*.jsonl"):  # any manifest left is whole, with all its audio
        rows = [json.loads(line) for line in manifest.read_text().splitlines()]
        assert rows and all((out / row["audio"]).is_file() for row in rows)
    for wav in out.glob("wavs/*/*.wav"):  # and every clip left is whole: its header's length is its length
        with wave.open(str(wav)) as handle:
            assert handle.getnframes() > 0 and wav.stat().st_size == 44 + 2 * handle.getnframes()

    assert cli.main(["corpus", *corpus_args(out, text)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unfinished corpus build (no corpus.json" in err and "--overwrite" in err

    assert cli.main(["corpus", *corpus_args(out, text), "--overwrite"]) == 0
    info = json.loads((out / "corpus.json").read_text())
    for split in corpus.SPLITS:
        rows = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == info["splits"][split]["utterances"] > 0
        assert all((out / row["audio"]).is_file() for row in rows)
    assert not [p for p in out.rglob(".*") if p.name.endswith(".tmp")]  # the killed run's temporary files went too


@needs_tts
def test_a_finished_corpus_is_refused_as_before(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_corpus import PROSE

    text, out = tmp_path / "prose.txt", tmp_path / "corpus"
    text.write_text(PROSE)
    assert cli.main(["corpus", *corpus_args(out, text)]) == 0
    assert cli.main(["corpus", *corpus_args(out, text)]) == 2
    err = capsys.readouterr().err
    assert "is not empty (pass overwrite=True / --overwrite)" in err and "unfinished" not in err


# ----------------------------------------------------------------------------- kill -9: eval


def test_eval_killed_while_writing_its_report_leaves_none(checkpoint: Path, manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(checkpoint), "--data", str(manifest), "--steps", "2", "--length", "4",
            "--out", str(out)]
    # hyps.jsonl is written (aside), errors.jsonl is being written
    kill_at_stall("dllm_asr.evaluation.metrics:ScoreReport.write_jsonl", "", 0, argv, tmp_path / "log")
    assert out.is_dir() and visible(out) == {}
    assert cli.main(argv) == 0
    assert sorted(os.listdir(out)) == ["errors.jsonl", "hyps.jsonl", "report.md"]  # the killed run's temporary files went too


def test_eval_killed_while_moving_its_report_in_leaves_no_report_md_and_no_old_file(
        checkpoint: Path, manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(checkpoint), "--data", str(manifest), "--length", "4", "--out", str(out)]
    assert cli.main(argv + ["--steps", "2"]) == 0
    old = visible(out)
    # the old report deleted, the new hyps.jsonl moved in, errors.jsonl and report.md not yet
    kill_at_stall("dllm_asr.files:_commit", "errors.jsonl", 0, argv + ["--steps", "1"], tmp_path / "log")
    left = visible(out)  # no report.md: nothing claims to be a report; what is there is the new run's, whole
    assert set(left) == {"hyps.jsonl"} and left["hyps.jsonl"] != old["hyps.jsonl"]
    assert [json.loads(line)["id"] for line in left["hyps.jsonl"].decode().splitlines()] == ["a", "b"]
    assert cli.main(argv + ["--steps", "1"]) == 0
    assert sorted(os.listdir(out)) == ["errors.jsonl", "hyps.jsonl", "report.md"]
    assert "steps=1" in (out / "report.md").read_text()


# ----------------------------------------------------------------------------- inputs before the model


@pytest.fixture()
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to load a model fails the test: the input check must come first."""
    from dllm_asr.model import loading

    def fail(*args, **kwargs):
        pytest.fail("a model was loaded before the inputs were checked")

    monkeypatch.setattr(commands, "open_model", fail)
    monkeypatch.setattr(loading, "load_model", fail)


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_a_missing_data_set_is_one_line_before_the_model_loads(command: str, tmp_path: Path, no_model,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such.jsonl"
    code = cli.main([command, "--model", str(tmp_path / "no-model"), "--data", str(missing),
                     "--out", str(tmp_path / "out")])
    assert code == 2 and str(missing) in one_line_error(capsys) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["eval", "bench"])
@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_an_output_folder_that_cannot_be_made_is_one_line_before_the_model_loads(
        command: str, where: str, manifest: Path, tmp_path: Path, no_model, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a user's file")
    out = blocker if where == "a file" else blocker / "sub"
    code = cli.main([command, "--model", str(tmp_path / "no-model"), "--data", str(manifest), "--out", str(out)])
    assert code == 2 and f"--out {out}" in one_line_error(capsys) and blocker.read_text() == "a user's file"


def test_eval_a_manifest_without_priors_for_deliberation_is_one_line_before_the_model_loads(
        manifest: Path, tmp_path: Path, no_model, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["eval", "--deliberate", "random", "--data", str(manifest), "--out", str(tmp_path / "out")])
    assert code == 2 and "needs a prior transcript" in one_line_error(capsys)


def test_bench_a_missing_grid_file_is_one_line_before_the_model_loads(
        manifest: Path, tmp_path: Path, no_model, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "grid.yaml"
    code = cli.main(["bench", "--data", str(manifest), "--grid", str(grid), "--out", str(tmp_path / "out")])
    assert code == 2 and str(grid) in one_line_error(capsys)


def test_transcribe_an_output_dir_that_is_a_file_is_one_line_before_the_model_loads(
        tmp_path: Path, no_model, capsys: pytest.CaptureFixture[str]) -> None:
    taken = tmp_path / "taken"
    taken.write_text("")
    code = cli.main(["transcribe", "--output-format", "txt", "--output-dir", str(taken), str(ASSETS / "example.wav")])
    assert code == 2 and "--output-dir" in one_line_error(capsys)


def test_deliberate_missing_prior_file_or_audio_is_reported_before_the_model_loads(
        tmp_path: Path, no_model, capsys: pytest.CaptureFixture[str]) -> None:
    gone = tmp_path / "gone.wav"
    code = cli.main(["deliberate", "--mask", "random", "--prior", str(tmp_path / "priors.jsonl"), str(gone)])
    assert code == 2 and "priors.jsonl" in one_line_error(capsys)
    prior = tmp_path / "priors.jsonl"
    prior.write_text(json.dumps({"id": "gone", "text": "hello"}) + "\n")
    code = cli.main(["deliberate", "--mask", "random", "--prior", str(prior), str(gone)])
    assert code == 1 and one_line_error(capsys) == f"error: audio file not found: {gone}\n"


def test_report_missing_notes_or_split_is_one_line_before_any_bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from dllm_asr.evaluation import report

    monkeypatch.setattr(report, "run_bench", lambda *a, **k: pytest.fail("benchmarked before the inputs were checked"))
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    (corpus_dir / "test_seen.jsonl").write_text("")
    argv = ["--model", "m", "--corpus", str(corpus_dir), "--out", str(tmp_path / "docs" / "results.md")]
    assert cli.main(["report", *argv, "--notes", str(tmp_path / "notes.md")]) == 2
    assert "--notes" in one_line_error(capsys)
    assert cli.main(["report", *argv]) == 2
    assert "no test_unseen.jsonl" in one_line_error(capsys)
