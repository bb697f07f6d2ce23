"""Real capture: an RTSP server on 127.0.0.1 killed and restarted mid-stream, and a PulseAudio microphone."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from calm_core.messages.client import Subscriber
from calm_core.messages.events import LabelEvent, StatusEvent

from .conftest import endpoint_of, free_port, write_config

SERVER = Path(__file__).parent / "servers" / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"


def _gst_rtsp_available() -> bool:
    if not (os.path.exists(SYSTEM_PYTHON) and shutil.which("ffmpeg")):
        return False
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def speech_like_wav(tmp_path_factory) -> Path:
    from calm_core.testing import voiced

    one = np.concatenate([np.zeros(8000, np.float32), voiced(140.0, 1.0), np.zeros(8000, np.float32)])
    path = tmp_path_factory.mktemp("rtsp") / "loop.wav"
    sf.write(path, np.tile(one, 30), 16000, subtype="PCM_16")  # 60 s: no server-side loop during a test
    return path


class RtspServer:
    def __init__(self, port: int, wav: Path):
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVER), str(port), str(wav)], stdout=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert line == "READY", f"RTSP server did not start: {line!r}"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def collect(sub: Subscriber, seconds: float, until=None) -> list:
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        event = sub.receive(timeout_s=0.2)
        if event is not None:
            out.append(event)
            if until is not None and until(out):
                break
    return out


def labels_of(events: list, stream: str) -> list[LabelEvent]:
    return [e for e in events if isinstance(e, LabelEvent) and e.stream == stream]


def states_of(events: list, stream: str) -> list[str]:
    return [e.streams[stream].state for e in events if isinstance(e, StatusEvent)]


@pytest.mark.skipif(
    not _gst_rtsp_available(), reason="needs ffmpeg and GStreamer's RTSP server for python3-gi (Debian)"
)
@pytest.mark.parametrize("transport, restarts", [("tcp", 2), ("udp", 1)])
def test_rtsp_reconnects_after_server_restarts_while_other_stream_continues(
    tmp_path: Path, tiny_model_dir, classifier_file, speech_like_wav, scene_wav, daemon_factory, transport, restarts
) -> None:
    port = free_port()
    streams = f"""
[[streams]]
id = "cam"
type = "rtsp"
url = "rtsp://127.0.0.1:{port}/audio"
transport = "{transport}"
stall_timeout_s = 2.0
backoff_initial_s = 0.3
backoff_max_s = 1.0

[[streams]]
id = "file"
type = "file"
path = "{scene_wav}"
loop = true
"""
    config = write_config(tmp_path / "calmd.toml", tiny_model_dir, classifier_file, streams)
    server = RtspServer(port, speech_like_wav)
    events: list = []
    try:
        with Subscriber(endpoint_of(config)) as sub:
            daemon = daemon_factory(config)
            before = collect(sub, 180, until=lambda ev: len(labels_of(ev, "cam")) >= 2)
            assert len(labels_of(before, "cam")) >= 2, daemon.stop()[1]
            events += before
            for _ in range(restarts):
                server.kill()
                outage = collect(sub, 60, until=lambda ev: "backoff" in states_of(ev, "cam"))
                assert "backoff" in states_of(outage, "cam")
                # the camera stays down until the server is started again below
                during = [] if labels_of(outage, "file") else collect(sub, 60, until=lambda ev: labels_of(ev, "file"))
                assert labels_of(outage + during, "file"), "the file stream must go on while the camera is down"
                server = RtspServer(port, speech_like_wav)
                after = collect(sub, 60, until=lambda ev: len(labels_of(ev, "cam")) >= 2)
                assert len(labels_of(after, "cam")) >= 2, daemon.stop()[1]
                events += outage + during + after
            events += collect(sub, 2)
            code, log = daemon.stop()
    finally:
        server.kill()
    seqs = [e.seq for e in labels_of(events, "cam")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    status = [e for e in events if isinstance(e, StatusEvent)][-1]
    assert status.streams["cam"].reconnects >= restarts and status.streams["cam"].state == "live", log[-4000:]
    assert code == 0


def start_pulse(env: dict[str, str]) -> None:
    """A PulseAudio server with a null sink whose monitor is the default capture source."""
    subprocess.run(
        ["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "-n", "--load=module-native-protocol-unix",
         "--load=module-null-sink sink_name=calmsink", "--use-pid-file=yes"],
        env=env, check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    subprocess.run(["pactl", "set-default-source", "calmsink.monitor"], env=env, check=True, timeout=10)


def _capture_device_problem(env: dict[str, str]) -> str | None:
    """Why calmd could not open the ALSA device "pulse" through PortAudio here, or None if it can."""
    probe = "import sounddevice as sd; sd.query_devices('pulse', 'input')"
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    if proc.returncode == 0:
        return None
    if "PortAudio library not found" in proc.stderr:
        return "needs the PortAudio library (Debian: libportaudio2)"
    return f"no ALSA capture device 'pulse' (Debian: libasound2-plugins): {proc.stderr.strip()[-200:]}"


@pytest.fixture
def pulse(tmp_path: Path):
    if not (shutil.which("pulseaudio") and shutil.which("paplay") and shutil.which("pactl")):
        pytest.skip("needs pulseaudio, paplay and pactl (Debian: pulseaudio, pulseaudio-utils)")
    runtime = tmp_path / "pulse-runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    start_pulse(env)
    problem = _capture_device_problem(env)
    if problem is not None:
        subprocess.run(["pulseaudio", "--kill"], env=env, timeout=10)
        pytest.skip(problem)
    yield env
    subprocess.run(["pulseaudio", "--kill"], env=env, timeout=10)


def test_microphone_through_pulseaudio(
    tmp_path: Path, tiny_model_dir, classifier_file, speech_like_wav, pulse, daemon_factory
):
    config = write_config(
        tmp_path / "calmd.toml",
        tiny_model_dir,
        classifier_file,
        '[[streams]]\nid = "desk"\ntype = "mic"\ndevice = "pulse"\n',
    )
    player = subprocess.Popen(
        ["sh", "-c", f'while true; do paplay --device=calmsink "{speech_like_wav}"; done'], env=pulse
    )  # the "room": a file played into the null sink whose monitor is the capture device
    try:
        with Subscriber(endpoint_of(config), ["desk"]) as sub:
            daemon = daemon_factory(config, env={"XDG_RUNTIME_DIR": pulse["XDG_RUNTIME_DIR"]})
            events = collect(sub, 180, until=lambda ev: len(labels_of(ev, "desk")) >= 2)
            code, log = daemon.stop()
    finally:
        player.kill()
    labels = labels_of(events, "desk")
    assert len(labels) >= 2, log
    assert all(0.5 <= e.end_s - e.start_s <= 3.0 for e in labels)
    assert "live" in states_of(events, "desk") and code == 0


def test_microphone_that_vanishes_is_retried_and_comes_back(
    tmp_path: Path, tiny_model_dir, classifier_file, speech_like_wav, pulse, daemon_factory
):
    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, classifier_file,
        '[[streams]]\nid = "desk"\ntype = "mic"\ndevice = "pulse"\nstall_timeout_s = 2.0\n'
        "backoff_initial_s = 0.5\nbackoff_max_s = 1.0\n",
    )  # fmt: skip
    play = f'while true; do paplay --device=calmsink "{speech_like_wav}"; sleep 0.2; done'
    player = subprocess.Popen(["sh", "-c", play], env=pulse)
    try:
        with Subscriber(endpoint_of(config), ["desk"]) as sub:
            daemon = daemon_factory(config, env={"XDG_RUNTIME_DIR": pulse["XDG_RUNTIME_DIR"]})
            before = collect(sub, 180, until=lambda ev: len(labels_of(ev, "desk")) >= 1)
            assert labels_of(before, "desk"), daemon.stop()[1]
            subprocess.run(["pulseaudio", "--kill"], env=pulse, timeout=10)  # the sound server vanishes
            gone = collect(sub, 30, until=lambda ev: "backoff" in states_of(ev, "desk"))
            start_pulse(pulse)
            back = collect(
                sub, 60, until=lambda ev: len(labels_of(ev, "desk")) >= 1 and "live" in states_of(ev, "desk")
            )
            code, log = daemon.stop()
    finally:
        player.kill()
    assert "backoff" in states_of(gone, "desk"), log[-3000:]
    assert labels_of(back, "desk") and states_of(back, "desk")[-1] == "live", log[-3000:]
    assert code == 0
