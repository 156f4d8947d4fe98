"""`dllm-asr` command line: a thin layer over the library's functions.

    dllm-asr transcribe [--model M] [--strategy S] FILES...
    dllm-asr deliberate --prior HYP --mask {random,low-confidence,semi-ar} --ratio P [--model M] FILES...
    dllm-asr train --config RECIPE.yaml [key=value ...]
    dllm-asr eval --model M --data D [--strategy S] --out DIR
    dllm-asr score REF HYP
    dllm-asr bench --model M --data D --out DIR [--grid GRID.yaml]
    dllm-asr export CHECKPOINT OUT [--dtype fp16] [--interpolate KEEP]
    dllm-asr corpus OUT_DIR [options]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

from . import __version__
from .config import DEFAULT_MODEL
from .options import (CACHES, DELIBERATION_RULES, MASKINGS, NUMERICS, OUTPUT_FORMATS, REMASKINGS, STRATEGIES,
                      DeliberationOptions,
                      TranscribeOptions, field_help, field_type)


CHOICES = {"strategy": STRATEGIES, "remasking": REMASKINGS, "numerics": NUMERICS, "cache": CACHES}
"""The decoding flags that take one of a fixed set of values."""


def add_decoding_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TranscribeOptions field (--steps, --num-blocks, --threshold, ...), its help the
    field's docstring."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory or shipped model name")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--batch-size", type=int, default=8, help="clips decoded together")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    helps = field_help(TranscribeOptions)
    for f in fields(TranscribeOptions):
        # SUPPRESS: a flag not given leaves the model's own setting (ModelConfig.decoding), else the default
        flag, settings = "--" + f.name.replace("_", "-"), {"default": argparse.SUPPRESS}
        settings["help"] = f"{helps.get(f.name, '')} (default: the model's own, else {f.default})"
        if f.name in CHOICES:
            parser.add_argument(flag, choices=CHOICES[f.name], **settings)
        elif isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **settings)
        else:
            kind = field_type(f)
            parser.add_argument(flag, type=kind, **settings)


def output_formats(choice: str) -> list[str]:
    return list(OUTPUT_FORMATS) if choice == "all" else [choice]


def transcribe_options(args: argparse.Namespace, model=None) -> TranscribeOptions:
    """The decoding flags given on the command line over the model's own settings (none before
    the model is loaded: that call only validates the flags)."""
    given = {f.name: getattr(args, f.name) for f in fields(TranscribeOptions) if hasattr(args, f.name)}
    return TranscribeOptions(**{**(model.config.decoding if model is not None else {}), **given})


def open_model(args: argparse.Namespace):
    import torch

    from .distributed import pick_device
    from .loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_model(args.model, device=pick_device(args.device), dtype=args.dtype)


def print_segment(path: str, segment) -> None:
    """-v: each segment on stderr as it is decoded, Whisper-style."""
    print(f"{path} [{clock(segment.start)} --> {clock(segment.end)}] {segment.text}", file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
    """'MM:SS.mmm', or 'H:MM:SS.mmm' from an hour on."""
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    text = f"{rest // 60_000:02d}:{rest // 1000 % 60:02d}.{rest % 1000:03d}"
    return f"{hours}:{text}" if hours else text


def cmd_transcribe(args: argparse.Namespace) -> int:
    from .audio import STDIN, expand_audio_paths
    from .outputs import write_outputs
    from .inference import transcribe_files

    transcribe_options(args)  # bad flags fail here, before the model loads
    if args.output_format:
        check_output_folder(args.output_dir, "--output-dir")
    files, unusable = [], 0
    for given in args.files:  # a folder, pattern or manifest that names no audio is reported; the rest go on
        try:
            files += expand_audio_paths([given])
        except ValueError as err:
            unusable += 1
            print(f"error: {err}", file=sys.stderr)
    missing = [f for f in files if f != STDIN and not Path(f).is_file()]
    for path in missing:  # reported now, not after tens of seconds of model loading
        print(f"error: audio file not found: {path}", file=sys.stderr)
    absent = set(missing)
    files = [f for f in files if f not in absent]
    if not files:
        return 2 if unusable else 1
    model = open_model(args)
    options = transcribe_options(args, model)
    failures = len(missing) + unusable
    show = print_segment if args.verbose else None
    for result in transcribe_files(model, files, options, batch_size=args.batch_size, on_segment=show):
        if result.error:
            failures += 1
            print(f"error: {result.error}", file=sys.stderr)
            continue
        t = result.transcript
        if t.truncated:
            print(f"warning: {result.path}: the transcript filled the longest block ({len(t.tokens)} tokens) "
                  "without ending; words may be missing (raise --length or split the audio)", file=sys.stderr)
        if args.output_format:
            try:
                write_outputs(result, args.output_dir, output_formats(args.output_format), options, args.overwrite)
            except (OSError, ValueError) as err:
                failures += 1
                print(f"error: {result.path}: {err}", file=sys.stderr)
        if args.format == "jsonl":
            record = {"audio": result.path, "text": t.text, "nfe": t.nfe, "steps": t.steps,
                      "no_speech_prob": t.no_speech_prob, "truncated": t.truncated}
            if options.trace:
                record["trace"] = t.trace
            print(json.dumps(record))
        else:
            print(f"{result.path}\t{t.text}")
    return 1 if failures else 0  # every readable file was transcribed; the status says some were not


def cmd_deliberate(args: argparse.Namespace) -> int:
    from .metrics import read_transcripts
    from .inference import transcribe_files

    priors = read_transcripts(args.prior)
    keys = [Path(f).stem for f in args.files]
    missing = [k for k in keys if k not in priors]
    if missing:
        raise ValueError(f"{args.prior}: no prior for {', '.join(missing[:5])} (ids are the audio file stems)")
    transcribe_options(args)  # bad flags fail before the model loads
    absent = [f for f in args.files if not Path(f).is_file()]
    for path in absent:  # reported now, not after the model has loaded; the other files go on, as in transcribe
        print(f"error: audio file not found: {path}", file=sys.stderr)
    files = [f for f in args.files if f not in set(absent)]
    if not files:
        return 1
    keys = [Path(f).stem for f in files]
    model = open_model(args)
    results = list(transcribe_files(model, files, transcribe_options(args, model), batch_size=args.batch_size,
                                    priors=[priors[k] for k in keys], deliberation=deliberation_options(args)))
    for key, result in zip(keys, results):
        if result.error:
            print(f"error: {result.error}", file=sys.stderr)
            continue
        print(json.dumps({"id": key, "prior": priors[key], "text": result.transcript.text,
                          "nfe": result.transcript.nfe}))
    return 1 if absent or any(r.error for r in results) else 0


def cmd_train(args: argparse.Namespace) -> int:
    from .recipe import load_train_config
    from .train import train

    out = train(load_train_config(args.config, args.overrides))
    print(f"checkpoints in {out / 'checkpoints'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .evaluate import data_audio_gain, evaluate_utterances

    transcribe_options(args)  # bad flags fail before the model loads
    deliberation = deliberation_options(args)
    check_output_folder(args.out, "--out")
    skips = SkipCounter()
    logging.getLogger("dllm_asr.data").addHandler(skips)
    try:
        # The data set is read before the model loads: a missing or unreadable one costs nothing.
        utterances = load_dataset(args.data, on_error="skip")[:args.max_utterances or None]
        if not utterances:
            raise ValueError(no_utterance(args.data, skips.count))
        if deliberation and any(u.prior is None for u in utterances):
            raise ValueError(f"{args.data}: --deliberate needs a prior transcript on each line (manifest field 'prior')")
        model = open_model(args)
        report = evaluate_utterances(model, utterances, transcribe_options(args, model), batch_size=args.batch_size,
                                     deliberation=deliberation)
    finally:
        logging.getLogger("dllm_asr.data").removeHandler(skips)
    if not report.hyps:  # not "WER 0.00%" over nothing
        raise ValueError(no_utterance(args.data, skips.count))
    report.write(args.out)
    print(report.summary())
    if args.audio_gain:
        matched, swapped, clips = data_audio_gain(model, args.data, args.audio_gain)
        print(f"audio gain {swapped - matched:.3f} nats/token (loss {matched:.3f} with each clip's own "
              f"audio, {swapped:.3f} with another's; {clips} clips)")
    print(f"wrote {args.out}/hyps.jsonl, errors.jsonl, report.md")
    return 1 if skips.count else 0  # the report scores the usable utterances; the status says some were not


def no_utterance(data: str, skipped: int) -> str:
    """The one-line error for a data set that gave nothing to score."""
    named = " (each is named above)" if skipped else ""
    return f"{data}: no utterance could be decoded{named}"


def check_output_folder(path: str, flag: str) -> None:
    """Raise ValueError when the output folder `path` (given as `flag`) cannot be created or
    written: reported before the model loads, not after the decoding."""
    folder = Path(path).absolute()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {path}: exists and is not a folder")
    ancestor = next(p for p in (folder, *folder.parents) if p.exists())  # the folder itself, or where it will be made
    if not ancestor.is_dir():
        raise ValueError(f"{flag} {path}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {ancestor} is not writable")


class SkipCounter(logging.Handler):
    """Counts the manifest lines and clips a command skipped: `dllm_asr.data` logs each as one warning."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def cmd_score(args: argparse.Namespace) -> int:
    from .metrics import score_files

    report = score_files(args.ref, args.hyp, normalizer=args.normalizer)
    print(report.to_text())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    check_output_folder(args.out, "--out")  # the data set and grid are checked by run_bench, before any model loads
    run_bench(args.model, args.data, args.out, grid=args.grid, device=args.device, dtype=args.dtype,
              max_utterances=args.max_utterances, batch_size=args.batch_size, ar_model=args.ar_model,
              against=args.against, reuse=args.reuse)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import export_model

    out = export_model(args.checkpoint, args.out, dtype=args.dtype, interpolate=args.interpolate)
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(f"{out}: {size:.1f} MB ({args.dtype})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .distributed import pick_device
    from .server import ServerLimits, serve

    limits = ServerLimits(max_upload_bytes=int(args.max_upload_mb * 2 ** 20), max_audio_seconds=args.max_audio_seconds,
                          max_batch=args.max_batch, max_wait_seconds=args.max_wait_ms / 1000,
                          timeout_seconds=args.timeout, api_key=args.api_key or os.environ.get("DLLM_ASR_API_KEY"))
    if limits.max_batch < 1 or limits.max_wait_seconds < 0 or limits.timeout_seconds <= 0:
        raise ValueError("--max-batch must be >= 1, --max-wait-ms >= 0 and --timeout > 0")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    serve(args.model, args.host, args.port, limits, device=pick_device(args.device))
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    if args.asterisk:
        return write_asterisk(Path(args.out_dir) / "asterisk.jsonl", args.overwrite)
    from .corpus import build_corpus

    defaults = {name: value for name, value in (("engines", args.engines), ("sources", args.sources))
                if value is not None}  # not given: the corpus builder's own
    path = build_corpus(args.out_dir, hours=args.hours, num_utterances=args.utterances, seed=args.seed,
                        jobs=args.jobs, reverb_fraction=args.reverb_fraction, noise_fraction=args.noise_fraction,
                        text_files=args.text_files, unseen_voices=args.unseen_voices, overwrite=args.overwrite,
                        **defaults)
    info = json.loads(path.read_text())
    print(f"{path}: {info['hours']:.3f} h in {info['build_seconds']:.1f} s")
    return 0


def write_asterisk(out_path: Path, overwrite: bool) -> int:
    from .recordings import build_asterisk_manifest

    summary = build_asterisk_manifest(out_path, overwrite=overwrite)
    print(f"{out_path}: {summary['utterances']} real utterances, {summary['minutes']:.1f} min "
          f"({summary['skipped_text']} prompts skipped: tones, letters, keys; {summary['too_long']} over 30 s; "
          f"{summary['missing_audio']} without audio, {summary['unreadable']} unreadable)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    path = build_report(args.model, args.corpus, args.out, args.ar_model, args.max_utterances, args.notes,
                        args.device, args.batch_size, args.grid, args.reuse, args.against)
    print(f"wrote {path}")
    return 0


def cmd_slice_probe(args: argparse.Namespace) -> int:
    from .slice_probe import slice_losses

    for spec, kept, loss in slice_losses(args.decoder, args.texts, args.max_texts, args.layers):
        print(f"layers {spec:>12}  ({kept:2d} kept)  next-token loss {loss:.2f} nats/token")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dllm-asr", description="Speech recognition with diffusion LLM decoders")
    parser.add_argument("--version", action="version", version=f"dllm-asr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not just its one line")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("transcribe", help="transcribe audio files")
    add_decoding_flags(p)
    p.add_argument("--format", choices=("text", "jsonl"), default="text",
                   help="text: 'path<TAB>transcript' lines; jsonl: one JSON object per file")
    p.add_argument("--output-format", choices=OUTPUT_FORMATS + ("all",), default=None,
                   help="also write each transcript as a file in this format (all: every one), as the Whisper CLI does")
    p.add_argument("--output-dir", default=".", help="folder for the --output-format files")
    p.add_argument("--overwrite", action="store_true", help="replace --output-format files that already exist")
    p.add_argument("files", nargs="+", help="audio files (any format ffmpeg reads), directories of them (recursively), "
                   "glob patterns ('talks/**/*.mp3'), JSONL manifests ({\"audio\": path} lines), or - for standard input")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("deliberate", help="deliberate prior transcripts (Whisper-LLaDA sec. 3.3.1)")
    add_decoding_flags(p)
    add_deliberation_flags(p, required=True)
    p.add_argument("--prior", required=True, help="JSONL or Kaldi text file of prior transcripts (ids = file stems)")
    p.add_argument("files", nargs="+", help="audio files whose stems name their prior transcripts")
    p.set_defaults(func=cmd_deliberate)

    p = sub.add_parser("train", help="train from a recipe")
    p.add_argument("--config", required=True, help="a recipe YAML file, or the name of a shipped recipe: "
                   + ", ".join(shipped_recipes()))
    p.add_argument("overrides", nargs="*", default=[], help="key.sub=value overrides of the recipe, e.g. "
                   "schedule.lr=1e-4 stages.0.steps=500 stop_after_minutes=60")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="decode, score and time a data set")
    add_decoding_flags(p)
    add_deliberation_flags(p, required=False)
    p.add_argument("--data", required=True, help="JSONL manifest, LibriSpeech folder or Kaldi data dir")
    p.add_argument("--out", required=True, help="folder for hyps.jsonl, errors.jsonl and report.md")
    p.add_argument("--max-utterances", type=int, default=None, help="score only the first N utterances")
    p.add_argument("--audio-gain", type=int, default=0, metavar="N",
                   help="also print how much the first N clips' own audio lowers the loss (0: off)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("score", help="score a hypothesis file against a reference file")
    p.add_argument("ref", help="reference transcripts: JSONL (id, text) or Kaldi text file")
    p.add_argument("hyp", help="hypotheses, same formats")
    p.add_argument("--normalizer", default="whisper_english", choices=("whisper_english", "whisper_basic", "none"),
                   help="text normalisation applied to both sides before scoring")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("bench", help="Table-1-style grid of strategies: WER, RTF, NFE")
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint or shipped model name")
    p.add_argument("--data", required=True, help="JSONL manifest, LibriSpeech folder or Kaldi data dir")
    p.add_argument("--out", required=True, help="folder for results.csv, results.md and wer_vs_rtf.png")
    p.add_argument("--grid", default=None, help="YAML list of runs (None: the papers' grid)")
    p.add_argument("--ar-model", default=None, help="AR baseline checkpoint: adds AR, deliberation and AR-prior runs "
                   "(a Whisper-family model is its own AR baseline)")
    p.add_argument("--against", choices=["faster-whisper"], default=None,
                   help="add faster-whisper tiny.en (int8, greedy) on the same clips, timed the same way")
    p.add_argument("--reuse", action="store_true", help="keep rows already in OUT/results.csv; measure the rest")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--max-utterances", type=int, default=None, help="bench only the first N utterances")
    p.add_argument("--batch-size", type=int, default=8, help="clips decoded together")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("export", help="copy a checkpoint's model, without training state, e.g. in fp16 to ship")
    p.add_argument("checkpoint", help="checkpoint directory (e.g. runs/x/checkpoints/best)")
    p.add_argument("out", help="output directory: new, empty, or an earlier export (never a folder holding anything else)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp16", help="dtype of the exported deltas")
    p.add_argument("--interpolate", type=float, metavar="KEEP",
                   help="Whisper-decoder models: keep this fraction (0, 1] of the fine-tuning's change to the "
                        "decoder, the rest back toward the pretrained decoder (WiSE-FT; the default model keeps 0.6)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="HTTP server: OpenAI-compatible /v1/audio/transcriptions and a web page at /")
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory or shipped model name")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: $DLLM_ASR_API_KEY, else none)")
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together at most")
    p.add_argument("--max-wait-ms", type=float, default=20.0, help="how long a request waits for others to batch with (0: no waiting, but requests queued meanwhile are still batched; --max-batch 1 decodes each alone)")
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="largest upload, MiB (413 above)")
    p.add_argument("--max-audio-seconds", type=float, default=3600.0, help="longest audio accepted (400 above)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a request gets 504")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("corpus", help="synthesise an English speech corpus, or list Asterisk's real recordings")
    add_corpus_flags(p)
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser("report", help="regenerate docs/results.md: the bench grid on a corpus's two test splits")
    p.add_argument("--model", required=True, help="the model's folder (a checkpoint or an export)")
    p.add_argument("--ar-model", default=None, help="an AR model's folder for the baseline rows")
    p.add_argument("--corpus", required=True, help="a folder with test_seen.jsonl and test_unseen.jsonl")
    p.add_argument("--out", default="docs/results.md", help="the Markdown page to write")
    p.add_argument("--max-utterances", type=int, default=None, help="first N clips of each split")
    p.add_argument("--notes", default=None, help="Markdown discussion appended to the report")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    p.add_argument("--batch-size", type=int, default=8, help="clips decoded together")
    p.add_argument("--grid", default=None, help="YAML list of runs (default: the bench grid)")
    p.add_argument("--reuse", action="store_true", help="keep the tables of splits already run")
    p.add_argument("--against", choices=["faster-whisper"], default=None,
                   help="add faster-whisper tiny.en (int8) on the same clips")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("slice-probe", help="is a decoder keeping only some layers still a language model?")
    p.add_argument("--decoder", default="smollm2-135m", help="an hf decoder source")
    p.add_argument("--texts", required=True, help="JSONL manifest whose 'text' fields are scored")
    p.add_argument("--max-texts", type=int, default=48, help="first N texts of the manifest")
    p.add_argument("--layers", nargs="+", default=["all", "0-3", "0-7", "0-15"],
                   help="layer sets to keep: all, or ranges like 0-3,26-29")
    p.set_defaults(func=cmd_slice_probe)
    for command in sub.choices.values():
        # -v after the command too; SUPPRESS keeps a -v given before it
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log what the library does (INFO level); transcribe: print each segment as it is decoded")
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of an error, not just its one line")
        command.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    return parser


def add_corpus_flags(parser: argparse.ArgumentParser) -> None:
    """`dllm-asr corpus OUT_DIR (--hours H | --utterances N | --asterisk) ...`. Engines and text
    sources are checked by the builder (its module is not imported to build this parser)."""
    parser.add_argument("out_dir", help="output folder (created; must be empty unless --overwrite)")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--hours", type=float, help="total hours of audio (approximate)")
    size.add_argument("--utterances", type=int, help="total number of utterances")
    size.add_argument("--asterisk", action="store_true",
                      help="instead of synthesising, write OUT_DIR/asterisk.jsonl: real speech from Debian's "
                           "asterisk-core-sounds-en (see dllm_asr.recordings)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the texts, voices and augmentation drawn")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="synthesis processes")
    parser.add_argument("--engines", nargs="+", default=None,
                        help="TTS engines: espeak-ng flite (the default), piper and hibari (`pip install "
                             "'dllm-asr[tts]'`), festival (its Debian packages)")
    parser.add_argument("--reverb-fraction", type=float, default=0.0, help="share of clips given room reverberation")
    parser.add_argument("--noise-fraction", type=float, default=0.0, help="share of clips given noise")
    parser.add_argument("--sources", nargs="*", default=None,
                        help="Debian text corpora to read: fortunes bible wordnet gcide (the default); "
                             "none: only --text-files")
    parser.add_argument("--text-files", nargs="*", default=[], help="extra plain-text prose files")
    parser.add_argument("--unseen-voices", nargs="+", default=None, help="'engine:voice' names")
    parser.add_argument("--overwrite", action="store_true", help="replace a corpus this command built before")


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped in dllm_asr/recipes (read without importing torch)."""
    return sorted(path.stem for path in (Path(__file__).parent / "recipes").glob("*.yaml"))


def add_deliberation_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    docs, defaults = field_help(DeliberationOptions), DeliberationOptions()
    parser.add_argument("--mask" if required else "--deliberate", choices=MASKINGS, required=required,
                        dest="mask", help=docs["mask"] + ("" if required else " Given: deliberate the prior."))
    parser.add_argument("--ratio", type=float, default=defaults.ratio, help=docs["ratio"])
    parser.add_argument("--chunks", type=int, default=defaults.chunks, help=docs["chunks"])
    parser.add_argument("--deliberation-rules", choices=DELIBERATION_RULES, default=defaults.rules, dest="rules",
                        help=docs["rules"])
    parser.add_argument("--text-only", action="store_true", help="condition on the prompt alone (no audio)")


def deliberation_options(args: argparse.Namespace) -> DeliberationOptions | None:
    """The deliberation the flags ask for (None when no --mask/--deliberate was given)."""
    if not args.mask:
        return None
    return DeliberationOptions(mask=args.mask, ratio=args.ratio, chunks=args.chunks, use_audio=not args.text_only,
                               rules=args.rules)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except Exception as err:  # one line naming what is wrong; --debug: the traceback
        if args.debug:
            raise
        what = "" if isinstance(err, (ValueError, OSError)) else f"{type(err).__name__}: "
        print(f"dllm-asr {args.command}: error: {what}{err}".splitlines()[0], file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
