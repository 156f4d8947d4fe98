"""The command line's own promises: every option documented, with its default."""

import argparse

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
