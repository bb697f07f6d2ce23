"""calmd's messages, kept importable from here (`from calmd.events import LabelEvent`): they live in
calm_core.messages.events, which is what calmd, calm-mqtt and calm-proxy import."""

from types import ModuleType, UnionType
from typing import Any

from calm_core.messages import events as _events

__all__ = [  # what the module defines, not what it imports
    name
    for name, value in vars(_events).items()
    if not name.startswith("_")
    and not isinstance(value, ModuleType)
    and (getattr(value, "__module__", _events.__name__) == _events.__name__ or isinstance(value, UnionType))
]


def __getattr__(name: str) -> Any:
    return getattr(_events, name)
