"""The bounded queue between the segmenters and the model worker."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from .segmenter import Segment


@dataclass
class Queued:
    segment: Segment
    end_wall: float  # wall clock when the segment's last sample arrived


class SegmentQueue:
    """Bounded FIFO. Live sources never wait: when full, the oldest segment is dropped and counted.
    Sources that can wait (a file replayed as fast as possible) block instead, so nothing is lost."""

    def __init__(self, size: int, on_drop: Any):
        self.items: deque[Queued] = deque()
        self.size = size
        self.cond = threading.Condition()
        self.on_drop = on_drop
        self.closed = False

    def put(self, item: Queued, *, wait: threading.Event | None = None) -> bool:
        """With wait, block while full until there is room or the event is set. False when the item was
        not queued: the queue is closed, or the event was set while it was still full."""
        with self.cond:
            while wait is not None and len(self.items) >= self.size and not wait.is_set() and not self.closed:
                self.cond.wait(0.1)
            if self.closed or (wait is not None and len(self.items) >= self.size):
                return False
            if len(self.items) >= self.size:
                self.on_drop(self.items.popleft())
            self.items.append(item)
            self.cond.notify_all()
            return True

    def get_batch(self, n: int, timeout: float) -> list[Queued]:
        with self.cond:
            if not self.items and not self.closed:
                self.cond.wait(timeout)
            batch = [self.items.popleft() for _ in range(min(n, len(self.items)))]
            if batch:
                self.cond.notify_all()
            return batch

    def close(self) -> list[Queued]:
        """Refuse every further item and hand back those still waiting (shutdown)."""
        with self.cond:
            self.closed = True
            left = list(self.items)
            self.items.clear()
            self.cond.notify_all()
            return left

    def __len__(self) -> int:
        return len(self.items)
