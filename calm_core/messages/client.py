"""Subscriber library: iterate typed calm messages from a calmd publisher.

for event in Subscriber("tcp://127.0.0.1:5556", streams=["kitchen"]):
    if isinstance(event, LabelEvent):
        print(event.stream, event.label, event.score)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from .events import CALL_TOPIC, EVENT_TOPIC, LABEL_TOPIC, STATUS_TOPIC, Event, LabelEvent, decode

log = logging.getLogger("calm.client")


class Subscriber:
    """SUB socket with prefix filters; ZeroMQ reconnects by itself when calmd restarts.

    Gaps in a stream's `seq` (messages lost while disconnected or too slow) are counted in `gaps`.
    """

    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:5556",
        streams: list[str] | None = None,
        *,
        status: bool = True,
        events: bool = False,
        calls: list[str] | None = None,
        curve_server_key: bytes | None = None,
        curve_client_cert: Path | None = None,
        context: zmq.Context[Any] | None = None,
    ):
        self.socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self.socket.setsockopt(zmq.RECONNECT_IVL, 200)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve_server_key is not None and curve_client_cert is not None:
            from zmq.auth import load_certificate

            public, secret = load_certificate(curve_client_cert)
            self.socket.curve_publickey, self.socket.curve_secretkey = public, secret
            self.socket.curve_serverkey = curve_server_key
        names = streams or [""]
        topics = [LABEL_TOPIC + s for s in names]
        topics += [EVENT_TOPIC + s for s in names] if events else []
        topics += [STATUS_TOPIC] if status else []
        topics += [CALL_TOPIC + c for c in calls] if calls is not None else []  # [""]: every call
        for t in topics:
            self.socket.setsockopt_string(zmq.SUBSCRIBE, t)
        self.socket.connect(endpoint)
        self.last_seq: dict[str, int] = {}
        self.gaps = 0
        self.bad = 0

    def receive(self, timeout_s: float | None = None) -> Event | None:
        """The next message, or None after timeout_s."""
        if timeout_s is not None and not self.socket.poll(int(timeout_s * 1000)):
            return None
        frames = self.socket.recv_multipart()
        try:
            event = decode(frames)
        except (ValueError, KeyError, TypeError) as e:
            self.bad += 1
            log.warning("ignoring malformed message on %r: %s", frames[0][:64], e)
            return self.receive(timeout_s)
        if isinstance(event, LabelEvent):
            last = self.last_seq.get(event.stream)
            if last is not None and event.seq != last + 1:
                self.gaps += max(0, event.seq - last - 1)
            self.last_seq[event.stream] = event.seq
        return event

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.receive()
            if event is not None:
                yield event

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
