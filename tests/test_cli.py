"""The command line's own promises: every option documented, with its default."""

import argparse

from dllm_asr.cli import build_parser


def test_every_option_of_every_command_says_what_it_does():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    undocumented = [f"{name} {'/'.join(action.option_strings) or action.dest}"
                    for name, command in commands.items() if name != "corpus"  # corpus has its own parser
                    for action in command._actions if not action.help]
    assert undocumented == []
    help_text = " ".join(commands["transcribe"].format_help().split())
    assert "(default: 32)" in help_text and "(default: dllm-asr-tiny-en)" in help_text
