"""calm-proxy as a real process: fan-in of two calmd, losing one, and the last-value cache of calm.status."""

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import zmq

from calm_core.messages.client import Subscriber
from calm_core.messages.events import LabelEvent, StatusEvent

from .conftest import ENV, Daemon, endpoint_of, free_port, wait_for, write_config

HEARTBEAT_S = 20.0  # long: within LATE_BOUND_S of joining, only the proxy's cache can deliver a status
LATE_BOUND_S = HEARTBEAT_S / 4


class ProxyProcess:
    def __init__(self, log_path: Path, *args: str):
        self.backend = f"tcp://127.0.0.1:{free_port()}"
        self.log_path = log_path
        self.log_file = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "calmd.proxy", "--backend", self.backend, "--log-level", "debug", *args],
            stdout=self.log_file, stderr=subprocess.STDOUT, env=ENV, text=True,
        )  # fmt: skip

    def stop(self, timeout: float = 30) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self.log_file.close()
        return self.proc.returncode, self.log_path.read_text(errors="replace")


class Watcher:
    """One subscriber on the proxy, from before the daemons start: every label and status, with arrival times."""

    def __init__(self, endpoint: str):
        self.events: list[tuple[float, LabelEvent | StatusEvent]] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.gaps = 0
        self.thread = threading.Thread(target=self._run, args=(endpoint,), daemon=True)
        self.thread.start()

    def _run(self, endpoint: str) -> None:
        with Subscriber(endpoint, context=zmq.Context()) as sub:
            while not self.done.is_set():
                event = sub.receive(timeout_s=0.2)
                if isinstance(event, LabelEvent | StatusEvent):
                    with self.lock:
                        self.events.append((time.monotonic(), event))
                        self.gaps = sub.gaps

    def labels(self, stream: str, since: float = 0.0) -> list[LabelEvent]:
        with self.lock:
            return [e for t, e in self.events if t >= since and isinstance(e, LabelEvent) and e.stream == stream]

    def statuses(self, before: float = float("inf")) -> dict[str, StatusEvent]:
        """The latest status of each instance that had arrived before `before`."""
        with self.lock:
            latest: dict[str, StatusEvent] = {}
            for t, e in self.events:
                if t < before and isinstance(e, StatusEvent) and e.seq >= latest.get(e.instance, e).seq:
                    latest[e.instance] = e
            return latest


def consecutive(labels: list[LabelEvent]) -> bool:
    return all(b.seq == a.seq + 1 for a, b in zip(labels, labels[1:]))


@pytest.fixture(scope="module")
def pulses_wav(tmp_path_factory) -> Path:
    """A voice-like sound every 2 s (1 s of sound, 1 s of silence): a label every 2 s when looped in real time."""
    from calm_core.testing import voiced

    quiet = np.zeros(8000, dtype=np.float32)
    parts = [np.concatenate([quiet, voiced(f0, 1.0), quiet]) for f0 in (140.0, 280.0, 520.0)]
    path = tmp_path_factory.mktemp("audio") / "pulses.wav"
    sf.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, tiny_model_dir, classifier_file, pulses_wav):
    """Two calmd (streams `east` and `west`, instances `gpu0` and `gpu1`) behind one proxy, and a watcher."""
    root = tmp_path_factory.mktemp("fleet")
    configs = {}
    for stream in ("east", "west"):
        config = write_config(
            root / f"calmd-{stream}.toml", tiny_model_dir, classifier_file,
            f'[[streams]]\nid = "{stream}"\ntype = "file"\npath = "{pulses_wav}"\nloop = true\nrealtime = true\n',
        )  # fmt: skip
        config.write_text(config.read_text().replace("heartbeat_s = 0.5", f"heartbeat_s = {HEARTBEAT_S}"))
        configs[stream] = config
    proxy = ProxyProcess(root / "proxy.log", *[a for c in configs.values() for a in ("--connect", endpoint_of(c))])
    watcher = Watcher(proxy.backend)
    daemons = {
        stream: Daemon(config, "--instance", f"gpu{n}", "--no-metrics")
        for n, (stream, config) in enumerate(configs.items())
    }
    yield proxy, daemons, watcher
    watcher.done.set()
    watcher.thread.join(10)
    for d in daemons.values():
        d.stop()
    proxy.stop()


def test_one_subscriber_gets_both_instances_streams_without_gaps(fleet) -> None:
    proxy, daemons, watcher = fleet
    both = wait_for(lambda: all(len(watcher.labels(s)) >= 4 for s in ("east", "west")), timeout=240)
    logs = "\n".join(d.log()[-2000:] for d in daemons.values())
    assert both, f"labels so far: east {len(watcher.labels('east'))}, west {len(watcher.labels('west'))}\n{logs}"
    for stream in ("east", "west"):
        assert consecutive(watcher.labels(stream)), [e.seq for e in watcher.labels(stream)]
    assert watcher.gaps == 0
    assert proxy.proc.poll() is None


def test_late_subscriber_gets_each_instances_current_status_at_once(fleet) -> None:
    proxy, _, watcher = fleet
    # calmd's first status can leave before the proxy is connected; the first heartbeat then fills the cache
    assert wait_for(lambda: set(watcher.statuses()) == {"gpu0", "gpu1"}, timeout=240), watcher.statuses()
    joined = time.monotonic()
    current = watcher.statuses(before=joined)
    got: dict[str, StatusEvent] = {}
    with Subscriber(proxy.backend, streams=["none-such"], context=zmq.Context()) as late:
        while len(got) < 2 and time.monotonic() < joined + LATE_BOUND_S:
            event = late.receive(timeout_s=0.1)
            if isinstance(event, StatusEvent):
                got.setdefault(event.instance, event)
    elapsed = time.monotonic() - joined
    assert set(got) == {"gpu0", "gpu1"}, f"after {elapsed:.1f} s (heartbeat every {HEARTBEAT_S} s): {got}"
    # the very statuses the proxy had before the late subscriber joined, not fresh heartbeats
    assert {i: s.seq for i, s in got.items()} == {i: s.seq for i, s in current.items()}
    assert {i: sorted(s.streams) for i, s in got.items()} == {"gpu0": ["east"], "gpu1": ["west"]}


def test_killing_one_instance_leaves_the_others_labels_flowing(fleet) -> None:
    proxy, daemons, watcher = fleet
    assert wait_for(lambda: watcher.labels("east") and watcher.labels("west"), timeout=240)
    daemons["east"].proc.kill()
    daemons["east"].proc.wait(30)
    killed = time.monotonic()
    flowing = wait_for(lambda: len(watcher.labels("west", since=killed)) >= 3, timeout=120)
    assert flowing, daemons["west"].log()[-3000:]
    west = watcher.labels("west")
    assert consecutive(west) and watcher.gaps == 0, [e.seq for e in west]
    assert len(watcher.labels("east", since=killed + 1.0)) == 0  # what east had sent may still be in flight
    assert proxy.proc.poll() is None


def test_proxy_replays_cache_to_each_new_status_subscriber_and_exits_cleanly(tmp_path: Path) -> None:
    """Without calmd: two fake publishers, one status each; every new subscriber gets both at once."""
    context = zmq.Context()
    pubs = []
    for _ in range(2):
        pub = context.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.bind("tcp://127.0.0.1:0")
        pubs.append(pub)
    proxy = ProxyProcess(tmp_path / "proxy.log", *[a for p in pubs for a in ("--connect", p.LAST_ENDPOINT.decode())])
    try:
        first = context.socket(zmq.SUB)
        first.setsockopt(zmq.LINGER, 0)
        first.setsockopt(zmq.SUBSCRIBE, b"calm.status")
        first.connect(proxy.backend)
        # the proxy subscribes to calm.status upstream by itself; publish until the first subscriber sees both
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        while seen != {"a", "b"} and time.monotonic() < deadline:
            for pub, name in zip(pubs, "ab"):
                if name not in seen:
                    pub.send_multipart([b"calm.status", json.dumps({"instance": name, "seq": 0}).encode()])
            if first.poll(100):
                seen.add(json.loads(first.recv_multipart()[1])["instance"])
        assert seen == {"a", "b"}
        late = context.socket(zmq.SUB)
        late.setsockopt(zmq.LINGER, 0)
        late.setsockopt(zmq.SUBSCRIBE, b"calm.")  # a prefix of calm.status covers it too
        late.connect(proxy.backend)
        replayed: set[str] = set()
        while len(replayed) < 2 and late.poll(10_000):
            replayed.add(json.loads(late.recv_multipart()[1])["instance"])
        assert replayed == {"a", "b"}
    finally:
        code, log = proxy.stop()
        context.destroy(0)
    assert code == 0, log
    assert "cached statuses replayed" in log
