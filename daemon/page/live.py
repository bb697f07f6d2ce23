"""LivePage: the page's hub (a Sink) and its HTTP server, started and stopped together by calmd."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import PageSection
from ..outputs.metrics import Metrics
from .api import PageApi
from .hub import PageHub
from .server import PageServer

if TYPE_CHECKING:
    from ..review.workflow import Review

log = logging.getLogger("calmd.page")


class LivePage:
    """The hub (a Sink: add it to the service's sinks) and the HTTP server that shows it."""

    def __init__(self, cfg: PageSection, clips_dir: Path | None, metrics: Metrics | None = None):
        self.hub = PageHub(cfg.max_clients, metrics.page_dropped.inc if metrics is not None else None)
        try:
            self.server = PageServer(cfg.host, cfg.port, self.hub, clips_dir)
        except OSError as e:
            raise OSError(f"page: cannot serve on {cfg.host}:{cfg.port} ({e}); set [page] port or host") from e
        self.api = self.server.api = PageApi(cfg)
        self.review: Review | None = None
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        self.url = f"http://{host}:{self.server.server_port}/"

    def start(self) -> None:
        self.server.start()
        log.info("live page on %s", self.url)

    def attach_review(self, review: Review) -> None:
        """The review of saved detections, once calmd runs (it needs the service's classifier and reload)."""
        self.review = self.api.review = review

    def close(self) -> None:
        self.server.close()
        if self.review is not None:
            self.review.close()
