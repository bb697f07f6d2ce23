"""Configuration of the telephony listeners ([listeners.<protocol>] in calmd.toml), validated at start."""

from __future__ import annotations

import ipaddress
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..configbase import Section as _Section


class ListenerSection(_Section):
    LEGS: ClassVar[tuple[str, ...]] = ()
    host: str = "127.0.0.1"  # loopback unless told otherwise: call audio is personal data
    port: Annotated[int, Field(ge=0, le=65535)]  # 0: any free port (tests)
    max_calls: Annotated[int, Field(ge=1, le=10_000)] = 20  # further calls are refused until one ends
    connect_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0  # to identify the call (UUID, start)
    idle_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0  # no bytes for this long: the peer is gone
    max_frame_ms: Annotated[int, Field(ge=20, le=10_000)] = 1000  # a longer audio frame is refused as bad input
    score_legs: list[str] | None = None  # legs whose segments count towards the verdict (None: the default)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v

    @model_validator(mode="after")
    def _legs(self) -> ListenerSection:
        unknown = sorted(set(self.score_legs or ()) - set(self.LEGS))
        if unknown:
            raise ValueError(f"score_legs {unknown} are not legs of this protocol; legs: {list(self.LEGS)}")
        return self


class AudioSocketSection(ListenerSection):
    LEGS: ClassVar[tuple[str, ...]] = ("in",)  # the audio Asterisk reads from the channel
    port: Annotated[int, Field(ge=0, le=65535)] = 9092


class _WebSocketSection(ListenerSection):
    token: Annotated[str, Field(min_length=16)] | None = None  # shared secret; None: no check (loopback only)

    @field_validator("token")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        if v is not None and not v.isprintable():
            raise ValueError("token must be printable characters")
        return v


class TwilioSection(_WebSocketSection):
    LEGS: ClassVar[tuple[str, ...]] = ("inbound", "outbound")  # inbound: the caller, as Twilio hears them
    port: Annotated[int, Field(ge=0, le=65535)] = 9093
    # The account's Auth Token: when set, every handshake must carry X-Twilio-Signature, Twilio's HMAC-SHA1 of
    # the URL it connected to. public_url is that URL's scheme and host as Twilio sees them (calmd sits behind
    # a TLS proxy): wss://calm.example.com; the request's path and query are appended to it.
    auth_token: Annotated[str, Field(min_length=16)] | None = None
    public_url: str | None = None

    @model_validator(mode="after")
    def _signature(self) -> TwilioSection:
        if self.auth_token is not None:
            if self.public_url is None:
                raise ValueError("auth_token needs public_url, the wss://host Twilio connects to (see the README)")
            if not self.public_url.startswith(("wss://", "https://")) or self.public_url.count("/") > 2:
                raise ValueError(f"public_url {self.public_url!r}: expected wss://host[:port], with no path")
        return self


class AudioForkSection(_WebSocketSection):
    LEGS: ClassVar[tuple[str, ...]] = ("caller", "callee", "mixed")
    port: Annotated[int, Field(ge=0, le=65535)] = 9094
    mix: Literal["mono", "mixed", "stereo"] = "mono"  # as given to uuid_audio_fork; ?mix= in the URL overrides
    sample_rate: Literal[8000, 16000] = 8000  # "8k" | "16k"; ?rate= in the URL overrides


class ListenersSection(_Section):
    audiosocket: AudioSocketSection | None = None
    twilio: TwilioSection | None = None
    audiofork: AudioForkSection | None = None

    def any(self) -> bool:
        return any(s is not None for s in (self.audiosocket, self.twilio, self.audiofork))


class CallsSection(_Section):
    # The class, or group of classes (a new kind of attack beside spoof), a call's score is about; default: the
    # classifier's, else "spoof".
    positive: str | list[str] | None = None
    threshold: float | None = None  # log-odds threshold; default: the classifier's, else 0.0
