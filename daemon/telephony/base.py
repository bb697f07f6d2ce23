"""What every telephony listener shares: an asyncio server in its own thread, call bookkeeping, and decoding
of 16-bit PCM or G.711 mu-law into the 16 kHz mono float32 chunks a calmd stream takes.

A listener knows its protocol's bytes and nothing about CALM: it asks a StreamRegistry (calmd's Service) for
one stream per call leg, feeds it audio and ends it on hangup.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import soxr

from calm_core.audio.telephone import mulaw_decode

from ..outputs.sinks import StreamInfo
from .config import ListenerSection

SAMPLE_RATE = 16_000
FEED_SAMPLES = 1600  # hand the segmenter 100 ms at a time, not every 20 ms frame

log = logging.getLogger("calmd.telephony")


class LegStream(Protocol):
    def feed(self, chunk: np.ndarray) -> None: ...

    def end(self, error: str | None = None) -> None: ...


class StreamRegistry(Protocol):
    def open_stream(self, info: StreamInfo) -> LegStream: ...


class CallCounters(Protocol):
    """The Prometheus counters a listener moves (calmd's Metrics has them)."""

    calls: Any
    calls_refused: Any
    call_errors: Any
    calls_active: Any


class BadInput(ValueError):
    """The peer broke the protocol: that call is closed, nothing else is affected. reason is a metric label."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def safe_id(raw: str, limit: int = 48) -> str:
    """A call id usable in stream ids and topics: [A-Za-z0-9_.-], at most `limit` characters."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", raw.strip())[:limit].strip("-.")
    return cleaned or "call"


def mulaw_to_float(data: bytes) -> np.ndarray:
    """G.711 mu-law bytes -> float32 in [-1, 1)."""
    return mulaw_decode(np.frombuffer(data, dtype=np.uint8)).astype(np.float32) / 32768.0


def s16le_to_float(data: bytes, channels: int = 1) -> np.ndarray:
    """Little-endian signed 16-bit PCM -> float32 (frames, channels) in [-1, 1)."""
    return (np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0).reshape(-1, channels)


class Leg:
    """One leg of a call: resampled to 16 kHz and handed to its stream in 100 ms pieces."""

    def __init__(self, stream: LegStream, rate: int):
        self.stream = stream
        self.resampler: soxr.ResampleStream | None = None
        self.rate = 0
        self.set_rate(rate)
        self.pending: list[np.ndarray] = []
        self.pending_n = 0

    def set_rate(self, rate: int) -> None:
        """The input rate; 0 while unknown (AudioSocket says it with the first audio message)."""
        self.rate = rate
        use = rate not in (0, SAMPLE_RATE)
        self.resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32") if use else None

    def feed(self, mono: np.ndarray) -> None:
        out = mono if self.resampler is None else self.resampler.resample_chunk(mono)
        if out.size:
            self.pending.append(out)
            self.pending_n += out.size
        if self.pending_n >= FEED_SAMPLES:
            self._flush()

    def _flush(self, last: bool = False) -> None:
        if self.resampler is not None and last:
            tail = self.resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if tail.size:
                self.pending.append(tail)
        if self.pending:
            self.stream.feed(np.concatenate(self.pending))
        self.pending, self.pending_n = [], 0

    def end(self, error: str | None) -> None:
        self._flush(last=True)
        self.stream.end(error)


@dataclass
class Call:
    """A connected call: its id and its legs, each a calmd stream."""

    call_id: str
    legs: dict[str, Leg] = field(default_factory=dict)
    ended: bool = False


class Listener:
    """An asyncio server in a thread of its own. Subclasses implement _serve() (bind, return the server)."""

    protocol = ""
    legs_scored_by_default: tuple[str, ...] = ()

    def __init__(self, cfg: ListenerSection, registry: StreamRegistry, counters: CallCounters):
        self.cfg = cfg
        self.registry = registry
        self.counters = counters
        self.calls: dict[str, Call] = {}
        self.connecting = 0  # accepted connections that have not yet said which call they are
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: Any = None
        self.port = 0
        self.thread = threading.Thread(target=self._run, name=f"listener-{self.protocol}", daemon=True)
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._start_error: BaseException | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    # ---- lifecycle (called from calmd's main thread) --------------------------------------------------
    def start(self) -> None:
        """Bind and serve; OSError when the address cannot be bound."""
        self.thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise OSError(f"listeners.{self.protocol}: cannot listen on {self.cfg.host}:{self.cfg.port} "
                          f"({self._start_error})")  # fmt: skip
        log.info("%s: listening on %s:%d (at most %d calls)", self.protocol, self.cfg.host, self.port,
                 self.cfg.max_calls)  # fmt: skip

    def stop(self, timeout: float) -> None:
        """Stop accepting, hang up every call (their audio so far is kept), and end the thread."""
        if self.loop is not None and self._stopped is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stopped.set)
        if self.thread.ident is not None:
            self.thread.join(timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except OSError as e:
            self._start_error = e
            self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self.server = await self._serve()
        self.port = self._bound_port()
        self._ready.set()
        await self._stopped.wait()
        self.server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)
        for call in list(self.calls.values()):
            self.end_call(call, None)

    async def _serve(self) -> Any:
        raise NotImplementedError

    def _bound_port(self) -> int:
        sockets = getattr(self.server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else self.cfg.port

    def track(self, handler: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        """Wrap a connection handler so that stop() can cancel it."""

        async def tracked(*args: Any) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._handlers.add(task)
            try:
                await handler(*args)
            finally:
                self._handlers.discard(task)

        return tracked

    # ---- calls ------------------------------------------------------------------------------------
    def busy(self) -> bool:
        return len(self.calls) + self.connecting >= self.cfg.max_calls

    def refuse(self, reason: str, detail: str) -> None:
        self.counters.calls_refused.labels(self.protocol, reason).inc()
        log.warning("%s: refused a connection: %s", self.protocol, detail)

    def connection_error(self, error: BadInput) -> None:
        """Bad input before a call was identified (no UUID, no start): nothing to hang up but the socket."""
        self.counters.call_errors.labels(self.protocol, error.reason).inc()
        log.error("%s: connection closed before the call was identified: %s", self.protocol, error)

    def open_call(self, raw_id: str, legs: dict[str, int]) -> Call:
        """Register a call and open one stream per leg (leg name -> sample rate). BadInput when its id is
        in use (the same call connected twice)."""
        call_id = safe_id(raw_id)
        if len(self.calls) >= self.cfg.max_calls:  # WebSocket handshakes racing past the check at the door
            raise BadInput(f"{len(self.calls)} calls in progress (max_calls)", "busy")
        if call_id in self.calls:
            raise BadInput(f"call {call_id} is already connected", "duplicate")
        scored = set(self.cfg.score_legs) if self.cfg.score_legs is not None else set(self.legs_scored_by_default)
        call = Call(call_id)
        names = tuple(legs)
        try:
            for name, rate in legs.items():
                stream_id = call_id if len(legs) == 1 else f"{call_id}.{name}"
                info = StreamInfo(stream_id, call_id, name, self.protocol, name in scored, names)
                call.legs[name] = Leg(self.registry.open_stream(info), rate)
        except ValueError as e:
            for leg in call.legs.values():
                leg.end(str(e))
            raise BadInput(str(e), "duplicate") from None
        self.calls[call_id] = call
        self.counters.calls.labels(self.protocol).inc()
        self.counters.calls_active.labels(self.protocol).set(len(self.calls))
        log.info("%s: call %s connected (%s)", self.protocol, call_id, ", ".join(names))
        return call

    def end_call(self, call: Call, error: BadInput | str | None) -> None:
        """Hang up: every leg's stream ends (failed, with the reason, when error is set)."""
        if call.ended:
            return
        call.ended = True
        message = None if error is None else str(error)
        if isinstance(error, BadInput):
            self.counters.call_errors.labels(self.protocol, error.reason).inc()
        for leg in call.legs.values():
            leg.end(message)
        self.calls.pop(call.call_id, None)
        self.counters.calls_active.labels(self.protocol).set(len(self.calls))
        if message:
            log.error("%s: call %s closed: %s", self.protocol, call.call_id, message)
        else:
            log.info("%s: call %s ended", self.protocol, call.call_id)
