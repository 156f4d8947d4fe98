"""The `dllm-asr` subcommands: each takes the parsed arguments and returns the exit code (the parser is in `dllm_asr.cli`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

from dllm_asr.transcription.options import OUTPUT_FORMATS, DeliberationOptions, TranscribeOptions


def output_formats(choice: str) -> list[str]:
    return list(OUTPUT_FORMATS) if choice == "all" else [choice]


def transcribe_options(args: argparse.Namespace, model=None) -> TranscribeOptions:
    """The decoding flags given on the command line over the model's own settings (none before
    the model is loaded: that call only validates the flags)."""
    given = {f.name: getattr(args, f.name) for f in fields(TranscribeOptions) if hasattr(args, f.name)}
    return TranscribeOptions(**{**(model.config.decoding if model is not None else {}), **given})


def open_model(args: argparse.Namespace):
    import torch

    from dllm_asr.training.distributed import pick_device
    from dllm_asr.model.loading import load_model

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
    from dllm_asr.audio.io import STDIN, expand_audio_paths
    from dllm_asr.transcription.outputs import write_outputs
    from dllm_asr.transcription.file_batches import transcribe_files

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
    from dllm_asr.evaluation.metrics import read_transcripts
    from dllm_asr.transcription.file_batches import transcribe_files

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
    from dllm_asr.training.recipe import load_train_config
    from dllm_asr.training.train import train

    out = train(load_train_config(args.config, args.overrides))
    print(f"checkpoints in {out / 'checkpoints'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from dllm_asr.data.manifests import load_dataset
    from dllm_asr.evaluation.evaluate import data_audio_gain, evaluate_utterances

    transcribe_options(args)  # bad flags fail before the model loads
    deliberation = deliberation_options(args)
    check_output_folder(args.out, "--out")
    skips = SkipCounter()
    logging.getLogger("dllm_asr.data.manifests").addHandler(skips)
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
        logging.getLogger("dllm_asr.data.manifests").removeHandler(skips)
    if not report.hyps:  # not "WER 0.00%" over nothing
        raise ValueError(no_utterance(args.data, skips.count))
    # What ran, in report.md: `--dtype auto` depends on the CPU, so a figure needs its dtype beside it.
    report.options = {"model": args.model, "dtype": str(model.decoder.dtype).removeprefix("torch."),
                      "device": str(model.device), **report.options}
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
    """Counts the manifest lines and clips a command skipped: `dllm_asr.data.manifests` logs each as one warning."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def cmd_score(args: argparse.Namespace) -> int:
    from dllm_asr.evaluation.metrics import score_files

    report = score_files(args.ref, args.hyp, normalizer=args.normalizer)
    print(report.to_text())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from dllm_asr.evaluation.bench import run_bench

    check_output_folder(args.out, "--out")  # the data set and grid are checked by run_bench, before any model loads
    run_bench(args.model, args.data, args.out, grid=args.grid, device=args.device, dtype=args.dtype,
              max_utterances=args.max_utterances, batch_size=args.batch_size, ar_model=args.ar_model,
              against=args.against, reuse=args.reuse)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dllm_asr.model.checkpoint import export_model

    out = export_model(args.checkpoint, args.out, dtype=args.dtype, interpolate=args.interpolate)
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(f"{out}: {size:.1f} MB ({args.dtype})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from dllm_asr.training.distributed import pick_device
    from dllm_asr.server import ServerLimits, serve

    limits = ServerLimits(max_upload_bytes=int(args.max_upload_mb * 2 ** 20), max_audio_seconds=args.max_audio_seconds,
                          max_batch=args.max_batch, max_wait_seconds=args.max_wait_ms / 1000,
                          timeout_seconds=args.timeout, api_key=args.api_key or os.environ.get("DLLM_ASR_API_KEY"))
    if limits.max_batch < 1 or limits.max_wait_seconds < 0 or limits.timeout_seconds <= 0:
        raise ValueError("--max-batch must be >= 1, --max-wait-ms >= 0 and --timeout > 0")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    serve(args.model, args.host, args.port, limits, device=pick_device(args.device), dtype=args.dtype)
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    if args.asterisk:
        return write_asterisk(Path(args.out_dir) / "asterisk.jsonl", args.overwrite)
    from dllm_asr.tools.corpus import build_corpus

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
    from dllm_asr.tools.recordings import build_asterisk_manifest

    summary = build_asterisk_manifest(out_path, overwrite=overwrite)
    print(f"{out_path}: {summary['utterances']} real utterances, {summary['minutes']:.1f} min "
          f"({summary['skipped_text']} prompts skipped: tones, letters, keys; {summary['too_long']} over 30 s; "
          f"{summary['missing_audio']} without audio, {summary['unreadable']} unreadable)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dllm_asr.evaluation.report import build_report

    path = build_report(args.model, args.corpus, args.out, args.ar_model, args.max_utterances, args.notes,
                        args.device, args.batch_size, args.grid, args.reuse, args.against)
    print(f"wrote {path}")
    return 0


def cmd_slice_probe(args: argparse.Namespace) -> int:
    from dllm_asr.tools.slice_probe import slice_losses

    for spec, kept, loss in slice_losses(args.decoder, args.texts, args.max_texts, args.layers):
        print(f"layers {spec:>12}  ({kept:2d} kept)  next-token loss {loss:.2f} nats/token")
    return 0


def deliberation_options(args: argparse.Namespace) -> DeliberationOptions | None:
    """The deliberation the flags ask for (None when no --mask/--deliberate was given)."""
    if not args.mask:
        return None
    return DeliberationOptions(mask=args.mask, ratio=args.ratio, chunks=args.chunks, use_audio=not args.text_only,
                               rules=args.rules)
