"""The `calm` command's conventions: global flags accepted before or after the subcommand, --version from the
installed distribution, and examples at the end of every subcommand's --help."""

from __future__ import annotations

import argparse
from importlib import metadata
from typing import Any

DISTRIBUTION = "calm-audio"  # "calm" on PyPI is another project

EXAMPLES = {
    "fit": """
  calm fit --model bundled:whisper-tiny.en --support support/ --out home.calm.safetensors
  calm fit --model /srv/models/qwen2-audio --device cuda --support support/ --out home.calm.safetensors \\
      --augment channels
  calm fit --model bundled:whisper-base --support calls/ --out spoof.calm.safetensors --channel telephone \\
      --positive spoof --positive neural""",
    "add": """
  calm add --classifier garden.calm.safetensors --label chimes support/chimes/*.flac
  calm add --classifier spoof.calm.safetensors --label neural --positive clips/neural/*.wav""",
    "eval": """
  calm eval --classifier home.calm.safetensors --data test/
  calm eval --classifier spoof.calm.safetensors --data test.csv --plot det.png --json""",
    "classify": """
  calm classify --classifier home.calm.safetensors clip1.wav clip2.flac
  calm classify --classifier home.calm.safetensors --json clips/*.wav""",
    "calibrate": """
  calm calibrate --classifier spoof.calm.safetensors --genuine /srv/calls/genuine --far 0.01
  calm calibrate --classifier spoof.calm.safetensors --genuine /srv/calls/genuine --per-call \\
      --out site.calm.safetensors""",
    "heads": """
  calm heads --classifier home.calm.safetensors --out heads.png""",
    "models": """
  calm models
  calm models --path /srv/models --json""",
    "listen": """
  calm listen
  calm listen --endpoint tcp://10.0.0.5:5556 --stream front-door --json""",
    "demo": """
  calm demo
  calm demo --live
  calm demo --tiny --workdir /tmp/calm-demo""",
}


def installed_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        from .. import __version__

        return f"{__version__} (not installed)"


def add_global_flags(parser: argparse.ArgumentParser, default: Any = False) -> None:
    """-v and -q. Each subcommand takes them too, with default SUPPRESS: a subcommand's own default would
    otherwise overwrite the flag given before it."""
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress bars")


def finish_subcommands(subcommands: dict[str, argparse.ArgumentParser]) -> None:
    """Give every subcommand the global flags and its examples (a KeyError names one that has none)."""
    for name, parser in subcommands.items():
        add_global_flags(parser, default=argparse.SUPPRESS)
        parser.epilog = "examples:" + EXAMPLES[name]
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
