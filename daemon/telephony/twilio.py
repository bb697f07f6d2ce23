"""Twilio Media Streams: a WebSocket server receiving JSON text messages (twilio.com/docs/voice/media-streams/
websocket-messages):

  {"event": "connected", "protocol": "Call", "version": "1.0.0"}
  {"event": "start", "sequenceNumber": "1", "streamSid": "MZ...", "start": {"streamSid", "accountSid",
   "callSid", "tracks": ["inbound", "outbound"], "customParameters": {...},
   "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
  {"event": "media", "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": "<base64 mu-law>"}}
  {"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "1"}}   {"event": "mark", "mark": {"name": ...}}
  {"event": "stop", "stop": {"accountSid", "callSid"}}

Each track is a leg of the call (inbound: the caller as Twilio hears them; outbound: what Twilio plays or
bridges to them). Twilio's <Stream url> takes no query string, so a token is accepted either at the handshake
(?token=, Authorization: Bearer) or as <Parameter name="token"> (start.customParameters.token).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from .base import BadInput, Call, mulaw_to_float
from .config import TwilioSection
from .websocket import WebSocketListener, token_matches

RATE = 8000
TRACKS = ("inbound", "outbound")
KNOWN_EVENTS = ("connected", "start", "media", "dtmf", "mark", "stop")


def _object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadInput(f"{what} must be a JSON object, got {type(data).__name__}", "bad_message")
    return data


def twilio_signature(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """X-Twilio-Signature as Twilio computes it: base64 of HMAC-SHA1, keyed with the Auth Token, of the full URL
    followed by every POST parameter's name and value, sorted by name (a WebSocket handshake has none)."""
    given = params or {}
    data = url + "".join(k + given[k] for k in sorted(given))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


class TwilioListener(WebSocketListener):
    protocol = "twilio"
    legs_scored_by_default = ("inbound",)
    token_later = True
    cfg: TwilioSection

    def _handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        """Twilio's own signature first, when an Auth Token is configured; then the busy and token checks."""
        if self.cfg.auth_token is not None:
            assert self.cfg.public_url is not None  # the config refuses one without the other
            expected = twilio_signature(self.cfg.auth_token, self.cfg.public_url + request.path)
            offered = request.headers.get("X-Twilio-Signature")
            if offered is None or not hmac.compare_digest(expected.encode(), offered.encode()):
                which = "a wrong" if offered else "no"
                self.refuse("signature", f"{which} X-Twilio-Signature from {connection.remote_address}")
                return connection.respond(HTTPStatus.FORBIDDEN, "calmd: X-Twilio-Signature does not verify\n")
        return super()._handshake(connection, request)

    async def _message(self, ws: ServerConnection, timeout: float) -> dict[str, Any]:
        raw = await self.receive(ws, timeout)
        if isinstance(raw, bytes):
            raise BadInput(f"a binary message of {len(raw)} bytes; Twilio sends JSON text", "binary")
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise BadInput(f"a message that is not JSON ({e.msg} at {e.pos}): {raw[:60]!r}", "bad_json") from None
        data = _object(data, "a message")
        event = data.get("event")
        if event not in KNOWN_EVENTS:
            raise BadInput(f"unknown event {event!r}; expected one of {', '.join(KNOWN_EVENTS)}", "bad_event")
        return data

    async def _session(self, ws: ServerConnection) -> AsyncIterator[Call]:  # type: ignore[override]
        data = await self._message(ws, self.cfg.connect_timeout_s)
        if data["event"] == "connected":
            data = await self._message(ws, self.cfg.connect_timeout_s)
        if data["event"] != "start":
            raise BadInput(f"expected the start message, got {data['event']!r}", "missing_start")
        call = self._start(ws, _object(data.get("start"), "start"))
        yield call
        while True:
            data = await self._message(ws, self.cfg.idle_timeout_s)
            event = data["event"]
            if event == "media":
                self._media(call, _object(data.get("media"), "media"))
            elif event == "stop":
                return
            elif event in ("connected", "start"):
                raise BadInput(f"a second {event!r} message", "bad_event")
            # dtmf and mark carry nothing calmd classifies

    def _start(self, ws: ServerConnection, start: dict[str, Any]) -> Call:
        if not self.handshake_authorised(ws):
            params = start.get("customParameters") or {}
            if not isinstance(params, dict) or not token_matches(self.cfg.token or "", params.get("token")):
                raise BadInput("wrong or missing token (customParameters.token)", "token")
        call_sid = start.get("callSid")
        if not isinstance(call_sid, str) or not call_sid:
            raise BadInput("start.callSid is missing", "bad_start")
        tracks = start.get("tracks", ["inbound"])
        if not isinstance(tracks, list) or not tracks or any(t not in TRACKS for t in tracks):
            raise BadInput(f"start.tracks {tracks!r} must list 'inbound' and/or 'outbound'", "bad_start")
        fmt = _object(start.get("mediaFormat", {}), "start.mediaFormat")
        got = (fmt.get("encoding", "audio/x-mulaw"), fmt.get("sampleRate", RATE), fmt.get("channels", 1))
        if got != ("audio/x-mulaw", RATE, 1):
            raise BadInput(f"media format {got} is not audio/x-mulaw at 8000 Hz mono", "bad_format")
        return self.open_call(call_sid, {t: RATE for t in dict.fromkeys(tracks)})

    def _media(self, call: Call, media: dict[str, Any]) -> None:
        track = media.get("track", "inbound")
        leg = call.legs.get(track) if isinstance(track, str) else None
        if leg is None:
            raise BadInput(f"media for track {track!r}, which start did not announce", "bad_track")
        payload = media.get("payload")
        if not isinstance(payload, str):
            raise BadInput("media.payload is missing", "bad_media")
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise BadInput(f"media.payload is not valid base64 ({e})", "bad_base64") from None
        ms = len(audio) / RATE * 1000
        if ms > self.cfg.max_frame_ms:
            raise BadInput(f"a media payload of {len(audio)} bytes is {ms:.0f} ms, more than max_frame_ms "
                           f"({self.cfg.max_frame_ms})", "oversized")  # fmt: skip
        leg.feed(mulaw_to_float(audio))
