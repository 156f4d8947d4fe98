import csv
import json

import pytest
import torch

from dllm_asr.audio.io import load_audio
from dllm_asr.evaluation.bench import DEFAULT_GRID, plot, point_style, run_bench
from dllm_asr.model.checkpoint import save_model
from dllm_asr.model.loading import build_model
from tests.helpers import ASSETS, DATA, tiny_model_config


def test_bench_writes_table_csv_and_plot(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path / "ckpt")
    torch.manual_seed(0)
    save_model(build_model(tiny_model_config(objective="ar")), tmp_path / "ar")
    manifest = tmp_path / "test.jsonl"
    rows = [{"id": "a", "audio": str(ASSETS / "example.wav"), "text": "the quick brown fox"},
            {"id": "b", "audio": str(DATA / "stereo_44k.flac"), "text": "hello world"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "- {name: 'AR greedy', model: ar, strategy: ar, length: 6}\n"
        "- {name: 'diffusion 2', strategy: diffusion, steps: 2, length: 6}\n"
        "- {name: 'threshold', strategy: threshold, threshold: 0.9, length: 6}\n"
        "- {name: 'deliberation semi-ar', steps: 2, deliberate: {mask: semi-ar, chunks: 2}}\n"
        "- {name: 'prior from AR', strategy: prior, steps: 2, prior: ar}\n")
    out = tmp_path / "bench"
    results = run_bench(str(tmp_path / "ckpt"), str(manifest), str(out), grid=str(grid), device="cpu",
                        ar_model=str(tmp_path / "ar"))
    assert [r["name"] for r in results][:2] == ["AR greedy", "diffusion 2"]
    with open(out / "results.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 5 and all(float(r["rtf"]) > 0 and float(r["mean_nfe"]) >= 1 for r in table)
    # The decoder's own time: positive, and below the whole pipeline's (the encoder is subtracted).
    audio_seconds = sum(load_audio(row["audio"]).shape[0] for row in rows) / 16000
    for r in table:
        assert 0 < float(r["decoder_ms"]) < 1000 * float(r["rtf"]) * audio_seconds / 2
    # The Markdown table holds the CSV's rows, in the grid's order, with the same figures.
    markdown = markdown_rows(out / "results.md")
    assert [name for name, _ in markdown] == [r["name"] for r in table] == [
        "AR greedy", "diffusion 2", "threshold", "deliberation semi-ar", "prior from AR"]
    for (name, cells), r in zip(markdown, table):
        assert float(cells[0]) == round(100 * float(r["wer"]), 2) and float(cells[1]) == round(float(r["rtf"]), 4)
        assert float(cells[3]) == round(float(r["mean_nfe"]), 1)
    # The plot shows one point per measured row, where the table puts it.
    drawn = plot([{**r, "wer": float(r["wer"]), "rtf": float(r["rtf"])} for r in table], tmp_path)
    assert [(label, pytest.approx(x), pytest.approx(y)) for label, x, y in drawn] == \
        [(r["name"], float(r["rtf"]), 100 * float(r["wer"])) for r in table]
    assert (out / "wer_vs_rtf.png").stat().st_size > 1000


def markdown_rows(path) -> list[tuple[str, list[str]]]:
    """(system, [WER %, RTF, RTFx, mean NFE, decoder ms]) per row of a bench results.md table."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")][1:]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [(row[0], row[1:]) for row in cells]


def test_default_grid_covers_the_papers_axes():
    strategies = {run.get("strategy") for run in DEFAULT_GRID}
    assert {"diffusion", "semi-ar", "threshold", "prior"} <= strategies
    assert sorted(run["steps"] for run in DEFAULT_GRID if run.get("strategy") == "diffusion"
                  and not run.get("cache")) == [1, 4, 8, 16, 32, 64]
    assert any(run.get("cache") for run in DEFAULT_GRID)


def test_plot_rows_never_share_a_look():
    looks = {tuple(sorted(point_style(index).items())) for index in range(90)}
    assert len(looks) == 90


def test_a_row_the_model_cannot_run_is_skipped_and_every_row_is_written_at_once(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path / "ckpt")
    manifest = tmp_path / "test.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": str(ASSETS / "example.wav"), "text": "the quick"}) + "\n")
    grid = tmp_path / "grid.yaml"
    grid.write_text("- {name: 'needs ar', model: ar, strategy: ar, length: 4}\n"
                    "- {name: 'diffusion 1', strategy: diffusion, steps: 1, length: 4}\n")
    out = tmp_path / "bench"
    rows = run_bench(str(tmp_path / "ckpt"), str(manifest), str(out), grid=str(grid), device="cpu")
    assert rows[0] == {"name": "needs ar", "note": "needs an AR model (--ar-model)"}
    assert "| needs ar | skipped: needs an AR model (--ar-model) |" in (out / "results.md").read_text()
    measured = rows[1]
    with open(out / "results.csv") as handle:
        table = {r["name"]: r for r in csv.DictReader(handle)}
    assert float(table["diffusion 1"]["wer"]) == measured["wer"] and float(table["diffusion 1"]["rtf"]) == measured["rtf"]
    # A rerun with reuse measures nothing again: the row's figures are the stored ones.
    again = run_bench(str(tmp_path / "ckpt"), str(manifest), str(out), grid=str(grid), device="cpu", reuse=True)
    assert [r for r in again if r["name"] == "diffusion 1"][0]["rtf"] == measured["rtf"]


def test_a_rows_dtype_loads_the_model_once_in_that_dtype(tiny_model, tmp_path, monkeypatch):
    from dllm_asr.model import loading

    save_model(tiny_model, tmp_path / "ckpt")
    manifest = tmp_path / "test.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": str(ASSETS / "example.wav"), "text": "the quick"}) + "\n")
    grid = tmp_path / "grid.yaml"
    grid.write_text("- {name: 'float32', strategy: diffusion, steps: 1, length: 4}\n"
                    "- {name: 'bfloat16', strategy: diffusion, steps: 1, length: 4, dtype: bfloat16}\n"
                    "- {name: 'bfloat16 again', strategy: diffusion, steps: 2, length: 4, dtype: bf16}\n"
                    "- {name: 'float32 by name', strategy: diffusion, steps: 2, length: 4, dtype: float32}\n")
    loads, load_model = [], loading.load_model

    def recording_load(*args, **kwargs):
        model = load_model(*args, **kwargs)
        loads.append(model.decoder.dtype)
        return model

    monkeypatch.setattr(loading, "load_model", recording_load)
    rows = run_bench(str(tmp_path / "ckpt"), str(manifest), str(tmp_path / "bench"), grid=str(grid), device="cpu")
    assert loads == [torch.float32, torch.bfloat16]  # "auto" is float32 in the suite; bf16 once for two rows
    assert [r["name"] for r in rows] == ["float32", "bfloat16", "bfloat16 again", "float32 by name"]
    assert all(r["rtf"] > 0 for r in rows)
