import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
SCHEMAS = Path(__file__).resolve().parents[2] / "calm_core" / "messages" / "schemas"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def classifier_file(tiny_model_dir: Path, tone_sets: dict[str, Path], tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clf") / "tones.calm.safetensors"
    subprocess.run(
        [sys.executable, "-m", "calm_core.cli", "-q", "fit", "--model", str(tiny_model_dir),
         "--support", str(tone_sets["support"]), "--out", str(out), "--top-k", "6", "--no-cache"],
        check=True, capture_output=True, env=ENV, timeout=300,
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def scene_wav(tmp_path_factory) -> Path:
    """Voice-like sounds separated by silence: 4 events a VAD must find, at 1, 4, 7 and 10 s, 12 s in all."""
    from calm_core.testing import voiced

    parts = []
    for f0 in (140.0, 280.0, 140.0, 520.0):
        parts += [np.zeros(16000, dtype=np.float32), voiced(f0, 1.0), np.zeros(16000, dtype=np.float32)]
    path = tmp_path_factory.mktemp("audio") / "scene.wav"
    sf.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
    return path


VOICE_VAD = 'mode = "webrtc"\naggressiveness = 1\nmin_segment_s = 0.3'
# Tests stop calmd with SIGTERM. On a busy machine one forward of the tiny model can take seconds, and the
# default grace for the forward in flight (5 s) would turn a clean stop into exit 3; tests about the grace
# set their own.
TEST_GRACE = "forward_grace_s = 120\n"


def write_config(
    path: Path, model: Path, classifier: Path, streams: str, extra: str = "", vad: str = VOICE_VAD
) -> Path:
    if "forward_grace_s" not in extra:
        extra = (
            extra.replace("[inference]\n", "[inference]\n" + TEST_GRACE)
            if "[inference]\n" in extra
            else ("[inference]\n" + TEST_GRACE + extra)
        )
    path.write_text(
        f"""
[model]
path = "{model}"
classifier = "{classifier}"
device = "cpu"

[publish]
endpoint = "tcp://127.0.0.1:{free_port()}"
heartbeat_s = 0.5

[metrics]
port = {free_port()}

[vad]
{vad}
{extra}
{streams}
"""
    )
    return path


def endpoint_of(config: Path) -> str:
    import tomllib

    return tomllib.loads(config.read_text())["publish"]["endpoint"]


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


class Daemon:
    """calmd as a subprocess. Its log goes to a file, not a pipe: a pipe nobody reads until the end fills up
    (64 KiB of debug lines) and then blocks calmd's logging, and with it the model worker."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None):
        self.log_path = config.with_name(f"{config.stem}-{time.monotonic_ns()}.log")
        self.log_file = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "calmd", "--config", str(config), "--log-level", "debug", *args],
            stdout=self.log_file, stderr=subprocess.STDOUT, env={**ENV, **(env or {})}, text=True,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=timeout)
        self.log_file.close()
        return self.proc.returncode, self.log()


@pytest.fixture
def daemon_factory():
    started: list[Daemon] = []

    def start(config: Path, *args: str, env: dict[str, str] | None = None) -> Daemon:
        d = Daemon(config, *args, env=env)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=10)
        d.log_file.close()


def page_request(
    port: int, method: str, path: str, body: object = None, headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One request to a live page on 127.0.0.1: (status, lower-cased headers, body). body goes as JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        sent = {"Content-Type": "application/json", **(headers or {})} if data is not None else headers or {}
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def page_login(port: int, password: str) -> tuple[str, str]:
    """(Cookie header, CSRF token) of a fresh session on a live page."""
    status, headers, body = page_request(port, "POST", "/api/login", {"password": password})
    assert status == 200, body
    return headers["set-cookie"].split(";")[0], json.loads(body)["csrf"]


def wait_for(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def listen_to_late_scene(
    tmp_path: Path,
    model: Path,
    classifier: Path,
    scene_wav: Path,
    daemon_factory,
    extra: str,
    done: Callable[[list[dict]], bool],
) -> tuple[int, str, list[dict]]:
    """calmd --exit-when-done on one stream, "room", playing scene_wav after 5 s of silence, with `calm listen
    --json` started first: it has long connected when the first message leaves (ZeroMQ drops what is published
    before a subscriber is connected). Returns calmd's exit code, its log and the messages calm listen printed
    once done(messages) holds (what calmd sent may still be on its way when it exits) or 30 s have passed."""
    audio, rate = sf.read(scene_wav, dtype="float32")
    late_scene = tmp_path / "late-scene.wav"
    sf.write(late_scene, np.concatenate([np.zeros(5 * rate, np.float32), audio]), rate, subtype="PCM_16")
    config = write_config(
        tmp_path / "calmd.toml", model, classifier,
        f'[[streams]]\nid = "room"\ntype = "file"\npath = "{late_scene}"\n', extra=extra,
    )  # fmt: skip
    listen_cmd = ["listen", "--endpoint", endpoint_of(config), "--json", "--seconds", "600"]
    listen = subprocess.Popen(
        [sys.executable, "-m", "calm_core.cli", *listen_cmd], stdout=subprocess.PIPE, text=True, env=ENV
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(listen.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        daemon = daemon_factory(config, "--exit-when-done")
        daemon.proc.wait(timeout=300)
        code, log = daemon.stop()
        wait_for(lambda: done([json.loads(line) for line in list(lines)]), timeout=30)
    finally:
        listen.terminate()
        listen.wait(timeout=30)
        reader.join(10)
    return code, log, [json.loads(line) for line in lines]
