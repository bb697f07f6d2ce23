"""The ZeroMQ PUB socket: loopback by default, optional CURVE encryption and client allow-list."""

from __future__ import annotations

import logging
import threading
from typing import Any

import zmq

from calm_core.messages.events import Event, encode

from ..config import PublishSection

log = logging.getLogger("calmd.publish")
LINGER_MS = 1000  # on close, how long queued messages (the last status) may take to leave


class Publisher:
    """Thread-safe publisher. A subscriber that does not read loses messages past send_hwm; nothing blocks."""

    def __init__(self, cfg: PublishSection, context: zmq.Context[Any] | None = None):
        # Its own context unless given one: close() then terminates it, which waits for the last messages.
        self.owns_context = context is None
        self.context = context or zmq.Context()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, cfg.send_hwm)
        self.socket.setsockopt(zmq.LINGER, LINGER_MS)
        self.auth: Any = None  # zmq.auth.thread.ThreadAuthenticator when CURVE is on
        if cfg.curve_secret_key is not None and cfg.curve_allowed_keys is not None:
            self._enable_curve(cfg)
        try:
            self.socket.bind(cfg.endpoint)
        except zmq.ZMQError as e:
            self.socket.close(0)
            if self.auth is not None:
                self.auth.stop()
            if self.owns_context:
                self.context.term()
            raise OSError(f"publish.endpoint {cfg.endpoint!r}: cannot bind ({e})") from e
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.lock = threading.Lock()
        self.sent = 0
        self.dropped = 0

    def _enable_curve(self, cfg: PublishSection) -> None:
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        assert cfg.curve_secret_key is not None and cfg.curve_allowed_keys is not None
        if not cfg.curve_allowed_keys.is_dir():
            raise OSError(f"publish.curve_allowed_keys {str(cfg.curve_allowed_keys)!r}: not a folder of certificates")
        public, secret = zmq.auth.load_certificate(cfg.curve_secret_key)
        if secret is None:
            raise OSError(f"publish.curve_secret_key {str(cfg.curve_secret_key)!r}: holds no secret key")
        self.auth = ThreadAuthenticator(self.context)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(cfg.curve_allowed_keys))
        self.socket.curve_secretkey = secret
        self.socket.curve_publickey = public
        self.socket.curve_server = True

    def publish(self, event: Event) -> bool:
        with self.lock:
            try:
                self.socket.send_multipart(encode(event), flags=zmq.NOBLOCK)
                self.sent += 1
                return True
            except zmq.Again:
                self.dropped += 1
                return False

    def close(self) -> None:
        """Close the socket; with its own context, return once queued messages have left (at most LINGER_MS)."""
        with self.lock:
            self.socket.close()
        if self.auth is not None:
            self.auth.stop()
        if self.owns_context:
            self.context.term()
