"""Telephony listeners: each owns a socket and opens one calmd stream per call leg (one file per protocol)."""

from __future__ import annotations

from .base import CallCounters, Listener, StreamRegistry
from .config import ListenersSection


def make_listeners(cfg: ListenersSection, registry: StreamRegistry, counters: CallCounters) -> list[Listener]:
    """One listener per configured protocol (imported only when configured: websockets is optional)."""
    listeners: list[Listener] = []
    if cfg.audiosocket is not None:
        from .audiosocket import AudioSocketListener

        listeners.append(AudioSocketListener(cfg.audiosocket, registry, counters))
    if cfg.twilio is not None:
        from .twilio import TwilioListener

        listeners.append(TwilioListener(cfg.twilio, registry, counters))
    if cfg.audiofork is not None:
        from .audiofork import AudioForkListener

        listeners.append(AudioForkListener(cfg.audiofork, registry, counters))
    return listeners
