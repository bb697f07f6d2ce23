"""calmd: the streaming classifier service.

calmd --config /etc/calm/calmd.toml [--device cuda] [--endpoint tcp://127.0.0.1:5556]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from calm_core.errors import CalmError

from .config import load_config
from .metrics import Metrics
from .notify import Notifier

log = logging.getLogger("calmd")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="calmd", description="Classify live audio with CALM and publish labels over ZeroMQ."
    )
    p.add_argument("--config", required=True, type=Path, help="TOML configuration (see config/calmd.toml)")
    p.add_argument("--device", help="override model.device")
    p.add_argument("--classifier", help="override model.classifier")
    p.add_argument("--endpoint", help="override publish.endpoint")
    p.add_argument("--metrics-port", type=int, help="override metrics.port (0: any free port)")
    p.add_argument("--no-metrics", action="store_true", help="do not serve Prometheus metrics")
    p.add_argument("--exit-when-done", action="store_true", help="exit once every file/stdin stream has ended")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {
        "model.device": args.device,
        "model.classifier": args.classifier,
        "publish.endpoint": args.endpoint,
        "metrics.port": args.metrics_port,
        "metrics.enabled": False if args.no_metrics else None,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    from .service import Service

    cfg = load_config(args.config, overrides(args))
    notifier = Notifier()
    metrics = Metrics()
    service = Service(cfg, metrics)
    if cfg.metrics.enabled:
        port = metrics.serve(cfg.metrics.host, cfg.metrics.port)
        log.info("metrics on http://%s:%d/metrics", cfg.metrics.host, port)
    log.info(
        "publishing on %s; classifier %s (%s), exit layer %d of %d",
        service.publisher.endpoint, service.model.name, ", ".join(service.model.classifier.labels),
        service.model.classifier.exit_layer, service.model.classifier.layout.n_layers,
    )  # fmt: skip

    stop = threading.Event()
    reload = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())

    service.start()
    service.publish_status()
    notifier.ready(f"{len(cfg.streams)} stream(s), publishing on {service.publisher.endpoint}")
    tick = min(1.0, (notifier.watchdog_s or 2.0) / 4)
    hung_after = max(5.0, (notifier.watchdog_s or 20.0) / 2)
    while not stop.wait(tick):
        if reload.is_set():
            reload.clear()
            notifier.send("RELOADING=1")
            service.reload()
            notifier.send("READY=1")
        if service.fatal:
            break
        if service.worker_alive(hung_after):
            notifier.watchdog()
        else:
            log.error("model worker has not progressed for %.0f s; withholding watchdog pings", hung_after)
        if args.exit_when_done and service.all_finished():
            log.info("every stream has ended; exiting")
            break
    notifier.stopping()
    service.stop(cfg.inference.drain_timeout_s)
    if service.fatal:
        log.critical("exiting: %s", service.fatal)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return run(args)
    except (CalmError, OSError, ValueError) as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
