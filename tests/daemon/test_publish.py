"""The publisher and subscriber over real sockets: schema, CURVE, slow subscribers, debounced events, listen."""

import json
import time
from pathlib import Path

import jsonschema
import pytest
import zmq
import zmq.auth

from calm_core.messages.client import Subscriber
from calm_core.messages.events import EdgeEvent, LabelEvent, Scored, StatusEvent, StreamStatus, decode, encode
from calmd.config import PublishSection
from calmd.outputs.publisher import Publisher

from .conftest import free_port, listen_to_late_scene, schema


def label(seq: int, stream: str = "s") -> LabelEvent:
    return LabelEvent(
        stream=stream, seq=seq, start_s=1.0, end_s=2.0, start_utc="2026-01-01T00:00:01.000Z",
        end_utc="2026-01-01T00:00:02.000Z", label="dog", best="dog", score=0.7, margin=0.4,
        top=[Scored("dog", 0.7), Scored("cat", 0.3)], unknown=False, classifier="pets",
        fingerprint="a" * 64, exit_layer=3, latency_ms=12.5,
    )  # fmt: skip


def test_messages_round_trip_and_match_their_schemas() -> None:
    status = StatusEvent(
        seq=0, instance="host/tcp://127.0.0.1:5556", time_utc="2026-01-01T00:00:00.000Z", uptime_s=1.0,
        queue_depth=0, classifier="pets",
        fingerprint="f", exit_layer=3, streams={"s": StreamStatus("stopped", 3, 0, 0, 2, 0, 2.0, 0.1, None)},
    )  # fmt: skip
    edge = EdgeEvent("s", 0, "start", "dog", 1.0, "2026-01-01T00:00:01.000Z", 1.0, 0.7, 2)
    clip = "s/20260101T000001.000Z_dog.flac"
    end = EdgeEvent("s", 1, "end", "dog", 3.0, "2026-01-01T00:00:03.000Z", 1.0, 0.9, 3, clip)
    for event, name in ((label(0), "label"), (status, "status"), (edge, "event"), (end, "event")):
        frames = encode(event)
        jsonschema.validate(json.loads(frames[1]), schema(name))
        assert decode(frames) == event
    with pytest.raises(ValueError, match="unknown message schema"):
        decode([b"calm.label.s", b'{"schema": "calm.label/99"}'])


PROBE = "s-probe"  # a stream the tests' subscriptions to "s" also match (prefix), counted apart from "s"


def _probe_arrived(sub: Subscriber | zmq.Socket) -> bool:
    if isinstance(sub, Subscriber):
        return isinstance(sub.receive(timeout_s=0.05), LabelEvent)
    return bool(sub.poll(50)) and sub.recv_multipart() is not None


def wait_subscribed(pub: Publisher, *subs: Subscriber | zmq.Socket, timeout: float = 60.0) -> None:
    """Publish probes until each subscriber has received one. ZeroMQ drops what is published before a
    subscription reaches the publisher; how long that takes depends on how busy the machine is."""
    waiting, seq, deadline = list(subs), 0, time.monotonic() + timeout
    while waiting:
        assert time.monotonic() < deadline, "the subscriptions never reached the publisher"
        pub.publish(label(seq, PROBE))
        seq += 1
        waiting = [s for s in waiting if not _probe_arrived(s)]


def receive_from(sub: Subscriber, stream: str, n: int, timeout: float = 60.0) -> list[LabelEvent]:
    """The next n labels of one stream (late probes skipped), or fewer if the deadline passes."""
    got: list[LabelEvent] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        event = sub.receive(timeout_s=0.2)
        if isinstance(event, LabelEvent) and event.stream == stream:
            got.append(event)
    return got


def test_subscriber_counts_sequence_gaps() -> None:
    port = free_port()
    pub = Publisher(PublishSection(endpoint=f"tcp://127.0.0.1:{port}"))
    with Subscriber(f"tcp://127.0.0.1:{port}", ["s"], status=False) as sub:
        wait_subscribed(pub, sub)
        for seq in (0, 1, 4, 5):
            pub.publish(label(seq))
        got = receive_from(sub, "s", 4)
    pub.close()
    assert [e.seq for e in got] == [0, 1, 4, 5] and sub.gaps == 2


def test_slow_subscriber_does_not_block_or_starve_others() -> None:
    port = free_port()
    pub = Publisher(PublishSection(endpoint=f"tcp://127.0.0.1:{port}", send_hwm=1000))
    ctx = zmq.Context.instance()
    stalled = ctx.socket(zmq.SUB)  # connects, subscribes, never reads
    stalled.setsockopt(zmq.RCVHWM, 10)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    stalled.setsockopt_string(zmq.SUBSCRIBE, "")
    stalled.connect(f"tcp://127.0.0.1:{port}")
    n = 5000
    with Subscriber(f"tcp://127.0.0.1:{port}", ["s"], status=False) as fast:
        wait_subscribed(pub, fast, stalled)  # the stalled one reads this probe and nothing after it
        received = []
        t = time.monotonic()
        for seq in range(n):
            pub.publish(label(seq))
            if seq % 20 == 0:  # a brisk but bounded label rate: ~10-20k messages/s
                time.sleep(0.001)
            while (event := fast.receive(timeout_s=0)) is not None:
                received.append(event)
        elapsed = time.monotonic() - t
        received += receive_from(fast, "s", n - sum(e.stream == "s" for e in received))
    stalled.close(0)
    pub.close()
    # publishing never blocked on the stalled subscriber: publish() is non-blocking, so this only
    # catches a hang; 5,000 sends take well under a second on an idle machine
    assert elapsed < 60
    assert sum(e.stream == "s" for e in received) == n and fast.gaps == 0


def test_curve_rejects_subscribers_without_an_allowed_key(tmp_path: Path) -> None:
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    keys.mkdir(), allowed.mkdir()
    server_pub, server_secret = zmq.auth.create_certificates(keys, "server")
    client_pub, client_secret = zmq.auth.create_certificates(keys, "client")
    _, stranger_secret = zmq.auth.create_certificates(keys, "stranger")
    (allowed / "client.key").write_bytes(Path(client_pub).read_bytes())
    port = free_port()
    pub = Publisher(PublishSection(
        endpoint=f"tcp://127.0.0.1:{port}", curve_secret_key=Path(server_secret), curve_allowed_keys=allowed
    ))  # fmt: skip
    server_key, _ = zmq.auth.load_certificate(server_pub)
    endpoint = f"tcp://127.0.0.1:{port}"
    allowed_sub = Subscriber(
        endpoint, ["s"], status=False, curve_server_key=server_key, curve_client_cert=Path(client_secret)
    )
    stranger = Subscriber(
        endpoint, ["s"], status=False, curve_server_key=server_key, curve_client_cert=Path(stranger_secret)
    )
    plain = Subscriber(endpoint, ["s"], status=False)
    wait_subscribed(pub, allowed_sub)  # the CURVE handshake is done
    for seq in range(20):
        pub.publish(label(seq))
    assert len(receive_from(allowed_sub, "s", 20)) == 20
    # the others have been connecting all along, as long as the allowed one needed for its handshake
    assert stranger.receive(timeout_s=1) is None and plain.receive(timeout_s=1) is None
    for s in (allowed_sub, stranger, plain):
        s.close()
    pub.close()


def test_debounced_events_and_calm_listen(
    tmp_path: Path, tiny_model_dir, classifier_file, scene_wav, daemon_factory
) -> None:
    code, log, messages = listen_to_late_scene(
        tmp_path, tiny_model_dir, classifier_file, scene_wav, daemon_factory,
        extra="[events]\nenabled = true\nend_after_s = 0.5\n",
        done=lambda messages: sum(m["schema"] == "calm.event/2" for m in messages) >= 8,
    )  # fmt: skip
    labels = [m for m in messages if m["schema"] == "calm.label/1"]
    edges = [m for m in messages if m["schema"] == "calm.event/2"]
    assert code == 0, log
    assert len(labels) == 4
    for m in edges:
        jsonschema.validate(m, schema("event"))
    # segments ~1 s apart with end_after 0.5 s: each label starts, then ends, its own event
    assert [e["seq"] for e in edges] == list(range(8))
    assert [e["kind"] for e in edges] == ["start", "end"] * 4
    assert [e["label"] for e in edges[::2]] == [m["label"] for m in labels]
    for start, end, lab in zip(edges[::2], edges[1::2], labels):
        assert start["time_s"] == lab["start_s"] and end["time_s"] == lab["end_s"]
