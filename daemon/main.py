"""calmd: the streaming classifier service.

calmd --config /etc/calm/calmd.toml [--device cuda] [--endpoint tcp://127.0.0.1:5556]
calmd --hash-password      (prints a [page] password_hash line for the live page's login)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

# Nothing here imports calm_core, torch or pydantic: main() handles SIGTERM before those load (seconds).

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


CALMD_EXAMPLES = """examples:
  calmd --config /etc/calm/calmd.toml
  calmd --config calmd.toml --device cuda:1 --endpoint tcp://127.0.0.1:5566 --metrics-port 9118
  calmd --hash-password"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="calmd",
        description="Classify live audio with CALM and publish labels over ZeroMQ.",
        epilog=CALMD_EXAMPLES + "\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML configuration (see config/calmd.toml); required to run")
    p.add_argument(
        "--hash-password",
        action="store_true",
        help="read a password (twice on a terminal) and print its page.password_hash",
    )
    p.add_argument("--device", help="override model.device")
    p.add_argument("--classifier", help="override model.classifier")
    p.add_argument("--endpoint", help="override publish.endpoint")
    p.add_argument("--instance", help="override publish.instance (this calmd's name in calm.status)")
    p.add_argument("--metrics-port", type=int, help="override metrics.port (0: any free port)")
    p.add_argument("--no-metrics", action="store_true", help="do not serve Prometheus metrics")
    p.add_argument("--exit-when-done", action="store_true", help="exit once every file/stdin stream has ended")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"%(prog)s {metadata.version('calm-audio')}")
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


class ReloadGate:
    """SIGHUP and the page's review ask for one and the same reload, which the main loop runs; the review waits
    for a reload that started after its request (one already running may have read the file before it)."""

    def __init__(self) -> None:
        self.wanted = threading.Event()  # set from the signal handler: nothing there that could block
        self.cond = threading.Condition()
        self.started = self.finished = 0
        self.ok = False
        self.closed = False

    def request(self) -> None:
        self.wanted.set()

    def take(self) -> bool:
        """Main loop: whether a reload is wanted now (and it counts as started)."""
        with self.cond:
            if not self.wanted.is_set():
                return False
            self.wanted.clear()
            self.started += 1
            return True

    def done(self, ok: bool) -> None:
        with self.cond:
            self.finished += 1
            self.ok = ok
            self.cond.notify_all()

    def reload_and_wait(self, timeout_s: float) -> bool | None:
        """Ask for a reload and wait for it: whether it was taken; None if it did not run within timeout_s
        or calmd is stopping."""
        with self.cond:
            target = self.started + 1
            self.wanted.set()
            if not self.cond.wait_for(lambda: self.finished >= target or self.closed, timeout_s) or self.closed:
                return None
            return self.ok

    def close(self) -> None:
        """The main loop has ended: no reload will run, nobody waits for one."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class StoppedStarting(BaseException):
    """SIGTERM or SIGINT before the pipeline runs (a BaseException, so that no handler on the way swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)


def stop_while_starting() -> None:
    """Until the pipeline runs, SIGTERM and SIGINT end calmd at once: loading the model can take minutes, and
    as a container's PID 1 calmd would ignore a signal it had no handler for (the default action does not
    apply to PID 1), leaving `podman stop` to wait out its grace period and SIGKILL it."""

    def stop(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the exit itself short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise StoppedStarting(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until run() has its reload gate: the file is not read yet


def run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .inference.service import Service
    from .outputs.metrics import Metrics
    from .outputs.notify import Notifier
    from .review.workflow import Review

    stop = threading.Event()
    reloads = ReloadGate()
    signal.signal(signal.SIGHUP, lambda *_: reloads.request())  # taken once the main loop runs
    cfg = load_config(args.config, overrides(args))
    notifier = Notifier()
    metrics = Metrics()
    review = None
    service: Service  # assigned below: the review asks what it serves only once calmd runs
    if cfg.page.enabled:  # first: it names the classifier versions the service loads
        clips = cfg.clips.dir if cfg.clips.enabled else None
        model = (cfg.model.path, cfg.model.device)
        serving = lambda: {"name": service.model.name, "fingerprint": service.model.digest,  # noqa: E731
                           "labels": service.model.classifier.classes, "error": service.error,
                           "positive": list(service.model.policy.group) if service.model.policy else []}  # fmt: skip
        # the page's review reloads through the same gate as SIGHUP
        review = Review(cfg.model.classifier, clips, cfg.page.review_dir, model, serving, reloads.reload_and_wait)
    service = Service(cfg, metrics, version_name=review.version_name if review else None)
    if cfg.metrics.enabled:
        port = metrics.serve(cfg.metrics.host, cfg.metrics.port)
        log.info("metrics on http://%s:%d/metrics", cfg.metrics.host, port)
    log.info(
        "publishing on %s; classifier %s (%s), exit layer %d of %d",
        service.publisher.endpoint, service.model.name, ", ".join(service.model.classifier.classes),
        service.model.classifier.exit_layer, service.model.classifier.layout.n_layers,
    )  # fmt: skip

    # From here on a stop is an orderly one: the pipeline drains and the last status leaves.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    service.start()
    if service.page is not None and review is not None:
        service.page.attach_review(review)
    service.publish_status()
    notifier.ready(f"{len(cfg.streams)} stream(s), publishing on {service.publisher.endpoint}")
    tick = min(1.0, (notifier.watchdog_s or 2.0) / 4)
    hung_after = max(5.0, (notifier.watchdog_s or 20.0) / 2)
    while not stop.wait(tick):
        if reloads.take():
            notifier.send("RELOADING=1")
            reloads.done(service.reload())
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
    if review is not None:  # before the reloads end: a job waiting for one then knows why it never came
        review.interrupt()
    reloads.close()
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


def hash_password_command() -> int:
    """Print the [page] password_hash line for a password read from the terminal (twice) or one line of stdin."""
    import getpass

    from .page.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("page password: ")
        if getpass.getpass("again: ") != password:
            print("calmd: the passwords differ", file=sys.stderr)
            return EXIT_START
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        print("calmd: use a password of at least 8 characters", file=sys.stderr)
        return EXIT_START
    print(f'password_hash = "{hash_password(password)}"')
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.hash_password:
        return hash_password_command()
    if args.config is None:
        parser.error("the following arguments are required: --config")
    stop_while_starting()
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        from calm_core.errors import CalmError

        try:
            return run(args)
        except (CalmError, OSError, ValueError) as e:
            log.error("%s", e)
            return EXIT_START
    except StoppedStarting as e:
        # Nothing runs yet (no stream, no page), but a half-built model or socket may hold threads: skip the
        # interpreter's teardown.
        log.info("stopped by %s while starting", e)
        exit_now(EXIT_OK)
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
