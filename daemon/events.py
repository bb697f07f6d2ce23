"""calmd's messages, kept importable from here (`from calmd.events import LabelEvent`): they live in
calm_core.messages.events, which is what calmd, calm-mqtt and calm-proxy import."""

from calm_core.messages.events import *  # noqa: F403
from calm_core.messages.events import __all__ as __all__
