"""The WebSocket side shared by the Twilio and audio-fork listeners: the server (the `websockets` library),
the busy and token checks at the opening handshake, and reading with timeouts."""

from __future__ import annotations

import asyncio
import base64
import hmac
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .base import BadInput, Call, Listener, log
from .config import _WebSocketSection

MAX_MESSAGE_BYTES = 1 << 20  # a longer WebSocket message closes the connection (1009) as bad input

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003  # e.g. a binary frame where only text is allowed
CLOSE_INVALID = 1007  # not JSON, bad base64, not what the protocol says
CLOSE_POLICY = 1008  # wrong token
CLOSE_TRY_LATER = 1013  # busy


def offered_token(request: Request) -> str | None:
    """A token from `?token=`, `Authorization: Bearer <token>` or the password of HTTP Basic auth."""
    query = parse_qs(urlsplit(request.path).query)
    if query.get("token"):
        return query["token"][0]
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    if scheme.lower() == "basic" and value:
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    return None


def token_matches(expected: str, offered: object) -> bool:
    return isinstance(offered, str) and hmac.compare_digest(expected.encode(), offered.encode())


class WebSocketListener(Listener):
    cfg: _WebSocketSection
    # Twilio cannot put a token in its URL (no query strings): its token may come in start.customParameters
    token_later = False

    async def _serve(self) -> Any:
        return await serve(
            self.track(self._connection), self.cfg.host, self.cfg.port,
            process_request=self._handshake, max_size=MAX_MESSAGE_BYTES, ping_interval=None,
            select_subprotocol=self._subprotocol, logger=log,
        )  # fmt: skip

    def _subprotocol(self, connection: ServerConnection, offered: Any) -> Any:
        return offered[0] if offered else None  # mod_audio_fork offers one (audio.drachtio.org by default)

    def _handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.busy():
            self.refuse("busy", f"{len(self.calls)} calls in progress (max_calls)")
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "calmd: too many calls\n")
        if self.cfg.token is None:
            return None
        offered = offered_token(request)
        if offered is None and self.token_later:
            return None  # checked at the first message that can carry it
        if not token_matches(self.cfg.token, offered):
            which = "wrong" if offered else "no"
            self.refuse("token", f"{which} token at the handshake from {connection.remote_address}")
            return connection.respond(HTTPStatus.UNAUTHORIZED, "calmd: a valid token is required\n")
        return None

    def handshake_authorised(self, ws: ServerConnection) -> bool:
        """True when no token is needed or the handshake carried the right one."""
        return self.cfg.token is None or (
            ws.request is not None and token_matches(self.cfg.token, offered_token(ws.request))
        )

    async def receive(self, ws: ServerConnection, timeout: float) -> str | bytes:
        try:
            return await asyncio.wait_for(ws.recv(), timeout)
        except asyncio.TimeoutError:
            raise BadInput(f"nothing received for {timeout:.0f} s", "idle") from None

    async def _connection(self, ws: ServerConnection) -> None:
        call: Call | None = None
        self.connecting += 1
        identified = False
        try:
            async for call in self._session(ws):  # noqa: B007 (call is used after the loop)
                if not identified:
                    identified = True
                    self.connecting -= 1
            if call is not None:
                self.end_call(call, None)
                await ws.close(CLOSE_NORMAL, "call ended")
        except BadInput as e:
            code = {"token": CLOSE_POLICY, "busy": CLOSE_TRY_LATER, "binary": CLOSE_UNSUPPORTED}.get(
                e.reason, CLOSE_INVALID
            )
            if e.reason == "token":
                self.refuse("token", str(e))
            elif call is None:
                self.connection_error(e)
            else:
                self.end_call(call, e)
            await ws.close(code, str(e)[:120])
        except ConnectionClosed as e:
            too_big = e.sent is not None and e.sent.code == 1009
            if too_big:
                error = BadInput(f"a message longer than {MAX_MESSAGE_BYTES} bytes", "oversized")
                self.end_call(call, error) if call is not None else self.connection_error(error)
            elif call is not None:  # vanished without a stop: a hangup
                log.info("%s: call %s: connection closed (%s); treated as a hangup", self.protocol, call.call_id, e)
                self.end_call(call, None)
        except asyncio.CancelledError:  # calmd is stopping
            if call is not None:
                self.end_call(call, None)
        finally:
            if not identified:
                self.connecting -= 1

    def _session(self, ws: ServerConnection) -> Any:
        """An async generator: yields the Call once identified (and may yield it again); returns at the
        protocol's clean end; raises BadInput on bad input."""
        raise NotImplementedError
