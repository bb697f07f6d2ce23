"""calmd, calm-mqtt and calm-proxy --help end with examples that their own parsers accept."""

import importlib
import shlex

import pytest

COMMANDS = {"calmd": "calmd.main", "calm-mqtt": "calmd.mqtt.main", "calm-proxy": "calmd.proxy"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_examples_the_parser_accepts(command: str) -> None:
    build_parser = importlib.import_module(COMMANDS[command]).build_parser
    help_text = build_parser().format_help()
    assert "\nexamples:\n" in help_text, f"{command} --help has no examples"
    block = help_text.split("\nexamples:\n", 1)[1].split("\n\n", 1)[0]  # up to the next paragraph
    lines = block.replace("\\\n", " ").splitlines()
    examples = [shlex.split(line) for line in lines if line.strip().startswith(f"{command} ")]
    assert examples, f"{command} --help shows no {command} command"
    for words in examples:
        build_parser().parse_args(words[1:])  # exits 2, naming the argument, if the example is wrong
