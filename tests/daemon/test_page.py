"""The live page: its HTTP server on real sockets on 127.0.0.1, and calmd's page in headless Chromium."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from calmd.config import ConfigError, PageSection, parse_config
from calmd.events import CallEvent, CallLeg, EdgeEvent, LabelEvent, Scored, StatusEvent, StreamStatus
from calmd.page import LivePage
from calmd.page.hub import LABELS_PER_STREAM, QUEUE_MESSAGES

from .conftest import wait_for

UTC = "2026-01-01T00:00:00.000Z"


def label(stream: str, seq: int, name: str = "beep", score: float = 0.8, classifier: str = "tones") -> LabelEvent:
    return LabelEvent(
        stream=stream, seq=seq, start_s=seq * 1.0, end_s=seq * 1.0 + 0.5, start_utc=UTC, end_utc=UTC,
        label=name, best=name, score=score, margin=0.4, top=[Scored(name, score), Scored("hum", 1 - score)],
        unknown=False, classifier=classifier, fingerprint="f" * 16, exit_layer=1, latency_ms=12.5,
    )  # fmt: skip


def status(streams: dict[str, str]) -> StatusEvent:
    return StatusEvent(
        seq=0, instance="test/1", time_utc=UTC, uptime_s=1.0, queue_depth=0, classifier="tones",
        fingerprint="f" * 16, exit_layer=1,
        streams={s: StreamStatus(state, 3, 0, 0, 0, 0, 2.0, 0.1, None) for s, state in streams.items()},
    )  # fmt: skip


def edge(stream: str, seq: int, kind: str, clip: str | None = None) -> EdgeEvent:
    return EdgeEvent(stream, seq, kind, "beep", 1.0, UTC, 1.0, 0.9, 2, clip)


def call(call_id: str) -> CallEvent:
    leg = CallLeg("in", f"{call_id}-in", True, 2, 1.5, None)
    return CallEvent(
        call=call_id, protocol="audiosocket", seq=0, final=False, started_utc=UTC, time_utc=UTC, duration_s=2.0,
        legs=[leg], segments=2, score=1.5, positive="spoof", threshold=0.0, threshold_source="default",
        decision="positive", classifier="tones", fingerprint="f" * 16,
    )  # fmt: skip


@pytest.fixture
def clips_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    (folder / "door").mkdir(parents=True)
    return folder


@pytest.fixture
def page(clips_dir: Path) -> Iterator[LivePage]:
    live = LivePage(PageSection(enabled=True, port=0, max_clients=3), clips_dir)
    live.start()
    yield live
    live.close()


def request(page: LivePage, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET with the path sent exactly as given (http.client does not normalise it)."""
    conn = http.client.HTTPConnection("127.0.0.1", page.server.server_port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


class SseReader:
    """A raw /events connection that parses Server-Sent Events as they arrive."""

    def __init__(self, port: int, rcvbuf: int | None = None):
        self.sock = socket.socket()
        if rcvbuf is not None:  # before connect, so that the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        self.file = self.sock.makefile("rb")
        self.status_line = self.file.readline().decode()
        while self.file.readline() not in (b"\r\n", b""):  # headers
            pass

    def next(self) -> tuple[str, Any] | None:
        """The next event as (name, data); None at the end of the stream. Comments and retry: are skipped."""
        name, data = "message", None
        for raw in self.file:
            line = raw.decode().rstrip("\n")
            if line == "":
                if data is not None:
                    return name, json.loads(data)
                continue
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data = value
        return None

    def close(self) -> None:
        self.file.close()
        self.sock.close()


# ---- configuration ------------------------------------------------------------------------------------


def test_page_is_off_by_default_on_loopback_and_refuses_a_host_that_is_not_an_address() -> None:
    base = {"model": {"path": "m", "classifier": "c"}, "streams": [{"id": "a", "type": "mic"}]}
    cfg = parse_config(base)
    assert not cfg.page.enabled and cfg.page.host == "127.0.0.1"
    with pytest.raises(ConfigError, match=r"page\.host.*'localhost'"):
        parse_config({**base, "page": {"enabled": True, "host": "localhost"}})
    with pytest.raises(ConfigError, match=r"page\.max_clients"):
        parse_config({**base, "page": {"max_clients": 0}})
    with pytest.raises(ConfigError, match=r"page\.colour: unknown key"):
        parse_config({**base, "page": {"colour": "blue"}})


def test_a_taken_port_is_an_error_that_names_the_page(page: LivePage, clips_dir: Path) -> None:
    with pytest.raises(OSError, match=rf"page: cannot serve on 127\.0\.0\.1:{page.server.server_port}"):
        LivePage(PageSection(enabled=True, port=page.server.server_port), clips_dir)


# ---- /, /api/state, /healthz ---------------------------------------------------------------------------


def test_the_page_and_its_files_are_served_with_their_types_and_no_outside_source(page: LivePage) -> None:
    code, headers, body = request(page, "/")
    assert code == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert b'<script src="app.js"' in body and b"http" not in body.replace(b"http-equiv", b"")  # no CDN
    assert "default-src 'self'" in headers["content-security-policy"]
    for path, ctype in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
        code, headers, body = request(page, path)
        assert code == 200 and headers["content-type"].startswith(ctype) and b"://" not in body
    code, _, body = request(page, "/nothing-here")
    assert code == 404 and b"'/nothing-here'" in body


def test_state_holds_the_last_status_the_last_labels_per_stream_events_and_calls(page: LivePage) -> None:
    hub = page.hub
    hub.event(status({"door": "live", "yard": "backoff"}))
    for seq in range(LABELS_PER_STREAM + 5):
        hub.event(label("door", seq, score=seq / 100))
    hub.event(label("yard", 0, name="siren"))
    hub.event(edge("door", 0, "start"))
    hub.event(edge("door", 1, "end", clip="door/a.wav"))
    hub.event(call("c1"))
    code, headers, body = request(page, "/api/state")
    assert code == 200 and headers["content-type"] == "application/json"
    state = json.loads(body)
    assert state["status"] == status({"door": "live", "yard": "backoff"}).to_json()
    assert [m["seq"] for m in state["labels"]["door"]] == list(range(5, LABELS_PER_STREAM + 5))
    assert state["labels"]["door"][-1] == label("door", LABELS_PER_STREAM + 4, score=0.24).to_json()
    assert state["labels"]["yard"] == [label("yard", 0, name="siren").to_json()]
    assert state["events"] == [edge("door", 0, "start").to_json(), edge("door", 1, "end", "door/a.wav").to_json()]
    assert state["calls"] == [call("c1").to_json()]
    health = json.loads(request(page, "/healthz")[2])
    assert health["ok"] and health["messages"] == LABELS_PER_STREAM + 10 and health["clients"] == 0


# ---- /events -------------------------------------------------------------------------------------------


def test_events_stream_starts_with_the_state_then_sends_each_published_message_named_by_kind(page: LivePage) -> None:
    page.hub.event(label("door", 0))
    reader = SseReader(page.server.server_port)
    try:
        assert reader.status_line.startswith("HTTP/1.0 200")
        name, data = reader.next() or ("", None)
        assert name == "state" and data["labels"]["door"] == [label("door", 0).to_json()]
        sent = [label("door", 1, name="whistle"), edge("door", 0, "start"), status({"door": "live"}), call("c9")]
        for message in sent:
            page.hub.event(message)
        received = [reader.next() for _ in sent]
        assert received == [("label", sent[0].to_json()), ("event", sent[1].to_json()),
                            ("status", sent[2].to_json()), ("call", sent[3].to_json())]  # fmt: skip
        assert received[0][1]["schema"] == "calm.label/1"
    finally:
        reader.close()


def test_more_browsers_than_max_clients_get_503_and_a_freed_place_is_taken_again(page: LivePage) -> None:
    readers = [SseReader(page.server.server_port) for _ in range(3)]
    try:
        code, _, body = request(page, "/events")
        assert code == 503 and b"page.max_clients (3)" in body
        readers.pop().close()
        assert wait_for(lambda: page.hub.health()["clients"] == 2, timeout=30)
        readers.append(SseReader(page.server.server_port))
        assert readers[-1].status_line.startswith("HTTP/1.0 200")
        assert page.hub.health()["refused_clients"] == 1
    finally:
        for reader in readers:
            reader.close()


def test_a_browser_that_never_reads_is_dropped_while_event_never_waits_and_others_get_everything(
    page: LivePage,
) -> None:
    stalled = SseReader(page.server.server_port, rcvbuf=4096)  # reads its headers, then nothing more
    healthy = SseReader(page.server.server_port)
    assert healthy.next() is not None  # the state snapshot
    assert wait_for(lambda: page.hub.health()["clients"] == 2, timeout=30)
    got: list[int] = []

    def read() -> None:
        while (message := healthy.next()) is not None:
            if message[0] == "label":
                got.append(message[1]["seq"])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    big = "x" * 1000  # ~1.4 kB a message: the stalled peer's kernel buffers fill after a few hundred
    sent = 0

    def produce() -> None:
        nonlocal sent
        # The kernel buffers (server SO_SNDBUF 256 kB, doubled by Linux) and QUEUE_MESSAGES hold far fewer than this.
        for _ in range(100):
            for _ in range(100):
                page.hub.event(label("door", sent, classifier=big))
                sent += 1
            # keep pace with the healthy reader, which must never fall QUEUE_MESSAGES behind
            if not wait_for(lambda n=sent: len(got) == n, timeout=60):
                return
            if page.hub.health()["dropped_clients"]:
                return

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    producer.join(timeout=300)  # a blocking event() would hang here: the bound only ends the test
    try:
        assert not producer.is_alive(), "event() blocked on a browser that does not read"
        health = page.hub.health()
        assert health["dropped_clients"] == 1 and health["clients"] == 1, health
        assert QUEUE_MESSAGES < sent < 10_000
        assert got == list(range(sent))  # the healthy browser missed nothing and was never dropped
        # the stalled browser's connection was shut: draining it ends at EOF rather than waiting for more
        stalled.sock.settimeout(30)
        while stalled.sock.recv(1 << 16):
            pass
    finally:
        stalled.close()
        healthy.sock.shutdown(socket.SHUT_RDWR)  # ends the reading thread's loop, then its file can close
        reader.join(timeout=30)
        healthy.close()


def test_close_ends_every_event_stream_and_its_thread(clips_dir: Path) -> None:
    live = LivePage(PageSection(enabled=True, port=0), clips_dir)
    live.start()
    readers = [SseReader(live.server.server_port) for _ in range(2)]
    for reader in readers:
        assert reader.next() is not None
    live.close()
    try:
        assert [reader.next() for reader in readers] == [None, None]  # end of stream, not a timeout
        assert not [t for t in threading.enumerate() if t.name in ("page-client", "page-server")]
    finally:
        for reader in readers:
            reader.close()


# ---- /clips --------------------------------------------------------------------------------------------


def test_clips_are_served_with_their_type_and_range_requests_return_the_exact_bytes(
    page: LivePage, clips_dir: Path
) -> None:
    data = os.urandom(50_000)
    (clips_dir / "door" / "a b.wav").write_bytes(data)
    (clips_dir / "door" / "c.flac").write_bytes(data[:100])
    code, headers, body = request(page, "/clips/door/a%20b.wav")
    assert (code, headers["content-type"], headers["accept-ranges"], body) == (200, "audio/wav", "bytes", data)
    cases = {"bytes=100-199": (100, 199), "bytes=49990-": (49990, 49999), "bytes=-10": (49990, 49999),
             "bytes=0-0": (0, 0), "bytes=49000-99999": (49000, 49999)}  # fmt: skip
    for spec, (first, last) in cases.items():
        code, headers, body = request(page, "/clips/door/a%20b.wav", {"Range": spec})
        assert code == 206, spec
        assert headers["content-range"] == f"bytes {first}-{last}/50000", spec
        assert body == data[first : last + 1] and headers["content-length"] == str(last - first + 1), spec
    code, headers, _ = request(page, "/clips/door/a%20b.wav", {"Range": "bytes=50000-"})
    assert code == 416 and headers["content-range"] == "bytes */50000"
    code, _, body = request(page, "/clips/door/a%20b.wav", {"Range": "bytes=0-1,5-6"})  # several: whole file
    assert code == 200 and body == data
    code, headers, body = request(page, "/clips/door/c.flac")
    assert code == 200 and headers["content-type"] == "audio/flac" and body == data[:100]


def test_paths_outside_the_clips_folder_and_files_that_are_not_clips_are_refused(
    page: LivePage, clips_dir: Path
) -> None:
    secret = b"RIFF-secret-bytes"
    (clips_dir.parent / "secret.wav").write_bytes(secret)
    (clips_dir / "door" / "notes.txt").write_bytes(b"plain-text-notes")
    (clips_dir / "door" / "link.wav").symlink_to(clips_dir.parent / "secret.wav")
    for path in ("/clips/../secret.wav", "/clips/%2e%2e/secret.wav", "/clips/door/../../secret.wav",
                 "/clips/door%2f..%2f..%2fsecret.wav", f"/clips/{clips_dir.parent}/secret.wav",
                 f"/clips/%2f{str(clips_dir.parent).lstrip('/')}/secret.wav", "/clips/door/link.wav",
                 "/clips/door/notes.txt", "/clips/door/missing.wav", "/clips/..%5csecret.wav",
                 "/clips/door/a.wav%00.txt", "/clips/"):  # fmt: skip
        code, _, body = request(page, path)
        assert code in (403, 404), path
        assert secret not in body and b"plain-text-notes" not in body, path


def test_without_a_clips_folder_no_clip_is_served(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    live = LivePage(PageSection(enabled=True, port=0), None)
    live.start()
    try:
        code, _, body = request(live, "/clips/a.wav")
        assert code == 404 and b"[clips] enabled = false" in body
    finally:
        live.close()
