"""`dllm-asr bench`: the papers' Table-1-style grid on one data set.

Each run decodes the same utterances and reports WER (Whisper English normaliser), RTF, RTFx
and mean NFE. Runs are timed side by side in one process (warm-up excluded), so the ratios
between rows are meaningful even on a noisy machine. Writes results.md, results.csv and
wer_vs_rtf.png into the output folder.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dllm_asr.data.manifests import Utterance, load_dataset
from dllm_asr.evaluation.evaluate import EvalReport, evaluate_utterances
from dllm_asr.files import atomic_writer, write_text_atomic
from dllm_asr.transcription.options import DeliberationOptions
from dllm_asr.transcription.options import TranscribeOptions

if TYPE_CHECKING:
    import torch

DEFAULT_GRID: list[dict[str, Any]] = [
    {"name": "diffusion, 1 step", "strategy": "diffusion", "steps": 1},
    {"name": "diffusion, 4 steps", "strategy": "diffusion", "steps": 4},
    {"name": "diffusion, 8 steps", "strategy": "diffusion", "steps": 8},
    {"name": "diffusion, 16 steps", "strategy": "diffusion", "steps": 16},
    {"name": "diffusion, 32 steps", "strategy": "diffusion", "steps": 32},
    {"name": "diffusion, 32 steps, static cache", "strategy": "diffusion", "steps": 32, "cache": "static"},
    {"name": "diffusion, 64 steps", "strategy": "diffusion", "steps": 64},
    {"name": "semi-AR, 4 blocks x 8 steps", "strategy": "semi-ar", "steps": 32, "num_blocks": 4},
    {"name": "threshold 0.9", "strategy": "threshold", "threshold": 0.9},
    {"name": "prior-guided (CTC prior)", "strategy": "prior", "steps": 8, "prior": "ctc"},
]

FASTER_WHISPER_ROW: dict[str, Any] = {"name": "faster-whisper tiny.en int8 (greedy)", "external": "faster-whisper"}
"""`dllm-asr bench --against faster-whisper`: the CPU user's alternative, on the same clips in the same run."""

AR_GRID: list[dict[str, Any]] = [
    {"name": "AR greedy", "model": "ar", "strategy": "ar"},
    {"name": "deliberation of AR, semi-AR 2 chunks", "deliberate": {"mask": "semi-ar", "chunks": 2}},
    {"name": "deliberation of AR, random 30%", "deliberate": {"mask": "random", "ratio": 0.3}},
    {"name": "deliberation of AR, low-confidence 30%", "deliberate": {"mask": "low-confidence", "ratio": 0.3}},
    {"name": "deliberation of AR, semi-AR 2 chunks, text only",
     "deliberate": {"mask": "semi-ar", "chunks": 2, "use_audio": False}},
    {"name": "prior-guided (AR prior)", "strategy": "prior", "steps": 8, "prior": "ar"},
]


def read_grid(path: str | None, with_ar: bool) -> list[dict[str, Any]]:
    if path is None:
        return DEFAULT_GRID + (AR_GRID if with_ar else [])
    grid = yaml.safe_load(Path(path).read_text())
    if not isinstance(grid, list) or not all(isinstance(r, dict) and "name" in r for r in grid):
        raise ValueError(f"{path}: a grid is a YAML list of runs, each with a 'name'")
    return grid


def run_one(run: dict[str, Any], models: dict, utterances: list[Utterance], ar_hyps: dict[str, str] | None,
            batch_size: int) -> EvalReport:
    """One grid row. Raises ValueError when the model cannot run it (the row is then skipped)."""
    if run.get("external") == "faster-whisper":
        from dllm_asr.evaluation.external import FasterWhisperOptions, evaluate_faster_whisper

        settings = {k: v for k, v in run.items() if k not in ("name", "external")}
        return evaluate_faster_whisper(utterances, FasterWhisperOptions(**settings))
    settings = {k: v for k, v in run.items() if k not in ("name", "model", "deliberate", "prior", "dtype")}
    options = TranscribeOptions(**settings)
    if run.get("model", "diffusion") not in models:
        raise ValueError("needs an AR model (--ar-model)")
    model = models[run.get("model", "diffusion")]
    if run.get("prior") == "ctc" and model.ctc_head is None:
        raise ValueError("needs a CTC head, which this model has not")
    deliberation = DeliberationOptions(**run["deliberate"]) if run.get("deliberate") else None
    if deliberation or run.get("prior") == "ar":
        if ar_hyps is None:
            raise ValueError(f"run {run['name']!r} needs AR hypotheses: give --ar-model or an 'AR greedy' run first")
        utterances = [replace(u, prior=ar_hyps.get(u.id, "")) for u in utterances]
    return evaluate_utterances(model, utterances, options, batch_size=batch_size, deliberation=deliberation,
                               priors_from_data=run.get("prior") == "ar")


def write_tables(rows: list[dict[str, Any]], out: Path) -> None:
    columns = ["name", "wer", "rtf", "rtfx", "mean_nfe", "decoder_ms", "utterances", "note"]
    # Each file whole or not at all: `--reuse` trusts every row that results.csv holds.
    with atomic_writer(out / "results.csv", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows([{c: r.get(c, "") for c in columns} for r in rows])
    lines = ["| system | WER % | RTF | RTFx | mean NFE | decoder ms/clip |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("note"):
            lines.append(f"| {r['name']} | skipped: {r['note']} | | | | |")
        else:
            decoder = "" if r.get("decoder_ms") in (None, "") else f"{float(r['decoder_ms']):.1f}"
            lines.append(f"| {r['name']} | {100 * r['wer']:.2f} | {r['rtf']:.4f} | {r['rtfx']:.1f} | "
                         f"{r['mean_nfe']:.1f} | {decoder} |")
    write_text_atomic(out / "results.md", "\n".join(lines) + "\n\nWER with the Whisper English normaliser. RTF: the "
                      "whole pipeline (features, encoder, decoding); decoder ms/clip: decoding "
                      "alone, every encoder pass subtracted (blank for external systems).\n")


def read_measured_rows(out_dir: Path) -> list[dict[str, Any]]:
    """The measured (not skipped) rows of an earlier run's results.csv, numbers parsed."""
    path = out_dir / "results.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if not r.get("note")]
    numbers = ("wer", "rtf", "rtfx", "mean_nfe")
    return [{**r, **{k: float(r[k]) for k in numbers}, "utterances": int(r["utterances"])} for r in rows
            if "AR" not in r["name"] and "deliberation" not in r["name"]]


MARKERS = "osD^v<>p*"


def point_style(index: int) -> dict[str, str]:
    """Marker and colour of the plot's `index`-th row: 9 markers against 10 colours, so no two of
    the first 90 rows look alike (equal periods repeated the 1st row's look on the 11th)."""
    return {"marker": MARKERS[index % len(MARKERS)], "color": f"C{index % 10}"}


def plot(rows: list[dict[str, Any]], out: Path) -> list[tuple[str, float, float]]:
    """Draw the measured rows as WER % against RTF (log scale) into `out`/wer_vs_rtf.png; returns
    the points as drawn, (label, RTF, WER %) read back from the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(8, 5))
    for index, r in enumerate(rows):  # a legend, not annotations: close points would overprint
        if r.get("note"):
            continue
        ax.scatter(r["rtf"], 100 * r["wer"], s=40, label=r["name"], **point_style(index))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # RTFs span less than a decade: label 0.02, 0.05 ...
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("RTF (log scale, lower is faster)")
    ax.set_ylabel("WER % (Whisper English normaliser)")
    ax.set_title("WER versus real-time factor")
    ax.grid(True, alpha=0.3)
    if ax.collections:  # nothing measured yet (the first rows skipped): no legend to draw
        # under the axes, which keep their size however many rows the grid has (the saved
        # image grows instead)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.12), frameon=False)
    with atomic_writer(out / "wer_vs_rtf.png", "wb") as handle:
        fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    drawn = [(points.get_label(), *map(float, points.get_offsets()[0])) for points in ax.collections]
    plt.close(fig)
    return drawn


def load_models(model: str, ar_model: str | None, device: torch.device, dtype: torch.dtype) -> dict:
    """{"diffusion": model, "ar": its AR baseline (a Whisper-family model is its own)}."""
    from dllm_asr.model.loading import load_model

    models = {"diffusion": load_model(model, device=device, dtype=dtype)}
    if ar_model:
        models["ar"] = load_model(ar_model, device=device, dtype=dtype)
    elif models["diffusion"].supports_ar:
        models["ar"] = models["diffusion"]
    return models


def run_bench(model: str, data: str, out: str, grid: str | None = None, device: str = "auto",
              dtype: str = "auto", max_utterances: int | None = None, batch_size: int = 8,
              ar_model: str | None = None, against: str | None = None, reuse: bool = False) -> list[dict[str, Any]]:
    """Run every grid entry on `data` and write the tables and the plot into `out` after each row.

    against="faster-whisper" adds faster-whisper tiny.en (int8) on the same clips. reuse=True keeps
    the rows an earlier run already wrote to `out`/results.csv and measures only the others (the
    AR-dependent rows then need the AR row to be measured again)."""
    from dllm_asr.model.decoders.base import resolve_dtype
    from dllm_asr.training.distributed import pick_device

    # The inputs first: a missing data set or a bad grid file is reported before any model loads.
    utterances = load_dataset(data, on_error="skip")[:max_utterances]
    if grid is not None:
        read_grid(grid, with_ar=False)
    device = pick_device(device)
    loaded: dict[torch.dtype, dict] = {}

    def models_in(name: str) -> dict:
        """The models in dtype `name`, loaded once: a grid row's `dtype` compares dtypes in one run."""
        chosen = resolve_dtype(name, device)
        if chosen not in loaded:
            loaded[chosen] = load_models(model, ar_model, device, chosen)
        return loaded[chosen]

    models = models_in(dtype)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, ar_hyps = read_measured_rows(out_dir) if reuse else [], None
    done = {r["name"] for r in rows}
    for run in read_grid(grid, with_ar="ar" in models) + ([FASTER_WHISPER_ROW] if against == "faster-whisper" else []):
        if run["name"] in done:
            continue
        try:
            report = run_one(run, models_in(run.get("dtype", dtype)), utterances, ar_hyps, batch_size)
        except ValueError as err:  # a row this model cannot run: say so in the table, keep the rest
            rows.append({"name": run["name"], "note": str(err)})
            print(f"{run['name']:<45} skipped: {err}", flush=True)
        else:
            if run.get("strategy") == "ar":
                ar_hyps = report.hyps
            rows.append({"name": run["name"], "wer": report.wer, "rtf": report.rtf,
                         "rtfx": 1 / max(report.rtf, 1e-12), "mean_nfe": report.mean_nfe,
                         "decoder_ms": report.decoder_ms_per_clip, "utterances": len(report.hyps)})
            print(f"{run['name']:<45} {report.summary()}", flush=True)
        write_tables(rows, out_dir)  # after every row: an interrupted run keeps what it measured
        plot(rows, out_dir)
    return rows
