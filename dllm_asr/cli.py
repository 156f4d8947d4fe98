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
import logging
import os
import sys
from dataclasses import fields

from dllm_asr import __version__
from dllm_asr.commands import (cmd_bench, cmd_corpus, cmd_deliberate, cmd_eval, cmd_export, cmd_report,
                               cmd_score, cmd_serve, cmd_slice_probe, cmd_train, cmd_transcribe)
from dllm_asr.config import DEFAULT_MODEL
from dllm_asr.paths import package_file
from dllm_asr.transcription.options import (CACHES, DELIBERATION_RULES, MASKINGS, NUMERICS, OUTPUT_FORMATS,
                                            REMASKINGS, STRATEGIES, DeliberationOptions, TranscribeOptions,
                                            field_help, field_type)


DTYPE_HELP = ("auto (bfloat16 on a CPU with native bf16 matrix instructions, else float32), "
              "float32, bfloat16 or float16")

CHOICES = {"strategy": STRATEGIES, "remasking": REMASKINGS, "numerics": NUMERICS, "cache": CACHES}
"""The decoding flags that take one of a fixed set of values."""


def add_decoding_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TranscribeOptions field (--steps, --num-blocks, --threshold, ...), its help the
    field's docstring."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory or shipped model name")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    parser.add_argument("--dtype", default="auto", help=DTYPE_HELP)
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
    p.add_argument("--dtype", default="auto", help=DTYPE_HELP)
    p.add_argument("--max-utterances", type=int, default=None, help="bench only the first N utterances")
    p.add_argument("--batch-size", type=int, default=8, help="clips decoded together")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("export", help="copy a checkpoint's model, without training state, e.g. in fp16 to ship")
    p.add_argument("checkpoint", help="checkpoint directory (e.g. runs/x/checkpoints/best)")
    p.add_argument("out", help="output directory: new, empty, or an earlier export (never a folder holding anything else)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp16", help="dtype of the exported deltas")
    p.add_argument("--interpolate", type=float, metavar="KEEP",
                   help="Whisper-decoder models: keep this fraction (0, 1] of the fine-tuning's change to the "
                        "decoder, the rest back toward the pretrained decoder (WiSE-FT; the default model keeps 0.7)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="HTTP server: OpenAI-compatible /v1/audio/transcriptions and a web page at /")
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory or shipped model name")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    p.add_argument("--dtype", default="auto", help=DTYPE_HELP)
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
                           "asterisk-core-sounds-en (see dllm_asr.tools.recordings)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the texts, voices and augmentation drawn")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="synthesis processes")
    parser.add_argument("--engines", nargs="+", default=None,
                        help="TTS engines: espeak-ng flite (the default), piper and hibari (`pip install "
                             "'dllm-asr[tts]'`), festival (its Debian packages)")
    parser.add_argument("--reverb-fraction", type=float, default=0.0, help="share of clips given room reverberation")
    parser.add_argument("--noise-fraction", type=float, default=0.0, help="share of clips given noise")
    parser.add_argument("--sources", nargs="*", default=None,
                        help="Debian text corpora to read: fortunes bible wordnet gcide (the default), "
                             "words (one- and two-word utterances, only when named); none: only --text-files")
    parser.add_argument("--text-files", nargs="*", default=[], help="extra plain-text prose files")
    parser.add_argument("--unseen-voices", nargs="+", default=None, help="'engine:voice' names")
    parser.add_argument("--overwrite", action="store_true", help="replace a corpus this command built before")


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped in dllm_asr/recipes (read without importing torch)."""
    return sorted(path.stem for path in package_file("recipes").glob("*.yaml"))


def add_deliberation_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    docs, defaults = field_help(DeliberationOptions), DeliberationOptions()
    parser.add_argument("--mask" if required else "--deliberate", choices=MASKINGS, required=required,
                        dest="mask", help=docs["mask"] + ("" if required else " Given: deliberate the prior."))
    parser.add_argument("--ratio", type=float, default=defaults.ratio, help=docs["ratio"])
    parser.add_argument("--chunks", type=int, default=defaults.chunks, help=docs["chunks"])
    parser.add_argument("--deliberation-rules", choices=DELIBERATION_RULES, default=defaults.rules, dest="rules",
                        help=docs["rules"])
    parser.add_argument("--text-only", action="store_true", help="condition on the prompt alone (no audio)")


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
