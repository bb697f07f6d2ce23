"""The guide under docs/ builds in strict mode, and every flag and configuration key it shows exists, so the
manual cannot drift from the code. The README links into the guide."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
SHOWN = [*PAGES, ROOT / "README.md"]  # the pages whose commands and configuration examples are checked
COMMANDS = ("calm", "calmd", "calm-mqtt", "calm-proxy")
SHELL_LANGS = ("", "sh", "bash", "shell", "console")
# calm-mqtt's own sections; every other TOML example is a piece of calmd.toml
BRIDGE_SECTIONS = {"zmq", "broker", "topics", "discovery"}


def test_the_guide_builds_in_strict_mode(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        reason = "mkdocs is not installed (pip install 'calm-audio[docs]'): the guide's strict build was not checked"
        print(reason)
        pytest.skip(reason)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
        + ["--site-dir", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def shell_commands(page: Path) -> list[str]:
    """Each command line of the page's shell blocks (continuations joined, comments cut) and each inline
    code span that starts with one of calm's commands."""
    text = page.read_text()
    lines: list[str] = []
    for lang, body in code_blocks(text):
        if lang in SHELL_LANGS:
            lines += body.replace("\\\n", " ").splitlines()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    lines += [span for span in re.findall(r"`([^`\n]+)`", prose) if span.split(" ")[0] in COMMANDS]
    return [re.sub(r"(^|\s)#.*", "", line) for line in lines]


def invocations(line: str) -> list[tuple[str, list[str]]]:
    """(command, its words) for every calm command in a line, up to the next |, ;, && or ||."""
    try:
        words = shlex.split(line)
    except ValueError:  # an unbalanced quote in a partial example: split on blanks
        words = line.split()
    found: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    previous = ""
    for word in words:
        if word in ("|", ";", "&&", "||") or word.endswith(";"):
            current, previous = None, ""
            continue
        name = word.rsplit("/", 1)[-1]
        # a command, not the value of a flag (podman's --name calm-mqtt) nor a calm subcommand's argument
        if name in COMMANDS and not previous.startswith("-"):
            current = []
            found.append((name, current))
        elif current is not None:
            current.append(word)
        previous = word
    return found


def parsers() -> dict[str, argparse.ArgumentParser]:
    from calm_core.cli.parser import build_parser as calm
    from calmd.main import build_parser as calmd
    from calmd.mqtt.main import build_parser as calm_mqtt
    from calmd.proxy import build_parser as calm_proxy

    return {"calm": calm(), "calmd": calmd(), "calm-mqtt": calm_mqtt(), "calm-proxy": calm_proxy()}


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def unknown_flags(command: str, words: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """The --flags in words that the command (and its subcommand, the first word that is not a flag or a
    flag's value) does not define, each as 'command [sub] --flag'."""
    subs = subcommands(parser)
    current, where, wrong = parser, command, []
    for word in words:
        if subs and current is parser and word in subs:
            current, where = subs[word], f"{command} {word}"
            continue
        if word.startswith("--") and len(word) > 2:
            flag = word.split("=", 1)[0]
            if flag not in options(current):
                wrong.append(f"{where} {flag}")
    return wrong


@pytest.mark.parametrize("page", SHOWN, ids=lambda p: p.name)
def test_every_flag_the_guide_shows_exists(page: Path) -> None:
    known = parsers()
    wrong = [
        f"{flag!r} in: {line.strip()}"
        for line in shell_commands(page)
        for command, words in invocations(line)
        for flag in unknown_flags(command, words, known[command])
    ]
    assert not wrong, f"{page.name} shows flags the commands do not have:\n" + "\n".join(wrong)


def test_the_flag_check_attributes_flags_to_their_command() -> None:
    known = parsers()
    line = "calm fit --support s --nope x && calmd --config c.toml --nope2 | calm-mqtt --zmq z"
    wrong = [f for command, words in invocations(line) for f in unknown_flags(command, words, known[command])]
    assert wrong == ["calm fit --nope", "calmd --nope2"]
    assert unknown_flags("calm", ["eval", "--support"], known["calm"]) == ["calm eval --support"]


TOML_EXAMPLES = [
    pytest.param(page, i, body, id=f"{page.name}-{i}")
    for page in SHOWN
    for i, body in enumerate(body for lang, body in code_blocks(page.read_text()) if lang == "toml")
]


@pytest.mark.parametrize(("page", "index", "body"), TOML_EXAMPLES)
def test_every_toml_example_in_the_guide_is_a_valid_configuration(page: Path, index: int, body: str) -> None:
    """Unknown keys are refused by the config models (extra="forbid"), so a key the guide names that the
    code does not have fails here, as do values the models would refuse."""
    from calmd.config import parse_config
    from calmd.mqtt.config import parse_bridge_config

    data: dict[str, Any] = tomllib.loads(body)
    source = f"{page.name} TOML example {index}"
    if BRIDGE_SECTIONS & data.keys():
        parse_bridge_config(data, source)
        return
    # what every calmd.toml has besides the lines shown
    data.setdefault("model", {})
    data["model"].setdefault("path", "/opt/calm/models/m")
    data["model"].setdefault("classifier", "/etc/calm/home.calm.safetensors")
    data.setdefault("streams", [{"id": "front-door", "type": "mic"}])
    parse_config(data, source)


def test_the_readme_links_only_to_files_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local), "the README links into the guide"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
