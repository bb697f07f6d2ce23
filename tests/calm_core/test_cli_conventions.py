"""The `calm` command's conventions: global flags before or after the subcommand, --version, and examples in
every subcommand's --help that the parser itself accepts."""

import argparse
import shlex
from importlib import metadata

import pytest

from calm_core.cli.parser import build_parser, main

FIT = ["fit", "--model", "m", "--support", "s", "--out", "o.calm.safetensors"]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("calm has no subcommands")


def test_global_flags_are_accepted_after_the_subcommand() -> None:
    args = build_parser().parse_args([*FIT, "-q", "--verbose"])
    assert args.quiet and args.verbose


def test_global_flags_before_the_subcommand_are_not_reset_by_it() -> None:
    args = build_parser().parse_args(["-q", *FIT])
    assert args.quiet and not args.verbose


def test_global_flags_are_off_unless_given() -> None:
    args = build_parser().parse_args(["models"])
    assert not args.quiet and not args.verbose


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"calm {metadata.version('calm-audio')}"


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_subcommands_help_ends_with_examples_the_parser_accepts(name: str) -> None:
    help_text = subcommands()[name].format_help()
    assert "\nexamples:\n" in help_text, f"calm {name} --help has no examples"
    examples = help_text.split("\nexamples:\n", 1)[1].replace("\\\n", " ").splitlines()
    commands = [shlex.split(line) for line in examples if line.strip().startswith("calm ")]
    assert commands, f"calm {name} --help shows no calm command"
    for words in commands:
        assert words[1] == name, f"an example of calm {name} runs calm {words[1]}"
        build_parser().parse_args(words[1:])  # exits 2, naming the argument, if the example is wrong
