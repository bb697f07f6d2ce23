"""calmd: the streaming classifier service.

calmd --config /etc/calm/calmd.toml [--device cuda] [--endpoint tcp://127.0.0.1:5556]
"""

from __future__ import annotations

import argparse
import logging
import os
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

EXIT_OK = 0  # stopped on request or every stream ended; anything left unclassified is in the last status
EXIT_FAILED = 1  # max_consecutive_failures inference failures in a row: systemd restarts it
EXIT_START = 2  # could not start: configuration, model, classifier, endpoint or port
EXIT_STUCK = 3  # stopped, but a thread (a forward past forward_grace_s, a capture device) had not ended
EXIT_CODES = f"""exit status:
  {EXIT_OK}  stopped on SIGTERM/SIGINT, or every stream ended (--exit-when-done); segments left
     unclassified after inference.drain_timeout_s are logged and counted in the last calm.status
  {EXIT_FAILED}  too many inference failures in a row (inference.max_consecutive_failures)
  {EXIT_START}  could not start: bad configuration, model or classifier refused, endpoint or port in use
  {EXIT_STUCK}  stopped, but the batch in the model had not finished within inference.forward_grace_s
     (or a capture thread had not ended): the last status and the logs were flushed, then calmd
     exited without waiting for it
calmd never ends by a signal it raised itself: a signal in its exit status came from outside."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="calmd",
        description="Classify live audio with CALM and publish labels over ZeroMQ.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, type=Path, help="TOML configuration (see config/calmd.toml)")
    p.add_argument("--device", help="override model.device")
    p.add_argument("--classifier", help="override model.classifier")
    p.add_argument("--endpoint", help="override publish.endpoint")
    p.add_argument("--instance", help="override publish.instance (this calmd's name in calm.status)")
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
        "publish.instance": args.instance,
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
    stuck = service.stop()
    metrics.close()
    code = EXIT_OK
    if service.fatal:
        log.critical("exiting: %s", service.fatal)
        code = EXIT_FAILED
    if stuck:
        log.critical("exiting without waiting for %s, still busy after the stop bounds", ", ".join(stuck))
        exit_now(EXIT_STUCK)
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread() and t.is_alive()]
    if others:  # not calmd's own, but just as able to abort the interpreter's teardown
        log.warning("threads %s still running at exit; exiting without interpreter teardown", ", ".join(others))
        exit_now(code)
    return code


def exit_now(code: int) -> None:
    """Exit without tearing the interpreter down, after flushing the logs.

    A thread still inside native code when the interpreter finalises is ended by pthread_exit as soon as
    it asks for the GIL again; unwinding a torch (C++) frame that way calls std::terminate and the process
    dies by SIGABRT. os._exit ends every thread at once instead; the last status has already been sent."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return run(args)
    except (CalmError, OSError, ValueError) as e:
        log.error("%s", e)
        return EXIT_START


if __name__ == "__main__":
    sys.exit(main())
