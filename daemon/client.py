"""calmd's subscriber, kept importable from here: it lives in calm_core.messages.client."""

from calm_core.messages.client import Subscriber

__all__ = ["Subscriber"]
