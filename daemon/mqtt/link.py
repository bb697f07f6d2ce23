"""The connection to the MQTT broker: paho-mqtt with a last will, and what survives a lost connection.

Two kinds of message, two guarantees:
- Retained states (discovery configs, availability, labels, stream states) are kept here, latest value per
  topic, and all of them are published again on every (re)connect: a broker restarted without persistence
  gets back everything the bridge promised. A deletion (an empty payload) made while the broker is away is
  kept until a connection has carried it: a broker with persistence would otherwise keep the stale value.
  They go out at QoS 0: after a reconnect paho would resend a
  QoS 1 copy still in flight *after* the fresher value from memory, leaving a stale value retained.
- Events and call verdicts go out at the configured QoS. At QoS 1/2 paho holds them while the broker is
  away, at most `queue_size` (in flight included); past that, and at QoS 0 while disconnected, they are
  dropped, counted and logged.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from .config import BrokerSection
from .topics import OFFLINE, ONLINE

log = logging.getLogger("calm.mqtt")


class BrokerError(OSError):
    """The broker cannot be reached, or refused the bridge's connection."""


class Link:
    def __init__(self, broker: BrokerSection, availability_topic: str, qos: int, queue_size: int):
        self.broker = broker
        self.where = f"{broker.host}:{broker.effective_port}"
        self.availability_topic = availability_topic
        self.qos = qos
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=broker.effective_client_id, protocol=mqtt.MQTTv311
        )
        if broker.username is not None:
            self.client.username_pw_set(broker.username, broker.read_password())
        if broker.tls.enabled:
            self._tls()
        self.client.will_set(availability_topic, OFFLINE, qos=max(qos, 1), retain=True)
        self.client.reconnect_delay_set(broker.reconnect_min_s, broker.reconnect_max_s)
        self.client.max_queued_messages_set(queue_size)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.lock = threading.Lock()  # the retained store, and publishing into it, against a reconnect
        self.retained: dict[str, bytes] = {availability_topic: ONLINE.encode()}
        self.deletes: set[str] = set()  # topics deleted while no connection could carry the empty payload
        self.connected = threading.Event()
        self.answered = threading.Event()  # the first CONNACK (or its absence) decides start-up
        self.refused: str | None = None
        self.stopping = False
        self.connects = 0
        self.dropped = 0
        self.last_drop_log = 0.0
        self.last_event: mqtt.MQTTMessageInfo | None = None

    def _tls(self) -> None:
        tls = self.broker.tls
        try:
            self.client.tls_set(
                ca_certs=str(tls.ca_certs) if tls.ca_certs else None,
                certfile=str(tls.certfile) if tls.certfile else None,
                keyfile=str(tls.keyfile) if tls.keyfile else None,
            )
        except (OSError, ssl.SSLError) as e:  # FileNotFoundError, a PEM that does not parse
            raise BrokerError(f"broker.tls: cannot load the certificates ({e})") from None

    # ---- start and stop -----------------------------------------------------------------------------
    def start(self) -> None:
        """Connect and wait for the broker's answer; BrokerError names host:port and the reason."""
        try:
            self.client.connect(self.broker.host, self.broker.effective_port, self.broker.keepalive_s)
        except ssl.SSLCertVerificationError as e:
            raise BrokerError(
                f"MQTT broker {self.where}: TLS handshake failed, certificate not trusted ({e.verify_message}); "
                f"broker.tls.ca_certs must hold the CA that signed it (now {str(self.broker.tls.ca_certs)!r})"
            ) from None
        except ssl.SSLError as e:
            raise BrokerError(f"MQTT broker {self.where}: TLS handshake failed ({e.reason or e})") from None
        except OSError as e:  # refused, unreachable, no such host, timeout
            raise BrokerError(f"MQTT broker {self.where}: cannot connect ({e.strerror or e})") from None
        self.client.loop_start()
        if not self.answered.wait(self.broker.connect_timeout_s):
            self._halt()
            raise BrokerError(f"MQTT broker {self.where}: no answer (CONNACK) within {self.broker.connect_timeout_s} s")
        if self.refused is not None:
            self._halt()
            raise BrokerError(self.refused)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Mark the bridge offline (a clean disconnect does not fire the last will) and disconnect."""
        self.stopping = True
        info = None
        with self.lock:
            self.retained[self.availability_topic] = OFFLINE.encode()
            if self.connected.is_set():
                info = self.client.publish(self.availability_topic, OFFLINE, qos=max(self.qos, 1), retain=True)
        for pending in (self.last_event, info):
            if pending is not None and pending.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                try:
                    pending.wait_for_publish(timeout_s)
                except RuntimeError:  # the connection went away meanwhile: nothing more can be sent
                    break
        self._halt()

    def _halt(self) -> None:
        self.stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    # ---- publishing ---------------------------------------------------------------------------------
    def state(self, topic: str, payload: bytes) -> None:
        """A retained state: kept, published now if connected, and again after every reconnect.
        An empty payload deletes the retained message (and Home Assistant's entity, for a discovery topic)."""
        with self.lock:
            if payload:
                self.retained[topic] = payload
                self.deletes.discard(topic)
            else:
                self.retained.pop(topic, None)
                self.deletes.add(topic)
            if self.connected.is_set():
                info = self.client.publish(topic, payload, qos=0, retain=True)  # NO_CONN: the reconnect sends it
                if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self.deletes.discard(topic)

    def message(self, topic: str, payload: bytes) -> None:
        """An event or a verdict: once, at the configured QoS, held by paho while disconnected (QoS 1/2)."""
        info = self.client.publish(topic, payload, qos=self.qos, retain=False)
        queued = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
            info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and self.qos > 0  # queued until the broker is back
        )
        if queued:
            self.last_event = info
            return
        self.dropped += 1
        now = time.monotonic()
        if now - self.last_drop_log >= 10.0:
            self.last_drop_log = now
            why = "queue full (topics.queue_size)" if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE else "not connected"
            log.warning("dropped a message for %s: %s; %d dropped so far", topic, why, self.dropped)

    # ---- paho callbacks (its network thread) ---------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any) -> None:
        if reason.is_failure:
            message = f"MQTT broker {self.where} refused the connection (CONNACK: {reason})"
            if reason.value in (134, 135):  # bad user name or password / not authorized
                user = self.broker.username
                message += f"; check broker.username ({user!r}) and the password" if user else "; it needs a username"
            if not self.answered.is_set():
                self.refused = message
                self.answered.set()
            else:
                log.error("%s; trying again", message)
            return
        with self.lock:
            deleted = len(self.deletes)
            for topic in self.deletes:
                client.publish(topic, b"", qos=0, retain=True)
            self.deletes.clear()
            for topic, payload in self.retained.items():
                client.publish(topic, payload, qos=0, retain=True)
            self.connects += 1
            self.connected.set()
        if self.connects > 1:
            log.info(
                "MQTT broker %s: reconnected; %d retained topics published again, %d deleted while it was away",
                self.where, len(self.retained), deleted,
            )  # fmt: skip
        else:
            log.info("MQTT broker %s: connected as %s", self.where, self.broker.effective_client_id)
        self.answered.set()

    def _on_disconnect(self, _client: mqtt.Client, _data: Any, _flags: Any, reason: ReasonCode, _props: Any) -> None:
        self.connected.clear()
        if not self.stopping and self.answered.is_set() and self.refused is None:
            log.warning(
                "MQTT broker %s: connection lost (%s); reconnecting, waiting %d s to %d s between attempts",
                self.where, reason, self.broker.reconnect_min_s, self.broker.reconnect_max_s,
            )  # fmt: skip

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        if not self.stopping:
            log.warning("MQTT broker %s: reconnect failed; trying again", self.where)
