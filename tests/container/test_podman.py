"""The container image (Containerfile) built and run with podman: calmd on a tiny model and classifier mounted
as volumes, reading a wav file, publishing over ZeroMQ to a subscriber on the host's loopback; its health
check, its user, a clean stop; calm-mqtt from the same image bridging it to a real mosquitto; and the shipped
compose.yaml brought up with podman-compose, its three services finding each other by name.

Needs root, podman, debootstrap and podman-compose (scripts/setup.sh installs them): the Debian base image is
bootstrapped locally (scripts/container-base.sh) when it is missing. Skipped, with podman's own error, only where podman
cannot start a container at all; a build that fails is a failure."""

from __future__ import annotations

import json
import os
import pwd
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ..conftest import TONE_CLASSES
from ..daemon.conftest import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/calm-debian:bookworm"
IMAGE = "localhost/calm:test"
BUILD_TIMEOUT_S = 1800.0  # a cold build (apt, torch, the lock from PyPI) takes about 4 minutes on 2 cores
TIMEOUT_S = 300.0  # bounds a hang only: every wait returns as soon as its condition holds
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}

pytestmark = pytest.mark.slow


def podman(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done


def test_shipped_container_configs_are_valid():
    """config/container/ holds what the image copies to /etc/calm; both daemons must accept it as it is."""
    from calmd.config import load_config
    from calmd.mqtt.config import load_bridge_config

    daemon = load_config(REPO / "config" / "container" / "calmd.toml")
    bridge = load_bridge_config(REPO / "config" / "container" / "calm-mqtt.toml")
    assert daemon.page.enabled  # the image's HEALTHCHECK asks its /healthz
    assert daemon.publish.endpoint == "tcp://0.0.0.0:5556"
    assert bridge.zmq.endpoints == ["tcp://calmd:5556"]


# ---- podman on this machine ---------------------------------------------------------------------------------
def run_options() -> list[list[str]]:
    """What `podman run` and `podman build` may need beyond the defaults, tried in this order. As root podman
    asks for 1048576 open files, more than a hard limit below it allows without CAP_SYS_RESOURCE (a VM's
    20000, say); crun refuses a cgroup v1 host whose v2 hierarchy also holds a controller ("cgroups in hybrid
    mode not supported"), where runc runs."""
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1048576)
    ulimits = ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]  # lower is always allowed
    options = [[], ulimits]
    if shutil.which("runc"):
        options.append(["--runtime", "runc", *ulimits])
    return options


@pytest.fixture(scope="module")
def podman_options() -> list[str]:
    """The options with which podman runs a container here; skips, quoting podman, where none does."""
    if shutil.which("podman") is None:
        pytest.skip("needs podman (Debian: podman)")
    missing_base = podman("image", "exists", BASE_IMAGE, check=False).returncode != 0
    if missing_base:
        if shutil.which("debootstrap") is None or os.geteuid() != 0:
            pytest.skip(f"{BASE_IMAGE} is missing and making it needs root and debootstrap (Debian: debootstrap)")
        made = subprocess.run(
            ["bash", "scripts/container-base.sh"], cwd=REPO, capture_output=True, text=True, timeout=900
        )
        assert made.returncode == 0, f"scripts/container-base.sh failed:\n{made.stdout[-2000:]}{made.stderr[-4000:]}"
    failures = []
    for options in run_options():
        tried = podman("run", "--rm", *options, BASE_IMAGE, "true", check=False)
        if tried.returncode == 0:
            return options
        failures.append(f"`podman run {' '.join(options) or '(no options)'}`: {tried.stderr.strip()}")
    pytest.skip("podman cannot run a container on this machine: " + "; ".join(failures))


# ---- the image ----------------------------------------------------------------------------------------------
def pip_config() -> dict[str, str]:
    """pip's settings on this machine (files and PIP_* variables), as `pip config list` prints them."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
    ).stdout
    found = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        found.setdefault(key.rsplit(".", 1)[-1], value.strip("'\""))
    return found


def build_volumes() -> list[str]:
    """The host's own torch wheel and CA bundle for the build (Containerfile, "What the build takes")."""
    pin = re.search(r"^ARG TORCH=torch==(\S+)$", (REPO / "Containerfile").read_text(), re.M)
    assert pin, "Containerfile: no ARG TORCH=torch==VERSION"
    config = pip_config()
    volumes = []
    links = [link.removeprefix("file://") for link in config.get("find-links", "").split()]
    wheels = [Path(d) for d in links if Path(d).is_dir() and any(Path(d).glob(f"torch-{pin[1]}[+-]*.whl"))]
    if wheels:
        volumes += ["--volume", f"{wheels[0]}:/build/wheels:ro"]
    bundle = next(
        (Path(c) for c in (config.get("cert"), "/etc/ssl/certs/ca-certificates.crt") if c and Path(c).is_file()),
        None,
    )
    if bundle is not None:
        volumes += ["--volume", f"{bundle}:/build/ca-certificates.crt:ro"]
    return volumes


@pytest.fixture(scope="module")
def image(podman_options: list[str]) -> str:
    log = subprocess.run(
        ["nice", "-n", "10", "podman", "build", *podman_options, *build_volumes(), "--format", "docker",
         "--tag", IMAGE, "."],
        cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
    )  # fmt: skip
    assert log.returncode == 0, f"podman build failed:\n{log.stdout[-4000:]}\n{log.stderr[-4000:]}"
    return IMAGE


# ---- calmd in the container ---------------------------------------------------------------------------------
@dataclass
class Running:
    name: str
    endpoint: str  # calmd's ZeroMQ publisher, as the host reaches it
    page: str  # the live page's base URL on the host


def readable(path: Path) -> Path:
    """Bind mounts keep the host's modes: the image's user (uid 10001) must be able to read what it is given."""
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return path


def calmd_config(streams: str) -> str:
    return f"""
[model]
path = "/models/tiny"
classifier = "/var/lib/calm/classifiers/tones.calm.safetensors"
device = "cpu"

[inference]
forward_grace_s = 120

[publish]
endpoint = "tcp://0.0.0.0:5556"
heartbeat_s = 0.5

[metrics]
host = "0.0.0.0"
port = 9108

[page]
enabled = true
host = "0.0.0.0"
port = 9110

[vad]
mode = "none"
window_s = 1.0
hop_s = 1.0

{streams}
"""


@pytest.fixture(scope="module")
def volumes(tmp_path_factory, tiny_model_dir: Path, tone_sets: dict[str, Path]) -> dict[str, Path]:
    """Config, model, classifier and audio folders for the container, as a user would mount them."""
    root = tmp_path_factory.mktemp("container")
    classifiers = root / "classifiers"
    classifiers.mkdir()
    subprocess.run(
        [sys.executable, "-m", "calm_core.cli", "-q", "fit", "--model", str(tiny_model_dir),
         "--support", str(tone_sets["support"]), "--out", str(classifiers / "tones.calm.safetensors"),
         "--top-k", "6", "--no-cache"],
        check=True, capture_output=True, env=ENV, timeout=300,
    )  # fmt: skip
    audio = root / "audio"
    audio.mkdir()
    clips = [sf.read(p, dtype="float32")[0] for p in sorted(tone_sets["test"].rglob("*.wav"))]
    sf.write(audio / "tones.wav", np.concatenate(clips), 16000, subtype="PCM_16")
    config = root / "config"
    config.mkdir()
    stream = '[[streams]]\nid = "demo"\ntype = "file"\npath = "/audio/tones.wav"\nloop = true\nrealtime = true\n'
    (config / "calmd.toml").write_text(calmd_config(stream))
    (config / "calm-mqtt.toml").write_text((REPO / "config" / "container" / "calm-mqtt.toml").read_text())
    folders = {"config": config, "model": tiny_model_dir, "classifiers": classifiers, "audio": audio}
    return {name: readable(path) for name, path in folders.items()}


@pytest.fixture(scope="module")
def calmd(image: str, podman_options: list[str], volumes: dict[str, Path]) -> Iterator[Running]:
    name = f"calm-test-{os.getpid()}"
    zmq_port, page_port = free_port(), free_port()
    podman(
        "run", "--detach", "--name", name, *podman_options,
        "--publish", f"127.0.0.1:{zmq_port}:5556", "--publish", f"127.0.0.1:{page_port}:9110",
        "--volume", f"{volumes['config']}:/etc/calm:ro",
        "--volume", f"{volumes['model']}:/models/tiny:ro",
        "--volume", f"{volumes['classifiers']}:/var/lib/calm/classifiers:ro",
        "--volume", f"{volumes['audio']}:/audio:ro",
        image,
    )  # fmt: skip
    running = Running(name, f"tcp://127.0.0.1:{zmq_port}", f"http://127.0.0.1:{page_port}")
    try:
        # Ready (model and classifier loaded, page up) before any test: each test then holds on its own,
        # whichever of them runs first or alone.
        assert wait_for(lambda: serving(running.page) or state(name, ".State.Running") != "true", TIMEOUT_S, 1.0)
        assert serving(running.page), f"calmd in the container never served its page: {logs(name)}"
        yield running
    finally:
        log = logs(name)
        podman("rm", "--force", "--volumes", name, check=False, timeout=180)
        print(f"calmd's log in the container:\n{log}")


def serving(page: str) -> bool:
    try:
        with urllib.request.urlopen(f"{page}/healthz", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def logs(name: str) -> str:
    done = podman("logs", name, check=False)
    return (done.stdout + done.stderr)[-3000:]


def state(name: str, field: str) -> str:
    return podman("inspect", "--format", f"{{{{{field}}}}}", name).stdout.strip()


def first_label(endpoint: str):
    from calm_core.messages.client import Subscriber
    from calm_core.messages.events import LabelEvent

    with Subscriber(endpoint, status=False) as sub:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            event = sub.receive(timeout_s=1.0)
            if isinstance(event, LabelEvent):
                return event
    return None


def test_calmd_in_the_container_publishes_labels_to_a_subscriber_on_the_host(calmd: Running):
    label = first_label(calmd.endpoint)
    assert label is not None, f"no label on {calmd.endpoint} within {TIMEOUT_S:.0f} s: {logs(calmd.name)}"
    assert label.stream == "demo"
    assert label.label in {*TONE_CLASSES, "unknown"}


def test_calmd_container_passes_its_health_check(calmd: Running):
    healthy = wait_for(
        lambda: podman("healthcheck", "run", calmd.name, check=False, timeout=60).returncode == 0, TIMEOUT_S, 1.0
    )
    assert healthy, f"the HEALTHCHECK never passed: {podman('healthcheck', 'run', calmd.name, check=False).stdout}"
    assert state(calmd.name, ".State.Health.Status") == "healthy"
    with urllib.request.urlopen(f"{calmd.page}/healthz", timeout=10) as answer:  # the same page, from the host
        assert json.load(answer)["ok"] is True


def test_calmd_container_runs_as_a_non_root_user(calmd: Running):
    uid = podman("exec", calmd.name, "id", "-u").stdout.strip()
    assert uid != "0"
    processes = podman("top", calmd.name, "user", "args").stdout.splitlines()[1:]
    assert any(p.split()[0] == "calm" and "calmd" in p for p in processes), processes  # calmd itself


def test_calm_mqtt_from_the_image_bridges_calmd_to_mosquitto(
    calmd: Running, image: str, podman_options: list[str], volumes: dict[str, Path], tmp_path: Path
):
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        pytest.skip("needs the mosquitto broker (Debian: mosquitto)")
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
    )
    broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    name = f"calm-mqtt-test-{os.getpid()}"
    received: list[str] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    try:
        listening = wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 30, 0.2)
        assert listening, "mosquitto did not listen"
        client.on_connect = lambda c, *_: c.subscribe("calm/#")
        client.on_message = lambda _c, _u, msg: received.append(msg.topic)
        client.connect("127.0.0.1", port)
        client.loop_start()
        # The host's network: calmd's published port and the broker are both on its loopback.
        podman(
            "run", "--detach", "--name", name, *podman_options, "--network", "host",
            "--volume", f"{volumes['config']}:/etc/calm:ro", image,
            "calm-mqtt", "--config", "/etc/calm/calm-mqtt.toml", "--zmq", calmd.endpoint,
            "--host", "127.0.0.1", "--port", str(port),
        )  # fmt: skip
        topic = "calm/demo/label"
        assert wait_for(lambda: topic in received, TIMEOUT_S, 0.2), (
            f"nothing on {topic}; got {sorted(set(received))}; calm-mqtt: {logs(name)}"
        )
        assert podman("exec", name, "id", "-u").stdout.strip() != "0"
    finally:
        client.loop_stop()
        podman("rm", "--force", "--volumes", name, check=False, timeout=180)
        broker.terminate()
        broker.wait(30)


def test_calmd_container_stops_cleanly_on_sigterm(calmd: Running):
    podman("stop", "--time", "60", calmd.name, timeout=120)
    assert state(calmd.name, ".State.ExitCode") == "0", logs(calmd.name)


# calmd's model load, made slow: the start-up a container may be stopped in.
SLOW_LOAD = """
import time
import calm_core.backbones as backbones

def load_backbone(*args, **kwargs):
    print("test: loading the model (slowly)", flush=True)
    time.sleep(600)

backbones.load_backbone = load_backbone
"""


def test_calmd_container_stopped_while_starting_exits_0_within_seconds(
    image: str, podman_options: list[str], volumes: dict[str, Path], tmp_path: Path
):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_LOAD)
    site = readable(tmp_path / "site")
    name = f"calm-start-test-{os.getpid()}"
    podman(
        "run", "--detach", "--name", name, *podman_options, "--env", "PYTHONPATH=/test-site",
        "--volume", f"{site}:/test-site:ro",
        "--volume", f"{volumes['config']}:/etc/calm:ro",
        "--volume", f"{volumes['model']}:/models/tiny:ro",
        "--volume", f"{volumes['classifiers']}:/var/lib/calm/classifiers:ro",
        "--volume", f"{volumes['audio']}:/audio:ro",
        image,
    )  # fmt: skip
    try:
        loading = lambda: "loading the model (slowly)" in logs(name) or state(name, ".State.Running") != "true"  # noqa: E731
        assert wait_for(loading, TIMEOUT_S, 0.5), logs(name)
        t = time.monotonic()
        podman("stop", "--time", "60", name, timeout=120)
        elapsed = time.monotonic() - t
        assert state(name, ".State.ExitCode") == "0", logs(name)
        assert "stopped by SIGTERM while starting" in logs(name)
        assert elapsed < 30, f"podman stop took {elapsed:.0f} s: calmd ignored SIGTERM while starting"
    finally:
        podman("rm", "--force", "--volumes", name, check=False, timeout=180)


def test_container_configs_name_the_image_volumes():
    """The paths config/container/calmd.toml uses are the image's volumes, so that they survive the container."""
    import tomllib

    config = tomllib.loads((REPO / "config" / "container" / "calmd.toml").read_text())
    volumes = re.search(r"^VOLUME (\[.*\])$", (REPO / "Containerfile").read_text(), re.M)
    assert volumes
    mounted = json.loads(volumes[1])
    for path in (config["model"]["classifier"], config["clips"]["dir"]):
        assert any(path.startswith(v + "/") or path == v for v in mounted), f"{path} is on no volume of {mounted}"


# ---- compose.yaml: calmd, calm-mqtt and mosquitto together -------------------------------------------------
MQTT_LABEL_WAIT = """
import sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
topics = []
client = mqtt.Client(CallbackAPIVersion.VERSION2)
client.on_connect = lambda c, *_: c.subscribe(sys.argv[1])
client.on_message = lambda _c, _u, message: topics.append(message.topic)
client.connect("mosquitto", 1883)
client.loop_start()
deadline = time.monotonic() + float(sys.argv[2])
while not topics and time.monotonic() < deadline:
    time.sleep(0.2)
client.loop_stop()
print(" ".join(topics))
sys.exit(0 if topics else 1)
"""


@dataclass
class Project:
    name: str
    folder: Path  # the compose file and its config/container
    endpoint: str
    page: str

    def container(self, service: str) -> str:
        """A service's container by compose's labels (podman-compose 1.0 names it project_service_1, Docker
        Compose project-service-1)."""
        labels = [f"label=com.docker.compose.project={self.name}", f"label=com.docker.compose.service={service}"]
        listed = podman("ps", "--all", "--filter", labels[0], "--filter", labels[1], "--format", "{{.Names}}")
        names = listed.stdout.split()
        assert len(names) == 1, f"{service}: expected one container in project {self.name}, found {names}"
        return names[0]


def compose(project: Project, podman_options: list[str], *args: str, timeout: float = 600.0) -> str:
    options = " ".join(podman_options)
    command = ["podman-compose", "--project-name", project.name, "--file", str(project.folder / "compose.yaml")]
    if options:
        command += [f"--podman-run-args={options}", f"--podman-build-args={options}"]
    done = subprocess.run([*command, *args], cwd=project.folder, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command + list(args))} exited {done.returncode}:\n{output[-4000:]}"
    return output


def compose_file(ports: dict[int, int]) -> dict:
    """The shipped compose.yaml as a user runs it from a copy of config/container, with three changes that
    keep it off this machine's own ports and images: free host ports, the test's image tag, and build
    contexts that point back into the repository."""
    import yaml

    spec = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = spec["services"]
    for name in ("calmd", "calm-mqtt"):
        services[name]["image"] = IMAGE
        services[name].pop("build", None)  # built by the `image` fixture
    services["mosquitto"]["build"]["context"] = str(REPO / "config" / "container" / "mosquitto")
    published = []
    for mapping in services["calmd"]["ports"]:
        host, _, inside = mapping.rpartition(":")
        address = host.rpartition(":")[0]
        published.append(f"{address}:{ports[int(inside)]}:{inside}")
    services["calmd"]["ports"] = published
    return spec


@pytest.fixture(scope="module")
def project(image: str, podman_options: list[str], tmp_path_factory, tone_sets: dict[str, Path]) -> Iterator[Project]:
    """docs/container.md: fit a classifier into the project's classifiers volume with the image's
    `calm fit` (bundled Whisper tiny.en, converted once into the model-cache volume), then `podman-compose
    up -d` the shipped compose.yaml with config/container's files, a wav file instead of the camera."""
    if shutil.which("podman-compose") is None:
        pytest.skip("needs podman-compose (Debian: podman-compose)")
    import yaml

    folder = tmp_path_factory.mktemp("compose")
    ports = {5556: free_port(), 9108: free_port(), 9110: free_port()}
    (folder / "compose.yaml").write_text(yaml.safe_dump(compose_file(ports), sort_keys=False))
    config = folder / "config" / "container"
    shutil.copytree(REPO / "config" / "container", config, ignore=shutil.ignore_patterns("mosquitto"))
    shipped = (config / "calmd.toml").read_text()
    camera = shipped[re.search(r"^\[\[streams\]\]$", shipped, re.M).start() :]  # type: ignore[union-attr]
    stream = '[[streams]]\nid = "yard"\ntype = "file"\npath = "/etc/calm/yard.wav"\nloop = true\nrealtime = true\n'
    (config / "calmd.toml").write_text(shipped.replace(camera, stream))
    from calmd.config import load_config

    assert [s.id for s in load_config(config / "calmd.toml").streams] == ["yard"]
    gap = np.zeros(8000, dtype=np.float32)  # 0.5 s of silence between tones: the energy VAD's segments
    clips = [part for p in sorted(tone_sets["test"].rglob("*.wav")) for part in (sf.read(p, dtype="float32")[0], gap)]
    sf.write(config / "yard.wav", np.concatenate(clips), 16000, subtype="PCM_16")
    readable(folder)
    support = readable(tone_sets["support"])
    project = Project(f"calmtest{os.getpid()}", folder, f"tcp://127.0.0.1:{ports[5556]}",
                      f"http://127.0.0.1:{ports[9110]}")  # fmt: skip
    try:
        podman(
            "run", "--rm", *podman_options,
            "--volume", f"{project.name}_classifiers:/var/lib/calm/classifiers",
            "--volume", f"{project.name}_model-cache:/var/cache/calm",
            "--volume", f"{support}:/support:ro", image,
            "calm", "-q", "fit", "--model", "bundled:whisper-tiny.en", "--support", "/support",
            "--out", "/var/lib/calm/classifiers/classifier.calm.safetensors",
            timeout=600,
        )  # fmt: skip
        compose(project, podman_options, "up", "-d")
        yield project
    finally:
        for service in ("calmd", "calm-mqtt", "mosquitto"):
            print(f"{service} in compose:\n{compose_logs(project, service)}")
        # By label, so that anonymous volumes go too (podman-compose 1.0's `down -v` keeps them).
        ids = podman("ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={project.name}",
                     check=False).stdout.split()  # fmt: skip
        if ids:
            podman("rm", "--force", "--volumes", *ids, check=False, timeout=180)
        volumes = [f"{project.name}_{v}" for v in ("classifiers", "clips", "model-cache", "mosquitto-data")]
        podman("volume", "rm", "--force", *volumes, check=False)
        podman("network", "rm", "--force", f"{project.name}_default", check=False)


def compose_logs(project: Project, service: str) -> str:
    try:
        return logs(project.container(service))
    except AssertionError as e:
        return str(e)


def test_compose_runs_calmd_calm_mqtt_and_mosquitto_together(project: Project, podman_options: list[str]):
    calmd = project.container("calmd")
    label = first_label(project.endpoint)
    assert label is not None, f"no label on {project.endpoint} within {TIMEOUT_S:.0f} s: {logs(calmd)}"
    assert label.stream == "yard"
    assert label.label in {*TONE_CLASSES, "unknown"}
    # calm-mqtt found calmd and mosquitto by their service names, on the compose network only.
    waited = subprocess.run(
        ["podman", "exec", project.container("calm-mqtt"), "python", "-c", MQTT_LABEL_WAIT, "calm/+/label",
         str(TIMEOUT_S)],
        capture_output=True, text=True, timeout=TIMEOUT_S + 60,
    )  # fmt: skip
    assert waited.returncode == 0, (
        f"no calm/+/label on the compose network's mosquitto: {waited.stderr[-2000:]}\n"
        f"calm-mqtt: {compose_logs(project, 'calm-mqtt')}"
    )
    assert set(waited.stdout.split()) == {"calm/yard/label"}
    healthy = wait_for(lambda: podman("healthcheck", "run", calmd, check=False, timeout=60).returncode == 0,
                       TIMEOUT_S, 1.0)  # fmt: skip
    assert healthy, f"calmd's HEALTHCHECK never passed in compose: {logs(calmd)}"
    # The stop a user runs (podman-compose 1.0 ignores stop_grace_period: docs/container.md gives -t).
    compose(project, podman_options, "stop", "-t", "30", "calmd")
    assert state(calmd, ".State.ExitCode") == "0", logs(calmd)
