"""MQTT link against a real mosquitto on 127.0.0.1: drain, 0x10, broker restarts, commands."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import wait_for
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cobot_hybrid_bridge.durable_queue import DurableQueue
from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_bridge.mqtt_link import LinkConfig, MqttLink, topic_prefix
from cobot_hybrid_protocol.delivery import DeliveredSeqs

pytestmark = pytest.mark.broker


@dataclass
class Consumer:
    """A cloud-side subscriber with a persistent session that records (robot_id, seq).

    With ``ack``, it acknowledges what it recorded every 50 ms the way the planner does
    (``delivery: cloud``), on each robot's ``delivered`` topic.
    """

    port: int
    client_id: str = 'cloud-consumer'
    topic: str = 'cobot/v1/+/telemetry/#'
    ack: bool = False
    received: list[tuple[str, int]] = field(default_factory=list)
    retained: dict[str, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(
            [(self.topic, 1), ('cobot/v1/+/status', 1)])
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.reconnect_delay_set(1, 2)
        self._subscribed = threading.Event()
        self._to_ack = DeliveredSeqs()
        self._stop = threading.Event()
        self._acker: threading.Thread | None = None

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.topic.endswith(('/status', '/delivered')) or '/cmd/' in message.topic:
            self.retained[message.topic] = bytes(message.payload)
            return
        props = dict(getattr(message.properties, 'UserProperty', []) or [])
        with self.lock:
            self.received.append((props['robot_id'], int(props['seq'])))
            if self.ack:
                self._to_ack.add(props['robot_id'], int(props['seq']))

    def _acknowledge(self) -> None:
        while not self._stop.wait(0.05):
            with self.lock:
                acks = self._to_ack.take()
            for topic, payload in acks:
                self.client.publish(topic, payload, qos=1)

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect('127.0.0.1', self.port, clean_start=False, properties=props)
        self.client.loop_start()
        # subscribed before anything is sent: else the first messages meet 0x10 and come late
        assert self._subscribed.wait(10.0), 'the consumer never subscribed'
        if self.ack and self._acker is None:
            self._stop.clear()
            self._acker = threading.Thread(target=self._acknowledge, daemon=True)
            self._acker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._acker is not None:
            self._acker.join(timeout=5)
            self._acker = None
        self.client.disconnect()
        self.client.loop_stop()

    def seqs(self) -> list[int]:
        with self.lock:
            return [seq for _, seq in self.received]


def make_link(tmp_path: Path, port: int, **cfg: Any) -> MqttLink:
    queue = DurableQueue(tmp_path / 'outbox.db')
    cfg.setdefault('delivery', 'broker')   # the PUBACK rule; cloud delivery: test_delivery
    return MqttLink(LinkConfig(robot_id='cobot-a', broker_port=port, retry_delay_s=0.3, **cfg),
                    queue, threading.Lock())


def fill(link: MqttLink, count: int, topic: str = 'telemetry/events',
         payload: bytes | Callable[[int], bytes] = b'x' * 100, **put: Any) -> list[int]:
    """Commit ``count`` messages (``payload``: bytes, or made from the seq, as the bridge)."""
    with link.queue_lock:
        seqs = [link.queue.put(f'{link.prefix}/{topic}', payload, **put)
                for _ in range(count)]
        link.queue.commit()
    link.wake()
    return seqs


def test_backlog_drains_in_order_and_the_books_balance(tmp_path: Path,
                                                       mosquitto_broker: Any) -> None:
    consumer = Consumer(mosquitto_broker.port)
    consumer.start()
    link = make_link(tmp_path, mosquitto_broker.port)
    seqs = fill(link, 300)  # queued while offline
    link.start()
    try:
        assert wait_for(lambda: len(consumer.seqs()) >= 300, 20.0), link.stats
        assert consumer.seqs()[:300] == seqs  # one topic, one priority: in order
        assert wait_for(lambda: link.queue.stats().queued == 0, 5.0)
        stats = link.queue.stats()
        assert (stats.committed, stats.delivered) == (300, 300) and stats.balanced
        assert json.loads(consumer.retained['cobot/v1/cobot-a/status'])['state'] == 'online'
    finally:
        link.stop()
        consumer.stop()


def test_no_matching_subscribers_keeps_messages_until_someone_listens(
        tmp_path: Path, mosquitto_broker: Any) -> None:
    link = make_link(tmp_path, mosquitto_broker.port)
    seqs = fill(link, 20)
    link.start()
    try:
        assert wait_for(lambda: link.stats.no_subscribers >= 20, 10.0), link.stats
        assert link.queue.stats().queued == 20  # broker answered 0x10: nothing was deleted
        consumer = Consumer(mosquitto_broker.port)
        consumer.start()
        assert wait_for(lambda: sorted(set(consumer.seqs())) == seqs, 15.0), consumer.seqs()
        assert wait_for(lambda: link.queue.stats().queued == 0, 5.0)
        consumer.stop()
    finally:
        link.stop()


def test_a_delivery_that_cannot_be_logged_is_sent_again_not_lost(
        tmp_path: Path, mosquitto_broker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = Consumer(mosquitto_broker.port)
    consumer.start()
    link = make_link(tmp_path, mosquitto_broker.port)
    real = link.queue.mark_delivered
    failures = [5]

    def disk_full_for_a_while(seqs: Any) -> None:
        if failures[0]:
            failures[0] -= 1
            raise OSError(28, 'No space left on device')
        real(seqs)
    monkeypatch.setattr(link.queue, 'mark_delivered', disk_full_for_a_while)
    seqs = fill(link, 50)
    link.start()
    try:
        assert wait_for(lambda: link.queue.stats().queued == 0, 20.0), link.stats
        assert wait_for(lambda: sorted(set(consumer.seqs())) == seqs, 10.0)  # all arrived
        assert wait_for(lambda: len(consumer.seqs()) >= 55, 10.0)  # unlogged ones went twice
        stats = link.queue.stats()
        assert (stats.committed, stats.delivered) == (50, 50) and stats.balanced
        assert 'cannot log a delivery' in link.stats.last_error
    finally:
        link.stop()
        consumer.stop()


#: mosquitto's default max_inflight_messages: what it may deliver to the consumer again after
#: a restart, on top of what the link sends again (its own window).
MOSQUITTO_INFLIGHT = 20
#: Per restart at most both windows come again, and either copy's acknowledgement can die with
#: the broker (measured: up to 46 per restart mid-round, against 40 for the windows alone).
DUPLICATES_PER_RESTART = 2 * (20 + MOSQUITTO_INFLIGHT)


def test_broker_restarts_lose_nothing(tmp_path: Path, mosquitto_broker: Any) -> None:
    consumer = Consumer(mosquitto_broker.port)
    consumer.start()
    link = make_link(tmp_path, mosquitto_broker.port, reconnect_min_s=1.0,
                     reconnect_max_s=2.0)
    link.start()
    expected: list[int] = []
    try:
        for round_index in range(3):
            assert wait_for(lambda n=round_index: link.stats.connects == n + 1, 20.0)
            before = len(consumer.seqs())
            expected += fill(link, 150)
            # restart mid-stream: once part of this round (not all of it) has arrived
            assert wait_for(lambda b=before: len(consumer.seqs()) > b, 20.0)
            mosquitto_broker.restart()  # SIGTERM: persistent sessions survive
            expected += fill(link, 50)  # committed while the broker is away
        assert wait_for(lambda: set(expected) <= set(consumer.seqs()), 60.0), (
            len(set(expected) - set(consumer.seqs())), link.stats)
        assert wait_for(lambda: link.queue.stats().queued == 0, 10.0)
        stats = link.queue.stats()
        assert stats.delivered == len(expected) and stats.balanced
        duplicates = len(consumer.seqs()) - len(set(consumer.seqs()))
        assert duplicates <= 3 * DUPLICATES_PER_RESTART, duplicates   # at least once, bounded
        assert link.stats.connects >= 4
    finally:
        link.stop()
        consumer.stop()


def test_a_live_event_overtakes_a_backlog_read_ahead(tmp_path: Path,
                                                      mosquitto_broker: Any) -> None:
    consumer = Consumer(mosquitto_broker.port)
    consumer.start()
    # Paced at 100 msg/s: the backlog takes 6 s, and the link holds 148 of it read ahead.
    link = make_link(tmp_path, mosquitto_broker.port, drain_rate_hz=100.0)
    backlog = fill(link, 600)
    link.start()
    try:
        assert wait_for(lambda: len(consumer.seqs()) >= 50, 10.0), link.stats
        (alarm,) = fill(link, 1, 'telemetry/safety', priority=10)
        assert wait_for(lambda: alarm in consumer.seqs(), 5.0), link.stats
        seqs = consumer.seqs()
        before = seqs[:seqs.index(alarm)]
        # Only what was already published (the window) may come before it, not the
        # read-ahead nor the rest of the backlog.
        assert len(before) <= 50 + link.cfg.inflight_window + 5, len(before)
        assert wait_for(lambda: len(consumer.seqs()) >= 601, 15.0)
        assert [s for s in consumer.seqs() if s != alarm][:600] == backlog
    finally:
        link.stop()
        consumer.stop()


def test_qos0_topics_are_deleted_once_written(tmp_path: Path, mosquitto_broker: Any) -> None:
    consumer = Consumer(mosquitto_broker.port)
    consumer.start()
    link = make_link(tmp_path, mosquitto_broker.port)
    seqs = fill(link, 50, 'telemetry/summary', qos=0)
    link.start()
    try:
        assert wait_for(lambda: link.queue.stats().queued == 0, 10.0), link.stats
        stats = link.queue.stats()
        assert stats.delivered == 50 and stats.balanced and link.stats.inflight == 0
        assert wait_for(lambda: consumer.seqs() == seqs, 5.0)   # loopback: none lost
    finally:
        link.stop()
        consumer.stop()


def test_a_message_paho_cannot_send_is_rejected_and_the_rest_go(tmp_path: Path,
                                                               mosquitto_broker: Any) -> None:
    consumer = Consumer(mosquitto_broker.port)
    consumer.start()
    link = make_link(tmp_path, mosquitto_broker.port)
    fill(link, 1, 'telemetry/#')   # a wildcard is no topic to publish on
    seqs = fill(link, 10)
    link.start()
    try:
        assert wait_for(lambda: consumer.seqs() == seqs, 10.0), consumer.seqs()
        assert wait_for(lambda: link.queue.stats().dropped['rejected'] == 1, 5.0)
        # The consumer can hear a message before its PUBACK is back at the link.
        assert wait_for(lambda: link.queue.stats().queued == 0, 5.0), link.queue.stats()
        stats = link.queue.stats()
        assert stats.queued == 0 and stats.delivered == 10 and stats.balanced
    finally:
        link.stop()
        consumer.stop()


def test_commands_come_down_to_the_handler(tmp_path: Path, mosquitto_broker: Any) -> None:
    link = make_link(tmp_path, mosquitto_broker.port)
    got: list[tuple[str, bytes]] = []
    link.on_command = lambda topic, payload, retained: got.append((topic, payload))
    link.start()
    cloud = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id='planner',
                        protocol=mqtt.MQTTv5)
    cloud.connect('127.0.0.1', mosquitto_broker.port)
    cloud.loop_start()
    try:
        assert wait_for(lambda: link.stats.connected, 10.0)
        # The link's subscription is in place once a probe command comes back to it.
        for _ in range(20):
            cloud.publish('cobot/v1/cobot-a/cmd/probe', b'', qos=1).wait_for_publish(2.0)
            if wait_for(lambda: any(t.endswith('/probe') for t, _ in got), 0.5):
                break
        assert any(t.endswith('/probe') for t, _ in got), 'the link never subscribed'
        got.clear()
        cloud.publish('cobot/v1/cobot-a/cmd/mission', b'{"hello": 1}', qos=1).wait_for_publish()
        cloud.publish('cobot/v1/cobot-b/cmd/mission', b'not for us', qos=1).wait_for_publish()
        cloud.publish('cobot/v1/cobot-a/cmd/last', b'', qos=1).wait_for_publish()
        # in order on one connection: once the last one is here, the other robot's is not
        assert wait_for(lambda: any(t.endswith('/last') for t, _ in got), 5.0), got
        assert [g for g in got if not g[0].endswith(('/probe', '/last'))] == [
            ('cobot/v1/cobot-a/cmd/mission', b'{"hello": 1}')]
    finally:
        cloud.loop_stop()
        cloud.disconnect()
        link.stop()


@pytest.mark.parametrize(('robot_id', 'ok'), [('cobot-1', True), ('a/b', False), ('+', False),
                                               ('', False), ('x' * 65, False)])
def test_robot_id_must_be_one_topic_level(robot_id: str, ok: bool) -> None:
    if ok:
        assert topic_prefix(robot_id) == f'cobot/v1/{robot_id}'
    else:
        with pytest.raises(BridgeError, match='robot_id'):
            topic_prefix(robot_id)


def test_credentials_never_come_from_config_values(tmp_path: Path) -> None:
    with pytest.raises(BridgeError, match='password_env'):
        LinkConfig(robot_id='r', username='r', password_env='COBOT_HYBRID_NOT_SET_ANYWHERE')
    with pytest.raises(BridgeError, match='does not exist'):
        LinkConfig(robot_id='r', tls_ca=str(tmp_path / 'missing-ca.pem'))
    with pytest.raises(BridgeError, match='go together'):
        LinkConfig(robot_id='r', tls_cert=str(tmp_path / 'x'))
    secret = tmp_path / 'password'
    secret.write_text('s3cret\n')
    assert LinkConfig(robot_id='r', username='r',
                      password_file=str(secret)).password() == 's3cret'
    with pytest.raises(BridgeError, match='without a username'):   # paho cannot send it
        LinkConfig(robot_id='r', password_file=str(secret))


def test_broker_unreachable_at_start_is_retried_not_fatal(tmp_path: Path) -> None:
    from conftest import free_port, start_broker

    port = free_port()
    link = make_link(tmp_path, port, reconnect_min_s=1.0, reconnect_max_s=2.0)
    seqs = fill(link, 10)
    link.start()  # nothing listens on the port yet
    assert wait_for(lambda: link.stats.last_error.startswith('cannot reach'), 10.0)
    assert not link.stats.connected and link.queue.stats().queued == 10
    broker = start_broker(tmp_path / 'late-broker', 'off', port=port)
    try:
        consumer = Consumer(port)
        consumer.start()
        assert wait_for(lambda: sorted(set(consumer.seqs())) == seqs, 30.0), link.stats
        consumer.stop()
    finally:
        link.stop()
        broker.stop()
