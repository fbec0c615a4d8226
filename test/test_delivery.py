"""End-to-end delivery: a PUBACK is not delivery; with ``delivery: cloud`` nothing is lost.

The protocol's acknowledgement format is tested pure; the link against a real mosquitto:
messages stay queued until the consumer acknowledges them, and a broker killed with SIGKILL
(with and without persistence) while the consumer is offline loses messages in ``broker``
mode and none in ``cloud`` mode (the same run shows both, so the test can fail).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import start_broker
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_mqtt_link import fill, make_link, wait_for

from cobot_hybrid_bridge.durable_queue import DurableQueue
from cobot_hybrid_bridge.mqtt_link import LinkConfig, MqttLink
from cobot_hybrid_protocol.delivery import (
    MAX_RANGES,
    DeliveredSeqs,
    delivered_payload,
    delivered_topic,
    parse_delivered,
    to_ranges,
)
from cobot_hybrid_protocol.errors import PayloadError

# --- the acknowledgement, pure -----------------------------------------------------------------


def test_seqs_become_merged_ranges_and_round_trip() -> None:
    assert to_ranges([5, 3, 4, 9, 10, 1, 4]) == [(1, 1), (3, 5), (9, 10)]
    payload = delivered_payload('cobot-a', [(1, 1), (3, 5)])
    assert parse_delivered(payload, 'cobot-a') == [(1, 1), (3, 5)]


@pytest.mark.parametrize('payload', [
    b'{"schema": "cobot_hybrid/delivered/v1", "robot_id": "cobot-b", "ranges": [[1, 2]]}',
    b'{"schema": "cobot_hybrid/delivered/v1", "robot_id": "cobot-a", "ranges": [[2, 1]]}',
    b'{"schema": "cobot_hybrid/delivered/v1", "robot_id": "cobot-a", "ranges": [[0, 1]]}',
    b'{"schema": "cobot_hybrid/delivered/v1", "robot_id": "cobot-a", "ranges": [[1, 1e3]]}',
    b'{"schema": "cobot_hybrid/delivered/v1", "robot_id": "cobot-a", "ranges": 7}',
    b'{"schema": "x", "robot_id": "cobot-a", "ranges": []}',
    b'{"schema": "cobot_hybrid/delivered/v1", "robot_id": "cobot-a", "ranges": [[1, '
    + b'9' * 30 + b']]}',
    b'[' * 100 + b']' * 100,
])
def test_acknowledgements_for_others_or_malformed_are_refused(payload: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_delivered(payload, 'cobot-a')


def test_delivered_seqs_split_into_bounded_acknowledgements() -> None:
    seqs = DeliveredSeqs()
    for seq in range(1, 2 * (MAX_RANGES + 10), 2):   # every other seq: one range each
        seqs.add('cobot-a', seq)
    seqs.add('cobot-b', 7)
    out = seqs.take()
    assert [topic for topic, _ in out] == [delivered_topic('cobot-a')] * 2 \
        + [delivered_topic('cobot-b')]
    assert sum(len(parse_delivered(p, t.split('/')[2])) for t, p in out) == MAX_RANGES + 11
    assert seqs.take() == []


# --- the link against a real broker ------------------------------------------------------------

class AckingConsumer:
    """The cloud side in miniature: records (robot_id, seq) and acknowledges after storing."""

    def __init__(self, port: int, ack: bool = True) -> None:
        self.port, self.ack = port, ack
        self.seqs: set[tuple[str, int]] = set()
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id='planner',
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe('cobot/v1/+/telemetry/#',
                                                                   qos=1)
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: Any) -> None:
        props = dict(getattr(message.properties, 'UserProperty', []) or [])
        seq = int(props['seq'])
        with self.lock:
            self.seqs.add((props['robot_id'], seq))
        if self.ack:
            client.publish(delivered_topic(props['robot_id']),
                           delivered_payload(props['robot_id'], [(seq, seq)]), qos=1)

    def start(self) -> None:
        self.subscribed.clear()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect('127.0.0.1', self.port, clean_start=False, properties=props)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def got(self, robot_id: str = 'cobot-a') -> set[int]:
        with self.lock:
            return {seq for robot, seq in self.seqs if robot == robot_id}


def test_a_puback_alone_does_not_count_as_delivered(tmp_path: Path,
                                                    mosquitto_broker: Any) -> None:
    silent = AckingConsumer(mosquitto_broker.port, ack=False)
    silent.start()
    link = make_link(tmp_path, mosquitto_broker.port, delivery='cloud')
    seqs = fill(link, 50)
    link.start()
    try:
        assert wait_for(lambda: silent.got() == set(seqs), 15.0)
        assert wait_for(lambda: link.stats.awaiting_cloud == 50, 5.0), link.stats
        stats = link.queue.stats()
        assert (stats.delivered, stats.queued) == (0, 50) and stats.balanced
        # The cloud acknowledges some of them: exactly those count as delivered.
        done = seqs[:20] + [10**9]           # an unknown seq is ignored
        silent.client.publish(delivered_topic('cobot-a'),
                              delivered_payload('cobot-a', to_ranges(done)),
                              qos=1).wait_for_publish(5)
        assert wait_for(lambda: link.queue.stats().delivered == 20, 10.0), link.stats
        assert link.queue.stats().queued == 30 and link.stats.awaiting_cloud == 30
        # Someone else's acknowledgement changes nothing.
        silent.client.publish(delivered_topic('cobot-a'),
                              delivered_payload('cobot-b', to_ranges(seqs)),
                              qos=1).wait_for_publish(5)
        assert wait_for(lambda: link.stats.bad_delivery_acks == 1, 10.0)
        assert link.queue.stats().delivered == 20
    finally:
        link.stop()
        silent.stop()
        link.queue.close()


def test_unacknowledged_messages_are_sent_again_after_the_timeout(
        tmp_path: Path, mosquitto_broker: Any) -> None:
    forgetful = AckingConsumer(mosquitto_broker.port, ack=False)
    forgetful.start()
    link = make_link(tmp_path, mosquitto_broker.port, delivery='cloud',
                     cloud_ack_timeout_s=0.5)
    seqs = fill(link, 10)
    link.start()
    try:
        assert wait_for(lambda: link.stats.cloud_resends >= 10, 15.0), link.stats
        forgetful.ack = True                  # now it stores and acknowledges
        assert wait_for(lambda: link.queue.stats().delivered == 10, 15.0), link.stats
        assert forgetful.got() == set(seqs) and link.queue.stats().balanced
    finally:
        link.stop()
        forgetful.stop()
        link.queue.close()


def robot(folder: Path, port: int, robot_id: str, **cfg: Any) -> MqttLink:
    queue = DurableQueue(folder / 'outbox.db')
    cfg.setdefault('delivery', 'broker')
    return MqttLink(LinkConfig(robot_id=robot_id, broker_port=port, retry_delay_s=0.3, **cfg),
                    queue, threading.Lock())


@pytest.mark.parametrize('persistence', [False, True])
def test_a_broker_killed_while_the_consumer_is_offline_loses_nothing_in_cloud_mode(
        tmp_path: Path, persistence: bool) -> None:
    """The same crash in both modes: broker mode loses what the broker had, cloud mode none.

    With persistence the broker saves only every ``autosave_interval`` (1800 s here, the
    default): a SIGKILL loses what it acknowledged since.
    """
    broker = start_broker(tmp_path / 'broker', 'autosave_interval 1800' if persistence
                          else 'off')
    consumer = AckingConsumer(broker.port)
    consumer.start()
    consumer.stop()                                   # offline; its session stays
    links = {mode: robot(tmp_path / mode, broker.port, f'r-{mode}', delivery=mode,
                         reconnect_max_s=1.0) for mode in ('broker', 'cloud')}
    try:
        sent = {}
        for mode, link in links.items():
            sent[mode] = fill(link, 100, topic=f'telemetry/{mode}')
            link.start()
        for link in links.values():    # the broker acknowledged all of it (queued for us)
            assert wait_for(lambda link=link: link.stats.published >= 100
                            and not link.stats.inflight, 15.0), link.stats
        broker.stop(sig=signal.SIGKILL)
        broker.start()
        consumer.start()
        assert wait_for(lambda: set(sent['cloud']) <= consumer.got('r-cloud'), 30.0), \
            (len(consumer.got('r-cloud')), links['cloud'].stats)
        assert wait_for(lambda: links['cloud'].queue.stats().delivered == 100, 15.0)
        cloud_books = links['cloud'].queue.stats()
        assert cloud_books.balanced and cloud_books.queued == 0
        broker_books = links['broker'].queue.stats()
        # Broker mode counted everything delivered at the PUBACK; what the crash took is gone
        # without a trace in its books.
        assert broker_books.delivered == 100
        assert wait_for(lambda: links['broker'].stats.connected, 15.0)
        lost = set(sent['broker']) - consumer.got('r-broker')
        assert lost, 'broker mode lost nothing: the crash did not test anything'
    finally:
        for link in links.values():
            link.stop()
            link.queue.close()
        consumer.stop()
        broker.stop()
