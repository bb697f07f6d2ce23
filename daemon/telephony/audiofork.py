"""FreeSWITCH mod_audio_fork (drachtio-freeswitch-modules): `uuid_audio_fork <uuid> start <ws-url>
<mono|mixed|stereo> <8k|16k> [metadata]` opens a WebSocket (subprotocol audio.drachtio.org by default), sends the
metadata as its first text message, then binary messages of 16-bit little-endian PCM: one channel for mono
(the caller) and mixed (caller and callee summed), two interleaved for stereo (caller left, callee right).

The stream itself does not say which mix or rate it carries: they come from the listener's config, or from
`?mix=` and `?rate=` (8000|16000, or 8k|16k) in the URL. The call id comes from the metadata's JSON keys
uuid/callid/call_id/callSid, else `?call=` in the URL, else a counter. A token comes as `?token=` or as the
password of HTTP Basic auth (mod_audio_fork's MOD_AUDIO_BASIC_AUTH_USERNAME/PASSWORD channel variables).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection

from .base import BadInput, Call, s16le_to_float
from .config import AudioForkSection
from .websocket import WebSocketListener

MIXES = {"mono": ("caller",), "mixed": ("mixed",), "stereo": ("caller", "callee")}
RATES = {"8000": 8000, "8k": 8000, "16000": 16000, "16k": 16000}
ID_KEYS = ("uuid", "callid", "call_id", "callSid", "callId")


class AudioForkListener(WebSocketListener):
    protocol = "audiofork"
    legs_scored_by_default = ("caller", "mixed")
    cfg: AudioForkSection

    def __init__(self, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.counter = itertools.count(1)

    def _format(self, ws: ServerConnection) -> tuple[str, int, dict[str, list[str]]]:
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        mix = query.get("mix", [self.cfg.mix])[0]
        rate = query.get("rate", [str(self.cfg.sample_rate)])[0]
        if mix not in MIXES:
            raise BadInput(f"?mix={mix!r} must be one of {', '.join(MIXES)}", "bad_format")
        if rate not in RATES:
            raise BadInput(f"?rate={rate!r} must be 8000 or 16000 (8k, 16k)", "bad_format")
        return mix, RATES[rate], query

    def _call_id(self, metadata: str, query: dict[str, list[str]]) -> str:
        try:
            parsed = json.loads(metadata) if metadata.strip() else None
        except json.JSONDecodeError:
            parsed = None  # metadata is free text: fine
        if isinstance(parsed, dict):
            for key in ID_KEYS:
                if isinstance(parsed.get(key), str) and parsed[key]:
                    return str(parsed[key])
        if query.get("call"):
            return query["call"][0]
        return f"fork-{next(self.counter)}"

    async def _session(self, ws: ServerConnection) -> AsyncIterator[Call]:  # type: ignore[override]
        mix, rate, query = self._format(ws)
        first = await self.receive(ws, self.cfg.connect_timeout_s)
        if isinstance(first, bytes):
            raise BadInput("the first message must be the text metadata, got binary audio", "missing_metadata")
        legs = MIXES[mix]
        call = self.open_call(self._call_id(first, query), {leg: rate for leg in legs})
        yield call
        frame = 2 * len(legs)
        while True:
            message = await self.receive(ws, self.cfg.idle_timeout_s)
            if isinstance(message, str):
                continue  # mod_audio_fork sends no further text; tolerate it
            if not message or len(message) % frame:
                raise BadInput(f"an audio message of {len(message)} bytes is not whole {frame}-byte frames "
                               f"({mix})", "bad_length")  # fmt: skip
            ms = len(message) / frame / rate * 1000
            if ms > self.cfg.max_frame_ms:
                raise BadInput(f"an audio message of {len(message)} bytes is {ms:.0f} ms, more than "
                               f"max_frame_ms ({self.cfg.max_frame_ms})", "oversized")  # fmt: skip
            pcm = s16le_to_float(message, len(legs))
            for i, leg in enumerate(legs):
                call.legs[leg].feed(pcm[:, i].copy())
