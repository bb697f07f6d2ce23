"""The live page: its HTTP server on real sockets on 127.0.0.1, and calmd's page in headless Chromium."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from calm_core.messages.client import Subscriber
from calm_core.messages.events import CallEvent, CallLeg, EdgeEvent, LabelEvent, Scored, StatusEvent, StreamStatus
from calmd.config import ConfigError, PageSection, parse_config
from calmd.page.hub import LABELS_PER_STREAM, QUEUE_MESSAGES
from calmd.page.live import LivePage

from .conftest import endpoint_of, free_port, wait_for, write_config

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
        self.comments = 0  # keepalives
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
            if field == "":
                self.comments += 1
            elif field == "event":
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


def test_a_quiet_stream_stays_open_with_keepalives_and_still_delivers(page: LivePage) -> None:
    page.server.keepalive_s, page.server.peer_check_s = 0.3, 0.05  # many peer checks and keepalives, quickly
    reader = SseReader(page.server.server_port)
    try:
        assert reader.next() is not None  # the state
        done = threading.Event()
        got: list[Any] = []
        thread = threading.Thread(target=lambda: (got.append(reader.next()), done.set()), daemon=True)
        thread.start()
        assert wait_for(lambda: reader.comments >= 3, timeout=60)  # three keepalives: ~1 s of quiet
        page.hub.event(label("door", 4))
        assert done.wait(60) and got == [("label", label("door", 4).to_json())]
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


# ---- in a real browser ---------------------------------------------------------------------------------

PAGE_WAIT_S = 120  # bounds a hang only: every wait below ends as soon as the page shows what it waits for


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, driven by its chromedriver through selenium."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/setup.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--autoplay-policy=no-user-gesture-required", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


def shown(browser: Any, script: str, *args: Any) -> Any:
    """Wait until a snippet of JavaScript run in the page returns something truthy, and return it."""
    return wait_for(lambda: browser.execute_script(script, *args), timeout=PAGE_WAIT_S, interval=0.1)


LABEL_ROW = """
const card = [...document.querySelectorAll("article.stream")].find((c) => c.dataset.stream === arguments[0]);
const row = card && [...card.querySelectorAll("ol.labels li")].find((li) => li.dataset.seq === String(arguments[1]));
return row ? [...row.querySelectorAll("span")].map((s) => s.textContent) : null;
"""
PLAY = """
const [stream, seq, done] = arguments;
const row = [...document.querySelectorAll("#events tr")].find((r) => r.dataset.stream === stream
                                                                   && r.dataset.seq === String(seq));
const audio = row.querySelector("audio");
audio.addEventListener("ended", () => done({ended: true, time: audio.currentTime, src: audio.src}));
audio.play().then(() => {
  const poll = () => audio.currentTime > 0.25 ? done({ended: false, time: audio.currentTime, src: audio.src})
                                              : setTimeout(poll, 50);
  poll();
}, (error) => done({error: String(error)}));
"""


def screenshot(browser: Any, path: Path, record_property: Any) -> None:
    browser.save_screenshot(str(path))
    print(f"screenshot: {path}")
    record_property("screenshot", str(path))


def test_the_page_shows_text_as_text_never_as_markup(browser: Any, tmp_path: Path) -> None:
    live = LivePage(PageSection(enabled=True, port=0), tmp_path)
    live.start()
    try:
        hostile = "<img src=x onerror=\"document.title='pwned'\">"
        live.hub.event(status({"door": "live"}))
        live.hub.event(label("door", 0, name=hostile))
        live.hub.event(edge("door", 0, "start"))
        browser.get(live.url)
        assert shown(browser, LABEL_ROW, "door", 0) is not None
        assert browser.execute_script("return document.querySelector('.current-label').textContent") == hostile
        assert browser.execute_script("return document.querySelectorAll('main img').length") == 0
        assert browser.title == "calmd"
    finally:
        live.close()


def test_the_page_keeps_cards_for_the_streams_heard_last_only(browser: Any, tmp_path: Path) -> None:
    """Call legs come and go: a page left open for days must not grow a card per call ever seen."""
    from calmd.page.hub import STREAMS_KEPT

    live = LivePage(PageSection(enabled=True, port=0), tmp_path)
    live.start()
    try:
        browser.get(live.url)
        assert shown(browser, "return document.getElementById('connection').textContent === 'live'")
        n = STREAMS_KEPT + 10
        for i in range(n):
            live.hub.event(label(f"leg-{i:03d}", 0))
        live.hub.event(label("leg-000", 1))  # heard again: now among the most recent
        last = f"leg-{n - 1:03d}"
        assert shown(browser, LABEL_ROW, "leg-000", 1)  # the last message: everything before it is shown
        cards = browser.execute_script(
            "return [...document.querySelectorAll('article.stream')].map((a) => a.dataset.stream)"
        )
        assert len(cards) == STREAMS_KEPT
        assert "leg-000" in cards and last in cards
        assert "leg-001" not in cards and f"leg-{n - STREAMS_KEPT:03d}" not in cards
        assert f"leg-{n - STREAMS_KEPT + 1:03d}" in cards
    finally:
        live.close()


def test_the_page_reconnects_by_itself_and_shows_what_came_after(browser: Any, tmp_path: Path) -> None:
    first = LivePage(PageSection(enabled=True, port=0), tmp_path)
    first.start()
    port = first.server.server_port
    try:
        browser.get(first.url)
        first.hub.event(label("door", 0))
        assert shown(browser, LABEL_ROW, "door", 0)
    finally:
        first.close()
    assert shown(browser, "return document.getElementById('connection').textContent !== 'live'")
    second = LivePage(PageSection(enabled=True, port=port), tmp_path)  # calmd restarted on the same port
    second.start()
    try:
        second.hub.event(label("door", 7, name="siren"))
        assert shown(browser, LABEL_ROW, "door", 7)[1] == "siren"
        assert browser.execute_script("return document.getElementById('connection').textContent") == "live"
    finally:
        second.close()


def test_calmd_page_shows_the_label_calmd_just_published_and_plays_its_saved_clip(
    tmp_path: Path, tiny_model_dir, classifier_file, scene_wav, daemon_factory, browser: Any, record_property: Any
) -> None:
    clips = tmp_path / "clips"
    port = free_port()
    extra = (
        "[events]\nenabled = true\nend_after_s = 1.0\n\n"
        f'[clips]\nenabled = true\ndir = "{clips}"\npre_roll_s = 0.5\npost_roll_s = 0.5\nmin_free_mb = 0\n\n'
        f"[page]\nenabled = true\nport = {port}\n"
    )
    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, classifier_file,
        f'[[streams]]\nid = "room"\ntype = "file"\npath = "{scene_wav}"\nloop = true\nrealtime = true\n', extra,
    )  # fmt: skip
    with Subscriber(endpoint_of(config), ["room"], events=True) as sub:
        daemon = daemon_factory(config)
        url = f"http://127.0.0.1:{port}/"
        assert wait_for(lambda: _healthy(url), timeout=PAGE_WAIT_S), daemon.log()
        browser.get(url)
        published = None
        ended = None
        deadline = time.monotonic() + 300  # bounds a hang: a clip needs one sound and end_after_s of quiet
        while time.monotonic() < deadline and (published is None or ended is None):
            message = sub.receive(timeout_s=0.5)
            if isinstance(message, LabelEvent) and published is None:
                published = message
            if isinstance(message, EdgeEvent) and message.kind == "end" and message.clip:
                ended = message
        assert published is not None and ended is not None, daemon.log()
        # the label calmd published over ZeroMQ is on the page, with its score
        row = shown(browser, LABEL_ROW, "room", published.seq)
        assert row is not None and row[1:3] == [published.label, f"{published.score:.3f}"], (row, published)
        # the event with its saved clip is listed, and the clip plays in the browser
        assert shown(browser, "return document.querySelector('#events audio') !== null")
        played = browser.execute_async_script(PLAY, "room", ended.seq)
        assert "error" not in played and (played["ended"] or played["time"] > 0.25), played
        assert played["src"] == url + "clips/" + urllib.parse.quote(ended.clip)
        assert (clips / ended.clip).is_file()
        screenshot(browser, tmp_path / "page.png", record_property)
        code, log = daemon.stop()
    assert code == 0, log
    assert "live page on http://127.0.0.1:" in log
    assert "still running at exit" not in log  # the page's threads ended with calmd


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "healthz", timeout=5) as response:
            return bool(json.loads(response.read())["ok"])
    except OSError:
        return False


def test_calmd_with_its_page_port_taken_exits_2_naming_the_page(
    tmp_path: Path, tiny_model_dir, classifier_file, scene_wav, daemon_factory
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "calmd.toml", tiny_model_dir, classifier_file,
            f'[[streams]]\nid = "room"\ntype = "file"\npath = "{scene_wav}"\n',
            f"[page]\nenabled = true\nport = {port}\n",
        )  # fmt: skip
        daemon = daemon_factory(config)
        daemon.proc.wait(timeout=300)
        code, log = daemon.stop()
    assert code == 2, log
    assert f"page: cannot serve on 127.0.0.1:{port}" in log
