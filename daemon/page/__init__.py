"""The live page calmd serves: each stream's state, its last labels with scores, recent events with their
clips, call verdicts; updated live over Server-Sent Events. Standard library only, on loopback by default."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import PageSection
from ..metrics import Metrics
from .hub import PageHub
from .server import PageServer

log = logging.getLogger("calmd.page")

__all__ = ["LivePage", "PageHub", "PageServer"]


class LivePage:
    """The hub (a Sink: add it to the service's sinks) and the HTTP server that shows it."""

    def __init__(self, cfg: PageSection, clips_dir: Path | None, metrics: Metrics | None = None):
        self.hub = PageHub(cfg.max_clients, metrics.page_dropped.inc if metrics is not None else None)
        try:
            self.server = PageServer(cfg.host, cfg.port, self.hub, clips_dir)
        except OSError as e:
            raise OSError(f"page: cannot serve on {cfg.host}:{cfg.port} ({e}); set [page] port or host") from e
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        self.url = f"http://{host}:{self.server.server_port}/"

    def start(self) -> None:
        self.server.start()
        log.info("live page on %s", self.url)

    def close(self) -> None:
        self.server.close()
