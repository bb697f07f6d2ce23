"""The publisher and subscriber over real sockets: schema, CURVE, slow subscribers, debounced events, listen."""

import json
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import zmq
import zmq.auth

from calmd.client import Subscriber
from calmd.config import PublishSection
from calmd.events import EdgeEvent, LabelEvent, Scored, StatusEvent, StreamStatus, decode, encode
from calmd.publisher import Publisher

from .conftest import ENV, endpoint_of, free_port, schema, write_config


def label(seq: int, stream: str = "s") -> LabelEvent:
    return LabelEvent(
        stream=stream, seq=seq, start_s=1.0, end_s=2.0, start_utc="2026-01-01T00:00:01.000Z",
        end_utc="2026-01-01T00:00:02.000Z", label="dog", best="dog", score=0.7, margin=0.4,
        top=[Scored("dog", 0.7), Scored("cat", 0.3)], unknown=False, classifier="pets",
        fingerprint="a" * 64, exit_layer=3, latency_ms=12.5,
    )  # fmt: skip


def test_messages_round_trip_and_match_their_schemas() -> None:
    status = StatusEvent(
        seq=0, time_utc="2026-01-01T00:00:00.000Z", uptime_s=1.0, queue_depth=0, classifier="pets",
        fingerprint="f", exit_layer=3, streams={"s": StreamStatus("stopped", 3, 0, 0, 2, 0, 2.0, 0.1, None)},
    )  # fmt: skip
    edge = EdgeEvent("s", 0, "start", "dog", 1.0, "2026-01-01T00:00:01.000Z")
    for event, name in ((label(0), "label"), (status, "status"), (edge, "event")):
        frames = encode(event)
        jsonschema.validate(json.loads(frames[1]), schema(name))
        assert decode(frames) == event
    with pytest.raises(ValueError, match="unknown message schema"):
        decode([b"calm.label.s", b'{"schema": "calm.label/99"}'])


def test_subscriber_counts_sequence_gaps() -> None:
    port = free_port()
    pub = Publisher(PublishSection(endpoint=f"tcp://127.0.0.1:{port}"))
    with Subscriber(f"tcp://127.0.0.1:{port}", ["s"], status=False) as sub:
        time.sleep(0.3)  # let the subscription reach the publisher
        for seq in (0, 1, 4, 5):
            pub.publish(label(seq))
        got = [sub.receive(timeout_s=2) for _ in range(4)]
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
        time.sleep(0.3)
        received = 0
        t = time.monotonic()
        for seq in range(n):
            pub.publish(label(seq))
            if seq % 20 == 0:  # a brisk but bounded label rate: ~10-20k messages/s
                time.sleep(0.001)
            while fast.receive(timeout_s=0) is not None:
                received += 1
        elapsed = time.monotonic() - t
        while fast.receive(timeout_s=0.5) is not None:
            received += 1
    stalled.close(0)
    pub.close()
    assert elapsed < 30  # publishing never blocked on the stalled subscriber
    assert received == n and fast.gaps == 0


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
    time.sleep(0.5)
    for seq in range(20):
        pub.publish(label(seq))
        time.sleep(0.01)
    got = [allowed_sub.receive(timeout_s=2) for _ in range(5)]
    assert all(isinstance(e, LabelEvent) for e in got)
    assert stranger.receive(timeout_s=1) is None and plain.receive(timeout_s=0.5) is None
    for s in (allowed_sub, stranger, plain):
        s.close()
    pub.close()


def test_debounced_events_and_calm_listen(
    tmp_path: Path, tiny_model_dir, classifier_file, scene_wav, daemon_factory
) -> None:
    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, classifier_file,
        f'[[streams]]\nid = "room"\ntype = "file"\npath = "{scene_wav}"\n',
        extra="[events]\nenabled = true\nend_after_s = 0.5\n",
    )  # fmt: skip
    listen_cmd = ["listen", "--endpoint", endpoint_of(config), "--json", "--seconds", "60"]
    listen = subprocess.Popen(
        [sys.executable, "-m", "calm_core.cli", *listen_cmd], stdout=subprocess.PIPE, text=True, env=ENV
    )
    daemon = daemon_factory(config, "--exit-when-done")
    code, log = daemon.stop(timeout=90) if daemon.proc.wait(timeout=90) is not None else (None, "")
    listen.terminate()
    out, _ = listen.communicate(timeout=10)
    messages = [json.loads(line) for line in out.splitlines()]
    labels = [m for m in messages if m["schema"] == "calm.label/1"]
    edges = [m for m in messages if m["schema"] == "calm.event/1"]
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
