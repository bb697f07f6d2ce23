"""calm-mqtt as a real process between a real ZeroMQ publisher (or calmd) and a real mosquitto on 127.0.0.1."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import zmq
from paho.mqtt.enums import CallbackAPIVersion

from calm_core.messages.events import (
    CallEvent,
    CallLeg,
    EdgeEvent,
    Event,
    LabelEvent,
    Scored,
    StatusEvent,
    StreamStatus,
    encode,
)

from .conftest import ENV, endpoint_of, free_port, wait_for, write_config

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="needs the mosquitto broker (Debian: mosquitto)")
TIMEOUT = 60.0  # bounds a hang only: every wait below returns as soon as its condition holds
# "door.front" slugs to door_front, which is another stream's id: the hash of the id keeps them apart
DOOR_FRONT = "calm_door_front_239073ca"
ENTITIES = {"label": "sensor", "score": "sensor", "event": "event", "detected": "binary_sensor", "state": "sensor"}


# ---- real servers and processes --------------------------------------------------------------------------
class Mosquitto:
    """mosquitto on 127.0.0.1:port with its own config file; restartable on the same port."""

    def __init__(self, root: Path, port: int | None = None, extra: str = "", persistence: bool = False):
        self.root, self.port = root, port or free_port()
        self.conf = root / f"mosquitto-{self.port}.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # as root mosquitto would switch to its own user, who cannot read the test's private folder
            + f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            + ("allow_anonymous true\n" if "allow_anonymous" not in extra else "")
            + (f"persistence true\npersistence_location {root}/\n" if persistence else "persistence false\n")
            + extra
        )
        self.log_path = root / f"mosquitto-{self.port}.log"
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        self.log = self.log_path.open("a")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf), "-v"], stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_for(self._accepts, TIMEOUT, interval=0.02):
            raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log_path.read_text()[-2000:]}")

    def _accepts(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.log.close()


class Observer:
    """A paho client on the broker recording every message under the given filters, retained flag included."""

    def __init__(self, port: int, topics: tuple[str, ...] = ("calm/#", "homeassistant/#"), **session: Any):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, **session)
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(TIMEOUT)

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def all(self, topic: str | None = None) -> list[tuple[str, bytes, bool]]:
        with self.lock:
            return [m for m in self.messages if topic is None or m[0] == topic]

    def last(self, topic: str) -> bytes | None:
        found = self.all(topic)
        return found[-1][1] if found else None

    def json(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(p) for _, p, _ in self.all(topic) if p]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class BridgeProcess:
    def __init__(self, root: Path, config: str, *args: str):
        self.config = root / "calm-mqtt.toml"
        self.config.write_text(config)
        self.log_path = root / f"calm-mqtt-{time.monotonic_ns()}.log"
        self.log_file = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "calmd.mqtt", "--config", str(self.config), "--log-level", "debug", *args],
            stdout=self.log_file, stderr=subprocess.STDOUT, env=ENV, text=True,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self.log_file.close()


class Publisher:
    """calmd's side of ZeroMQ: an XPUB, so the test knows when the bridge has subscribed (no slow joiner)."""

    TOPICS = {b"calm.label.", b"calm.event.", b"calm.status", b"calm.call."}

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.socket.bind(self.endpoint)

    def wait_subscribed(self) -> None:
        seen: set[bytes] = set()
        deadline = time.monotonic() + TIMEOUT
        while seen != self.TOPICS and time.monotonic() < deadline:
            if self.socket.poll(100):
                message = self.socket.recv()
                if message[:1] == b"\x01":
                    seen.add(message[1:])
        assert seen == self.TOPICS, seen

    def send(self, *events: Event) -> None:
        for event in events:
            self.socket.send_multipart(encode(event))

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


def bridge_config(endpoint: str, port: int, extra: str = "", broker: str = "") -> str:
    return f"""
[zmq]
endpoints = ["{endpoint}"]

[broker]
host = "127.0.0.1"
port = {port}
client_id = "calm-mqtt-test-{port}"
connect_timeout_s = 30
reconnect_max_s = 2
{broker}

[topics]
stale_after_s = 120
{extra}
"""


# ---- typed calmd messages ---------------------------------------------------------------------------------
def label(stream: str, seq: int, name: str = "alarm", score: float = 0.91) -> LabelEvent:
    return LabelEvent(
        stream=stream, seq=seq, start_s=seq * 2.0, end_s=seq * 2.0 + 2.0,
        start_utc="2025-01-01T00:00:00.000Z", end_utc="2025-01-01T00:00:02.000Z", label=name, best=name,
        score=score, margin=0.5, top=[Scored(name, score), Scored("speech", 0.05)], unknown=False,
        classifier="tones", fingerprint="f" * 16, exit_layer=3, latency_ms=12.5,
    )  # fmt: skip


def edge(stream: str, seq: int, kind: str, name: str = "alarm") -> EdgeEvent:
    clip = f"{stream}/20250101T000004.000Z_{name}.flac" if kind == "end" else None
    return EdgeEvent(
        stream=stream, seq=seq, kind=kind, label=name, time_s=seq * 2.0, time_utc="2025-01-01T00:00:04.000Z",
        start_s=seq * 2.0, score=0.9, hits=2, clip=clip,
    )  # fmt: skip


def status(seq: int, streams: dict[str, str], instance: str = "gpu0") -> StatusEvent:
    return StatusEvent(
        seq=seq, instance=instance, time_utc="2025-01-01T00:00:05.000Z", uptime_s=5.0, queue_depth=0,
        classifier="tones", fingerprint="f" * 16, exit_layer=3,
        streams={s: StreamStatus(state, 3, 0, 0, 0, 0, 6.0, 0.1, None) for s, state in streams.items()},
    )  # fmt: skip


def call(call_id: str, stream: str, final: bool) -> CallEvent:
    return CallEvent(
        call=call_id, protocol="audiosocket", seq=0, final=final, started_utc="2025-01-01T00:00:00.000Z",
        time_utc="2025-01-01T00:00:03.000Z", duration_s=3.0, legs=[CallLeg("in", stream, True, 1, 1.2, None)],
        segments=1, score=1.2, positive="spoof", threshold=0.0, threshold_source="default", decision="positive",
        classifier="tones", fingerprint="f" * 16,
    )  # fmt: skip


def config_topics(node: str) -> dict[str, str]:
    return {key: f"homeassistant/{component}/{node}/{key}/config" for key, component in ENTITIES.items()}


def render(template: str, payload: bytes) -> str:
    """A value_template as Home Assistant renders it (Jinja, value_json, its to_json filter)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # the environment Home Assistant's templates run in

    env = ImmutableSandboxedEnvironment()
    env.filters["to_json"] = json.dumps
    return env.from_string(template).render(value_json=json.loads(payload))


@dataclass
class Rig:
    broker: Mosquitto
    publisher: Publisher
    bridge: BridgeProcess
    observer: Observer


@pytest.fixture
def rig(tmp_path: Path):
    broker = Mosquitto(tmp_path)
    publisher = Publisher()
    observer = Observer(broker.port)
    bridge = BridgeProcess(tmp_path, bridge_config(publisher.endpoint, broker.port))
    publisher.wait_subscribed()
    assert wait_for(lambda: observer.last("calm/bridge/availability") == b"online", TIMEOUT), bridge.log()
    yield Rig(broker, publisher, bridge, observer)
    bridge.stop()
    observer.close()
    publisher.close()
    broker.stop()


# ---- discovery ---------------------------------------------------------------------------------------------
def test_discovery_gives_each_stream_a_device_whose_entities_read_published_topics(rig: Rig) -> None:
    rig.publisher.send(status(0, {"kitchen": "live", "door.front": "connecting"}))
    rig.publisher.send(label("kitchen", 0), edge("kitchen", 0, "start"), label("door.front", 0, "glass", 0.7))
    rig.publisher.send(edge("door.front", 0, "start", "glass"))
    wanted = {f"calm/{s}/{t}" for s in ("kitchen", "door.front") for t in ("label", "event", "detected", "state")}
    assert wait_for(lambda: wanted <= {t for t, _, _ in rig.observer.all()}, TIMEOUT), rig.bridge.log()

    for stream, node in (("kitchen", "calm_kitchen"), ("door.front", DOOR_FRONT)):
        configs = {key: rig.observer.all(topic) for key, topic in config_topics(node).items()}
        assert all(len(found) == 1 for found in configs.values()), configs  # once
        device_ids = set()
        for key, [(_, payload, _)] in configs.items():
            config = json.loads(payload)
            assert config["unique_id"] == f"{node}_{key}"
            device_ids.add(tuple(config["device"]["identifiers"]))
            assert config["origin"]["name"] == "calm-mqtt"
            assert [a["topic"] for a in config["availability"]] == [
                "calm/bridge/availability",
                f"calm/{stream}/available",
            ]
            assert config["availability_mode"] == "all"
            for field in ("state_topic", "json_attributes_topic"):
                if field in config:  # every topic an entity reads is one the bridge publishes
                    assert rig.observer.all(config[field]), f"{node} {key}: nothing on {config[field]}"
        assert device_ids == {(node,)}  # one device per stream
        assert rig.observer.last(f"calm/{stream}/available") == b"online"
    other = {t for t, _, _ in rig.observer.all() if t.startswith("homeassistant/")}
    assert len(other) == 2 * len(ENTITIES)  # no configs for anything else
    late = Observer(rig.broker.port, ("homeassistant/#",))  # Home Assistant starting later gets them: retained
    try:
        assert wait_for(lambda: len(late.all()) == len(other), TIMEOUT), late.all()
        assert all(retained for _, _, retained in late.all())
    finally:
        late.close()

    # Home Assistant's templates, rendered on what the bridge published, give the values the entities show
    kitchen = {key: json.loads(rig.observer.all(t)[0][1]) for key, t in config_topics("calm_kitchen").items()}
    assert render(kitchen["label"]["value_template"], rig.observer.last("calm/kitchen/label")) == "alarm"
    assert float(render(kitchen["score"]["value_template"], rig.observer.last("calm/kitchen/label"))) == 0.91
    assert render(kitchen["detected"]["value_template"], rig.observer.last("calm/kitchen/detected")) == "ON"
    assert render(kitchen["state"]["value_template"], rig.observer.last("calm/kitchen/state")) == "live"
    fired = json.loads(render(kitchen["event"]["value_template"], rig.observer.last("calm/kitchen/event")))
    assert fired["event_type"] in kitchen["event"]["event_types"] and fired["label"] == "alarm"


def test_streams_whose_ids_slug_alike_get_devices_and_unique_ids_of_their_own(rig: Rig) -> None:
    rig.publisher.send(status(0, {"door.front": "live", "door_front": "live", "door-front": "live"}))
    nodes = {"door.front": DOOR_FRONT, "door_front": "calm_door_front", "door-front": "calm_door-front"}
    topics = {stream: config_topics(node) for stream, node in nodes.items()}
    every = [t for configs in topics.values() for t in configs.values()]
    assert wait_for(lambda: all(rig.observer.last(t) for t in every), TIMEOUT), rig.bridge.log()
    unique_ids, devices = set(), set()
    for stream, configs in topics.items():
        for topic in configs.values():
            config = json.loads(rig.observer.last(topic) or b"")
            assert config["availability"][1]["topic"] == f"calm/{stream}/available"  # each reads its own stream
            unique_ids.add(config["unique_id"])
            devices.add(tuple(config["device"]["identifiers"]))
    assert len(unique_ids) == 3 * len(ENTITIES) and len(devices) == 3


def test_no_discovery_publishes_states_but_no_configs(tmp_path: Path) -> None:
    broker, publisher = Mosquitto(tmp_path), Publisher()
    observer = Observer(broker.port, ("home/#", "homeassistant/#"))
    bridge = BridgeProcess(
        tmp_path, bridge_config(publisher.endpoint, broker.port), "--no-discovery", "--prefix", "home/calm"
    )
    try:
        publisher.wait_subscribed()
        publisher.send(status(0, {"kitchen": "live"}), label("kitchen", 0))
        assert wait_for(lambda: observer.last("home/calm/kitchen/label"), TIMEOUT), bridge.log()
        assert observer.last("home/calm/bridge/availability") == b"online"
        assert not [t for t, _, _ in observer.all() if t.startswith("homeassistant/")]
    finally:
        bridge.stop()
        observer.close()
        publisher.close()
        broker.stop()


# ---- what flows --------------------------------------------------------------------------------------------
def test_labels_events_states_and_call_verdicts_reach_their_topics(rig: Rig) -> None:
    sent = [status(0, {"kitchen": "live"}), label("kitchen", 0), edge("kitchen", 0, "start"), label("kitchen", 1)]
    sent += [edge("kitchen", 1, "end"), status(1, {"kitchen": "backoff"}, instance="host/tcp://127.0.0.1:5560")]
    rig.publisher.send(*sent)
    assert wait_for(lambda: len(rig.observer.all("calm/kitchen/event")) == 2, TIMEOUT), rig.bridge.log()
    assert wait_for(lambda: len(rig.observer.json("calm/kitchen/state")) == 2, TIMEOUT), rig.bridge.log()

    # labels and events are calmd's messages unchanged, every field passed through
    assert rig.observer.json("calm/kitchen/label") == [sent[1].to_json(), sent[3].to_json()]
    assert rig.observer.json("calm/kitchen/event") == [sent[2].to_json(), sent[4].to_json()]
    assert [(m["state"], m["labels"]) for m in rig.observer.json("calm/kitchen/detected")] == [
        ("OFF", []), ("ON", ["alarm"]), ("OFF", [])
    ]  # fmt: skip
    states = rig.observer.json("calm/kitchen/state")
    assert [(s["state"], s["instance"], s["segments"]) for s in states] == [
        ("live", "gpu0", 3), ("backoff", "host/tcp://127.0.0.1:5560", 3)
    ]  # fmt: skip
    # calm/status follows the second state: wait for it rather than assume it arrived with it
    both = {"gpu0", "host/tcp://127.0.0.1:5560"}
    assert wait_for(lambda: set(rig.observer.json("calm/status")[-1]) == both, TIMEOUT), rig.observer.all()
    assert rig.observer.json("calm/status")[-1]["gpu0"] == sent[0].to_json()

    # a fresh subscriber gets the retained states, not the events
    late = Observer(rig.broker.port)
    try:
        assert wait_for(lambda: late.last("calm/kitchen/label") is not None, TIMEOUT)
        assert json.loads(late.last("calm/kitchen/label") or b"") == sent[3].to_json()
        assert json.loads(late.last("calm/kitchen/detected") or b"")["state"] == "OFF"
        assert late.last("calm/kitchen/event") is None
    finally:
        late.close()

    # a call verdict; its leg's device (made from the leg's first label) is removed again
    rig.publisher.send(label("c-42", 0, "spoof"), call("c-42", "c-42", final=False), call("c-42", "c-42", final=True))
    assert wait_for(lambda: len(rig.observer.json("calm/calls/c-42")) == 2, TIMEOUT), rig.bridge.log()
    assert rig.observer.json("calm/calls/c-42")[-1] == call("c-42", "c-42", final=True).to_json()
    for topic in config_topics("calm_c-42").values():
        assert wait_for(lambda t=topic: rig.observer.last(t) == b"", TIMEOUT), f"{topic} not cleared"
    rig.publisher.send(label("c-42", 1, "spoof"))
    assert wait_for(lambda: len(rig.observer.all("calm/c-42/label")) >= 3, TIMEOUT)
    assert rig.observer.all("calm/c-42/label")[-1][2] is False  # call legs' labels are not retained


# ---- broker restart, credentials, last will ----------------------------------------------------------------
def test_broker_restart_without_persistence_gets_back_everything_retained(rig: Rig) -> None:
    rig.publisher.send(status(0, {"kitchen": "live"}), label("kitchen", 0))
    assert wait_for(lambda: rig.observer.last("calm/kitchen/label"), TIMEOUT)
    rig.observer.close()
    rig.broker.stop()
    assert wait_for(lambda: "connection lost" in rig.bridge.log(), TIMEOUT), rig.bridge.log()
    rig.publisher.send(label("kitchen", 1, "glass", 0.8), status(1, {"kitchen": "backoff"}))  # while it is away
    rig.broker.start()  # same port, empty: persistence is off
    assert wait_for(lambda: "reconnected" in rig.bridge.log(), TIMEOUT), rig.bridge.log()

    after = Observer(rig.broker.port)
    try:
        expected = [*config_topics("calm_kitchen").values(), "calm/bridge/availability", "calm/kitchen/available"]
        expected += ["calm/kitchen/label", "calm/kitchen/state", "calm/kitchen/detected", "calm/status"]
        assert wait_for(lambda: all(after.all(t) for t in expected), TIMEOUT), (
            [t for t in expected if not after.all(t)], rig.bridge.log()[-3000:]
        )  # fmt: skip
        assert after.last("calm/bridge/availability") == b"online"
        assert json.loads(after.last("calm/kitchen/label") or b"")["label"] == "glass"  # the newest, sent while away
        assert json.loads(after.last("calm/kitchen/state") or b"")["state"] == "backoff"
        rig.publisher.send(label("kitchen", 2, "speech", 0.6))
        assert wait_for(lambda: after.json("calm/kitchen/label")[-1]["seq"] == 2, TIMEOUT)
    finally:
        after.close()
    assert rig.bridge.proc.poll() is None


def test_a_call_legs_device_deleted_while_a_persistent_broker_is_away_is_deleted_when_it_is_back(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path, persistence=True)  # keeps retained messages across the restart
    publisher = Publisher()
    observer = Observer(broker.port)
    bridge = BridgeProcess(tmp_path, bridge_config(publisher.endpoint, broker.port))
    leg_configs = list(config_topics("calm_c-7").values())
    try:
        publisher.wait_subscribed()
        publisher.send(label("c-7", 0, "spoof"), label("kitchen", 0))
        assert wait_for(lambda: all(observer.last(t) for t in leg_configs), TIMEOUT), bridge.log()
        assert wait_for(lambda: observer.last("calm/kitchen/label"), TIMEOUT), bridge.log()
        observer.close()
        broker.stop()
        assert wait_for(lambda: "connection lost" in bridge.log(), TIMEOUT), bridge.log()
        publisher.send(call("c-7", "c-7", final=True))  # the leg's device is deleted while the broker is away
        assert wait_for(lambda: "stream c-7 is a call leg" in bridge.log(), TIMEOUT), bridge.log()
        broker.start()
        assert wait_for(lambda: "reconnected" in bridge.log(), TIMEOUT), bridge.log()
        # one connection carries the bridge's messages in order: once a label sent now is retained, the
        # broker has handled everything the bridge sent on reconnecting
        publisher.send(label("kitchen", 1))
        after = Observer(broker.port, ("calm/kitchen/label",))
        try:
            assert wait_for(lambda: after.json("calm/kitchen/label")[-1:] == [label("kitchen", 1).to_json()], TIMEOUT)
        finally:
            after.close()
        check = Observer(broker.port, ("homeassistant/#", "calm/c-7/#", "calm/test/marker"))
        try:  # retained messages come right after the subscription, before a message published after it
            check.client.publish("calm/test/marker", b"end")
            assert wait_for(lambda: check.last("calm/test/marker") == b"end", TIMEOUT)
            stale = [(t, p) for t, p, retained in check.all() if retained and "c-7" in t]
            assert not stale, stale
            assert all(check.last(t) for t in config_topics("calm_kitchen").values())  # the rest stays
        finally:
            check.close()
        # the leg's discovery configs and its retained states, each deleted once the broker was back
        assert f"{len(leg_configs) + 4} deleted while it was away" in bridge.log(), bridge.log()
    finally:
        bridge.stop()
        publisher.close()
        broker.stop()


def test_events_while_the_broker_is_away_are_held_up_to_the_queue_size_and_drops_counted(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, persistence=True)  # the observer's session (and its queue) survives the restart
    publisher = Publisher()
    observer = Observer(broker.port, ("calm/+/event",), client_id="observer", clean_session=False)
    bridge = BridgeProcess(tmp_path, bridge_config(publisher.endpoint, broker.port, extra="queue_size = 3"))
    try:
        publisher.wait_subscribed()
        publisher.send(edge("kitchen", 0, "start"))
        assert wait_for(lambda: len(observer.all()) == 1, TIMEOUT), bridge.log()
        broker.stop()
        assert wait_for(lambda: "connection lost" in bridge.log(), TIMEOUT), bridge.log()
        publisher.send(*[edge("kitchen", seq, kind) for seq, kind in zip(range(1, 6), ["end", "start"] * 3)])
        assert wait_for(lambda: "dropped a message" in bridge.log(), TIMEOUT), bridge.log()
        broker.start()
        assert wait_for(lambda: len(observer.all()) == 4, TIMEOUT), (observer.all(), bridge.log()[-3000:])
        assert [m["seq"] for m in observer.json("calm/kitchen/event")] == [0, 1, 2, 3]  # the first 3, in order
        assert bridge.stop() == 0
        assert "2 dropped while the broker was away" in bridge.log()
    finally:
        bridge.stop()
        observer.close()
        publisher.close()
        broker.stop()


def test_bad_credentials_and_an_unreachable_broker_fail_at_start_naming_host_port_and_reason(tmp_path: Path) -> None:
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "calm", "right-secret"], check=True)
    broker = Mosquitto(tmp_path, extra=f"allow_anonymous false\npassword_file {passwords}\n")
    publisher = Publisher()
    secret = tmp_path / "secret"
    try:
        for password, port in (("wrong-secret", broker.port), ("right-secret", broker.port), (None, free_port())):
            extra = f'username = "calm"\npassword_file = "{secret}"' if password else ""
            secret.write_text(f"{password}\n")
            bridge = BridgeProcess(tmp_path, bridge_config(publisher.endpoint, port, broker=extra))
            if password == "right-secret":  # the same broker lets the right password in
                assert wait_for(lambda b=bridge: "connected as" in b.log(), TIMEOUT), bridge.log()
                assert bridge.stop() == 0
                continue
            code = bridge.proc.wait(TIMEOUT)
            log = bridge.log()
            bridge.stop()
            assert code == 2, log
            assert f"MQTT broker 127.0.0.1:{port}" in log, log
            if password == "wrong-secret":
                assert "refused the connection (CONNACK: Not authorized); check broker.username ('calm')" in log, log
            else:
                assert "cannot connect (Connection refused)" in log, log
    finally:
        publisher.close()
        broker.stop()


def test_a_killed_bridge_is_marked_offline_by_its_last_will_and_a_stopped_one_by_itself(rig: Rig) -> None:
    rig.bridge.proc.kill()
    assert wait_for(lambda: rig.observer.last("calm/bridge/availability") == b"offline", TIMEOUT)
    late = Observer(rig.broker.port)  # retained: Home Assistant starting later sees it too
    try:
        assert wait_for(lambda: late.last("calm/bridge/availability") == b"offline", TIMEOUT)
    finally:
        late.close()

    again = BridgeProcess(rig.bridge.config.parent, rig.bridge.config.read_text())
    try:
        assert wait_for(lambda: rig.observer.last("calm/bridge/availability") == b"online", TIMEOUT), again.log()
        assert again.stop(signal.SIGTERM) == 0
        # the broker acknowledged it before the bridge exited; the observer hears it a moment later
        assert wait_for(lambda: rig.observer.last("calm/bridge/availability") == b"offline", TIMEOUT)
    finally:
        again.stop()


# ---- with calmd -------------------------------------------------------------------------------------------
def test_end_to_end_calmd_labels_reach_home_assistant_topics(
    tmp_path: Path, tiny_model_dir, classifier_file, scene_wav, daemon_factory
) -> None:
    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, classifier_file,
        f'[[streams]]\nid = "porch"\ntype = "file"\npath = "{scene_wav}"\nloop = true\n',
        extra="[events]\nenabled = true\nend_after_s = 1.0\n",
    )  # fmt: skip
    broker = Mosquitto(tmp_path)
    observer = Observer(broker.port)
    bridge = BridgeProcess(tmp_path, bridge_config(endpoint_of(config), broker.port))
    daemon = daemon_factory(config, "--no-metrics")
    try:
        got = wait_for(lambda: observer.json("calm/porch/label") and observer.json("calm/porch/event"), 300)
        assert got, (bridge.log()[-2000:], daemon.log()[-2000:])
        first = observer.json("calm/porch/label")[0]
        assert first["schema"] == "calm.label/1" and first["stream"] == "porch"
        assert observer.last(config_topics("calm_porch")["label"])
        assert json.loads(observer.last("calm/porch/state") or b"")["state"] in ("live", "finished", "connecting")
        assert observer.last("calm/porch/available") == b"online"
    finally:
        daemon.stop()
        bridge.stop()
        observer.close()
        broker.stop()


# ---- configuration ----------------------------------------------------------------------------------------
def test_the_example_config_is_valid_and_bad_values_are_refused_naming_key_value_and_allowed(tmp_path: Path) -> None:
    from calmd.mqtt.config import ConfigError, load_bridge_config, parse_bridge_config

    example = load_bridge_config(Path(__file__).resolve().parents[2] / "config" / "calm-mqtt.toml")
    assert example.topics.prefix == "calm" and example.discovery.prefix == "homeassistant"
    assert example.broker.effective_port == 1883
    bad = {
        "topics.qos: Input should be less than or equal to 2 (got 3)": {"topics": {"qos": 3}},
        "topics.prefix: Value error, 'calm/#': a topic prefix without '#'": {"topics": {"prefix": "calm/#"}},
        "broker.colour: unknown key (got 'red')": {"broker": {"colour": "red"}},
        "broker: Value error, a password needs a username": {"broker": {"password": "x"}},
        "zmq.endpoints: Value error, 'udp://x:1': scheme must be tcp:// or ipc://": {
            "zmq": {"endpoints": ["udp://x:1"]}
        },
    }
    for message, data in bad.items():
        with pytest.raises(ConfigError) as caught:
            parse_bridge_config(data, "test.toml")
        assert message in str(caught.value), str(caught.value)
    # the command line: a refused value is exit 2 with the same message, before any connection is tried
    proc = subprocess.run(
        [sys.executable, "-m", "calmd.mqtt", "--qos", "5", "--host", "127.0.0.1"],
        capture_output=True, text=True, env=ENV, timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 2 and "topics.qos: Input should be less than or equal to 2 (got 5)" in proc.stderr


# ---- TLS --------------------------------------------------------------------------------------------------
def make_ca(root: Path, name: str) -> tuple[Path, Path]:
    key, cert = root / f"{name}.key", root / f"{name}.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", f"/CN={name}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command (Debian: openssl)")
def test_tls_with_a_self_signed_ca_connects_and_a_broker_from_another_ca_is_refused(tmp_path: Path) -> None:
    ca_key, ca = make_ca(tmp_path, "calm-test-ca")
    _, other_ca = make_ca(tmp_path, "other-ca")
    key, csr, cert, ext = (tmp_path / f"server.{s}" for s in ("key", "csr", "crt", "ext"))
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=x"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
         "-out", str(cert), "-days", "2", "-extfile", str(ext)],
        check=True, capture_output=True,
    )  # fmt: skip
    tls_port = free_port()
    tls = f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    broker = Mosquitto(tmp_path, extra=tls + "allow_anonymous true\n")  # plus a plain listener for the observer
    publisher = Publisher()
    observer = Observer(broker.port)
    try:
        for trusted, expect in ((other_ca, "TLS handshake failed"), (ca, None)):
            bridge = BridgeProcess(tmp_path, bridge_config(publisher.endpoint, tls_port), "--ca-certs", str(trusted))
            if expect is not None:
                code = bridge.proc.wait(TIMEOUT)
                log = bridge.log()
                bridge.stop()
                assert code == 2 and f"MQTT broker 127.0.0.1:{tls_port}: {expect}" in log, log
                assert "TLS handshake failed, certificate not trusted (" in log, log
                assert f"broker.tls.ca_certs must hold the CA that signed it (now '{other_ca}')" in log, log
                continue
            try:
                publisher.wait_subscribed()
                publisher.send(status(0, {"kitchen": "live"}), label("kitchen", 0))
                assert wait_for(lambda: observer.last("calm/kitchen/label"), TIMEOUT), bridge.log()
            finally:
                assert bridge.stop() == 0
    finally:
        observer.close()
        publisher.close()
        broker.stop()
