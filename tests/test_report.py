import json

from dllm_asr.evaluation.report import build_report
from dllm_asr.model.checkpoint import save_model
from tests.helpers import ASSETS


def test_report_has_a_table_and_plot_per_split(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path / "ckpt")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    line = json.dumps({"id": "a", "audio": str(ASSETS / "example.wav"), "text": "the quick brown fox"}) + "\n"
    for split in ("test_seen", "test_unseen"):
        (corpus / f"{split}.jsonl").write_text(line)
    grid = tmp_path / "grid.yaml"
    grid.write_text("- {name: 'diffusion, 8 steps', strategy: diffusion, steps: 8}\n"
                    "- {name: 'prior-guided (CTC prior)', strategy: prior, steps: 4}\n")
    notes = tmp_path / "notes.md"
    notes.write_text("## Discussion\n\nHand-written.\n")
    out = build_report(str(tmp_path / "ckpt"), str(corpus), str(tmp_path / "docs" / "results.md"),
                       notes=str(notes), device="cpu", grid=str(grid))
    text = out.read_text()
    assert "## test_seen" in text and "## test_unseen" in text and "Hand-written." in text
    # Each split's section is that split's bench table, rows in the grid's order, and its plot.
    for split in ("test_seen", "test_unseen"):
        section = text.split(f"## {split}\n")[1].split("\n## ")[0]
        table = (tmp_path / "docs" / "results" / split / "results.md").read_text()
        assert table in section and f"](results/{split}/wer_vs_rtf.png)" in section
        names = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:]
        assert names == ["diffusion, 8 steps", "prior-guided (CTC prior)"]
    assert text.index("## test_seen") < text.index("## test_unseen") < text.index("Hand-written.")
    assert (tmp_path / "docs" / "results" / "test_unseen" / "wer_vs_rtf.png").is_file()
    notes.write_text("## Discussion\n\nRevised.\n")
    again = build_report(str(tmp_path / "ckpt"), str(corpus), str(out), notes=str(notes), reuse=True)
    assert "Revised." in again.read_text() and again.read_text().count("| diffusion, 8 steps |") == 2
