"""Timing helpers shared by the benches: paired ratios, and a calmd Service with its stream latencies.

bench/run.py, bench/gpu.py and bench/gpu_sizing.py import from here, so that run.py is the only one that
imports gpu.py (it picks the GPU suite) and nothing imports run.py back.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from calm_core.testing import voiced


def paired_ratio(a: Any, b: Any, repeats: int = 7, warmup: int = 1, sync: Any = None) -> dict[str, float]:
    """Time a and b interleaved (A B, B A, A B, ... after a warm-up of each) and report the median of
    the per-pair ratios a/b with its spread: on a busy machine load drifts, and a pair shares it."""
    sync = sync or (lambda: None)

    def once(fn: Any) -> float:
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    for _ in range(warmup):
        once(a), once(b)
    ta, tb = [], []
    for i in range(repeats):
        if i % 2:
            tb.append(once(b))
            ta.append(once(a))
        else:
            ta.append(once(a))
            tb.append(once(b))
    ratios = sorted(x / y for x, y in zip(ta, tb, strict=True))
    q1, med, q3 = (float(v) for v in np.percentile(ratios, [25, 50, 75]))
    return {
        "a_s": statistics.median(ta), "b_s": statistics.median(tb), "ratio": med, "q1": q1, "q3": q3,
        "min": ratios[0], "max": ratios[-1], "repeats": repeats,
    }  # fmt: skip


def ratio_text(r: dict[str, float]) -> str:
    return f"**{r['ratio']:.3f}** (IQR {r['q1']:.3f}–{r['q3']:.3f}, range {r['min']:.3f}–{r['max']:.3f})"


def median_time(fn: Any, repeat: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _service(
    model: str, classifier: Path, streams: list[dict[str, Any]], backbone: Any = None, **inference: Any
) -> Any:
    from calmd.config import parse_config
    from calmd.inference.service import Service

    port = _free_port()
    device = "cpu" if backbone is None else str(backbone.device)
    cfg = parse_config(
        {
            "model": {"path": model, "classifier": str(classifier), "device": device},
            "publish": {"endpoint": f"tcp://127.0.0.1:{port}", "heartbeat_s": 1.0},
            "metrics": {"enabled": False},
            "vad": {"mode": "none", "window_s": 2.0, "hop_s": 2.0},
            "inference": {"queue_size": 256, **inference},
            "streams": streams,
        }
    )
    return Service(cfg, backbone=backbone), f"tcp://127.0.0.1:{port}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _long_wav(work: Path, seconds: int) -> Path:
    import soundfile as sf

    path = work / f"long{seconds}.wav"
    if not path.exists():
        rng = np.random.default_rng(0)
        parts = [voiced(float(rng.uniform(100, 400)), 1.0, seed=i) for i in range(seconds)]
        sf.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
    return path


def stream_latencies(service: Any, spread: float, seconds: float) -> tuple[list[float], int]:
    """Run a built service's streams: ms from each segment's end to its label at a subscriber, for segments
    ending from 2 s after the last stream started (warm-up before), for `seconds`; and the segments dropped."""
    from calm_core.messages.client import Subscriber
    from calm_core.messages.events import LabelEvent

    lat = []
    with Subscriber(service.cfg.publish.endpoint) as sub:
        time.sleep(0.3)
        start = time.time()
        service.start()
        try:
            deadline = time.monotonic() + spread + 2.0 + seconds
            while time.monotonic() < deadline:
                event = sub.receive(timeout_s=0.2)
                if isinstance(event, LabelEvent):
                    end = service.streams.stats[event.stream].t0_wall + event.end_s
                    if end > start + spread + 2.0:
                        lat.append((time.time() - end) * 1e3)
        finally:
            service.stop(2)
    return lat, sum(s.dropped for s in service.streams.stats.values())


def holds(row: dict[str, Any]) -> bool:
    """Whether a latency row's streams were held: p95 under 1 s and no segment dropped."""
    return bool(row["p95_ms"] < 1000 and row["dropped"] == 0)
