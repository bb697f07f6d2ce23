"""Worker failures, simulated CUDA out-of-memory, a hung worker and the systemd watchdog, on a real calmd.

Faults are injected into the calmd subprocess with a sitecustomize module on PYTHONPATH that wraps
the backbone's forward; the daemon's code is the shipped code.
"""

import socket
import time
from pathlib import Path

from calm_core.messages.client import Subscriber
from calm_core.messages.events import LabelEvent, StatusEvent

from .conftest import endpoint_of, write_config

PATCH = """
import os, threading, time, torch
from calm_core.backbones import qwen2_audio

_real = qwen2_audio.Qwen2AudioBackbone.head_activations
_calls = {"n": 0}
_lock = threading.Lock()

def head_activations(self, clips, exit_layer=None):
    with _lock:
        _calls["n"] += 1
        n = _calls["n"]
    mode = os.environ["CALM_TEST_FAULT"]
    if mode == "oom" and len(clips) > 1:
        raise torch.cuda.OutOfMemoryError("simulated CUDA out of memory")
    if mode == "flaky" and n % 2 == 0:
        raise RuntimeError("simulated forward failure")
    if mode == "dead" and n > 1:
        raise RuntimeError("simulated broken device")
    if mode == "hang" and n > 2:
        time.sleep(3600)
    if mode == "endless" and n > 1:  # a forward that never ends, and is real torch work all along
        print("endless forward started", flush=True)
        while True:
            _real(self, clips, exit_layer)
    return _real(self, clips, exit_layer)

qwen2_audio.Qwen2AudioBackbone.head_activations = head_activations
"""


def fault_env(tmp_path: Path, mode: str) -> dict[str, str]:
    import os

    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(PATCH)
    return {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "CALM_TEST_FAULT": mode}


def looping(tmp_path, tiny_model_dir, classifier_file, wav, extra: str = "") -> Path:
    return write_config(
        tmp_path / "calmd.toml", tiny_model_dir, classifier_file,
        f'[[streams]]\nid = "room"\ntype = "file"\npath = "{wav}"\nloop = true\nrealtime = false\n', extra=extra,
    )  # fmt: skip


def collect_until(sub: Subscriber, done, timeout: float = 180) -> list:
    """Messages until done(messages) holds, or the (generous) deadline passes: however busy the machine."""
    out, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline and not done(out):
        event = sub.receive(timeout_s=0.2)
        if event is not None:
            out.append(event)
    return out


def labels_in(events: list) -> list[LabelEvent]:
    return [e for e in events if isinstance(e, LabelEvent)]


def status_after_labels(events: list, n: int, failed: int = 0) -> bool:
    """At least n labels, then a status that counts at least `failed` failures for the stream."""
    if len(labels_in(events)) < n:
        return False
    last = [e for e in events if isinstance(e, StatusEvent)]
    return (
        bool(last)
        and events.index(last[-1]) > events.index(labels_in(events)[n - 1])
        and (last[-1].streams["room"].failed >= failed)
    )


def test_oom_batches_are_split_and_nothing_is_lost(
    tmp_path, tiny_model_dir, classifier_file, scene_wav, daemon_factory
):
    config = looping(tmp_path, tiny_model_dir, classifier_file, scene_wav, "[inference]\nbatch_size = 4\n")
    with Subscriber(endpoint_of(config)) as sub:
        daemon = daemon_factory(config, env=fault_env(tmp_path, "oom"))
        events = collect_until(sub, lambda ev: status_after_labels(ev, 8))
        code, log = daemon.stop()
    labels = labels_in(events)
    last = [e for e in events if isinstance(e, StatusEvent)][-1]
    assert len(labels) >= 8 and "retrying in halves" in log, log[-3000:]
    assert last.streams["room"].failed == 0 and code == 0


def test_failed_segments_are_counted_and_the_worker_goes_on(
    tmp_path, tiny_model_dir, classifier_file, scene_wav, daemon_factory
):
    config = looping(tmp_path, tiny_model_dir, classifier_file, scene_wav, "[inference]\nbatch_size = 1\n")
    with Subscriber(endpoint_of(config)) as sub:
        daemon = daemon_factory(config, env=fault_env(tmp_path, "flaky"))
        events = collect_until(sub, lambda ev: status_after_labels(ev, 4, failed=4))
        code, log = daemon.stop()
    labels = labels_in(events)
    last = [e for e in events if isinstance(e, StatusEvent)][-1]
    assert len(labels) >= 4 and last.streams["room"].failed >= 4, log[-3000:]
    assert "simulated forward failure" in log and code == 0


def test_repeated_failures_exit_non_zero_for_systemd(
    tmp_path, tiny_model_dir, classifier_file, scene_wav, daemon_factory
):
    config = looping(
        tmp_path,
        tiny_model_dir,
        classifier_file,
        scene_wav,
        "[inference]\nbatch_size = 1\nmax_consecutive_failures = 3\n",
    )
    daemon = daemon_factory(config, env=fault_env(tmp_path, "dead"))
    code = daemon.proc.wait(timeout=300)
    _, log = daemon.stop()
    assert code == 1 and "3 consecutive inference failures" in log


def test_hung_worker_stops_watchdog_pings(tmp_path, tiny_model_dir, classifier_file, scene_wav, daemon_factory):
    notify = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(notify))
    server.settimeout(0.2)
    config = looping(tmp_path, tiny_model_dir, classifier_file, scene_wav)
    env = {**fault_env(tmp_path, "hang"), "NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "2000000"}
    daemon = daemon_factory(config, env=env)
    received: list[tuple[float, str]] = []
    deadline = time.monotonic() + 180  # the loop ends as soon as the pings have stopped for 8 s
    while time.monotonic() < deadline:
        try:
            received.append((time.monotonic(), server.recv(4096).decode()))
        except TimeoutError:
            pass
        pings = [t for t, m in received if m == "WATCHDOG=1"]
        if pings and time.monotonic() - pings[-1] > 8:
            break
    daemon.proc.kill()
    server.close()
    messages = [m for _, m in received]
    assert any(m.startswith("READY=1") for m in messages)
    pings = [t for t, m in received if m == "WATCHDOG=1"]
    assert len(pings) >= 2  # it pinged while healthy ...
    assert time.monotonic() - pings[-1] > 8  # ... and stopped once the worker hung,
    assert "withholding watchdog pings" in daemon.log()  # because it hung, not because the machine was busy
