"""calmd configuration: TOML, validated once at start; unknown keys and bad values name the key."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from calm_core.errors import CalmError

from . import configbase
from .configbase import Section as _Section
from .configbase import check_endpoint
from .page.auth import HashFormatError, parse_hash
from .telephony.config import CallsSection, ListenersSection


class ConfigError(CalmError, configbase.ConfigError):
    """A configuration file or flag that calmd cannot run with."""


class ModelSection(_Section):
    path: str  # model folder, or a hub id already in the local cache
    classifier: Path
    device: str = "cpu"
    dtype: Literal["fp32", "fp16", "bf16", "nf4"] | None = None  # None: the classifier's own precision


class InferenceSection(_Section):
    batch_size: Annotated[int, Field(ge=1, le=256)] = 4
    queue_size: Annotated[int, Field(ge=1, le=100_000)] = 64
    max_consecutive_failures: Annotated[int, Field(ge=1)] = 5  # then exit non-zero so systemd restarts
    drain_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0  # SIGTERM: finish queued work within this
    forward_grace_s: Annotated[float, Field(gt=0, le=300)] = 5.0  # then wait this long for the batch in the model
    # Configured streams start spread evenly over this many seconds. Fixed windows (vad mode "none") of
    # streams started together all end together: a burst the worker must absorb at once. Spread over the
    # hop, the same load arrives evenly (docs/performance.md, section 5). None: vad.hop_s in mode "none"
    # with two or more configured streams, else 0.
    start_spread_s: Annotated[float, Field(ge=0, le=3600)] | None = None


class PublishSection(_Section):
    endpoint: str = "tcp://127.0.0.1:5556"
    heartbeat_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    send_hwm: Annotated[int, Field(ge=1)] = 1000  # per-subscriber queue; a slow subscriber loses past this
    curve_secret_key: Path | None = None  # server key pair (zmq.auth certificate file)
    curve_allowed_keys: Path | None = None  # folder of client public certificates
    # names this calmd in calm.status (the key of calm-proxy's last-value cache); None: "<hostname>/<endpoint>"
    instance: Annotated[str, Field(min_length=1, max_length=200)] | None = None

    @property
    def instance_id(self) -> str:
        return self.instance or f"{socket.gethostname()}/{self.endpoint}"

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return check_endpoint(v, ("tcp", "ipc", "inproc"))

    @model_validator(mode="after")
    def _curve_pair(self) -> PublishSection:
        if (self.curve_secret_key is None) != (self.curve_allowed_keys is None):
            raise ValueError("curve_secret_key and curve_allowed_keys must be set together")
        return self


class MetricsSection(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9108

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v


class PageSection(_Section):
    """The live page (daemon/page): its own port, since prometheus_client owns the metrics server."""

    enabled: bool = False
    host: str = "127.0.0.1"  # loopback: binding wider is an explicit choice
    port: Annotated[int, Field(ge=0, le=65535)] = 9110
    max_clients: Annotated[int, Field(ge=1, le=1000)] = 16  # browsers on /events at once; more get 503
    # Writes (the review's verdicts, Apply, Undo) need a login with this password; unset: the page is read-only.
    password_hash: str | None = None  # `calmd --hash-password` prints it (salted scrypt)
    session_hours: Annotated[float, Field(gt=0, le=720)] = 12.0  # a login lasts this long (memory only)
    secure_cookie: bool = False  # true when browsers reach the page over https (a TLS proxy in front)
    # On loopback, writes whose Host is not a loopback name are refused (DNS rebinding); a TLS proxy in front
    # that passes on its own name lists it here.
    allowed_hosts: list[str] = []
    login_max_failures: Annotated[int, Field(ge=1, le=1000)] = 5  # per client address within login_window_s;
    login_window_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0  # past it: 429 with Retry-After
    review_dir: Path | None = None  # classifier versions, taught clips, journal; None: beside model.classifier

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v

    @field_validator("password_hash")
    @classmethod
    def _password_hash(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_hash(v)
            except HashFormatError as e:
                raise ValueError(f"not a password hash: {e}") from None
        return v


class VadSection(_Section):
    mode: Literal["webrtc", "energy", "none"] = "webrtc"
    aggressiveness: Annotated[int, Field(ge=0, le=3)] = 2
    frame_ms: Literal[10, 20, 30] = 30
    pre_roll_ms: Annotated[int, Field(ge=0, le=5000)] = 300
    hangover_ms: Annotated[int, Field(ge=0, le=10_000)] = 400
    min_segment_s: Annotated[float, Field(ge=0.1, le=30)] = 0.5
    max_segment_s: Annotated[float, Field(gt=0, le=30)] = 10.0
    overlap_s: Annotated[float, Field(ge=0)] = 0.0
    energy_gate_dbfs: Annotated[float, Field(le=0)] | None = None  # frames quieter than this are never voiced
    # mode "energy": a frame is active this far above the noise floor (tracked: falls at once, rises slowly)
    energy_above_floor_db: Annotated[float, Field(gt=0, le=60)] = 12.0
    floor_rise_db_per_s: Annotated[float, Field(gt=0, le=60)] = 3.0
    window_s: Annotated[float, Field(ge=0.1, le=30)] = 2.0  # mode "none": fixed windows
    hop_s: Annotated[float, Field(gt=0, le=30)] = 2.0

    @model_validator(mode="after")
    def _lengths(self) -> VadSection:
        if self.min_segment_s > self.max_segment_s:
            raise ValueError(
                f"min_segment_s ({self.min_segment_s}) must not exceed max_segment_s ({self.max_segment_s})"
            )
        if self.hop_s > self.window_s:
            raise ValueError(f"hop_s ({self.hop_s}) must not exceed window_s ({self.window_s})")
        if self.overlap_s >= self.max_segment_s:
            raise ValueError(f"overlap_s ({self.overlap_s}) must be shorter than max_segment_s ({self.max_segment_s})")
        return self


UNKNOWN = "unknown"  # the label of an abstaining classifier (calm_core.method.classifier.UNKNOWN, without torch)


class LabelRule(_Section):
    """[events.labels."<label>"]: overrides of the [events] defaults for one label; unset keys inherit them."""

    min_score: Annotated[float, Field(ge=0, le=1)] | None = None
    confirm_hits: Annotated[int, Field(ge=1, le=100)] | None = None
    confirm_window_s: Annotated[float, Field(gt=0, le=3600)] | None = None


class EventsSection(_Section):
    enabled: bool = False  # also publish label start/end events on calm.event.<stream>
    end_after_s: Annotated[float, Field(gt=0)] = 3.0
    # A label counts as heard only with a score of at least min_score; an event starts once a label has been
    # heard confirm_hits times within confirm_window_s of stream time (see daemon/outputs/detections.py).
    min_score: Annotated[float, Field(ge=0, le=1)] = 0.0
    confirm_hits: Annotated[int, Field(ge=1, le=100)] = 1
    confirm_window_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    labels: dict[str, LabelRule] = {}

    @field_validator("labels")
    @classmethod
    def _label_names(cls, v: dict[str, LabelRule]) -> dict[str, LabelRule]:
        for name in v:
            if not name or name == UNKNOWN:
                raise ValueError(
                    f"{name!r} cannot have a rule: name one of the classifier's labels ({UNKNOWN!r} is never an event)"
                )
        return v


class ClipsSection(_Section):
    """Saved detection clips: the audio of each event with a JSON sidecar, under `dir` (see daemon/outputs/clips.py)."""

    enabled: bool = False
    dir: Path = Path("/var/lib/calm/clips")
    format: Literal["flac", "wav", "ogg"] = "flac"  # ogg: Opus
    pre_roll_s: Annotated[float, Field(ge=0, le=60)] = 2.0
    post_roll_s: Annotated[float, Field(ge=0, le=60)] = 1.0  # at most events.end_after_s
    max_clip_s: Annotated[float, Field(gt=0, le=600)] = 30.0  # a longer event keeps its last max_clip_s
    max_age_days: Annotated[float, Field(gt=0)] | None = 30.0  # None: kept until the quota needs the room
    max_total_mb: Annotated[float, Field(gt=0)] = 1000.0  # clips and sidecars together never exceed this
    min_free_mb: Annotated[float, Field(ge=0)] = 500.0  # a clip that would leave less free disk is not written


class StreamSection(_Section):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    type: Literal["file", "rtsp", "mic", "stdin"]
    path: Path | None = None  # file
    loop: bool = False  # file: start again at the end
    realtime: bool = True  # file: pace at real time (false: as fast as the model takes it)
    url: str | None = None  # rtsp
    transport: Literal["tcp", "udp"] = "tcp"  # rtsp
    device: str | int | None = None  # mic: name or index (None: the default input)
    sample_rate: Annotated[int, Field(ge=8000, le=192_000)] | None = None  # stdin: raw s16le rate; mic: force
    channels: Annotated[int, Field(ge=1, le=32)] = 1  # stdin
    stall_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    backoff_initial_s: Annotated[float, Field(gt=0)] = 1.0
    backoff_max_s: Annotated[float, Field(gt=0)] = 60.0

    @model_validator(mode="after")
    def _per_type(self) -> StreamSection:
        need = {"file": "path", "rtsp": "url"}.get(self.type)
        if need and getattr(self, need) is None:
            raise ValueError(f"stream {self.id!r} of type {self.type!r} needs `{need}`")
        if self.type == "rtsp" and self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("rtsp", "rtsps") or not parts.hostname:
                raise ValueError(f"stream {self.id!r}: url {self.url!r} must look like rtsp://host[:port]/path")
        if self.type == "stdin" and self.sample_rate is None:
            raise ValueError(f"stream {self.id!r} of type 'stdin' needs `sample_rate` of its raw s16le input")
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError(f"stream {self.id!r}: backoff_initial_s must not exceed backoff_max_s")
        return self


class DaemonConfig(_Section):
    model: ModelSection
    inference: InferenceSection = InferenceSection()
    publish: PublishSection = PublishSection()
    metrics: MetricsSection = MetricsSection()
    page: PageSection = PageSection()
    vad: VadSection = VadSection()
    events: EventsSection = EventsSection()
    clips: ClipsSection = ClipsSection()
    listeners: ListenersSection = ListenersSection()  # telephony: one stream per call leg
    calls: CallsSection = CallsSection()
    streams: list[StreamSection] = []

    @model_validator(mode="after")
    def _unique_ids(self) -> DaemonConfig:
        if not self.streams and not self.listeners.any():
            raise ValueError("configure at least one [[streams]] entry or one [listeners.<protocol>] section")
        ids = [s.id for s in self.streams]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"stream ids must be unique; repeated: {dupes}")
        if sum(s.type == "stdin" for s in self.streams) > 1:
            raise ValueError("at most one stream can read stdin")
        return self

    @model_validator(mode="after")
    def _clips_need_events(self) -> DaemonConfig:
        if not self.clips.enabled:
            return self
        if not self.events.enabled:
            raise ValueError("clips.enabled needs events.enabled = true: a clip is saved when an event ends")
        if self.clips.post_roll_s > self.events.end_after_s:
            # the end event leaves end_after_s after the label was last heard: later audio is not there yet
            raise ValueError(
                f"clips.post_roll_s ({self.clips.post_roll_s}) must not exceed events.end_after_s "
                f"({self.events.end_after_s})"
            )
        return self


def parse_config(data: dict[str, Any], source: str = "config") -> DaemonConfig:
    return configbase.validate(DaemonConfig, data, source, ConfigError)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> DaemonConfig:
    """Read and validate a TOML file; overrides are dotted keys ("model.device") from the command line."""
    data, source = configbase.read_toml(Path(path), overrides, ConfigError)
    return parse_config(data, source)
