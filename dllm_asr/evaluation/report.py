"""`dllm-asr report`: regenerate docs/results.md from a trained model and a corpus.

    dllm-asr report --model runs/base-en/checkpoints/best [--ar-model AR_DIR] \\
        --corpus data/synth --out docs/results.md [--max-utterances 60] [--notes docs/results-notes.md]

Runs the `dllm-asr bench` grid on the corpus's test_seen and test_unseen splits (voices used in
training, and voices never heard in training), writes each split's table, CSV and WER-versus-
RTF plot under docs/results/<split>/, and assembles one Markdown page: the tables, how they
were produced (model, machine, command) and, when given, a hand-written discussion.
"""

from __future__ import annotations

import datetime
import platform
import sys
from pathlib import Path

import torch

from dllm_asr.evaluation.bench import run_bench
from dllm_asr.files import write_text_atomic

SPLITS = ("test_seen", "test_unseen")


def machine() -> str:
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def build_report(model: str, corpus: str, out: str, ar_model: str | None = None, max_utterances: int | None = None,
                 notes: str | None = None, device: str = "auto", batch_size: int = 8, grid: str | None = None,
                 reuse: bool = False, against: str | None = None) -> Path:
    """Run the grid on every split and write the Markdown report; returns its path. With `reuse`,
    splits whose tables already exist are not run again (to re-assemble after editing the notes)."""
    out_path = Path(out)
    figures = out_path.parent / "results"
    _check_inputs(corpus, notes, figures, reuse)
    sections = []
    for split in SPLITS:
        split_dir = figures / split
        if not (reuse and (split_dir / "results.md").is_file()):
            run_bench(model, str(Path(corpus) / f"{split}.jsonl"), str(split_dir), device=device,
                      max_utterances=max_utterances, batch_size=batch_size, ar_model=ar_model, grid=grid,
                      against=against)
        table = (split_dir / "results.md").read_text()
        plot = (split_dir / "wer_vs_rtf.png").relative_to(out_path.parent)
        sections.append(f"## {split}\n\n{table}\n![WER versus RTF, {split}]({plot})\n")
    command = " ".join(["dllm-asr", *sys.argv[1:]]) if sys.argv[1:2] == ["report"] else "dllm-asr report"
    header = (f"# Results\n\nGenerated {datetime.date.today()} by `{command}`\n\n"
              f"Model: `{model}`; AR baseline: `{ar_model or 'none'}`; corpus: `{corpus}`; "
              f"up to {max_utterances or 'all'} utterances per split; {machine()}.\n"
              "WER uses Whisper's English normaliser; RTF = decoding seconds / audio seconds, warm-up excluded.\n")
    discussion = Path(notes).read_text() if notes else ""
    write_text_atomic(out_path, header + "\n" + "\n".join(sections) + ("\n" + discussion if discussion else ""))
    return out_path


def _check_inputs(corpus: str, notes: str | None, figures: Path, reuse: bool) -> None:
    """A missing notes file or split manifest, reported before hours of benchmarking, not after."""
    if notes and not Path(notes).is_file():
        raise ValueError(f"--notes {notes}: no such file")
    for split in SPLITS:
        manifest = Path(corpus) / f"{split}.jsonl"
        if not (reuse and (figures / split / "results.md").is_file()) and not manifest.is_file():
            raise ValueError(f"--corpus {corpus}: no {manifest.name} (a corpus built by `dllm-asr corpus`)")
