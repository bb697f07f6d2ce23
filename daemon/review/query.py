"""Which saved detections the review page lists: filters and paging, done here rather than in the browser, so
that a site with thousands of clips sends the page one page of them.

A detection is a clip's JSON sidecar under the clips folder (<stream>/<UTC start>_<label>.json); they are
listed newest first by that name. The query is validated once, here, from the page's query string.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..refusals import Refused

PAGE_MAX = 200
PAGE_DEFAULT = 50


@dataclass(frozen=True)
class Query:
    label: str | None = None
    stream: str | None = None
    min_score: float | None = None
    max_score: float | None = None
    since: str | None = None  # UTC, ISO 8601 or a date: a prefix compared with the detection's start_utc
    until: str | None = None
    unreviewed: bool = False
    anchor: str | None = None  # a clip: list only it and older ones (newer ones are counted, not shown)
    offset: int = 0
    limit: int = PAGE_DEFAULT

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> Query:
        """From the query string; Refused(400) naming the parameter, its value and what is allowed."""
        known = set(cls.__dataclass_fields__)
        for key in params:
            if key not in known:
                raise Refused(400, f"review query: unknown parameter {key!r}; known: {', '.join(sorted(known))}")

        def number(key: str, kind: Callable[[str], Any], low: float, high: float) -> Any:
            if not params.get(key):
                return None
            try:
                value = kind(params[key])
            except ValueError:
                raise Refused(400, f"review query: {key}={params[key]!r} is not a number") from None
            if not low <= value <= high:
                raise Refused(400, f"review query: {key}={params[key]!r} is outside {low}..{high}")
            return value

        text = {k: params.get(k) or None for k in ("label", "stream", "since", "until", "anchor")}
        limit = number("limit", int, 1, PAGE_MAX)
        return cls(
            **text,  # type: ignore[arg-type]
            min_score=number("min_score", float, 0.0, 1.0),
            max_score=number("max_score", float, 0.0, 1.0),
            unreviewed=params.get("unreviewed", "") in ("1", "true", "yes"),
            offset=number("offset", int, 0, 10**9) or 0,
            limit=PAGE_DEFAULT if limit is None else limit,
        )

    def keeps(self, d: dict[str, Any]) -> bool:
        """Whether a detection (as listed) passes every filter but the anchor."""
        score, start = d.get("score"), str(d.get("start_utc") or "")
        return (
            (self.label is None or d.get("label") == self.label)
            and (self.stream is None or d.get("stream") == self.stream)
            and (self.min_score is None or (isinstance(score, (int, float)) and score >= self.min_score))
            and (self.max_score is None or (isinstance(score, (int, float)) and score <= self.max_score))
            and (self.since is None or start[: len(self.since)] >= self.since)
            and (self.until is None or start[: len(self.until)] <= self.until)
            and (not self.unreviewed or d.get("verdict") is None)
        )


class Sidecars:
    """Every saved detection's sidecar, read once per file version (path, size and mtime): the page asks
    every few seconds, and re-reading thousands of small files each time would keep a disk busy."""

    def __init__(self, clips_dir: Path):
        self.dir = clips_dir
        self.lock = threading.Lock()
        self.cache: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}

    def newest_first(self) -> list[tuple[str, dict[str, Any]]]:
        """(clip path relative to the clips folder, its sidecar), newest first; unreadable ones are skipped."""
        if not self.dir.is_dir():
            return []
        found: list[tuple[str, Path, dict[str, Any]]] = []
        seen = set()
        with self.lock:
            for folder in self.dir.iterdir():
                if not folder.is_dir() or folder.name.startswith("."):
                    continue
                for path in folder.glob("*.json"):
                    if path.name.startswith("."):
                        continue
                    side = self._read(path)
                    if side is not None:
                        seen.add(path)
                        found.append((f"{folder.name}/{side['clip']}", path, side))
            for gone in set(self.cache) - seen:  # deleted by retention
                del self.cache[gone]
        found.sort(key=lambda f: f[1].name, reverse=True)
        return [(clip, side) for clip, _, side in found]

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            st = os.stat(path)
            key = (st.st_size, st.st_mtime_ns)
            cached = self.cache.get(path)
            if cached is not None and cached[0] == key:
                return cached[1]
            side = json.loads(path.read_text())
            if not isinstance(side, dict) or not isinstance(side.get("clip"), str):
                return None
        except (OSError, ValueError):  # deleted meanwhile, or not a clip sidecar
            return None
        self.cache[path] = (key, side)
        return side


def page_of(listed: list[dict[str, Any]], query: Query) -> dict[str, Any]:
    """The detections one page shows, with the counts its pager and its "N new" button need."""
    kept = [d for d in listed if query.keeps(d)]
    newer = 0
    if query.anchor is not None:
        names = [d["clip"].rsplit("/", 1)[-1] for d in kept]
        anchor = query.anchor.rsplit("/", 1)[-1]
        newer = sum(1 for n in names if n > anchor)
        kept = [d for d, n in zip(kept, names) if n <= anchor]
    return {
        "detections": kept[query.offset : query.offset + query.limit],
        "total": len(kept),
        "newer": newer,
        "offset": query.offset,
        "limit": query.limit,
        "labels": sorted({str(d["label"]) for d in listed if d.get("label") is not None}),
        "streams": sorted({str(d["stream"]) for d in listed if d.get("stream") is not None}),
    }
