"""The MQTT side of the bridge: drain the durable queue up, bring commands down (paho 2.x).

:class:`MqttLink` owns one paho client (client id = robot id, MQTT 5 with ``clean_start=False``
and a session expiry, or MQTT 3.1.1) and runs it on one thread of its own through paho's
external-loop API (``loop_read``/``loop_write``/``loop_misc`` around one ``poll``), not
``loop_start``: reading the queue, publishing and settling acknowledgements happen on that one
thread, with no hand-over between threads per message. It reads committed messages ahead
(``send_ahead`` beyond the window, through the queue's own read connection, so a commit never
makes it wait), highest priority first, and keeps at most ``inflight_window`` published and
unacknowledged, at most ``drain_rate_hz`` per second. A batch of PUBLISH packets is written
corked (``TCP_CORK`` on Linux): paho's one ``send`` per packet only fills the socket buffer, and
the kernel sends the batch in as few segments as it can. Each acknowledgement is settled as
paho reads it:

* PUBACK/PUBCOMP with a reason below 0x80, other than 0x10: delivered; the seqs of one read are
  appended to the queue's ack log in one ``write`` *before* anything more is published, so
  what is in flight plus what is acknowledged and not logged never exceeds the window; a
  second thread deletes the delivered messages in bulk every ``delete_every_s``;
* 0x10 "no matching subscribers": the broker threw it away, so it stays queued and is retried
  after ``retry_delay_s`` (``retry_no_subscribers``; on by default: that is how a consumer
  that is not subscribed yet loses nothing), except a retained message, which the broker
  keeps for the next subscriber;
* 0x80 and above: refused; retried until ``max_attempts``, then dropped as ``rejected``;
* QoS 0 topics are deleted once paho has written them to the socket (at most once, by choice).

Delivery (``delivery``): with ``broker`` a message counts as delivered on the broker's PUBACK
(above). With ``cloud`` (the suite's default, when the planner is the consumer) a PUBACK only
moves it to *awaiting the cloud*: it stays queued until the consumer acknowledges it on
``cobot/v1/<robot_id>/delivered`` after storing it (:mod:`cobot_hybrid_protocol.delivery`);
so a broker that crashes before saving, or has no persistence, loses nothing. At most
``cloud_window`` messages await the cloud at a time (sending pauses beyond); one not
acknowledged within ``cloud_ack_timeout_s`` (doubling per resend, up to 10 minutes), or still
waiting when the connection is made again, is sent again: duplicates, which the consumer drops
by ``(robot_id, seq)`` and acknowledges again. QoS 0 topics stay at most once in both modes.

Every message carries MQTT 5 user properties ``robot_id``, ``seq`` and ``stamp`` so consumers
remove duplicates: a crash resends at most the in-flight window (what was read ahead and not
published was never sent).
A retained ``cobot/v1/<robot_id>/status`` says ``online``; the last will says ``offline``.
Reconnects wait a capped exponential backoff with jitter (0.5-1.5x, per attempt), so a fleet
does not reconnect in lockstep after a broker restart. Commands arriving on
``cobot/v1/<robot_id>/cmd/#`` are handed to ``on_command`` unverified, with their retain
flag: the caller verifies.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import logging
import math
import os
import random
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cobot_hybrid_bridge.durable_queue import DurableQueue, QueuedMessage
from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_bridge.mqtt_properties import UserProperties, pack_pair
from cobot_hybrid_bridge.publish_policy import (
    Settle,
    cloud_timeout,
    settle,
)
from cobot_hybrid_protocol.broker_auth import BrokerAuth
from cobot_hybrid_protocol.delivery import delivered_topic, parse_delivered
from cobot_hybrid_protocol.errors import BrokerAuthError, PayloadError
from cobot_hybrid_protocol.settings import check_settings, same_as, setting
from cobot_hybrid_protocol.status import status_payload
from cobot_hybrid_protocol.topics import (
    RobotIdError,
    blob_filter,
    commands_filter,
    robot_prefix,
    status_topic,
)

__all__ = ['LinkConfig', 'LinkStats', 'MqttLink', 'topic_prefix']

_LOG = logging.getLogger(__name__)
DELIVERY_MODES = ('broker', 'cloud')
_TCP_CORK: int | None = getattr(socket, 'TCP_CORK', None)   # Linux


def topic_prefix(robot_id: str) -> str:
    """``cobot/v1/<robot_id>``; refuses ids that would break MQTT topic levels or ACLs."""
    try:
        return robot_prefix(robot_id)
    except RobotIdError as exc:
        raise BridgeError(str(exc)) from None


@dataclass(frozen=True)
class LinkConfig:
    """Where and how to connect, and how fast to drain."""

    robot_id: str
    broker_host: str = setting('127.0.0.1', 'MQTT broker host')
    broker_port: int = setting(1883, 'MQTT broker port (8883 with TLS)', low=1, high=65535)
    protocol: str = setting('mqtt5', 'MQTT version (mqtt311: no user properties, no 0x10 '
                            'detection)', choices=('mqtt5', 'mqtt311'))
    keepalive_s: int = 30
    session_expiry_s: int = setting(3600, 'MQTT 5 session kept by the broker while offline',
                                    unit='s', low=0, high=2**31 - 1)
    inflight_window: int = setting(20, 'published, not yet acknowledged messages at most (the '
                                   'duplicates after a crash)', low=1, high=65535)
    send_ahead: int = 128                 # read from the queue beyond the window, not sent
    delete_every_s: float = 0.05          # delivered messages are deleted in bulk this often
    drain_rate_hz: float = setting(0.0, 'cap on the send rate (0: as fast as acks come)',
                                   unit='Hz', low=0.0, high=1e6)
    retry_no_subscribers: bool = setting(True, 'keep and retry a message the broker answered '
                                         '0x10 (no matching subscribers)')
    retry_delay_s: float = 1.0
    max_attempts: int = 10
    inflight_timeout_s: float = 30.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = setting(30.0, 'cap of the exponential reconnect backoff',
                                     unit='s', low=1.0, high=3600.0)
    delivery: str = setting('cloud', 'cloud: kept until the planner stored it | broker: until '
                            'the PUBACK', choices=DELIVERY_MODES)
    cloud_window: int = setting(1000, 'messages awaiting the cloud acknowledgement at most '
                                '(mosquitto queues 1000 per client)', low=1, high=100_000)
    cloud_ack_timeout_s: float = setting(30.0, 'not acknowledged by the cloud by then: sent '
                                         'again (doubling, at most 10 min)', unit='s',
                                         low=0.1, high=3600.0)
    tls_ca: str = same_as(BrokerAuth, 'tls_ca')
    tls_cert: str = same_as(BrokerAuth, 'tls_cert')
    tls_key: str = same_as(BrokerAuth, 'tls_key')
    username: str = same_as(BrokerAuth, 'username')
    password_file: str = same_as(BrokerAuth, 'password_file')
    password_env: str = same_as(BrokerAuth, 'password_env')

    def __post_init__(self) -> None:
        topic_prefix(self.robot_id)
        check_settings(self, BridgeError)
        if self.inflight_window < 1 or self.send_ahead < 0:
            raise BridgeError('inflight_window must be >= 1 and send_ahead >= 0')
        if self.delivery not in DELIVERY_MODES:
            raise BridgeError(f'delivery {self.delivery!r}: use broker (the PUBACK) or cloud '
                              '(the consumer acknowledges what it stored)')
        if self.cloud_window < self.inflight_window or not self.cloud_ack_timeout_s > 0:
            raise BridgeError('cloud_window must be >= inflight_window and '
                              'cloud_ack_timeout_s > 0')
        if not 0 < self.delete_every_s <= 10.0:
            raise BridgeError(f'delete_every_s {self.delete_every_s} must be in (0, 10] s')
        try:
            self.auth.check()
        except BrokerAuthError as exc:
            raise BridgeError(str(exc)) from None

    @property
    def auth(self) -> BrokerAuth:
        """The TLS files and credentials (one source with the planner's)."""
        return BrokerAuth.of(self)

    def password(self) -> str | None:
        """Return the password from its file or environment variable (never from YAML)."""
        return self.auth.password()


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
    awaiting_cloud: int = 0       # broker took them, the cloud has not said it stored them
    cloud_acked: int = 0
    cloud_resends: int = 0
    bad_delivery_acks: int = 0
    rtt_ms: float = 0.0
    drain_rate_hz: float = 0.0
    last_error: str = ''


class _Inflight(NamedTuple):
    seq: int
    sent_at: float
    qos: int
    retain: bool


class MqttLink:
    """Uplink and command downlink over one paho client, run by one thread of ours."""

    cfg: LinkConfig
    queue: DurableQueue
    queue_lock: threading.Lock
    on_command: Callable[[str, bytes, bool], None] | None
    stats: LinkStats
    # All below belong to the link's thread, except _dirty, _stop and the wake socket.
    _inflight: dict[int, _Inflight]   # handed to paho, by mid
    _ready: list[tuple[int, int, QueuedMessage]]   # read ahead
    _read_upto: dict[int, int]   # priority -> last seq read
    _retry: list[tuple[float, int]]   # (not before, seq)
    _acked: list[int]   # acknowledged, not logged yet
    # delivery 'cloud': seq -> (resend at, resends so far), taken by the broker, not stored yet
    _awaiting: dict[int, tuple[float, int]]
    _resends: dict[int, int]   # seq -> resends, while resent
    _refused: list[int]   # refused by the broker
    _unsendable: list[int]   # paho would not take them
    _publishing: bool   # inside client.publish(): a QoS 0 settles right there
    _early: int | None   # ... with this reason code
    _dirty: bool   # something was committed since the last read
    _attempt: int   # connection attempts since the last CONNACK
    _next_send: float
    _housekeep_at: float
    _misc_at: float
    _connected_at: float
    _stop_timeout_s: float
    _stop: threading.Event
    _thread: threading.Thread | None
    _cleaner: threading.Thread | None
    _rate_samples: deque[tuple[float, int]]   # (t, acked)
    _rate_at: float

    def __init__(self, cfg: LinkConfig, queue: DurableQueue, queue_lock: threading.Lock,
                 on_command: Callable[[str, bytes, bool], None] | None = None,
                 stats: LinkStats | None = None) -> None:
        self.cfg = cfg
        self.queue = queue
        self.queue_lock = queue_lock
        self.on_command = on_command
        self.stats = LinkStats() if stats is None else stats
        self._inflight = {}
        self._ready = []
        self._read_upto = {}
        self._retry = []
        self._acked = []
        self._awaiting = {}
        self._resends = {}
        self._refused = []
        self._unsendable = []
        self._publishing = False
        self._early = None
        self._dirty = True
        self._attempt = 0
        self._next_send = 0.0
        self._housekeep_at = 0.0
        self._misc_at = 0.0
        self._connected_at = 0.0
        self._stop_timeout_s = 5.0
        self._stop = threading.Event()
        self._thread = None
        self._cleaner = None
        self._rate_samples = deque()
        self._rate_at = 0.0
        cfg = self.cfg
        self.prefix = topic_prefix(cfg.robot_id)
        self._robot_id_pair = pack_pair('robot_id', cfg.robot_id)
        self._v5 = cfg.protocol == 'mqtt5'
        self._cloud = cfg.delivery == 'cloud'
        self._delivered_topic = delivered_topic(cfg.robot_id)
        self._period = 1.0 / cfg.drain_rate_hz if cfg.drain_rate_hz > 0 else 0.0   # pacing
        self._rng = random.Random(f'{cfg.robot_id}-{os.getpid()}-{time.time()}')
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.robot_id,
                                  protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
                                  clean_session=None if self._v5 else False)
        self.client.max_inflight_messages_set(0)   # the window is ours (see _fill)
        self.client.max_queued_messages_set(0)
        tls = cfg.auth.tls_arguments()
        if tls is not None:
            self.client.tls_set(**tls)
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password())
        self.client.will_set(status_topic(cfg.robot_id), self._status('offline'), qos=1,
                             retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    @staticmethod
    def _status(state: str) -> bytes:
        return status_payload(state, time.time())

    # --- lifecycle (any thread) --------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (the broker may be down: it keeps trying) and send."""
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.cfg.session_expiry_s
        # Only records where to connect; the link's thread connects.
        self.client.connect_async(self.cfg.broker_host, self.cfg.broker_port, self.cfg.keepalive_s,
                                  clean_start=False if self._v5 else
                                  mqtt.MQTT_CLEAN_START_FIRST_ONLY, properties=properties)
        self._thread = threading.Thread(target=self._run, name='mqtt-link', daemon=True)
        self._thread.start()
        self._cleaner = threading.Thread(target=self._clean, name='mqtt-link-cleanup',
                                         daemon=True)
        self._cleaner.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Say offline, stop sending and disconnect (what is not acked stays queued)."""
        self._stop_timeout_s = timeout_s
        self._stop.set()
        self.wake()
        if self._cleaner is not None:
            self._cleaner.join(timeout=timeout_s)
        if self._thread is not None:
            self._thread.join(timeout=timeout_s + 2.0)
            if self._thread.is_alive():
                _LOG.error('the MQTT link did not stop within %.1f s', timeout_s + 2.0)
        self._wake_r.close()
        self._wake_w.close()

    def wake(self) -> None:
        """Tell the link that new messages were committed (cheap; any thread)."""
        if not self._dirty:
            self._dirty = True
            with contextlib.suppress(OSError):   # full: a wake-up is pending anyway
                self._wake_w.send(b'\0')

    # --- the link's thread ---------------------------------------------------------------------

    def _run(self) -> None:
        """Connect, reconnect with backoff, and serve the socket until stopped.

        One thread does paho's reads and writes, our window and the queue's reads: no
        hand-over between threads per message (paho's own thread would add one, and a wake-up
        through its socket pair, to every publish).
        """
        while not self._stop.is_set():
            try:
                if self.client.socket() is None:
                    self._connect()
                else:
                    self._turn()
            except Exception as exc:  # noqa: BLE001 - the link must outlive any one failure
                self.stats.last_error = f'link error: {exc!r}'
                _LOG.exception('MQTT link error; going on in 1 s')
                self._stop.wait(1.0)
        try:
            self._shutdown()
        except Exception:  # noqa: BLE001
            _LOG.exception('MQTT link: error while shutting down')

    def _connect(self) -> None:
        """One connection attempt, after a capped exponential backoff with jitter."""
        if self._attempt:
            base = min(self.cfg.reconnect_max_s,
                       self.cfg.reconnect_min_s * 2 ** min(self._attempt - 1, 16))
            self._housekeep(time.monotonic(), wait=True)
            if self._stop.wait(min(self.cfg.reconnect_max_s,
                                   base * self._rng.uniform(0.5, 1.5))):
                return
        self._attempt += 1
        try:
            self.client.reconnect()   # CONNECT is sent; CONNACK comes in _turn
        except (OSError, ValueError) as exc:   # refused, unreachable, TLS handshake failed
            if self._attempt == 1 or not self.stats.last_error.startswith('cannot reach'):
                _LOG.warning('cannot reach the broker at %s:%d (%s); retrying with backoff',
                             self.cfg.broker_host, self.cfg.broker_port, exc)
            self.stats.last_error = (f'cannot reach {self.cfg.broker_host}:'
                                     f'{self.cfg.broker_port}: {exc}')

    def _turn(self) -> None:
        now = time.monotonic()
        if now >= self._housekeep_at:
            self._housekeep(now)
        timeout = max(0.0, self._housekeep_at - now)
        if self.stats.connected:
            timeout = min(timeout, self._fill(now))
        self._io(timeout)

    def _io(self, timeout: float) -> None:
        """Wait for the socket (or a wake-up), then let paho read, write and keep alive."""
        client = self.client
        sock = client.socket()
        if sock is None:
            return
        pending = sock.pending() if hasattr(sock, 'pending') else 0  # TLS: already decrypted
        # poll, not select: select refuses descriptors above 1023 (a process holding many
        # files or links, e.g. a simulated fleet, would lose its link with a ValueError).
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | (select.POLLOUT if client.want_write()
                                                        else 0))
        poller.register(self._wake_r.fileno(), select.POLLIN)
        events = dict(poller.poll(0 if pending else math.ceil(1000 * min(timeout, 1.0))))
        if events.get(self._wake_r.fileno(), 0) & select.POLLIN:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
        ready = events.get(sock.fileno(), 0)
        rc = mqtt.MQTT_ERR_SUCCESS
        if ready & (select.POLLIN | select.POLLHUP | select.POLLERR) or pending:
            rc = client.loop_read()   # acknowledgements are settled in _on_publish
            self._log_acks()
        if rc == mqtt.MQTT_ERR_SUCCESS and ready & select.POLLOUT:
            rc = client.loop_write()
        now = time.monotonic()
        if rc == mqtt.MQTT_ERR_SUCCESS and now >= self._misc_at:
            self._misc_at = now + 0.25
            client.loop_misc()        # keepalive; a dead broker is noticed here

    def _fill(self, now: float) -> float:
        """Hand paho what fits in the window; return how soon to come back."""
        room = self.cfg.inflight_window - len(self._inflight)
        if self._cloud:
            room = min(room, self.cfg.cloud_window - len(self._inflight) - len(self._awaiting))
        if room <= 0:
            return 1.0
        period = self._period
        if period:
            if now < self._next_send:
                return self._next_send - now
            room = 1
        if len(self._ready) < room or self._dirty or (self._retry and self._retry[0][0] <= now):
            self._read(now)
        batch = min(room, len(self._ready))
        with self._corked(batch > 1):
            for _ in range(batch):
                self._publish(heapq.heappop(self._ready)[2], now)
                self._next_send = max(self._next_send, now) + period
        self._log_acks()   # QoS 0 messages settle as they are written
        return period if period else 1.0

    def _read(self, now: float) -> None:
        """Read ahead from the queue: retries that are due, then what is new.

        The queue's reads use their own SQLite connection (WAL: only what is committed,
        never waiting for a commit), so this takes no lock.
        """
        due = []
        while self._retry and self._retry[0][0] <= now:
            due.append(heapq.heappop(self._retry)[1])
        target = self.cfg.inflight_window + self.cfg.send_ahead
        above = None
        if len(self._ready) >= target:   # full: only what outranks all of it
            above = max(-rank for rank, _, _ in self._ready)
        limit = max(target - len(self._ready), 16)
        self._dirty = False   # before reading: a commit from now on sets it again
        messages = self.queue.get(due)
        fresh = self.queue.peek_after(limit, self._read_upto, above)
        for message in fresh:
            if message.seq > self._read_upto.get(message.priority, 0):
                self._read_upto[message.priority] = message.seq
        if len(fresh) >= limit:
            self._dirty = True    # there is more
        for message in messages + fresh:
            heapq.heappush(self._ready, (-message.priority, message.seq, message))

    @contextlib.contextmanager
    def _corked(self, cork: bool) -> Iterator[None]:
        """Let the kernel put a batch of PUBLISH packets in as few TCP segments as it can.

        paho writes each packet with its own ``send``; corked, those only fill the socket
        buffer, and the segments go out once, when the batch is complete.
        """
        sock = self.client.socket() if cork and _TCP_CORK is not None else None
        if sock is None:
            yield
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)
        except OSError:   # not TCP (a closed or unusual socket): write as it comes
            yield
            return
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 0)

    def _publish(self, message: QueuedMessage, now: float) -> None:
        properties = None
        if self._v5:
            properties = UserProperties.for_message(self._robot_id_pair, message.seq)
        self._publishing, self._early = True, None
        try:
            info = self.client.publish(message.topic, message.payload, qos=message.qos,
                                       retain=message.retain,
                                       properties=properties)  # type: ignore[arg-type]
        except ValueError as exc:  # a topic or payload MQTT cannot carry: never will
            _LOG.error('cannot publish seq %d on %r (%s): dropped as rejected', message.seq,
                       message.topic, exc)
            self._unsendable.append(message.seq)
            return
        finally:
            self._publishing = False
        # Also on MQTT_ERR_NO_CONN: paho keeps a QoS 1/2 message and sends it on reconnect.
        item = _Inflight(message.seq, now, message.qos, message.retain)
        if self._early is not None:   # QoS 0, written at once
            self._settle(item, self._early, now)
        else:
            self._inflight[info.mid] = item
        self.stats.published += 1
        self.stats.inflight = len(self._inflight)

    def _clean(self) -> None:
        """Delete delivered messages in bulk (own thread: SQLite's work overlaps sending)."""
        while not self._stop.wait(self.cfg.delete_every_s):
            self._flush_delivered()

    def _flush_delivered(self) -> None:
        try:
            with self.queue_lock:
                self.queue.flush_delivered()
        except Exception as exc:  # noqa: BLE001 - logged, kept; deleted next time
            self.stats.last_error = f'cannot delete delivered messages: {exc!r}'
            _LOG.exception('cannot delete delivered messages; retrying')

    def _housekeep(self, now: float, wait: bool = False) -> None:
        """Give up refused messages, expire unanswered ones, measure the drain rate.

        ``wait``: for the queue's lock, if needed (off line or stopping: nothing to send).
        """
        self._housekeep_at = now + self.cfg.delete_every_s
        if self._refused or self._unsendable:
            if not self.queue_lock.acquire(blocking=wait):
                self._housekeep_at = now + 0.002   # the queue is busy: soon
                return
            try:
                give_up = [seq for seq in self._refused
                           if self.queue.mark_attempt(seq) >= self.cfg.max_attempts]
                self.queue.reject(give_up + self._unsendable)
            finally:
                self.queue_lock.release()
            for seq in set(self._refused) - set(give_up):
                heapq.heappush(self._retry, (now + self.cfg.retry_delay_s, seq))
            self._refused, self._unsendable = [], []
        # Only what was handed over on this connection and never answered: paho itself sends
        # again what was in flight when a connection dropped (clean_start=False), so
        # expiring that too would only make duplicates.
        for mid, item in list(self._inflight.items()):
            if item.sent_at >= self._connected_at \
                    and now - item.sent_at > self.cfg.inflight_timeout_s:
                del self._inflight[mid]   # never answered: send again (maybe a duplicate)
                heapq.heappush(self._retry, (now, item.seq))
        if self._awaiting and self.stats.connected:
            self._resend_unstored(now, lambda due: due <= now)
        if len(self._resends) > 4 * self.cfg.cloud_window:   # gone meanwhile (TTL, size)
            keep = set(self._awaiting) | {seq for _, seq in self._retry}
            self._resends = {k: v for k, v in self._resends.items() if k in keep}
        self._update_rate(now)

    def _resend_unstored(self, now: float, due: Callable[[float], bool]) -> None:
        """Send again what the cloud has not acknowledged in time (delivery 'cloud')."""
        for seq, (resend_at, resends) in list(self._awaiting.items()):
            if due(resend_at):
                del self._awaiting[seq]
                self._resends[seq] = resends + 1
                self.stats.cloud_resends += 1
                heapq.heappush(self._retry, (now, seq))
        self.stats.awaiting_cloud = len(self._awaiting)

    def _shutdown(self) -> None:
        client = self.client
        if self.stats.connected and client.socket() is not None:
            info = client.publish(status_topic(self.cfg.robot_id), self._status('offline'), qos=1,
                                  retain=True)
            deadline = time.monotonic() + self._stop_timeout_s
            while not info.is_published() and client.socket() is not None \
                    and time.monotonic() < deadline:
                self._io(0.05)
        if client.socket() is not None:
            client.disconnect()   # written at once if the socket takes it, else below
            deadline = time.monotonic() + 1.0
            while client.socket() is not None and time.monotonic() < deadline:
                self._io(0.05)
        self._housekeep(time.monotonic(), wait=True)
        self._flush_delivered()   # the cleanup thread is stopping too

    # --- paho callbacks (the link's thread, inside client.loop_read/publish) -------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self.stats.last_error = f'connect refused: {reason}'
            _LOG.error('broker refused the connection: %s', reason)
            return
        self._attempt = 0
        self.stats.connected = True
        self.stats.connects += 1
        self._connected_at = time.monotonic()
        if self._awaiting:   # the broker may have lost them (a crash before it saved them)
            self._resend_unstored(self._connected_at, lambda due: True)
        # QoS 0 messages that were waiting in paho when the connection dropped are gone.
        for mid, item in list(self._inflight.items()):
            if item.qos == 0:
                del self._inflight[mid]
                heapq.heappush(self._retry, (0.0, item.seq))
        client.publish(status_topic(self.cfg.robot_id), self._status('online'), qos=1,
                       retain=True)
        client.subscribe(commands_filter(self.cfg.robot_id), qos=1)
        client.subscribe(blob_filter(self.cfg.robot_id), qos=1)   # model chunks it asked for
        if self._cloud:
            client.subscribe(self._delivered_topic, qos=1)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if self.stats.connected:
            self.stats.disconnects += 1
        self.stats.connected = False
        self._attempt = max(self._attempt, 1)   # reconnect after a (jittered) delay
        self.stats.last_error = f'disconnected: {reason}'

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        code = reason.value if hasattr(reason, 'value') else int(reason)
        item = self._inflight.pop(mid, None)
        if item is None:   # the one being published (QoS 0), the status message, or expired
            if self._publishing:
                self._early = code
            return
        self._settle(item, code, time.monotonic())

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
                    ) -> None:
        if message.topic == self._delivered_topic:
            self._on_delivered(bytes(message.payload), bool(message.retain))
            return
        if self.on_command is not None:
            try:
                self.on_command(message.topic, bytes(message.payload), bool(message.retain))
            except Exception:  # noqa: BLE001 - a bad command must not stop the link
                _LOG.exception('command handler failed on %s', message.topic)

    def _on_delivered(self, payload: bytes, retained: bool) -> None:
        """Count as delivered what the cloud says it stored (logged with the next acks)."""
        if not self._cloud:
            return
        try:
            if retained:
                raise PayloadError('bad_type', 'a retained acknowledgement (stale by nature)')
            ranges = parse_delivered(payload, self.cfg.robot_id)
        except PayloadError as exc:
            self.stats.bad_delivery_acks += 1
            _LOG.warning('delivery acknowledgement ignored: %s', exc)
            return
        starts = [first for first, _ in ranges]
        for seq in list(self._awaiting):
            index = bisect.bisect_right(starts, seq) - 1
            if index >= 0 and seq <= ranges[index][1]:
                del self._awaiting[seq]
                self._resends.pop(seq, None)
                self._acked.append(seq)
                self.stats.cloud_acked += 1
        self.stats.awaiting_cloud = len(self._awaiting)

    def _settle(self, item: _Inflight, code: int, now: float) -> None:
        """One acknowledgement."""
        if not self.stats.acked % 16:  # a sample is enough for the round-trip estimate
            rtt = 1e3 * (now - item.sent_at)
            self.stats.rtt_ms = rtt if not self.stats.rtt_ms else \
                0.9 * self.stats.rtt_ms + 0.1 * rtt
        verdict = settle(code, qos=item.qos, retain=item.retain,
                         retry_no_subscribers=self.cfg.retry_no_subscribers, cloud=self._cloud)
        if verdict is Settle.RETRY:
            self.stats.no_subscribers += 1
            heapq.heappush(self._retry, (now + self.cfg.retry_delay_s, item.seq))
        elif verdict is Settle.REFUSED:
            self.stats.refused += 1
            self._refused.append(item.seq)
        elif verdict is Settle.AWAIT_CLOUD:   # the broker has it; delivered once stored
            resends = self._resends.get(item.seq, 0)
            self._awaiting[item.seq] = (now + cloud_timeout(self.cfg.cloud_ack_timeout_s,
                                                            resends), resends)
            self.stats.awaiting_cloud = len(self._awaiting)
        else:
            self._acked.append(item.seq)

    def _log_acks(self) -> None:
        """Log what was acknowledged, in one write, before anything else is published.

        So what is in flight plus what is acknowledged and not logged never exceeds the
        window: the most a crash can make us send twice.
        """
        if not self._acked:
            return
        seqs, self._acked = self._acked, []
        try:
            self.queue.mark_delivered(seqs)
        except OSError as exc:  # disk full: they stay queued and go again (duplicates)
            self.stats.last_error = f'cannot log a delivery: {exc}'
            for seq in seqs:
                heapq.heappush(self._retry, (0.0, seq))
            return
        self.stats.acked += len(seqs)

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
