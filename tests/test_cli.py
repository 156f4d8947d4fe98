"""The command line's own promises: every option documented, with its default."""

import argparse
import subprocess
import sys

from dllm_asr.audio.io import example_transcript
from dllm_asr.cli import build_parser


def test_every_option_of_every_command_says_what_it_does():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    undocumented = [f"{name} {'/'.join(action.option_strings) or action.dest}"
                    for name, command in commands.items()
                    for action in command._actions if not action.help]
    assert undocumented == []
    help_text = " ".join(commands["transcribe"].format_help().split())
    assert "(default: the model's own, else 32)" in help_text and "(default: dllm-asr-tiny-en)" in help_text


def test_the_models_own_decoding_settings_apply_where_no_flag_is_given():
    from types import SimpleNamespace

    from dllm_asr.commands import transcribe_options

    model = SimpleNamespace(config=SimpleNamespace(decoding={"strategy": "threshold", "threshold": 0.8}))
    parse = build_parser().parse_args
    assert transcribe_options(parse(["transcribe", "a.wav"]), model).strategy == "threshold"
    assert transcribe_options(parse(["transcribe", "a.wav"]), model).threshold == 0.8
    given = transcribe_options(parse(["transcribe", "--strategy", "diffusion", "--steps", "4", "a.wav"]), model)
    assert (given.strategy, given.steps, given.threshold) == ("diffusion", 4, 0.8)
    assert transcribe_options(parse(["transcribe", "a.wav"])).strategy == "diffusion"  # no model: the defaults


def test_transcribing_with_the_default_model_imports_only_what_it_uses():
    """A cold `dllm-asr transcribe` pays for every library it imports (transformers alone took
    2.5 s of the 7.6 s a one-clip call took): the default model's path, diffusion and AR, reads
    Whisper and its tokenizer without transformers, peft, scipy.signal or torch's compiler."""
    heavy = ("transformers", "peft", "scipy.signal", "torch._dynamo")
    script = ("import sys\n"
              "from dllm_asr.audio.io import example_audio_path\n"
              "from dllm_asr.cli import main\n"
              "for strategy in ('threshold', 'ar'):\n"
              "    assert main(['transcribe', '--device', 'cpu', '--strategy', strategy, str(example_audio_path())]) == 0\n"
              f"print('imported:', sorted(m for m in {heavy!r} if m in sys.modules))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[-1] == "imported: []"
    diffusion, ar = (line.split("\t")[1] for line in lines[:2])
    reference = example_transcript()
    assert ar == reference  # Whisper's own greedy decoding reads the example clip exactly
    assert len(set(diffusion.split()) ^ set(reference.split())) <= 2  # at most a word misread
