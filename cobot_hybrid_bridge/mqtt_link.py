"""The MQTT side of the bridge: drain the durable queue up, bring commands down (paho 2.x).

:class:`MqttLink` owns one paho client (client id = robot id, MQTT 5 with ``clean_start=False``
and a session expiry, or MQTT 3.1.1) and one pump thread. The pump hands
committed messages to paho, highest priority first, at most ``drain_rate_hz`` per second:
paho keeps ``inflight_window`` of them published and unacknowledged, and up to
``send_ahead`` more in its memory (not sent) to refill its window on its own thread as
acknowledgements come, without waiting for the pump. Each acknowledgement is settled on
paho's thread as it arrives:

* PUBACK/PUBCOMP with a reason below 0x80, other than 0x10: delivered; its seq is appended
  to the queue's ack log *before* paho sends the next message (one ``write``, no lock, no
  SQLite), and the pump deletes the delivered messages in bulk every ``delete_every_s``;
* 0x10 "no matching subscribers": the broker threw it away, so it stays queued and is retried
  after ``retry_delay_s`` (``retry_no_subscribers``; on by default: that is how a consumer
  that is not subscribed yet loses nothing), except a retained message, which the broker
  keeps for the next subscriber;
* 0x80 and above: refused; retried until ``max_attempts``, then dropped as ``rejected``;
* QoS 0 topics are deleted once paho has written them to the socket (at most once, by choice).

Every message carries MQTT 5 user properties ``robot_id``, ``seq`` and ``stamp`` so consumers
remove duplicates: a crash resends at most the in-flight window (what was published and not
yet acknowledged; what waits in paho's memory was never sent).
A retained ``cobot/v1/<robot_id>/status`` says ``online``; the last will says ``offline``.
Reconnects use paho's capped exponential backoff, started from a per-robot jittered delay so
a fleet does not reconnect in lockstep after a broker restart. Commands arriving on
``cobot/v1/<robot_id>/cmd/#`` are handed to ``on_command`` unverified: the caller verifies.
"""

from __future__ import annotations

import json
import logging
import os
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cobot_hybrid_bridge.durable_queue import DurableQueue
from cobot_hybrid_bridge.errors import BridgeError

__all__ = ['LinkConfig', 'LinkStats', 'MqttLink', 'topic_prefix']

_LOG = logging.getLogger(__name__)
NO_MATCHING_SUBSCRIBERS = 0x10


class _UserProperties:
    """MQTT 5 PUBLISH properties holding only user properties, packed once, cheaply.

    paho only calls ``pack()`` on publish properties; its own Properties object costs ~30 us
    per message to build and pack, a sixth of the uplink's per-message time.
    """

    __slots__ = ('_packed',)

    def __init__(self, pairs: tuple[tuple[str, str], ...] = (), body: bytes = b'') -> None:
        body += b''.join(_pair(k, v) for k, v in pairs)
        length, prefix = len(body), b''
        while True:  # MQTT variable byte integer
            byte, length = length % 128, length // 128
            prefix += bytes([byte | (0x80 if length else 0)])
            if not length:
                break
        self._packed = prefix + body

    def pack(self) -> bytes:
        """Return the wire form (what paho writes)."""
        return self._packed

    @classmethod
    def for_message(cls, robot_id_pair: bytes, seq: int) -> _UserProperties:
        """``robot_id`` (packed once by the caller), ``seq`` and ``stamp`` of one message."""
        return cls(body=robot_id_pair + _pair('seq', str(seq))
                   + _pair('stamp', f'{time.time():.6f}'))


def _pair(key: str, value: str) -> bytes:
    """One packed MQTT 5 user property."""
    k, v = key.encode(), value.encode()
    return b'\x26' + len(k).to_bytes(2, 'big') + k + len(v).to_bytes(2, 'big') + v


def topic_prefix(robot_id: str) -> str:
    """``cobot/v1/<robot_id>``; refuses ids that would break MQTT topic levels or ACLs."""
    if not robot_id or any(c in robot_id for c in '/+#$ ') or len(robot_id) > 64:
        raise BridgeError(f'robot_id {robot_id!r} must be 1-64 characters without / + # $ '
                          'or spaces (it is one MQTT topic level and the client id)')
    return f'cobot/v1/{robot_id}'


@dataclass(frozen=True)
class LinkConfig:
    """Where and how to connect, and how fast to drain."""

    robot_id: str
    host: str = '127.0.0.1'
    port: int = 1883
    protocol: str = 'mqtt5'               # mqtt5 | mqtt311
    keepalive_s: int = 30
    session_expiry_s: int = 3600
    inflight_window: int = 20             # published, not acknowledged: duplicates after a crash
    send_ahead: int = 128                 # handed to paho beyond the window, not yet sent
    delete_every_s: float = 0.05          # delivered messages are deleted in bulk this often
    drain_rate_hz: float = 0.0            # 0: as fast as acknowledgements come
    retry_no_subscribers: bool = True
    retry_delay_s: float = 1.0
    max_attempts: int = 10
    inflight_timeout_s: float = 30.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    tls_ca: str = ''
    tls_cert: str = ''
    tls_key: str = ''
    username: str = ''
    password_file: str = ''
    password_env: str = ''

    def __post_init__(self) -> None:
        topic_prefix(self.robot_id)
        if self.protocol not in ('mqtt5', 'mqtt311'):
            raise BridgeError(f'protocol {self.protocol!r}: use mqtt5 or mqtt311')
        if self.inflight_window < 1 or self.send_ahead < 0:
            raise BridgeError('inflight_window must be >= 1 and send_ahead >= 0')
        if not 0 < self.delete_every_s <= 10.0:
            raise BridgeError(f'delete_every_s {self.delete_every_s} must be in (0, 10] s')
        if bool(self.tls_cert) != bool(self.tls_key):
            raise BridgeError('tls_cert and tls_key go together (client certificate, mTLS)')
        for name in ('tls_ca', 'tls_cert', 'tls_key', 'password_file'):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise BridgeError(f'{name} {path} does not exist')
        if self.password_env and self.password_env not in os.environ:
            raise BridgeError(f'password_env {self.password_env} is not set')

    def password(self) -> str | None:
        """Return the password from its file or environment variable (never from YAML)."""
        if self.password_file:
            return Path(self.password_file).read_text().strip()
        if self.password_env:
            return os.environ[self.password_env]
        return None


@dataclass
class LinkStats:
    """What the link reports in diagnostics and telemetry."""

    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    published: int = 0
    acked: int = 0
    no_subscribers: int = 0
    refused: int = 0
    inflight: int = 0
    rtt_ms: float = 0.0
    drain_rate_hz: float = 0.0
    last_error: str = ''


@dataclass
class _Inflight:
    seq: int
    sent_at: float
    retain: bool = False


@dataclass
class MqttLink:
    """Uplink pump and command downlink over one paho client."""

    cfg: LinkConfig
    queue: DurableQueue
    queue_lock: threading.Lock
    on_command: Callable[[str, bytes], None] | None = None
    stats: LinkStats = field(default_factory=LinkStats)
    _inflight: dict[int, _Inflight] = field(default_factory=dict)   # handed to paho, by mid
    _early: dict[int, tuple[int, float]] = field(default_factory=dict)  # acks before mids
    _refused: list[int] = field(default_factory=list)
    _not_before: dict[int, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)   # taken inside queue_lock
    _deleted_at: float = 0.0
    _connected_at: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _wake: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _rate_samples: deque[tuple[float, int]] = field(default_factory=deque)  # (t, acked)
    _rate_at: float = 0.0

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.prefix = topic_prefix(cfg.robot_id)
        self._robot_id_pair = _pair('robot_id', cfg.robot_id)
        self._v5 = cfg.protocol == 'mqtt5'
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.robot_id,
                                  protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
                                  clean_session=None if self._v5 else False)
        self.client.max_inflight_messages_set(cfg.inflight_window)
        self.client.max_queued_messages_set(0)
        jitter = random.Random(cfg.robot_id).uniform(0.5, 1.5)
        self.client.reconnect_delay_set(max(1, round(cfg.reconnect_min_s * jitter)),
                                        max(1, round(cfg.reconnect_max_s)))
        if cfg.tls_ca or cfg.tls_cert:
            self.client.tls_set(ca_certs=cfg.tls_ca or None, certfile=cfg.tls_cert or None,
                                keyfile=cfg.tls_key or None, cert_reqs=ssl.CERT_REQUIRED,
                                tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password())
        self.client.will_set(f'{self.prefix}/status', self._status('offline'), qos=1,
                             retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    @staticmethod
    def _status(state: str) -> bytes:
        return json.dumps({'state': state, 'stamp': time.time()}).encode()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (the broker may be down: it keeps trying) and pump."""
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.cfg.session_expiry_s
        self.client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s,
                                  clean_start=False if self._v5 else
                                  mqtt.MQTT_CLEAN_START_FIRST_ONLY, properties=properties)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._pump, name='mqtt-uplink', daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Say offline, stop pumping and disconnect (what is not acked stays queued)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        if self.stats.connected:
            info = self.client.publish(f'{self.prefix}/status', self._status('offline'), qos=1,
                                       retain=True)
            info.wait_for_publish(timeout=timeout_s)
        self.client.disconnect()
        self.client.loop_stop()

    def wake(self) -> None:
        """Tell the pump that new messages were committed."""
        self._wake.set()

    # --- paho callbacks (paho's thread) ------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self.stats.last_error = f'connect refused: {reason}'
            _LOG.error('broker refused the connection: %s', reason)
            return
        self.stats.connected = True
        self.stats.connects += 1
        self._connected_at = time.monotonic()
        client.publish(f'{self.prefix}/status', self._status('online'), qos=1, retain=True)
        client.subscribe(f'{self.prefix}/cmd/#', qos=1)
        self._wake.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if self.stats.connected:
            self.stats.disconnects += 1
        self.stats.connected = False
        self.stats.last_error = f'disconnected: {reason}'

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        code = reason.value if hasattr(reason, 'value') else int(reason)
        now = time.monotonic()
        with self._lock:
            item = self._inflight.pop(mid, None)
            if item is None:   # not registered yet (or not ours: the status message)
                self._early[mid] = (code, now)
                return
            self._settle(item, code, now)
            low = len(self._inflight) <= (self.cfg.inflight_window + self.cfg.send_ahead) // 2
        if low:
            self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
                    ) -> None:
        if self.on_command is not None:
            try:
                self.on_command(message.topic, bytes(message.payload))
            except Exception:  # noqa: BLE001 - a bad command must not kill paho's thread
                _LOG.exception('command handler failed on %s', message.topic)

    # --- pump (our thread) -------------------------------------------------------------------

    def _settle(self, item: _Inflight, code: int, now: float) -> None:
        """One acknowledgement (paho's thread, under ``_lock``)."""
        if not self.stats.acked % 16:  # a sample is enough for the round-trip estimate
            rtt = 1e3 * (now - item.sent_at)
            self.stats.rtt_ms = rtt if not self.stats.rtt_ms else \
                0.9 * self.stats.rtt_ms + 0.1 * rtt
        if code == NO_MATCHING_SUBSCRIBERS and self.cfg.retry_no_subscribers \
                and not item.retain:  # a retained message is kept by the broker anyway
            self.stats.no_subscribers += 1
            self._not_before[item.seq] = now + self.cfg.retry_delay_s
        elif code >= 0x80:
            self.stats.refused += 1
            self._refused.append(item.seq)
        else:
            # Logged before paho sends its next message (it does so after this callback).
            try:
                self.queue.mark_delivered((item.seq,))
            except OSError as exc:  # disk full: it stays queued and goes again (a duplicate)
                self.stats.last_error = f'cannot log a delivery: {exc}'
                return
            self.stats.acked += 1

    def _pump(self) -> None:
        period = 1.0 / self.cfg.drain_rate_hz if self.cfg.drain_rate_hz > 0 else 0.0
        next_send = 0.0
        while not self._stop.is_set():
            self._wake.wait(timeout=min(0.05, self.cfg.delete_every_s))
            self._wake.clear()
            now = time.monotonic()
            if now - self._deleted_at >= self.cfg.delete_every_s or self._refused:
                self._deleted_at = now
                self._delete(now)
            self._update_rate(now)
            if not self.stats.connected:
                continue
            self._expire_inflight(now)
            # Paced: one at a time, nothing waits inside paho.
            limit = 1 if period else self.cfg.inflight_window + self.cfg.send_ahead
            with self.queue_lock:
                with self._lock:
                    room = limit - len(self._inflight)
                    busy = [i.seq for i in self._inflight.values()]
                    waiting = [s for s, t in self._not_before.items() if t > now]
                if room <= 0 or (not period and self._inflight and room < limit // 4):
                    continue   # refill in chunks: the pump wakes once per chunk, not per ack
                batch = self.queue.peek(room, exclude=busy + waiting)
            for message in batch:
                if period and now < next_send:
                    self._wake.set()
                    break
                if not self._publish(message.seq, message.topic, message.payload,
                                     message.qos, message.retain):
                    break
                next_send = max(next_send, now) + period
        self._delete(time.monotonic())

    def _delete(self, now: float) -> None:
        """Delete delivered messages in bulk; give up refused ones past max_attempts."""
        with self._lock:
            refused, self._refused = self._refused, []
        with self.queue_lock:
            self.queue.flush_delivered()
            give_up = [seq for seq in refused
                       if self.queue.mark_attempt(seq) >= self.cfg.max_attempts]
            self.queue.reject(give_up)
        with self._lock:
            for seq in set(refused) - set(give_up):
                self._not_before[seq] = now + self.cfg.retry_delay_s

    def _publish(self, seq: int, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        properties = None
        if self._v5:
            properties = _UserProperties.for_message(self._robot_id_pair, seq)
        before = time.monotonic()
        info = self.client.publish(topic, payload, qos=qos, retain=retain,
                                   properties=properties)  # type: ignore[arg-type]
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False  # not connected any more: it stays queued
        now = time.monotonic()
        with self._lock:
            item = _Inflight(seq, now, retain)
            early = self._early.pop(info.mid, None)
            if early is None or early[1] < before:   # none, or an old message's (mid reuse)
                self._inflight[info.mid] = item
            else:   # acknowledged before we got here (QoS 0, or a fast broker)
                self._settle(item, early[0], now)
            if len(self._early) > 1000:
                self._early = {m: e for m, e in self._early.items() if now - e[1] < 60.0}
            self._not_before.pop(seq, None)
            self.stats.published += 1
            self.stats.inflight = len(self._inflight)
        return True

    def _expire_inflight(self, now: float) -> None:
        # Only what was handed over on this connection and never answered: paho itself sends
        # again what was in flight or waiting when a connection dropped (clean_start=False),
        # so expiring that too would only make duplicates.
        with self._lock:
            for mid, item in list(self._inflight.items()):
                if item.sent_at >= self._connected_at \
                        and now - item.sent_at > self.cfg.inflight_timeout_s:
                    del self._inflight[mid]  # never answered: send again (maybe a duplicate)

    def _update_rate(self, now: float) -> None:
        if now - self._rate_at < 0.5:
            return
        self._rate_at = now   # acknowledged messages per second over the last 5 s
        samples = self._rate_samples
        samples.append((now, self.stats.acked))
        while len(samples) > 2 and now - samples[0][0] > 5.0:
            samples.popleft()
        first_at, first = samples[0]
        self.stats.drain_rate_hz = (self.stats.acked - first) / (now - first_at) \
            if now > first_at else 0.0
        self.stats.inflight = len(self._inflight)
