import csv
import json

from dllm_asr.bench import DEFAULT_GRID, point_style, run_bench
from dllm_asr.checkpoint import save_model
from tests.conftest import ASSETS, DATA


def test_bench_writes_table_csv_and_plot(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path / "ckpt")
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
                        ar_model=str(tmp_path / "ckpt"))
    assert [r["name"] for r in results][:2] == ["AR greedy", "diffusion 2"]
    with open(out / "results.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 5 and all(float(r["rtf"]) > 0 and float(r["mean_nfe"]) >= 1 for r in table)
    assert "| diffusion 2 |" in (out / "results.md").read_text()
    assert (out / "wer_vs_rtf.png").stat().st_size > 1000


def test_default_grid_covers_the_papers_axes():
    strategies = {run.get("strategy") for run in DEFAULT_GRID}
    assert {"diffusion", "semi-ar", "threshold", "prior"} <= strategies
    assert sorted(run["steps"] for run in DEFAULT_GRID if run.get("strategy") == "diffusion"
                  and not run.get("prefix_cache")) == [1, 8, 32, 64]
    assert any(run.get("prefix_cache") for run in DEFAULT_GRID)


def test_plot_rows_never_share_a_look():
    looks = {tuple(sorted(point_style(index).items())) for index in range(90)}
    assert len(looks) == 90
