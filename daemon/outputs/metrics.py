"""Prometheus metrics on a loopback port."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

STATES = ("connecting", "live", "backoff", "failed", "finished", "stopped")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.server: Any = None  # the HTTP server and its thread, once serving
        self.server_thread: Any = None
        self.segments = Counter("calm_segments_total", "Segments cut by the segmenter", ["stream"], registry=r)
        self.labels = Counter("calm_labels_total", "Labels published", ["stream", "label"], registry=r)
        self.dropped = Counter(
            "calm_dropped_segments_total", "Segments dropped by backpressure", ["stream"], registry=r
        )
        self.failed = Counter("calm_failed_segments_total", "Segments whose inference failed", ["stream"], registry=r)
        self.unclassified = Counter(
            "calm_unclassified_segments_total", "Segments left unclassified when calmd stopped", ["stream"], registry=r
        )
        self.reconnects = Counter("calm_reconnects_total", "Source reconnect attempts", ["stream"], registry=r)
        self.queue_depth = Gauge("calm_queue_depth", "Segments waiting for the model", registry=r)
        self.state = Gauge("calm_stream_state", "1 for the stream's current state", ["stream", "state"], registry=r)
        self.calls = Counter("calm_calls_total", "Calls accepted by a telephony listener", ["protocol"], registry=r)
        self.calls_refused = Counter(
            "calm_calls_refused_total", "Connections refused (busy, token, bad handshake)", ["protocol", "reason"],
            registry=r,
        )  # fmt: skip
        self.call_errors = Counter(
            "calm_call_errors_total", "Calls closed by bad input or a peer error", ["protocol", "reason"], registry=r
        )
        self.calls_active = Gauge("calm_calls_active", "Calls in progress", ["protocol"], registry=r)
        self.call_verdicts = Counter(
            "calm_call_verdicts_total", "Final call verdicts", ["protocol", "decision"], registry=r
        )
        self.page_dropped = Counter(
            "calm_page_clients_dropped_total", "Live page browsers cut off for falling behind", registry=r
        )
        self.clips_saved = Counter("calm_clips_saved_total", "Detection clips written", registry=r)
        self.clips_deleted = Counter(
            "calm_clips_deleted_total", "Detection clips removed by retention", ["reason"], registry=r
        )  # reason: age | quota
        self.clips_refused = Counter(
            "calm_clips_refused_total", "Detection clips not written", ["reason"], registry=r
        )  # reason: quota | disk | audio | error
        self.clips_bytes = Gauge("calm_clips_bytes", "Bytes used by clips and sidecars under [clips] dir", registry=r)
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self.vad_seconds = Histogram("calm_vad_seconds", "Segmenter time per chunk", buckets=buckets, registry=r)
        self.inference_seconds = Histogram(
            "calm_inference_seconds", "Model time per batch", buckets=buckets, registry=r
        )
        self.latency_seconds = Histogram(
            "calm_end_to_end_seconds", "Segment end to label published", buckets=buckets, registry=r
        )

    def set_state(self, stream: str, state: str) -> None:
        for s in STATES:
            self.state.labels(stream, s).set(1.0 if s == state else 0.0)

    def serve(self, host: str, port: int) -> int:
        self.server, self.server_thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self.server.server_port)

    def close(self) -> None:
        """Stop serving and end the server's thread (none may outlive calmd's main thread)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server_thread.join(5)
