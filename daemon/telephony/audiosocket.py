"""Asterisk AudioSocket over TCP: one connection is one call, one leg ("in").

Every message is a 3-byte header, a type byte and a big-endian u16 payload length, then the payload
(asterisk res/res_audiosocket.c; types 0x11..0x18 from asterisk pull request #1492, Asterisk 20.17/22.7/23):
  0x00 hangup (socket closure does as well)   0x01 the call's UUID, 16 bytes, always the first message
  0x03 DTMF, 1 ASCII byte                      0x10 signed linear 16-bit little-endian mono, 8 kHz
  0x11..0x18 the same at 12, 16, 24, 32, 44.1, 48, 96, 192 kHz
  0xff error; optional payload, Asterisk's codes 0x01 hangup, 0x02 frame forwarding, 0x04 memory
Asterisk sends 20 ms frames (320 bytes at 8 kHz). calmd only listens: it never sends audio back, and on
bad input or when busy it sends a hangup (0x00 0x00 0x00) and closes.
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np

from .base import BadInput, Call, Listener, log, s16le_to_float

KIND_HANGUP = 0x00
KIND_UUID = 0x01
KIND_DTMF = 0x03
KIND_ERROR = 0xFF
SLIN_RATES = {
    0x10: 8000, 0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000,
    0x15: 44100, 0x16: 48000, 0x17: 96000, 0x18: 192000,
}  # fmt: skip
ERROR_CODES = {0x01: "hangup", 0x02: "frame forwarding", 0x04: "memory"}
HANGUP = bytes([KIND_HANGUP, 0, 0])


def encode(kind: int, payload: bytes = b"") -> bytes:
    """One AudioSocket message (what Asterisk writes)."""
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


async def read_message(reader: asyncio.StreamReader) -> tuple[int, bytes] | None:
    """The next message, or None on a clean end of stream at a message boundary. BadInput when the
    connection ends inside a message."""
    try:
        header = await reader.readexactly(3)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        got = len(e.partial)
        raise BadInput(f"connection closed inside a message header ({got} of 3 bytes)", "truncated") from None
    kind, length = header[0], int.from_bytes(header[1:3], "big")
    try:
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError as e:
        raise BadInput(
            f"connection closed inside a type 0x{kind:02x} message ({len(e.partial)} of {length} payload bytes)",
            "truncated",
        ) from None
    return kind, payload


class AudioSocketListener(Listener):
    protocol = "audiosocket"
    legs_scored_by_default = ("in",)

    async def _serve(self) -> asyncio.base_events.Server:
        return await asyncio.start_server(self.track(self._connection), self.cfg.host, self.cfg.port)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        call: Call | None = None
        try:
            if self.busy():
                self.refuse("busy", f"{peer}: {len(self.calls)} calls in progress (max_calls)")
                return
            self.connecting += 1
            try:
                call = await self._identify(reader)
            finally:
                self.connecting -= 1
            await self._audio(reader, call)
            self.end_call(call, None)
        except BadInput as e:
            if call is None:
                self.connection_error(e)
            else:
                self.end_call(call, e)
        except (ConnectionError, OSError) as e:  # reset by the peer: a hangup
            if call is not None:
                log.info("audiosocket: call %s: connection lost (%s); treated as a hangup", call.call_id, e)
                self.end_call(call, None)
        except asyncio.CancelledError:  # calmd is stopping: hang up cleanly
            if call is not None:
                self.end_call(call, None)
        finally:
            await _close(writer)

    async def _identify(self, reader: asyncio.StreamReader) -> Call:
        try:
            first = await asyncio.wait_for(read_message(reader), self.cfg.connect_timeout_s)
        except asyncio.TimeoutError:
            raise BadInput(f"no UUID message within {self.cfg.connect_timeout_s:.0f} s", "missing_uuid") from None
        if first is None:
            raise BadInput("connection closed before the UUID message", "missing_uuid")
        kind, payload = first
        if kind != KIND_UUID:
            raise BadInput(f"the first message must be the UUID (type 0x01), got type 0x{kind:02x}", "missing_uuid")
        if len(payload) != 16:
            raise BadInput(f"UUID message of {len(payload)} bytes; it must be 16", "bad_length")
        return self.open_call(str(uuid.UUID(bytes=payload)), {"in": 0})

    async def _audio(self, reader: asyncio.StreamReader, call: Call) -> None:
        """Read until hangup or end of stream; returns normally for both."""
        leg = call.legs["in"]
        rate: int | None = None
        while True:
            try:
                message = await asyncio.wait_for(read_message(reader), self.cfg.idle_timeout_s)
            except asyncio.TimeoutError:
                raise BadInput(f"nothing received for {self.cfg.idle_timeout_s:.0f} s", "idle") from None
            if message is None or message[0] == KIND_HANGUP:
                return
            kind, payload = message
            if kind in SLIN_RATES:
                if rate is None:
                    rate = SLIN_RATES[kind]
                    leg.set_rate(rate)
                elif SLIN_RATES[kind] != rate:
                    raise BadInput(f"audio changed from {rate} Hz to {SLIN_RATES[kind]} Hz mid-call", "bad_rate")
                leg.feed(self._pcm(kind, payload, rate))
            elif kind == KIND_DTMF:
                if len(payload) != 1:
                    raise BadInput(f"DTMF message of {len(payload)} bytes; it must be 1", "bad_length")
            elif kind == KIND_ERROR:
                code = payload[0] if payload else None
                name = ERROR_CODES.get(code, "application-specific") if code is not None else "no code"
                text = f"0x{code:02x}, {name}" if code is not None else name
                raise BadInput(f"Asterisk reported an error ({text})", "peer_error")
            elif kind == KIND_UUID:
                raise BadInput("a second UUID message", "bad_type")
            else:
                raise BadInput(f"unknown message type 0x{kind:02x} ({len(payload)} payload bytes)", "bad_type")

    def _pcm(self, kind: int, payload: bytes, rate: int) -> np.ndarray:
        if not payload or len(payload) % 2:
            raise BadInput(f"audio message (type 0x{kind:02x}) of {len(payload)} bytes; it must be a "
                           "positive even number", "bad_length")  # fmt: skip
        ms = len(payload) / 2 / rate * 1000
        if ms > self.cfg.max_frame_ms:
            raise BadInput(f"audio message of {len(payload)} bytes is {ms:.0f} ms at {rate} Hz, more than "
                           f"max_frame_ms ({self.cfg.max_frame_ms})", "oversized")  # fmt: skip
        return s16le_to_float(payload)[:, 0]


async def _close(writer: asyncio.StreamWriter) -> None:
    """Ask Asterisk to hang up (harmless after its own hangup) and close."""
    try:
        writer.write(HANGUP)
        await asyncio.wait_for(writer.drain(), 1.0)
    except (ConnectionError, OSError, asyncio.TimeoutError):
        pass  # the peer is already gone
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except (ConnectionError, OSError, asyncio.TimeoutError):
        pass
