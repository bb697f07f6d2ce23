"""Telephony listeners against calmd as a subprocess, over real sockets on 127.0.0.1: clients here speak each
protocol byte for byte as its documentation says, independently of calmd's own parsers."""

from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import urllib.request
import uuid
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import soxr
import tomllib

from calm_core.messages.client import Subscriber
from calm_core.messages.events import CallEvent, StatusEvent

from .conftest import Daemon, endpoint_of, free_port, schema, wait_for, write_config

websockets = pytest.importorskip("websockets")
from websockets.sync.client import connect as ws_connect  # noqa: E402

TOKEN = "s3cret-token-for-tests"
DEADLINE = 240  # generous: the tiny model on a busy 2-core machine


# ---- clients that speak the protocols ---------------------------------------------------------------
def as_message(kind: int, payload: bytes = b"") -> bytes:
    """AudioSocket: type byte, big-endian u16 payload length, payload."""
    return struct.pack(">BH", kind, len(payload)) + payload


def call_audio(bursts: int, seed: int = 0) -> np.ndarray:
    """16 kHz: `bursts` voice-like sounds of 0.8 s, each after 1.2 s of silence, then 0.6 s of silence."""
    from calm_core.testing import voiced

    parts = []
    for i in range(bursts):
        parts += [np.zeros(19200, np.float32), voiced(140.0 + 60 * i, 0.8, seed=seed + i)]
    parts.append(np.zeros(9600, np.float32))
    return np.concatenate(parts)


def pcm16(audio16k: np.ndarray, rate: int) -> bytes:
    audio = audio16k if rate == 16000 else soxr.resample(audio16k, 16000, rate)
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def read_until_closed(sock: socket.socket, timeout: float = 30) -> bytes:
    sock.settimeout(timeout)
    got = b""
    while chunk := sock.recv(4096):
        got += chunk
    return got


def audiosocket_call(port: int, call_id: uuid.UUID, audio16k: np.ndarray, kind: int = 0x10, rate: int = 8000) -> bytes:
    """Asterisk's side: UUID first, 20 ms signed-linear frames, hangup; returns what calmd sent back."""
    pcm = pcm16(audio16k, rate)
    frame = rate // 50 * 2
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(as_message(0x01, call_id.bytes))
        for i in range(0, len(pcm), frame):
            s.sendall(as_message(kind, pcm[i : i + frame]))
        s.sendall(as_message(0x00))
        return read_until_closed(s)


def mulaw_b64(audio16k: np.ndarray) -> list[str]:
    """20 ms base64 mu-law chunks at 8 kHz, as Twilio sends them."""
    from calm_core.audio.telephone import mulaw_encode

    pcm = (np.clip(soxr.resample(audio16k, 16000, 8000), -1, 1) * 32767).astype(np.int16)
    codes = mulaw_encode(pcm).astype(np.uint8).tobytes()
    return [base64.b64encode(codes[i : i + 160]).decode() for i in range(0, len(codes), 160)]


def twilio_messages(call_sid: str, tracks: dict[str, np.ndarray], params: dict | None = None) -> list[str]:
    stream_sid = "MZ" + call_sid[2:]
    start = {
        "accountSid": "AC" + "0" * 32, "streamSid": stream_sid, "callSid": call_sid, "tracks": list(tracks),
        "customParameters": params or {},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }  # fmt: skip
    out = [
        json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
        json.dumps({"event": "start", "sequenceNumber": "1", "start": start, "streamSid": stream_sid}),
    ]
    seq = 2
    chunks = {track: mulaw_b64(audio) for track, audio in tracks.items()}
    for i in range(max(len(c) for c in chunks.values())):
        for track, c in chunks.items():
            if i < len(c):
                media = {"track": track, "chunk": str(i + 1), "timestamp": str(20 * i), "payload": c[i]}
                out.append(json.dumps({"event": "media", "sequenceNumber": str(seq), "media": media,
                                       "streamSid": stream_sid}))  # fmt: skip
                seq += 1
    out.append(json.dumps({"event": "dtmf", "streamSid": stream_sid, "sequenceNumber": str(seq),
                           "dtmf": {"track": "inbound_track", "digit": "1"}}))  # fmt: skip
    out.append(json.dumps({"event": "stop", "sequenceNumber": str(seq + 1), "streamSid": stream_sid,
                           "stop": {"accountSid": "AC" + "0" * 32, "callSid": call_sid}}))  # fmt: skip
    return out


def twilio_call(port: int, messages: list[str], path: str = "/media", headers: dict | None = None) -> int | None:
    """Send every message, then wait for calmd to close; the close code it sent."""
    with ws_connect(f"ws://127.0.0.1:{port}{path}", open_timeout=30, additional_headers=headers) as ws:
        try:
            for m in messages:
                ws.send(m)
            ws.recv(timeout=60)
        except websockets.ConnectionClosed:
            pass
        return ws.close_code


# ---- calmd and what it publishes ----------------------------------------------------------------------
class Collector:
    """Every message calmd publishes, gathered by a thread (the SUB socket stays in that thread)."""

    def __init__(self, endpoint: str):
        self.events: list = []
        self.raw: list[dict] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(endpoint,), daemon=True)
        self.thread.start()

    def _run(self, endpoint: str) -> None:
        with Subscriber(endpoint, calls=[""]) as sub:
            while not self.stop.is_set():
                event = sub.receive(timeout_s=0.2)
                if event is not None:
                    with self.lock:
                        self.events.append(event)
                        self.raw.append(event.to_json())
                    if isinstance(event, StatusEvent):
                        self.ready.set()

    def calls(self, call: str) -> list[CallEvent]:
        with self.lock:
            return [e for e in self.events if isinstance(e, CallEvent) and e.call == call]

    def final(self, call: str, timeout: float = DEADLINE) -> CallEvent | None:
        return wait_for(lambda: next((e for e in self.calls(call) if e.final), None), timeout, 0.1)

    def last_status(self) -> StatusEvent | None:
        with self.lock:
            return next((e for e in reversed(self.events) if isinstance(e, StatusEvent)), None)


@pytest.fixture(scope="module")
def calmd(tmp_path_factory, tiny_model_dir, classifier_file):
    root = tmp_path_factory.mktemp("telephony")
    ports = {"audiosocket": free_port(), "twilio": free_port(), "audiofork": free_port()}
    listeners = f"""
[calls]
positive = "beep"

[listeners.audiosocket]
port = {ports["audiosocket"]}
max_calls = 30
connect_timeout_s = 5

[listeners.twilio]
port = {ports["twilio"]}
max_calls = 30
token = "{TOKEN}"

[listeners.audiofork]
port = {ports["audiofork"]}
mix = "stereo"
sample_rate = 16000
"""
    config = write_config(root / "calmd.toml", tiny_model_dir, classifier_file, listeners,
                          extra="[inference]\nqueue_size = 500\n")  # fmt: skip
    daemon = Daemon(config)
    collector = Collector(endpoint_of(config))

    def up() -> bool:
        listening = all(f"listening on 127.0.0.1:{p}" in daemon.log() for p in ports.values())
        return daemon.proc.poll() is not None or (collector.ready.is_set() and listening)

    assert wait_for(up, DEADLINE, 0.2)
    assert daemon.proc.poll() is None, daemon.log()
    yield daemon, collector, ports, config
    collector.stop.set()
    collector.thread.join(5)
    if daemon.proc.poll() is None:
        daemon.stop()
    daemon.log_file.close()


def validate(collector: Collector) -> None:
    schemas = {"calm.call/1": schema("call"), "calm.label/1": schema("label"), "calm.status/3": schema("status")}
    with collector.lock:
        raw = list(collector.raw)
    for message in raw:
        jsonschema.validate(message, schemas[message["schema"]])


def metric(config: Path, line_start: str) -> float:
    port = tomllib.loads(config.read_text())["metrics"]["port"]
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(line_start))


# ---- AudioSocket --------------------------------------------------------------------------------------
GOLDEN_UUID = uuid.UUID("4c7d8f0e-2b1a-4f3e-9d6c-0a1b2c3d4e5f")
# What Asterisk's AudioSocket() writes for a 20 ms call: the UUID message, one 320-byte slin frame of silence
# (8 kHz), the DTMF digit "1", and a hangup.
GOLDEN = bytes.fromhex(
    "010010" "4c7d8f0e2b1a4f3e9d6c0a1b2c3d4e5f"
    "100140" + "00" * 320 +
    "03000131"
    "000000"
)  # fmt: skip


def test_audiosocket_golden_byte_stream_is_one_call_with_a_final_verdict(calmd) -> None:
    daemon, collector, ports, _ = calmd
    assert as_message(0x01, GOLDEN_UUID.bytes) + as_message(0x10, bytes(320)) == GOLDEN[: 19 + 323]
    with socket.create_connection(("127.0.0.1", ports["audiosocket"]), timeout=30) as s:
        s.sendall(GOLDEN)
        back = read_until_closed(s)
    assert back == b"\x00\x00\x00"  # calmd only ever asks for a hangup
    final = collector.final(str(GOLDEN_UUID))
    assert final is not None, daemon.log()
    assert final.protocol == "audiosocket" and final.error is None
    assert [(leg.leg, leg.stream, leg.audio_s) for leg in final.legs] == [("in", str(GOLDEN_UUID), 0.02)]
    assert final.segments == 0 and final.score is None and final.decision == "none"
    assert final.positive == "beep" and final.threshold == 0.0 and final.threshold_source == "default"


@pytest.mark.parametrize("kind,rate", [(0x10, 8000), (0x11, 12000), (0x12, 16000), (0x13, 24000), (0x14, 32000),
                                       (0x15, 44100), (0x16, 48000), (0x17, 96000), (0x18, 192000)])  # fmt: skip
def test_audiosocket_call_at_each_sample_rate(calmd, kind: int, rate: int) -> None:
    daemon, collector, ports, _ = calmd
    call = uuid.uuid4()
    audio = call_audio(1, seed=kind)
    audiosocket_call(ports["audiosocket"], call, audio, kind, rate)
    final = collector.final(str(call))
    assert final is not None, daemon.log()
    assert final.error is None and final.segments == 1, final
    assert final.legs[0].audio_s == pytest.approx(audio.size / 16000, abs=0.03)
    assert final.score is not None and final.decision in ("positive", "negative")
    running = [e for e in collector.calls(str(call)) if not e.final]
    assert len(running) == 1 and running[0].segments == 1 and running[0].seq == 0 and final.seq == 1


def test_twenty_concurrent_calls_get_their_own_verdicts(calmd) -> None:
    daemon, collector, ports, _ = calmd
    calls = {uuid.uuid4(): 1 + i % 3 for i in range(12)}  # AudioSocket calls with 1-3 sounds each
    sids = {f"CA{uuid.uuid4().hex}": 1 + i % 2 for i in range(8)}  # Twilio calls, two tracks each
    threads = [threading.Thread(target=audiosocket_call, args=(ports["audiosocket"], c, call_audio(n, seed=n)))
               for c, n in calls.items()]  # fmt: skip
    threads += [
        threading.Thread(target=twilio_call, args=(ports["twilio"],
                         twilio_messages(sid, {"inbound": call_audio(n), "outbound": call_audio(3)},
                                         {"token": TOKEN})))
        for sid, n in sids.items()
    ]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    for call, n in calls.items():
        final = collector.final(str(call))
        assert final is not None, daemon.log()
        assert final.segments == n and final.legs[0].segments == n and final.error is None, final
        assert final.legs[0].audio_s == pytest.approx(call_audio(n).size / 16000, abs=0.03)
    for sid, n in sids.items():
        final = collector.final(sid)
        assert final is not None, daemon.log()
        legs = {leg.leg: leg for leg in final.legs}
        assert set(legs) == {"inbound", "outbound"} and legs["inbound"].scored and not legs["outbound"].scored
        assert legs["inbound"].segments == n and legs["outbound"].segments == 3
        assert final.segments == n  # only the caller's leg counts
        assert legs["inbound"].stream == f"{sid}.inbound"
    validate(collector)


# ---- bad input ----------------------------------------------------------------------------------------
def raw_audiosocket(port: int, data: bytes, close_early: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        if close_early:
            return b""
        return read_until_closed(s)


AS_BAD = [
    ("missing_uuid", lambda u: as_message(0x10, bytes(320)), "the first message must be the UUID"),
    ("short_uuid", lambda u: as_message(0x01, u.bytes[:8]), "UUID message of 8 bytes"),
    ("odd_length", lambda u: as_message(0x01, u.bytes) + as_message(0x10, bytes(321)), "positive even number"),
    ("unknown_type", lambda u: as_message(0x01, u.bytes) + as_message(0x42, b"xx"), "unknown message type 0x42"),
    ("oversized", lambda u: as_message(0x01, u.bytes) + as_message(0x10, bytes(20000)), "more than max_frame_ms"),
    ("dtmf_length", lambda u: as_message(0x01, u.bytes) + as_message(0x03, b"12"), "DTMF message of 2 bytes"),
    ("asterisk_error", lambda u: as_message(0x01, u.bytes) + as_message(0xFF, b"\x02"), "0x02, frame forwarding"),
]


@pytest.mark.parametrize("name,build,expected", AS_BAD, ids=[b[0] for b in AS_BAD])
def test_audiosocket_bad_input_closes_only_that_call(calmd, name, build, expected) -> None:
    daemon, collector, ports, config = calmd
    good, bad = uuid.uuid4(), uuid.uuid4()
    # a good call is connected throughout
    s = socket.create_connection(("127.0.0.1", ports["audiosocket"]), timeout=30)
    s.sendall(as_message(0x01, good.bytes))
    pcm = pcm16(call_audio(1), 8000)
    s.sendall(b"".join(as_message(0x10, pcm[i : i + 320]) for i in range(0, len(pcm) // 2, 320)))
    assert raw_audiosocket(ports["audiosocket"], build(bad)) == b"\x00\x00\x00"
    assert wait_for(lambda: expected in daemon.log(), 30), daemon.log()
    s.sendall(b"".join(as_message(0x10, pcm[i : i + 320]) for i in range(len(pcm) // 2 // 320 * 320, len(pcm), 320)))
    s.sendall(as_message(0x00))
    read_until_closed(s)
    s.close()
    final = collector.final(str(good))
    assert final is not None and final.error is None and final.segments == 1, daemon.log()
    if name not in ("missing_uuid", "short_uuid"):  # the call was identified: it ends failed, with the reason
        bad_final = collector.final(str(bad))
        assert bad_final is not None and expected in (bad_final.error or ""), bad_final
        status = wait_for(lambda: (st := collector.last_status()) and str(bad) in st.streams and st, 30)
        assert status.streams[str(bad)].state == "failed" and expected in status.streams[str(bad)].last_error
    assert daemon.proc.poll() is None
    assert metric(config, 'calm_call_errors_total{protocol="audiosocket"') >= 1


def test_audiosocket_client_vanishing_mid_frame_is_a_hangup_with_an_error(calmd) -> None:
    daemon, collector, ports, _ = calmd
    call = uuid.uuid4()
    pcm = pcm16(call_audio(1), 8000)
    data = as_message(0x01, call.bytes) + b"".join(as_message(0x10, pcm[i : i + 320]) for i in range(0, len(pcm), 320))
    raw_audiosocket(ports["audiosocket"], data + as_message(0x10, bytes(320))[:100], close_early=True)
    final = collector.final(str(call))
    assert final is not None, daemon.log()
    assert "connection closed inside a type 0x10 message (97 of 320 payload bytes)" in final.error
    assert final.segments == 1  # the audio before the break is still judged


def test_audiosocket_abrupt_close_without_hangup_is_a_clean_end(calmd) -> None:
    daemon, collector, ports, _ = calmd
    call = uuid.uuid4()
    pcm = pcm16(call_audio(1), 8000)
    data = as_message(0x01, call.bytes) + b"".join(as_message(0x10, pcm[i : i + 320]) for i in range(0, len(pcm), 320))
    raw_audiosocket(ports["audiosocket"], data, close_early=True)
    final = collector.final(str(call))
    assert final is not None and final.error is None and final.segments == 1, daemon.log()


# ---- Twilio -------------------------------------------------------------------------------------------
def test_twilio_token_at_the_handshake_or_in_custom_parameters(calmd) -> None:
    daemon, collector, ports, config = calmd
    sid = f"CA{uuid.uuid4().hex}"
    code = twilio_call(ports["twilio"], twilio_messages(sid, {"inbound": call_audio(1)}), path=f"/media?token={TOKEN}")
    assert code == 1000
    final = collector.final(sid)
    assert final is not None and final.segments == 1 and [leg.leg for leg in final.legs] == ["inbound"]
    with pytest.raises(websockets.InvalidStatus) as refused:
        ws_connect(f"ws://127.0.0.1:{ports['twilio']}/media?token=wrong", open_timeout=30)
    assert refused.value.response.status_code == 401
    wrong = twilio_messages(f"CA{uuid.uuid4().hex}", {"inbound": call_audio(1)}, {"token": "wrong"})
    assert twilio_call(ports["twilio"], wrong) == 1008
    assert metric(config, 'calm_calls_refused_total{protocol="twilio",reason="token"}') >= 2
    assert "twilio: refused a connection: wrong token" in daemon.log()


TW_BAD = [
    ("not_json", lambda m: [m[0], m[1], "{not json"], "not JSON"),
    ("unknown_event", lambda m: [m[0], m[1], json.dumps({"event": "dance"})], "unknown event 'dance'"),
    ("broken_base64", lambda m: [m[0], m[1], m[2].replace('"payload": "', '"payload": "@@')], "not valid base64"),
    (
        "unannounced_track",
        lambda m: [m[0], m[1], m[2].replace('"track": "inbound"', '"track": "outbound"')],
        "which start did not announce",
    ),
    ("media_before_start", lambda m: [m[0], m[2]], "expected the start message, got 'media'"),
]


@pytest.mark.parametrize("name,mangle,expected", TW_BAD, ids=[b[0] for b in TW_BAD])
def test_twilio_bad_input_closes_only_that_call(calmd, name, mangle, expected) -> None:
    daemon, collector, ports, _ = calmd
    good, bad = f"CA{uuid.uuid4().hex}", f"CA{uuid.uuid4().hex}"
    good_messages = twilio_messages(good, {"inbound": call_audio(1)}, {"token": TOKEN})
    with ws_connect(f"ws://127.0.0.1:{ports['twilio']}/media", open_timeout=30) as ws:
        for m in good_messages[: len(good_messages) // 2]:
            ws.send(m)
        bad_messages = mangle(twilio_messages(bad, {"inbound": call_audio(1)}, {"token": TOKEN}))
        assert twilio_call(ports["twilio"], bad_messages) == 1007
        assert wait_for(lambda: expected in daemon.log(), 30), daemon.log()
        for m in good_messages[len(good_messages) // 2 :]:
            ws.send(m)
        with pytest.raises(websockets.ConnectionClosedOK):
            ws.recv(timeout=60)
    final = collector.final(good)
    assert final is not None and final.error is None and final.segments == 1, daemon.log()
    assert daemon.proc.poll() is None


def test_twilio_client_vanishing_is_a_hangup(calmd) -> None:
    daemon, collector, ports, _ = calmd
    sid = f"CA{uuid.uuid4().hex}"
    messages = twilio_messages(sid, {"inbound": call_audio(1)}, {"token": TOKEN})
    ws = ws_connect(f"ws://127.0.0.1:{ports['twilio']}/media", open_timeout=30)
    for m in messages[:-2]:  # no stop
        ws.send(m)
    ws.socket.shutdown(socket.SHUT_RDWR)  # gone without a close frame
    ws.socket.close()
    final = collector.final(sid)
    assert final is not None and final.error is None and final.segments == 1, daemon.log()


# ---- FreeSWITCH mod_audio_fork -------------------------------------------------------------------------
def test_audiofork_stereo_legs_from_metadata(calmd) -> None:
    daemon, collector, ports, _ = calmd
    call = str(uuid.uuid4())
    caller, callee = call_audio(2), call_audio(1)
    callee = np.concatenate([callee, np.zeros(caller.size - callee.size, np.float32)])
    left = (np.clip(caller, -1, 1) * 32767).astype("<i2")
    right = (np.clip(callee, -1, 1) * 32767).astype("<i2")
    interleaved = np.stack([left, right], axis=1).reshape(-1).tobytes()
    with ws_connect(f"ws://127.0.0.1:{ports['audiofork']}/fork", subprotocols=["audio.drachtio.org"],
                    open_timeout=30) as ws:  # fmt: skip
        assert ws.subprotocol == "audio.drachtio.org"
        ws.send(json.dumps({"uuid": call, "from": "2061236666"}))
        for i in range(0, len(interleaved), 640 * 2):  # 20 ms of two channels at 16 kHz
            ws.send(interleaved[i : i + 1280])
    final = collector.final(call)
    assert final is not None, daemon.log()
    legs = {leg.leg: leg for leg in final.legs}
    assert legs["caller"].segments == 2 and legs["callee"].segments == 1 and final.segments == 2
    assert legs["caller"].audio_s == pytest.approx(caller.size / 16000, abs=0.01)


def test_busy_listener_refuses_further_calls(tmp_path: Path, tiny_model_dir, classifier_file, daemon_factory) -> None:
    port = free_port()
    listener = f'[calls]\npositive = "beep"\n[listeners.audiosocket]\nport = {port}\nmax_calls = 1\n'
    config = write_config(tmp_path / "calmd.toml", tiny_model_dir, classifier_file, listener)
    daemon = daemon_factory(config)
    assert wait_for(lambda: f"listening on 127.0.0.1:{port}" in daemon.log() or daemon.proc.poll() is not None,
                    DEADLINE), daemon.log()  # fmt: skip
    first = socket.create_connection(("127.0.0.1", port), timeout=30)
    first.sendall(as_message(0x01, uuid.uuid4().bytes))
    assert wait_for(lambda: "call" in daemon.log() and "connected (in)" in daemon.log(), 30), daemon.log()
    assert raw_audiosocket(port, as_message(0x01, uuid.uuid4().bytes)) == b"\x00\x00\x00"
    assert wait_for(lambda: "refused a connection" in daemon.log(), 30)
    first.sendall(as_message(0x00))
    read_until_closed(first)
    first.close()
    code, log = daemon.stop()
    assert code == 0, log
    assert "1 calls in progress (max_calls)" in log
