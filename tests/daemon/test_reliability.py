"""A stalled stream, a port already in use, and a soak: long replay with flat memory, no gaps, no leaks.

The soak runs briefly in every test run; `pytest -m soak` runs it for CALM_SOAK_SECONDS (default 600).
"""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile as sf

from calm_core.messages.client import Subscriber
from calm_core.messages.events import LabelEvent, StatusEvent
from calm_core.testing import voiced

from .conftest import ENV, endpoint_of, write_config


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg, which reads RTSP streams (Debian: ffmpeg)")
def test_stream_that_connects_but_sends_nothing_is_retried(tmp_path, tiny_model_dir, classifier_file, daemon_factory):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def accept_and_stay_silent() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                pass

    threading.Thread(target=accept_and_stay_silent, daemon=True).start()
    streams = (
        f'[[streams]]\nid = "mute"\ntype = "rtsp"\nurl = "rtsp://127.0.0.1:{port}/x"\n'
        "stall_timeout_s = 1.5\nbackoff_initial_s = 0.2\nbackoff_max_s = 0.5\n"
    )
    config = write_config(tmp_path / "calmd.toml", tiny_model_dir, classifier_file, streams)
    with Subscriber(endpoint_of(config)) as sub:
        daemon = daemon_factory(config)
        statuses = []
        deadline = time.monotonic() + 180  # ends as soon as two reconnects are seen
        while time.monotonic() < deadline:
            event = sub.receive(timeout_s=0.2)
            if isinstance(event, StatusEvent):
                statuses.append(event.streams["mute"])
                if event.streams["mute"].reconnects >= 2:
                    break
        code, log = daemon.stop()
    stop.set()
    server.close()
    assert statuses and statuses[-1].reconnects >= 2, log
    assert len(accepted) >= 2
    assert any(s.state == "backoff" for s in statuses) and all(s.state != "live" for s in statuses)
    assert code == 0


def test_publish_port_in_use_is_a_clear_start_error(tmp_path, tiny_model_dir, classifier_file) -> None:
    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, classifier_file, '[[streams]]\nid = "m"\ntype = "mic"\n'
    )
    host, port = endpoint_of(config).removeprefix("tcp://").split(":")
    with socket.socket() as busy:
        busy.bind((host, int(port)))
        busy.listen(1)
        proc = subprocess.run(
            [sys.executable, "-m", "calmd", "--config", str(config), "--no-metrics"],
            capture_output=True, text=True, env=ENV, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 2
    assert f"publish.endpoint 'tcp://127.0.0.1:{port}': cannot bind" in proc.stderr


def _soak(tmp_path: Path, tiny_model_dir, classifier_file, daemon_factory, seconds: float, streams: int) -> dict:
    one = np.concatenate([np.zeros(8000, np.float32), voiced(150.0, 1.0), np.zeros(8000, np.float32)])
    wav = tmp_path / "soak.wav"
    sf.write(wav, np.tile(one, 30), 16000, subtype="PCM_16")  # 60 s, a sound event every 2 s
    table = "".join(
        f'[[streams]]\nid = "s{i}"\ntype = "file"\npath = "{wav}"\nloop = true\nrealtime = false\n'
        for i in range(streams)
    )
    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, classifier_file, table, extra="[inference]\nbatch_size = 8\n"
    )
    with Subscriber(endpoint_of(config)) as sub:
        daemon = daemon_factory(config)
        proc = psutil.Process(daemon.proc.pid)
        samples, labels, last = [], 0, None
        first = None
        # Runs `seconds` from the first label and until enough labels for the checks; the deadline only
        # bounds a machine so busy (or a model so slow) that neither comes.
        deadline = time.monotonic() + 3 * seconds + 300
        while time.monotonic() < deadline:
            event = sub.receive(timeout_s=0.2)
            if isinstance(event, LabelEvent):
                labels += 1
                if first is None:
                    first = time.monotonic()
            elif isinstance(event, StatusEvent):
                last = event
                if first is not None:
                    samples.append((proc.memory_info().rss, proc.num_threads(), proc.num_fds()))
            if first is not None and time.monotonic() - first > seconds and labels > 20 * streams:
                break
        code, log = daemon.stop()
    return {"samples": samples, "labels": labels, "status": last, "gaps": sub.gaps, "code": code, "log": log}


def _check_soak(r: dict, streams: int) -> None:
    assert r["code"] == 0 and "terminate called" not in r["log"], r["log"][-2000:]
    assert r["labels"] > 20 * streams and r["gaps"] == 0
    status = r["status"]
    assert sum(s.dropped for s in status.streams.values()) == 0
    assert sum(s.failed for s in status.streams.values()) == 0
    rss = [s[0] for s in r["samples"]]
    half = len(rss) // 2
    # flat memory: the second half of the run does not grow past the first half's peak by more than 5 %
    assert max(rss[half:]) <= max(rss[: half + 1]) * 1.05 + 16 * 2**20
    threads, fds = {s[1] for s in r["samples"][1:]}, {s[2] for s in r["samples"][1:]}
    assert max(threads) - min(threads) <= 1 and max(fds) - min(fds) <= 2


def test_short_soak(tmp_path, tiny_model_dir, classifier_file, daemon_factory) -> None:
    _check_soak(_soak(tmp_path, tiny_model_dir, classifier_file, daemon_factory, seconds=20, streams=3), 3)


@pytest.mark.soak
def test_long_soak(tmp_path, tiny_model_dir, classifier_file, daemon_factory) -> None:
    seconds = float(os.environ.get("CALM_SOAK_SECONDS", "600"))
    r = _soak(tmp_path, tiny_model_dir, classifier_file, daemon_factory, seconds=seconds, streams=4)
    _check_soak(r, 4)
    rss = [s[0] for s in r["samples"]]
    audio_h = sum(s.audio_s for s in r["status"].streams.values()) / 3600
    print(
        f"\nsoak: {seconds:.0f} s wall, {audio_h:.2f} h of audio, {r['labels']} labels, gaps {r['gaps']}, "
        f"drops 0, RSS {rss[0] / 2**20:.0f} -> {rss[-1] / 2**20:.0f} MB (peak {max(rss) / 2**20:.0f} MB)"
    )
