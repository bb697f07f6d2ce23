"""Every installed command answers --version with the installed distribution's version (calm-audio)."""

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_prints_the_installed_version(command: str) -> None:
    executable = Path(sys.executable).parent / command
    if not executable.is_file():
        pytest.skip(f"{command} is not installed beside {sys.executable} (pip install -e .)")
    proc = subprocess.run([str(executable), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{command} {metadata.version('calm-audio')}"
