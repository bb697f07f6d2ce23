"""Calls behind a real HAProxy (docs/deployment.md): AudioSocket connections spread over two calmd."""

import shutil
import socket
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest
import tomllib

from .conftest import free_port, wait_for, write_config
from .test_telephony import as_message, call_audio, metric, pcm16, read_until_closed

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy (Debian: haproxy)")
DEADLINE = 240.0


def haproxy_config(front: int, stats: int, servers: list[tuple[int, int]]) -> str:
    """The backend of docs/deployment.md on loopback: leastconn, health from calmd's metrics endpoint."""
    lines = "\n".join(
        f"    server gpu{n} 127.0.0.1:{call_port} maxconn 20 check port {metrics_port} inter 500ms"
        for n, (call_port, metrics_port) in enumerate(servers)
    )
    return f"""
defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend audiosocket
    mode tcp
    bind 127.0.0.1:{front}
    default_backend calmd_audiosocket

backend calmd_audiosocket
    mode tcp
    balance leastconn
    option httpchk GET /metrics
{lines}

frontend stats
    mode http
    bind 127.0.0.1:{stats}
    stats enable
    stats uri /stats
"""


def servers_up(stats_port: int) -> bool:
    try:
        csv = urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=2).read().decode()
    except OSError:
        return False
    rows = [r.split(",") for r in csv.splitlines() if r.startswith("calmd_audiosocket,gpu")]
    return len(rows) == 2 and all(r[17] == "UP" for r in rows)  # column 17: status


def test_two_audiosocket_calls_spread_over_two_calmd_through_haproxy(
    tmp_path: Path, tiny_model_dir, classifier_file, daemon_factory
) -> None:
    configs, servers = [], []
    for n in range(2):
        call_port = free_port()
        config = write_config(
            tmp_path / f"calmd-{n}.toml", tiny_model_dir, classifier_file,
            f'[calls]\npositive = "beep"\n[listeners.audiosocket]\nport = {call_port}\nmax_calls = 5\n',
        )  # fmt: skip
        configs.append(config)
        servers.append((call_port, tomllib.loads(config.read_text())["metrics"]["port"]))
    daemons = [daemon_factory(c) for c in configs]
    front, stats = free_port(), free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config(front, stats, servers))
    log = (tmp_path / "haproxy.log").open("w")
    haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    try:
        up = wait_for(lambda: servers_up(stats) or any(d.proc.poll() is not None for d in daemons), DEADLINE, 0.2)
        assert up and all(d.proc.poll() is None for d in daemons), "\n".join(d.log()[-2000:] for d in daemons)
        # two calls at once, as Asterisk would place them: each holds its connection until hangup
        pcm = pcm16(call_audio(2), 8000)
        calls = [socket.create_connection(("127.0.0.1", front), timeout=30) for _ in range(2)]
        for s in calls:
            s.sendall(as_message(0x01, uuid.uuid4().bytes))
        for i in range(0, len(pcm), 320):
            for s in calls:
                s.sendall(as_message(0x10, pcm[i : i + 320]))
        for s in calls:
            s.sendall(as_message(0x00))
            read_until_closed(s)
            s.close()

        def calls_per_calmd() -> list[float] | None:
            counts = [metric(c, 'calm_calls_total{protocol="audiosocket"') for c in configs]
            return counts if sum(counts) == 2 else None

        per_calmd = wait_for(calls_per_calmd, DEADLINE, 0.2)
    finally:
        haproxy.terminate()
        haproxy.wait(30)
        log.close()
    assert per_calmd == [1.0, 1.0], (tmp_path / "haproxy.log").read_text()
    for d in daemons:
        code, text = d.stop()
        assert code == 0, text[-2000:]
        assert "missing_uuid" not in text  # the health checks never reached the call listener
