"""What the live page shows and who is watching it: the last messages calmd published, and one bounded
queue per browser. It is a Sink: the pipeline hands it every message from its own threads, and it never
waits on a browser. A browser that falls QUEUE_MESSAGES behind is dropped and counted; EventSource
reconnects on its own and starts again from a fresh snapshot."""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from calm_core.messages.events import CallEvent, EdgeEvent, Event, LabelEvent, StatusEvent

from ..outputs.sinks import Sink

log = logging.getLogger("calmd.page")

QUEUE_MESSAGES = 1000  # per browser: ~5 s of 96 busy streams; further behind, it is dropped
LABELS_PER_STREAM = 20
EVENTS_KEPT = 100
CALLS_KEPT = 100
STREAMS_KEPT = 256  # label histories kept; call streams come and go, the least recently heard is forgotten
KEEPALIVE = b": keepalive\n\n"  # an SSE comment: keeps proxies from timing out, finds dead peers


def kind(message: dict[str, Any]) -> str:
    """The SSE event name of a published message: its schema's kind ("calm.label/1" -> "label")."""
    return str(message["schema"]).split("/")[0].removeprefix("calm.")


def sse(name: str, data: dict[str, Any]) -> bytes:
    # json.dumps escapes newlines inside strings, so the data is one line, as SSE needs.
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Client:
    """One browser on /events: its pending messages, filled by the pipeline and emptied by its HTTP thread."""

    def __init__(self, peer: str, kick: Callable[[], None]):
        self.peer = peer
        self.kick = kick  # breaks a write the HTTP thread is blocked in (shuts the socket down)
        self.pending: deque[bytes] = deque()
        self.cond = threading.Condition()
        self.closed = False

    def offer(self, data: bytes) -> bool:
        """Queue a message; False when the queue is full (the caller drops this client)."""
        with self.cond:
            if len(self.pending) >= QUEUE_MESSAGES:
                return False
            self.pending.append(data)
            self.cond.notify()
            return True

    def first(self, data: bytes) -> None:
        """Put a message before every queued one (the snapshot its later messages follow)."""
        with self.cond:
            self.pending.appendleft(data)
            self.cond.notify()

    def next(self, timeout_s: float) -> bytes | None:
        """The next message to send; b"" when none came within timeout_s; None once closed."""
        with self.cond:
            if not self.pending and not self.closed:
                self.cond.wait(timeout_s)
            if self.closed:
                return None
            return self.pending.popleft() if self.pending else b""

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.pending.clear()
            self.cond.notify()


class PageHub(Sink):
    """The page's state and its browsers. Every method is safe from any thread and returns quickly."""

    def __init__(self, max_clients: int, on_drop: Callable[[], None] | None = None):
        self.max_clients = max_clients
        self.on_drop = on_drop  # e.g. a Prometheus counter's inc
        self.lock = threading.Lock()
        self.status: dict[str, Any] | None = None
        self.labels: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()  # stream -> its last labels
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.calls: OrderedDict[str, dict[str, Any]] = OrderedDict()  # call id -> its last verdict
        self.clients: list[Client] = []
        self.messages = 0
        self.dropped_clients = 0
        self.refused_clients = 0
        self.closed = False

    # ---- the pipeline's side ---------------------------------------------------------------------
    def event(self, event: Event) -> None:
        message = event.to_json()
        with self.lock:
            self.messages += 1
            self._remember(event, message)
            if not self.clients:  # nobody watching: no need to encode
                return
            data = sse(kind(message), message)
            for client in [c for c in self.clients if not c.offer(data)]:
                self._drop(client)

    def _remember(self, event: Event, message: dict[str, Any]) -> None:
        if isinstance(event, StatusEvent):
            self.status = message
        elif isinstance(event, LabelEvent):
            history = self.labels.get(event.stream)
            if history is None:
                history = self.labels[event.stream] = deque(maxlen=LABELS_PER_STREAM)
                if len(self.labels) > STREAMS_KEPT:
                    self.labels.popitem(last=False)
            self.labels.move_to_end(event.stream)
            history.append(message)
        elif isinstance(event, EdgeEvent):
            self.events.append(message)
        elif isinstance(event, CallEvent):
            self.calls[event.call] = message
            self.calls.move_to_end(event.call)
            if len(self.calls) > CALLS_KEPT:
                self.calls.popitem(last=False)

    def _drop(self, client: Client) -> None:
        """Under the lock: a client QUEUE_MESSAGES behind is cut off, so that it never holds anything up."""
        self.clients.remove(client)
        self.dropped_clients += 1
        client.close()
        client.kick()
        log.warning("page: dropped %s, %d messages behind (it reconnects with a fresh snapshot)", client.peer,
                    QUEUE_MESSAGES)  # fmt: skip
        if self.on_drop is not None:
            self.on_drop()

    # ---- the browsers' side ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """/api/state: the last status, the last labels per stream, recent events and call verdicts."""
        with self.lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "labels": {stream: list(history) for stream, history in self.labels.items()},
            "events": list(self.events),
            "calls": list(self.calls.values()),
        }

    def connect(self, peer: str, kick: Callable[[], None]) -> Client | None:
        """A new /events client, whose first message is the snapshot (event `state`) taken under the same
        lock as the messages that follow: nothing is missed or seen twice. None when max_clients are on."""
        with self.lock:
            if self.closed or len(self.clients) >= self.max_clients:
                self.refused_clients += 1
                return None
            state = self._snapshot()  # copies of the containers; the messages in them are never changed
            client = Client(peer, kick)
            self.clients.append(client)
        client.first(sse("state", state))  # encoded outside the lock: a big snapshot never holds up event()
        return client

    def disconnect(self, client: Client) -> None:
        with self.lock:
            if client in self.clients:
                self.clients.remove(client)
        client.close()

    def health(self) -> dict[str, Any]:
        with self.lock:
            return {
                "ok": True,
                "clients": len(self.clients),
                "max_clients": self.max_clients,
                "messages": self.messages,
                "dropped_clients": self.dropped_clients,
                "refused_clients": self.refused_clients,
            }

    def close(self) -> None:
        """End every /events stream (calmd is stopping)."""
        with self.lock:
            self.closed = True
            clients, self.clients = self.clients, []
        for client in clients:
            client.close()
            client.kick()
