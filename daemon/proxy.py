"""calm-proxy: one endpoint for the labels of many calmd, with the last calm.status of each kept for late joiners.

calm-proxy --connect tcp://10.0.0.5:5556 --connect tcp://10.0.0.6:5556 --backend tcp://0.0.0.0:5557

A stock XSUB/XPUB forwarder (the ZeroMQ "proxy" device): messages go from calmd to subscribers unchanged,
subscriptions go the other way. calmd's publisher binds, so the proxy's XSUB connects to each calmd
(--connect); --frontend binds the XSUB too, for publishers that connect. On top of the forwarding, the
classic last-value cache: the proxy always subscribes to calm.status itself, keeps the latest status of
each calmd (keyed by its `instance` field) and, when a subscription covering calm.status arrives, sends
every cached status at once, so a subscriber that joins late need not wait for the next heartbeat.
Subscribers already connected see those statuses again; tell repeats apart by (instance, seq).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import zmq

from calm_core.messages.events import STATUS_TOPIC

from .outputs.notify import Notifier

log = logging.getLogger("calm.proxy")

EXIT_OK = 0
EXIT_START = 2  # bad arguments, an endpoint that cannot be bound or connected, unreadable keys
SUBSCRIBE, UNSUBSCRIBE = 1, 0  # first byte of a subscription message on XSUB/XPUB


@dataclass
class StatusCache:
    """The latest calm.status message of each calmd instance, as the frames it arrived in."""

    max_age_s: float  # a status older than this is not replayed (an instance gone for good)
    latest: dict[str, tuple[float, list[bytes]]] = field(default_factory=dict)  # instance -> (arrival, frames)
    malformed: int = 0

    def offer(self, frames: list[bytes], now: float) -> None:
        try:
            instance = json.loads(frames[1])["instance"]
        except (IndexError, ValueError, KeyError, TypeError):
            self.malformed += 1  # forwarded all the same; only the cache cannot key it
            return
        if isinstance(instance, str):
            self.latest[instance] = (now, frames)
        else:
            self.malformed += 1

    def current(self, now: float) -> list[list[bytes]]:
        return [frames for at, frames in self.latest.values() if now - at <= self.max_age_s]


def covers_status(subscription: bytes) -> bool:
    """A subscription message that would receive calm.status: subscribe, with a prefix of the topic."""
    return subscription[:1] == bytes([SUBSCRIBE]) and STATUS_TOPIC.encode().startswith(subscription[1:])


class Proxy:
    def __init__(self, args: argparse.Namespace, context: zmq.Context[Any] | None = None):
        self.context = context or zmq.Context()
        self.frontend = self.context.socket(zmq.XSUB)
        self.backend = self.context.socket(zmq.XPUB)
        for sock in (self.frontend, self.backend):
            sock.setsockopt(zmq.LINGER, 0)
        self.frontend.setsockopt(zmq.RCVHWM, args.hwm)
        self.backend.setsockopt(zmq.SNDHWM, args.hwm)
        # Every subscription and unsubscription reaches us, not only a topic's first and last: each new
        # subscriber to calm.status is a cue to replay the cache, and the counts upstream stay balanced.
        self.backend.setsockopt(zmq.XPUB_VERBOSER, 1)
        self.cache = StatusCache(args.status_max_age)
        self.forwarded = 0
        self.replayed = 0
        self.stop = threading.Event()
        try:
            if args.curve_client_cert is not None:
                self._curve_client(args.curve_client_cert, args.curve_server_key)
            for endpoint in args.frontend:
                self.frontend.bind(endpoint)
            for endpoint in args.connect:
                self.frontend.connect(endpoint)
            self.backend.bind(args.backend)
        except (zmq.ZMQError, OSError, ValueError) as e:
            self.close()
            raise OSError(f"calm-proxy: cannot start ({e})") from e
        self.backend_endpoint = self.backend.getsockopt_string(zmq.LAST_ENDPOINT)
        # The proxy's own subscription: the cache fills even while no subscriber wants statuses.
        self.frontend.send(bytes([SUBSCRIBE]) + STATUS_TOPIC.encode())

    def _curve_client(self, client_cert: Path, server_key: Path | None) -> None:
        from zmq.auth import load_certificate

        if server_key is None:
            raise ValueError("--curve-client-cert needs --curve-server-key (calmd's public certificate)")
        public, secret = load_certificate(client_cert)
        if secret is None:
            raise ValueError(f"--curve-client-cert {str(client_cert)!r}: holds no secret key")
        self.frontend.curve_publickey, self.frontend.curve_secretkey = public, secret
        self.frontend.curve_serverkey = load_certificate(server_key)[0]

    def run(self) -> None:
        """Forward until stop is set; the poll timeout bounds how long a stop waits."""
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        while not self.stop.is_set():
            ready = dict(poller.poll(200))
            if self.frontend in ready:
                self._from_publishers()
            if self.backend in ready:
                self._from_subscribers()

    def _from_publishers(self) -> None:
        frames = self.frontend.recv_multipart()
        if frames[0] == STATUS_TOPIC.encode():
            self.cache.offer(frames, time.monotonic())
        self.backend.send_multipart(frames)  # XPUB drops, never blocks, for a subscriber past its HWM
        self.forwarded += 1

    def _from_subscribers(self) -> None:
        subscription = self.backend.recv()
        self.frontend.send(subscription)
        if covers_status(subscription):
            for frames in self.cache.current(time.monotonic()):
                self.backend.send_multipart(frames)
                self.replayed += 1

    def close(self) -> None:
        self.frontend.close(0)
        self.backend.close(0)
        self.context.term()


PROXY_EXAMPLES = """examples:
  calm-proxy --connect tcp://10.0.0.5:5556 --connect tcp://10.0.0.6:5556
  calm-proxy --connect tcp://127.0.0.1:5556 --backend tcp://0.0.0.0:5557 --log-level debug

Deployment, placement and the systemd units: docs/deployment.md."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="calm-proxy",
        description="Fan in the messages of several calmd onto one endpoint (ZeroMQ XSUB/XPUB), "
        "with a last-value cache of calm.status for subscribers that join late.",
        epilog=PROXY_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--connect", action="append", default=[], metavar="ENDPOINT",
        help="a calmd's publish.endpoint to read from (repeat for each calmd)",
    )  # fmt: skip
    p.add_argument(
        "--frontend", action="append", default=[], metavar="ENDPOINT",
        help="also bind the XSUB side here, for publishers that connect (repeatable)",
    )  # fmt: skip
    p.add_argument("--backend", default="tcp://127.0.0.1:5557", help="where subscribers connect (XPUB, bound)")
    p.add_argument("--hwm", type=int, default=10_000, help="messages queued per peer before dropping")
    p.add_argument(
        "--status-max-age", type=float, default=600.0, metavar="S",
        help="do not replay a calm.status older than this (an instance that is gone)",
    )  # fmt: skip
    p.add_argument("--curve-client-cert", type=Path, help="CURVE: the proxy's certificate (with secret key)")
    p.add_argument("--curve-server-key", type=Path, help="CURVE: the calmd's public certificate")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"%(prog)s {metadata.version('calm-audio')}")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.connect and not args.frontend:
        parser.error("give at least one --connect (a calmd endpoint) or --frontend (an endpoint to bind)")
    try:
        proxy = Proxy(args)
    except OSError as e:
        log.error("%s", e)
        return EXIT_START
    signal.signal(signal.SIGTERM, lambda *_: proxy.stop.set())
    signal.signal(signal.SIGINT, lambda *_: proxy.stop.set())
    sources = ", ".join([f"connect {e}" for e in args.connect] + [f"bind {e}" for e in args.frontend])
    log.info("forwarding from %s to %s", sources, proxy.backend_endpoint)
    notifier = Notifier()
    notifier.ready(f"forwarding to {proxy.backend_endpoint}")
    proxy.run()
    notifier.stopping()
    log.info(
        "stopped: %d messages forwarded, %d cached statuses replayed, %d statuses without an instance",
        proxy.forwarded, proxy.replayed, proxy.cache.malformed,
    )  # fmt: skip
    proxy.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
