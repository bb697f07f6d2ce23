"""calm-mqtt configuration: TOML and flags, validated once at start; unknown keys and bad values name the key."""

from __future__ import annotations

import fnmatch
import re
import socket
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from ..configbase import ConfigError, check_endpoint, read_toml, validate
from ..configbase import Section as _Section

# A topic prefix (one or more levels, e.g. "home/calm"): no MQTT wildcards, no leading "$" or "/".
TOPIC_PREFIX = re.compile(r"^[^#+$/\x00][^#+\x00]*$")


def check_topic_prefix(v: str) -> str:
    if not TOPIC_PREFIX.match(v) or v.endswith("/"):
        raise ValueError(f"{v!r}: a topic prefix without '#', '+', a leading '$' or '/', or a trailing '/'")
    return v


class ZmqSection(_Section):
    # calmd's publish.endpoint, or calm-proxy's --backend for many calmd behind one endpoint
    endpoints: Annotated[list[str], Field(min_length=1)] = ["tcp://127.0.0.1:5556"]
    curve_server_key: Path | None = None  # calmd's (or the proxy's) public certificate
    curve_client_cert: Path | None = None  # this bridge's certificate, with its secret key

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        return [check_endpoint(endpoint, ("tcp", "ipc")) for endpoint in v]

    @model_validator(mode="after")
    def _curve_pair(self) -> ZmqSection:
        if (self.curve_server_key is None) != (self.curve_client_cert is None):
            raise ValueError("curve_server_key and curve_client_cert must be set together")
        return self


class TlsSection(_Section):
    enabled: bool = False
    ca_certs: Path | None = None  # CA bundle that signed the broker's certificate; None: the system's
    certfile: Path | None = None  # client certificate, for brokers that require one
    keyfile: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsSection:
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile needs certfile")
        if not self.enabled and (self.ca_certs or self.certfile):
            raise ValueError("ca_certs/certfile/keyfile are set but enabled = false")
        return self


class BrokerSection(_Section):
    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] | None = None  # None: 1883, or 8883 with TLS
    username: Annotated[str, Field(min_length=1)] | None = None
    password: str | None = None
    password_file: Path | None = None  # first line is the password (keeps it out of the config)
    client_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None  # None: calm-mqtt-<hostname>
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    connect_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0  # at start: no CONNACK by then is fatal
    reconnect_min_s: Annotated[int, Field(ge=1, le=600)] = 1  # later disconnects: the wait doubles from min
    reconnect_max_s: Annotated[int, Field(ge=1, le=3600)] = 60  # to max seconds between attempts
    tls: TlsSection = TlsSection()

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else (8883 if self.tls.enabled else 1883)

    @property
    def effective_client_id(self) -> str:
        return self.client_id or f"calm-mqtt-{socket.gethostname()}"

    def read_password(self) -> str | None:
        if self.password_file is None:
            return self.password
        try:
            lines = self.password_file.read_text().splitlines()
        except OSError as e:
            raise ConfigError(f"broker.password_file {str(self.password_file)!r}: cannot read ({e})") from None
        if not lines or not lines[0]:
            raise ConfigError(f"broker.password_file {str(self.password_file)!r}: the first line is empty")
        return lines[0]

    @model_validator(mode="after")
    def _credentials(self) -> BrokerSection:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("a password needs a username")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s ({self.reconnect_min_s}) must not exceed reconnect_max_s ({self.reconnect_max_s})"
            )
        return self


class TopicsSection(_Section):
    prefix: str = "calm"  # every topic calm-mqtt publishes starts with <prefix>/
    qos: Annotated[int, Field(ge=0, le=2)] = 1
    # events and call verdicts held while the broker is away; past this new ones are dropped and counted
    queue_size: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    stale_after_s: Annotated[float, Field(gt=0)] = 30.0  # a stream no calm.status mentioned for this long: offline
    status_max_age_s: Annotated[float, Field(gt=0)] = 600.0  # an instance silent this long leaves <prefix>/status

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return check_topic_prefix(v)


class DiscoverySection(_Section):
    enabled: bool = True  # Home Assistant MQTT discovery
    prefix: str = "homeassistant"  # Home Assistant's discovery_prefix
    # streams that get a Home Assistant device (shell-style patterns); call legs never do
    streams: Annotated[list[str], Field(min_length=1)] = ["*"]

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return check_topic_prefix(v)

    def wants(self, stream: str) -> bool:
        return self.enabled and any(fnmatch.fnmatchcase(stream, pattern) for pattern in self.streams)


class BridgeConfig(_Section):
    zmq: ZmqSection = ZmqSection()
    broker: BrokerSection = BrokerSection()
    topics: TopicsSection = TopicsSection()
    discovery: DiscoverySection = DiscoverySection()


def parse_bridge_config(data: dict[str, Any], source: str = "config") -> BridgeConfig:
    return validate(BridgeConfig, data, source, ConfigError)


def load_bridge_config(path: Path | None, overrides: dict[str, Any] | None = None) -> BridgeConfig:
    """The TOML file (None: defaults only) with dotted overrides ("broker.tls.enabled") from the command line."""
    data, source = read_toml(path, overrides, ConfigError)
    return parse_bridge_config(data, source)
