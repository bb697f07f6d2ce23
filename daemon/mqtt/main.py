"""calm-mqtt: calmd's labels, events, stream states and call verdicts on an MQTT broker, with Home Assistant
discovery.

calm-mqtt --config /etc/calm/calm-mqtt.toml [--zmq tcp://127.0.0.1:5556] [--host broker.lan] ...

A process of its own, not a part of calmd: calmd's inference never waits on a broker, one bridge serves
every calmd behind calm-proxy, and either can restart without the other.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import zmq

from calm_core.messages.client import Subscriber

from ..outputs.notify import Notifier
from .bridge import Bridge
from .config import BridgeConfig, ConfigError, load_bridge_config
from .link import BrokerError, Link
from .topics import Topics

log = logging.getLogger("calm.mqtt")

EXIT_OK = 0
EXIT_START = 2  # bad configuration, a broker that cannot be reached or refuses us, a ZeroMQ endpoint that fails
EXIT_CODES = f"""exit status:
  {EXIT_OK}  stopped on SIGTERM/SIGINT (the bridge marked itself offline first)
  {EXIT_START}  could not start: bad configuration or flag, the broker unreachable or refusing the
     connection (the log names host:port and the broker's reason), a ZeroMQ endpoint that fails
Once connected, a lost broker is retried with backoff (broker.reconnect_min_s to reconnect_max_s) for ever."""


MQTT_EXAMPLES = """examples:
  calm-mqtt --config /etc/calm/calm-mqtt.toml
  calm-mqtt --zmq tcp://127.0.0.1:5557 --host 192.168.1.10 --username calm \\
      --password-file /etc/calm/mqtt-password"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="calm-mqtt",
        description="Publish calmd's messages on MQTT, with Home Assistant discovery (one device per stream).",
        epilog=MQTT_EXAMPLES + "\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML configuration (see config/calm-mqtt.toml); flags override it")
    p.add_argument("--zmq", action="append", metavar="ENDPOINT", help="calmd or calm-proxy endpoint (repeatable)")
    p.add_argument("--host", help="broker host")
    p.add_argument("--port", type=int, help="broker port (default 1883, 8883 with TLS)")
    p.add_argument("--username", help="broker user name")
    p.add_argument("--password-file", type=Path, help="file whose first line is the broker password")
    p.add_argument("--password", help="broker password (visible in the process list: prefer --password-file)")
    p.add_argument("--client-id", help="MQTT client id (default calm-mqtt-<hostname>)")
    p.add_argument("--tls", action="store_true", default=None, help="connect with TLS")
    p.add_argument("--ca-certs", type=Path, help="CA bundle for the broker's certificate (implies --tls)")
    p.add_argument("--certfile", type=Path, help="client certificate (implies --tls)")
    p.add_argument("--keyfile", type=Path, help="client key (implies --tls)")
    p.add_argument("--prefix", help='topic prefix (default "calm")')
    p.add_argument("--discovery-prefix", help='Home Assistant discovery prefix (default "homeassistant")')
    p.add_argument("--no-discovery", action="store_true", help="publish no Home Assistant discovery configs")
    p.add_argument("--qos", type=int, help="QoS of events and call verdicts (0, 1 or 2; default 1)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"%(prog)s {metadata.version('calm-audio')}")
    return p


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs: dict[str, Any] = {
        "zmq.endpoints": args.zmq,
        "broker.host": args.host,
        "broker.port": args.port,
        "broker.username": args.username,
        "broker.password_file": str(args.password_file) if args.password_file else None,
        "broker.password": args.password,
        "broker.client_id": args.client_id,
        "broker.tls.ca_certs": str(args.ca_certs) if args.ca_certs else None,
        "broker.tls.certfile": str(args.certfile) if args.certfile else None,
        "broker.tls.keyfile": str(args.keyfile) if args.keyfile else None,
        "topics.prefix": args.prefix,
        "topics.qos": args.qos,
        "discovery.prefix": args.discovery_prefix,
        "discovery.enabled": False if args.no_discovery else None,
    }
    if args.tls or args.ca_certs or args.certfile:
        pairs["broker.tls.enabled"] = True
    return {key: value for key, value in pairs.items() if value is not None}


def subscribe(cfg: BridgeConfig) -> Subscriber:
    z = cfg.zmq
    server_key = None
    if z.curve_server_key is not None:
        from zmq.auth import load_certificate

        server_key = load_certificate(z.curve_server_key)[0]
    first, *more = z.endpoints
    sub = Subscriber(
        first, status=True, events=True, calls=[""], curve_server_key=server_key,
        curve_client_cert=z.curve_client_cert, context=zmq.Context(),
    )  # fmt: skip
    for endpoint in more:
        sub.socket.connect(endpoint)
    return sub


def run(cfg: BridgeConfig, stop: threading.Event) -> int:
    try:
        link = Link(cfg.broker, Topics(cfg.topics.prefix).bridge_availability, cfg.topics.qos, cfg.topics.queue_size)
        link.start()
    except (BrokerError, ConfigError) as e:
        log.error("%s", e)
        return EXIT_START
    try:
        sub = subscribe(cfg)
    except (zmq.ZMQError, OSError, ValueError) as e:
        log.error("ZeroMQ %s: cannot subscribe (%s)", cfg.zmq.endpoints, e)
        link.stop()
        return EXIT_START
    bridge = Bridge(cfg, link)
    log.info("bridging %s to MQTT %s under %s/", ", ".join(cfg.zmq.endpoints), link.where, cfg.topics.prefix)
    notifier = Notifier()
    notifier.ready(f"bridging to {link.where}")
    while not stop.is_set():
        event = sub.receive(timeout_s=0.5)
        if event is not None:
            bridge.handle(event, time.monotonic())
        bridge.tick(time.monotonic())
    notifier.stopping()
    link.stop()
    sub.close()
    log.info(
        "stopped: %d messages bridged, %d malformed, %d lost upstream (seq gaps), %d dropped while the broker was away",
        bridge.handled, sub.bad, sub.gaps, link.dropped,
    )  # fmt: skip
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = load_bridge_config(args.config, overrides(args))
    except ConfigError as e:
        log.error("%s", e)
        return EXIT_START
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return run(cfg, stop)


if __name__ == "__main__":
    sys.exit(main())
