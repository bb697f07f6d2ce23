"""calmd's pipeline: sources -> segmenters -> bounded queue -> one model worker -> publisher."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calm_core.audio.conditioning import condition
from calm_core.backbones import LoadOptions, load_backbone
from calm_core.backbones.base import Backbone
from calm_core.errors import CalmError
from calm_core.fingerprint import file_sha256
from calm_core.messages.events import Event, LabelEvent, Scored, StatusEvent, utc_iso
from calm_core.method.classifier import UNKNOWN, CalmClassifier

from ..capture.segment_queue import Queued, SegmentQueue
from ..capture.segmenter import Segment
from ..capture.sources import Source, make_source
from ..config import DaemonConfig
from ..outputs.calls import CallAggregator, Policy, decision_policy
from ..outputs.clips import ClipRecorder
from ..outputs.detections import Detections, check_rule_labels
from ..outputs.metrics import Metrics
from ..outputs.publisher import Publisher
from ..outputs.sinks import Sink, StreamInfo
from .streams import StreamHandle, StreamRegistry, StreamStats

log = logging.getLogger("calmd")

THREAD_STOP_S = 5.0  # on stop: how long capture threads and the heartbeat get to end once asked


@dataclass
class Model:
    """A backbone and the classifier that reads it: swapped as one on reload."""

    backbone: Backbone
    classifier: CalmClassifier
    name: str  # the version's name (e.g. "garden-v3"), or the file's stem when no review knows the file
    digest: str  # sha256 of the classifier file: the `fingerprint` every label and status carries
    lock: threading.Lock = field(default_factory=threading.Lock)
    policy: Policy | None = None  # per-call decisions, when listeners are configured


class Service:
    def __init__(
        self,
        cfg: DaemonConfig,
        metrics: Metrics | None = None,
        backbone: Backbone | None = None,
        version_name: Callable[[str], str | None] | None = None,
    ):
        """backbone: one already loaded (benchmarks, tests); None loads the one cfg.model names.
        version_name: the review's name for a classifier file's sha256 (None: a file it does not know)."""
        self.cfg = cfg
        self.version_name = version_name
        self.metrics = metrics or Metrics()
        self.started = time.monotonic()
        self.streams = StreamRegistry(cfg.streams, cfg.vad, self.metrics)
        self.status_lock = threading.Lock()  # the status sequence number
        self.queue = SegmentQueue(cfg.inference.queue_size, self._dropped)
        self.model = self._load_model(cfg.model.classifier.as_posix(), backbone)
        self.publisher = Publisher(cfg.publish)
        self.sources: list[Source] = []
        self.listeners: list[Any] = []  # telephony listeners: each opens streams through open_stream()
        self.sinks: list[Sink] = []  # consumers of labels and stream lifecycles beside the publisher
        clips = None
        if cfg.clips.enabled:  # a sink for the audio, asked for each ended event's clip
            clips = ClipRecorder(cfg.clips, cfg.events.end_after_s, self.metrics, self._classifier)
            self.sinks.append(clips)
        self.detections = Detections(cfg.events, self.emit, clips.save if clips else None)
        self.page: Any = None  # the live page (calmd.page.LivePage) when [page] is enabled
        self.stopping = threading.Event()
        self.abandon = threading.Event()  # set once the drain bound has passed: the worker takes no new batch
        # A batch's results and stop() giving up on it exclude each other, so that every segment ends up
        # counted exactly once: labelled, failed, or unclassified.
        self.results_lock = threading.Lock()
        self.in_model: dict[int, Queued] = {}  # id -> segment, the batch the worker is classifying
        self.gave_up = False
        self.worker_beat = time.monotonic()  # the watchdog pings only while this moves
        self.consecutive_failures = 0
        self.fatal: str | None = None
        self.error: str | None = None
        self.status_seq = 0
        self.worker = threading.Thread(target=self._work, name="model-worker", daemon=True)
        self.heartbeat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    # ---- model -------------------------------------------------------------------------------
    def _load_model(self, classifier_path: str, backbone: Backbone | None = None) -> Model:
        clf, digest = _load_classifier(classifier_path)
        if backbone is None:
            m = self.cfg.model
            # Unset precision: the one the classifier was fitted with, so its features match.
            dtype = m.dtype or clf.fingerprint.components.get("precision")
            options = LoadOptions(device=m.device, dtype=dtype, load_layers=clf.exit_layer + 1)  # type: ignore[arg-type]
            backbone = load_backbone(m.path, options)
        clf.check_features(backbone.fingerprint, self.cfg.model.path)
        if clf.exit_layer >= backbone.loaded_layers:
            raise CalmError(
                f"{classifier_path}: needs layers up to {clf.exit_layer}, but only {backbone.loaded_layers} are "
                "loaded; restart calmd to load more"
            )
        name = (self.version_name(digest) if self.version_name else None) or Path(classifier_path).name.split(".")[0]
        check_rule_labels(self.cfg.events, clf.classes, name)  # ValueError: reload refuses it like any other
        policy = None
        if self.cfg.listeners.any():  # ValueError when the positive class is not one of the classifier's
            calls = self.cfg.calls
            policy = decision_policy(clf.labels, clf.info, name, digest, calls.positive, calls.threshold)
        return Model(backbone, clf, name, digest, policy=policy)

    def _classifier(self) -> tuple[str, str]:
        model = self.model
        return model.name, model.digest

    def call_policy(self) -> Policy:
        policy = self.model.policy
        assert policy is not None
        return policy

    def reload(self) -> bool:
        """SIGHUP: load and check the classifier file again; the old one stays if the new one is refused."""
        path = self.cfg.model.classifier.as_posix()
        try:
            new = self._load_model(path, self.model.backbone)
        except (CalmError, OSError, ValueError) as e:
            self.error = f"reload refused: {e}"
            log.error("%s", self.error)
            self.publish_status()
            return False
        with self.model.lock:
            self.model = new
        self.error = None
        log.info("reloaded %s: %s %s (exit layer %d)", path, new.name, new.digest[:12], new.classifier.exit_layer)
        self.publish_status()
        return True

    # ---- capture -----------------------------------------------------------------------------
    def start(self) -> None:
        if self.cfg.page.enabled:  # first: a taken port stops calmd before any listener has bound
            from ..page.live import LivePage

            self.page = LivePage(self.cfg.page, self.cfg.clips.dir if self.cfg.clips.enabled else None, self.metrics)
            self.sinks.append(self.page.hub)
            self.page.start()
        if self.cfg.listeners.any():
            from ..telephony import make_listeners

            self.sinks.append(CallAggregator(self.emit, self.call_policy, self.metrics))
            self.listeners = make_listeners(self.cfg.listeners, self, self.metrics)
            for n, listener in enumerate(self.listeners):
                try:
                    listener.start()  # OSError when its address is taken: calmd does not start
                except OSError:
                    for started in self.listeners[:n]:
                        started.stop(THREAD_STOP_S)
                    raise
        for s in self.cfg.streams:
            source = make_source(s, self._sink(s.id), self._state_cb(s.id))
            self.sources.append(source)
        self.worker.start()
        self.heartbeat.start()
        spread = self.cfg.inference.start_spread_s
        if spread is None:
            spread = self.cfg.vad.hop_s if self.cfg.vad.mode == "none" and len(self.sources) > 1 else 0.0
        for n, source in enumerate(self.sources):
            source.start(spread * n / len(self.sources))

    def _sink(self, stream: str) -> Any:
        segmenter = self.streams.segmenters[stream]
        stats = self.streams.stats[stream]
        cfg = next((s for s in self.cfg.streams if s.id == stream), None)
        blocking = cfg is not None and cfg.type == "file" and not cfg.realtime

        def sink(chunk: np.ndarray) -> None:
            now = time.time()
            if stats.t0_wall is None:
                # Sources deliver a chunk when its last sample arrives: sample 0 was captured earlier.
                stats.t0_wall = now - chunk.size / 16_000
            stats.audio_s += chunk.size / 16_000
            for consumer in self.sinks:
                consumer.audio(stream, chunk, stats.audio_s)
            t = time.perf_counter()
            segments = list(segmenter.feed(chunk))
            self.metrics.vad_seconds.observe(time.perf_counter() - t)
            for seg in segments:
                self._enqueue(seg, now, blocking)

        return sink

    def _enqueue(self, seg: Segment, end_wall: float, blocking: bool = False) -> None:
        self.streams.count(seg.stream, "segments")
        if not self.queue.put(Queued(seg, end_wall), wait=self.stopping if blocking else None):
            self._unclassified([seg])  # calmd is stopping: the queue is closed or full for good
        self.metrics.queue_depth.set(len(self.queue))

    def _state_cb(self, stream: str) -> Any:
        def on_state(state: str, error: str | None) -> None:
            stats = self.streams.stats[stream]
            if state == "finished" or (state == "failed" and stats.info is not None):
                for seg in self.streams.segmenters[stream].flush():
                    self._enqueue(seg, time.time())
            if state == "backoff":
                self.metrics.reconnects.labels(stream).inc()
            stats.state = state
            if error is not None:
                stats.last_error = error
            if stats.info is None:  # a state gauge per call would grow without bound
                self.metrics.set_state(stream, state)
            log.debug("stream %s: %s%s", stream, state, f" ({error})" if error else "")

        return on_state

    def _dropped(self, item: Queued) -> None:
        self.streams.count(item.segment.stream, "dropped")
        log.debug("dropped segment %s@%.2f: queue full", item.segment.stream, item.segment.start_s)

    def _unclassified(self, segments: list[Segment]) -> None:
        for seg in segments:
            self.streams.count(seg.stream, "unclassified")

    # ---- streams that come and go (one per call leg, opened by a listener) ---------------------------
    def open_stream(self, info: StreamInfo) -> StreamHandle:
        """Register a stream that flows through the same segmenter, queue and worker as a configured one.
        ValueError when the id is taken by a configured or still running stream."""
        self.streams.open(info)
        for sink in self.sinks:
            sink.stream_opened(info)
        return StreamHandle(self._sink(info.stream), self._state_cb(info.stream))

    def _retire_ended(self) -> None:
        """Listener streams that ended and whose every segment is accounted for leave the registry; sinks
        hear of it after the stream's last label (both happen on the worker thread, in that order)."""

        def retired(sid: str, stats: StreamStats) -> None:
            assert stats.info is not None
            self.detections.close(sid, stats.t0_wall or time.time())  # its last label is in
            for sink in self.sinks:
                sink.stream_ended(stats.info, stats.audio_s, stats.last_error if stats.state == "failed" else None)

        self.streams.retire_ended(retired)

    # ---- inference -----------------------------------------------------------------------------
    def _work(self) -> None:
        while not self.abandon.is_set() and not (self.stopping.is_set() and len(self.queue) == 0):
            self.worker_beat = time.monotonic()
            batch = self.queue.get_batch(self.cfg.inference.batch_size, timeout=0.2)
            self.metrics.queue_depth.set(len(self.queue))
            if batch:
                with self.results_lock:
                    if self.gave_up:  # stop() closed the queue after this batch left it
                        self._unclassified([q.segment for q in batch])
                        return
                    self.in_model = {id(q): q for q in batch}
                self._classify(batch)
            self._retire_ended()
            if self.cfg.events.enabled:
                self._expire_events()
            if self.fatal:
                return

    def _classify(self, batch: list[Queued]) -> None:
        with self.model.lock:
            model = self.model
        clf = model.classifier
        t = time.perf_counter()
        try:
            # Live audio has been through its real channel already; it gets the classifier's conditioning only.
            conditioning = str(clf.info.get("conditioning", "none"))
            clips = [condition(q.segment.samples, conditioning) for q in batch]
            feats = model.backbone.head_activations(clips, exit_layer=clf.exit_layer)
        except torch.cuda.OutOfMemoryError:
            if len(batch) > 1:
                log.warning("CUDA out of memory on a batch of %d; retrying in halves", len(batch))
                torch.cuda.empty_cache()
                half = len(batch) // 2
                self._classify(batch[:half])
                self._classify(batch[half:])
            else:
                self._failed(batch, "CUDA out of memory on a single segment")
            return
        except (RuntimeError, ValueError) as e:
            self._failed(batch, f"{e.__class__.__name__}: {e}")
            return
        elapsed = time.perf_counter() - t
        self.metrics.inference_seconds.observe(elapsed)
        self.consecutive_failures = 0
        predictions = clf.predict(feats)
        with self.results_lock:
            if self._left_model(batch):
                for q, pred in zip(batch, predictions):
                    share = q.segment.samples.size / sum(x.segment.samples.size for x in batch)
                    self._publish_label(q, pred, model, elapsed * share)

    def _left_model(self, batch: list[Queued]) -> bool:
        """Under results_lock: take the batch off the in-model list; False if stop() already gave up on it."""
        if self.gave_up:
            return False
        for q in batch:
            self.in_model.pop(id(q), None)
        return True

    def _failed(self, batch: list[Queued], reason: str) -> None:
        with self.results_lock:
            if not self._left_model(batch):
                return
        self.consecutive_failures += 1
        for q in batch:
            self.streams.count(q.segment.stream, "failed")
        log.error("inference failed for %d segment(s): %s", len(batch), reason)
        if self.consecutive_failures >= self.cfg.inference.max_consecutive_failures:
            self.fatal = f"{self.consecutive_failures} consecutive inference failures; last: {reason}"
            log.critical("%s", self.fatal)
            self.stopping.set()

    def _publish_label(self, q: Queued, pred: Any, model: Model, model_s: float) -> None:
        seg = q.segment
        stats = self.streams.stats[seg.stream]
        t0 = stats.t0_wall or q.end_wall
        now = time.time()
        with self.streams.lock:
            seq = stats.seq
            stats.seq += 1
            stats.model_s += model_s
        event = LabelEvent(
            stream=seg.stream,
            seq=seq,
            start_s=round(seg.start_s, 3),
            end_s=round(seg.end_s, 3),
            start_utc=utc_iso(t0 + seg.start_s),
            end_utc=utc_iso(t0 + seg.end_s),
            label=pred.label,
            best=pred.best,
            score=pred.score,
            margin=pred.margin,
            top=[Scored(k, v) for k, v in pred.top(3)],
            unknown=pred.label == UNKNOWN,
            classifier=model.name,
            fingerprint=model.digest,
            exit_layer=model.classifier.exit_layer,
            latency_ms=max(0.0, (now - q.end_wall) * 1e3),
        )
        self.emit(event)
        for sink in self.sinks:
            sink.label(event, stats.info)
        self.metrics.labels.labels(self.streams.metric_stream(seg.stream), pred.label).inc()
        self.metrics.latency_seconds.observe(max(0.0, now - q.end_wall))
        log.debug("%s %.2f-%.2f s: %s (%.3f)", seg.stream, seg.start_s, seg.end_s, pred.label, pred.score)
        if self.cfg.events.enabled:
            top = tuple((k, round(v, 4)) for k, v in pred.top(3))
            self.detections.label(seg.stream, t0, pred.label, pred.score, seg.start_s, seg.end_s, top)

    def _expire_events(self, final: bool = False) -> None:
        """End events not heard for end_after_s, and those of streams that ended; final: every open one."""
        idle = len(self.queue) == 0
        for stream, stats in list(self.streams.stats.items()):  # listeners add streams from their own threads
            ended = final or (stats.state in ("finished", "stopped") and idle)
            self.detections.expire(stream, stats.t0_wall or time.time(), stats.audio_s, ended)

    # ---- status and shutdown -----------------------------------------------------------------
    def status(self) -> StatusEvent:
        streams = self.streams.statuses({s.cfg.id: s.reconnects for s in self.sources})
        model = self.model
        clf = model.classifier
        with self.status_lock:  # heartbeats and reloads publish from different threads
            seq = self.status_seq
            self.status_seq += 1
        return StatusEvent(
            seq=seq,
            instance=self.cfg.publish.instance_id,
            time_utc=utc_iso(time.time()),
            uptime_s=round(time.monotonic() - self.started, 3),
            queue_depth=len(self.queue),
            classifier=model.name,
            fingerprint=model.digest,
            exit_layer=clf.exit_layer,
            streams=streams,
            error=self.fatal or self.error,
        )

    def publish_status(self) -> None:
        self.emit(self.status())

    def emit(self, event: Event) -> None:
        """Publish one message on ZeroMQ, then hand it to every sink (from the caller's thread)."""
        self.publisher.publish(event)
        for sink in self.sinks:
            sink.event(event)

    def _beat(self) -> None:
        while not self.stopping.wait(self.cfg.publish.heartbeat_s):
            self.publish_status()

    def worker_alive(self, within_s: float) -> bool:
        return self.worker.is_alive() and time.monotonic() - self.worker_beat < within_s

    def all_finished(self) -> bool:
        configured = [self.streams.stats[s.id] for s in self.cfg.streams]
        if not configured:  # listeners only: calls keep coming, never "done"
            return False
        return all(s.state in ("finished", "stopped") for s in configured) and len(self.queue) == 0

    def stop(self, drain_timeout_s: float | None = None, forward_grace_s: float | None = None) -> list[str]:
        """Stop capture and classify what is queued for at most drain_timeout_s; then take no new batch and
        give the one in the model forward_grace_s to finish. Every segment left is counted as unclassified
        (log, metrics and the last status, which is published before the socket closes).

        Returns the names of the threads still running (empty on a clean stop). The interpreter must not
        be torn down while one runs: a thread inside native code (a torch forward, soxr, PortAudio) that
        wakes up during finalisation is ended by pthread_exit, whose unwinding through C++ frames aborts
        the process ("terminate called without an active exception", SIGABRT)."""
        drain_s = self.cfg.inference.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        grace_s = self.cfg.inference.forward_grace_s if forward_grace_s is None else forward_grace_s
        t0 = time.monotonic()
        for source in self.sources:
            source.stop()
        for listener in self.listeners:  # hangs up every call: their last segments are queued before the drain
            listener.stop(THREAD_STOP_S)
        self.stopping.set()
        _join(self.worker, drain_s)
        if self.worker.is_alive():
            self.abandon.set()
            with self.results_lock:
                in_model = len(self.in_model)
            log.warning(
                "drain bound of %.1f s reached with %d segment(s) queued; taking no new batch and waiting up to "
                "%.1f s for the %d segment(s) in the model", drain_s, len(self.queue), grace_s, in_model,
            )  # fmt: skip
            _join(self.worker, grace_s)
        threads = [s.thread for s in self.sources] + [self.heartbeat]
        deadline = time.monotonic() + THREAD_STOP_S
        for thread in threads:
            _join(thread, deadline - time.monotonic())
        left = self.queue.close()
        with self.results_lock:  # from here on, results of a forward still running are not published
            self.gave_up = True
            left += list(self.in_model.values())
            self.in_model.clear()
        self._unclassified([q.segment for q in left])
        self._retire_ended()  # final call verdicts for calls whose last segments went unclassified
        if self.cfg.events.enabled and not self.worker.is_alive():
            # an event still open ends with calmd (its end and clip before the last status), whether or not
            # the worker saw its stream stop; a worker still in a forward owns the detections: leave them
            self._expire_events(final=True)
        unclassified = self.streams.unclassified()
        elapsed = time.monotonic() - t0
        if unclassified:
            log.warning("stopped with %d segment(s) unclassified after %.1f s", unclassified, elapsed)
        log.info("stopped in %.2f s", elapsed)
        self.publish_status()
        self.publisher.close()  # waits (at most the socket's linger) for the last status to leave
        if self.page is not None:  # after the last status, which the page shows too
            self.page.close()
        return [t.name for t in [self.worker, *threads] if t.is_alive()]


def _load_classifier(path: str, tries: int = 3) -> tuple[CalmClassifier, str]:
    """The classifier in a file and the file's sha256, both of one and the same file: a file replaced between
    the hash and the load (the page installs by rename) is read again."""
    for _ in range(tries):
        before = file_sha256(path)
        clf = CalmClassifier.load(path)
        if file_sha256(path) == before:
            return clf, before
    raise CalmError(f"{path}: replaced while being read, {tries} times in a row; send SIGHUP again")


def _join(thread: threading.Thread, timeout: float) -> None:
    if thread.ident is not None:  # started
        thread.join(max(0.0, timeout))
