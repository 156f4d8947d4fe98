import json

from dllm_asr.checkpoint import save_model
from dllm_asr.report import build_report
from tests.conftest import ASSETS


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
    assert text.count("| diffusion, 8 steps |") == 2
    assert (tmp_path / "docs" / "results" / "test_unseen" / "wer_vs_rtf.png").is_file()
    notes.write_text("## Discussion\n\nRevised.\n")
    again = build_report(str(tmp_path / "ckpt"), str(corpus), str(out), notes=str(notes), reuse=True)
    assert "Revised." in again.read_text() and again.read_text().count("| diffusion, 8 steps |") == 2
