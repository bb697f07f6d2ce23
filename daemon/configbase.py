"""What calmd's and calm-mqtt's configurations share: sections that refuse unknown keys, TOML with dotted
overrides from the command line, and errors that name the key, the value and what is allowed.

pydantic and tomllib only: calm-mqtt imports this and not daemon/config.py, whose errors are calm_core's
(importing calm_core imports torch, seconds and hundreds of MB that a bridge has no use for).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import tomllib
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A configuration file or flag a calm program cannot run with."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def check_endpoint(endpoint: str, schemes: tuple[str, ...]) -> str:
    """A ZeroMQ endpoint with one of the schemes (tcp, ipc, inproc); tcp needs a port."""
    parts = urlsplit(endpoint)
    if parts.scheme not in schemes:
        allowed = [f"{s}://" for s in schemes]
        raise ValueError(f"{endpoint!r}: scheme must be {', '.join(allowed[:-1])} or {allowed[-1]}")
    if parts.scheme == "tcp" and parts.port is None:
        raise ValueError(f"{endpoint!r}: tcp endpoints need a port, e.g. tcp://127.0.0.1:5556")
    return endpoint


def format_errors(error: ValidationError, source: str) -> str:
    """One line per problem: the dotted key, what is wrong, and the value given."""
    lines = []
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}{shown}")
    return f"{source}: invalid configuration\n" + "\n".join(lines)


def validate(model: type[ConfigT], data: dict[str, Any], source: str, error: type[ConfigError]) -> ConfigT:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise error(format_errors(e, source)) from None


def read_toml(
    path: Path | None, overrides: dict[str, Any] | None, error: type[ConfigError]
) -> tuple[dict[str, Any], str]:
    """The TOML file (None: no file) with dotted overrides ("broker.tls.enabled") set in it, and the name
    errors give as its source."""
    data: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise error(f"{path}: no such configuration file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise error(f"{path}: not valid TOML ({e})") from None
    for dotted, value in (overrides or {}).items():
        *sections, key = dotted.split(".")
        table = data
        for section in sections:
            table = table.setdefault(section, {})
        table[key] = value
    return data, source
