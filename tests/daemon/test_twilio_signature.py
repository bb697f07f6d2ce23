"""Twilio's request signature (X-Twilio-Signature) on the Media Streams WebSocket handshake: the algorithm
against Twilio's documented example, and calmd refusing what does not verify, over a real socket."""

from __future__ import annotations

import uuid

import pytest

from calmd.config import parse_config
from calmd.telephony.twilio import twilio_signature

from .conftest import Daemon, endpoint_of, free_port, wait_for, write_config
from .test_telephony import Collector, call_audio, metric, twilio_call, twilio_messages

websockets = pytest.importorskip("websockets")
from websockets.sync.client import connect as ws_connect  # noqa: E402

AUTH_TOKEN = "0123456789abcdef0123456789abcdef"
PUBLIC = "wss://calm.example.com"


def test_signature_is_twilios_documented_example() -> None:
    # twilio.com/docs/usage/security#validating-requests: this URL, these POST parameters, Auth Token 12345
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234", "From": "+12349013030",
              "To": "+18005551212"}  # fmt: skip
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio_signature("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert twilio_signature("12345", url, params) != twilio_signature("12346", url, params)


def test_an_auth_token_needs_the_public_url() -> None:
    base = {"model": {"path": "m", "classifier": "c.calm.safetensors"}}
    with pytest.raises(ValueError, match="auth_token needs public_url"):
        parse_config(base | {"listeners": {"twilio": {"port": 0, "auth_token": AUTH_TOKEN}}})
    with pytest.raises(ValueError, match="expected wss://host"):
        parse_config(base | {"listeners": {"twilio": {"port": 0, "auth_token": AUTH_TOKEN,
                                                      "public_url": "wss://calm.example.com/media"}}})  # fmt: skip


def test_calmd_accepts_a_signed_handshake_and_refuses_others(tmp_path, tiny_model_dir, classifier_file) -> None:
    port = free_port()
    listeners = f'[calls]\npositive = "beep"\n\n[listeners.twilio]\nport = {port}\nauth_token = "{AUTH_TOKEN}"\n'
    listeners += f'public_url = "{PUBLIC}"\n'
    config = write_config(tmp_path / "calmd.toml", tiny_model_dir, classifier_file, listeners)
    daemon = Daemon(config)
    collector = Collector(endpoint_of(config))
    try:
        listening = f"listening on 127.0.0.1:{port}"
        up = wait_for(
            lambda: daemon.proc.poll() is not None or (collector.ready.is_set() and listening in daemon.log()), 240
        )
        assert up and daemon.proc.poll() is None, daemon.log()
        sid = f"CA{uuid.uuid4().hex}"
        signed = {"X-Twilio-Signature": twilio_signature(AUTH_TOKEN, f"{PUBLIC}/media")}
        assert twilio_call(port, twilio_messages(sid, {"inbound": call_audio(1)}), "/media", signed) == 1000
        final = wait_for(lambda: next((e for e in collector.calls(sid) if e.final), None), 240, 0.1)
        assert final is not None and final.error is None and final.segments == 1, daemon.log()
        for headers in ({}, {"X-Twilio-Signature": twilio_signature(AUTH_TOKEN, f"{PUBLIC}/other")},
                        {"X-Twilio-Signature": twilio_signature("f" * 32, f"{PUBLIC}/media")}):  # fmt: skip
            with pytest.raises(websockets.InvalidStatus) as refused:
                ws_connect(f"ws://127.0.0.1:{port}/media", open_timeout=30, additional_headers=headers)
            assert refused.value.response.status_code == 403
        assert metric(config, 'calm_calls_refused_total{protocol="twilio",reason="signature"}') == 3
        assert "twilio: refused a connection: no X-Twilio-Signature" in daemon.log()
    finally:
        collector.stop.set()
        collector.thread.join(5)
        daemon.stop()
        daemon.log_file.close()
