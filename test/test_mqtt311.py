"""The MQTT link over MQTT 3.1.1 (``protocol: mqtt311``) against a real mosquitto on 127.0.0.1.

3.1.1 has no user properties, so a message's ``(robot_id, seq)`` rides only in its JSON
envelope, and no PUBACK reason codes, so the link cannot tell 0x10 "no matching subscribers"
from a delivery. What must still hold: what is committed is delivered once acknowledged
(books balanced), a broker restart loses nothing, commands come down on
``cobot/v1/<robot>/cmd/#`` with their retain flag, ``online`` is retained and the last will
says ``offline`` after a crash, and ``delivery: cloud`` works for JSON routes (the cloud
acknowledges by the envelope's seq) and refuses at start the routes whose seq would need user
properties (docs/bridge.md).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import test_mqtt_link as mqtt5_tests
from conftest import wait_for
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cobot_hybrid_bridge.bridge import EdgeBridge
from cobot_hybrid_bridge.bridge_config import BridgeConfig
from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_bridge.mqtt_link import MqttLink
from cobot_hybrid_bridge.routes import parse_routes
from cobot_hybrid_planner.fleet_state import FleetStore
from cobot_hybrid_protocol.envelope import build_envelope, parse_envelope

pytestmark = pytest.mark.broker

ROBOT = 'cobot-a'
STATUS = f'cobot/v1/{ROBOT}/status'


@dataclass
class Subscriber:
    """A cloud-side client (3.1.1 unless told) that records what it receives.

    ``persistent``: 3.1.1 ``clean_session=False`` (MQTT 5: ``clean_start=False`` and a
    session expiry), so the broker keeps its subscriptions and queues QoS 1 messages while it
    is offline. ``store``: each message goes into this fleet store the way the planner takes
    it (no user properties on 3.1.1: by the envelope), and what it stored is acknowledged on
    the robot's ``delivered`` topic while ``acking`` is set.
    """

    port: int
    client_id: str
    topics: tuple[str, ...] = (f'cobot/v1/{ROBOT}/telemetry/#',)
    protocol: int = mqtt.MQTTv311
    persistent: bool = True
    store: FleetStore | None = None
    acking: bool = True
    # (topic, payload, retain flag, user properties), in arrival order
    messages: list[tuple[str, bytes, bool, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    subscribed: threading.Event = field(default_factory=threading.Event)
    granted: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        v5 = self.protocol == mqtt.MQTTv5
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=self.protocol,
                                  clean_session=None if v5 else not self.persistent)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(topic, 1) for topic in self.topics])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        self.granted = list(reasons)
        self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        props = getattr(message, 'properties', None)
        pairs = dict(getattr(props, 'UserProperty', []) or [])
        item = (message.topic, bytes(message.payload), bool(message.retain), pairs)
        with self.lock:
            self.messages.append(item)
            if self.store is not None:
                self.store.ingest(message.topic, item[1], pairs, retained=item[2])
        if self.acking:
            self.acknowledge()

    def acknowledge(self) -> None:
        """Send the robots what the store has stored (the planner's delivery acks)."""
        if self.store is None:
            return
        with self.lock:
            acks = self.store.delivered.take()
        for topic, payload in acks:
            self.client.publish(topic, payload, qos=1)

    def start(self) -> None:
        self.subscribed.clear()
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600 if self.persistent else 0
            self.client.connect('127.0.0.1', self.port, clean_start=not self.persistent,
                                properties=props)
        else:
            self.client.connect('127.0.0.1', self.port)
        self.client.loop_start()
        assert self.subscribed.wait(10), f'{self.client_id}: no SUBACK'
        assert all(not getattr(r, 'is_failure', False) for r in self.granted), self.granted

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, topic: str) -> list[tuple[bytes, bool]]:
        with self.lock:
            return [(p, r) for t, p, r, _ in self.messages if t == topic]

    def seqs(self) -> list[int]:
        """The envelope seq of every telemetry message received (duplicates included)."""
        with self.lock:
            payloads = [p for t, p, _, _ in self.messages if '/telemetry/' in t]
        return [parse_envelope(p).seq for p in payloads]


def make_link(tmp_path: Path, port: int, **cfg: Any) -> MqttLink:
    return mqtt5_tests.make_link(tmp_path, port, protocol='mqtt311', **cfg)


def _envelope(seq: int) -> bytes:
    """What the bridge commits: the seq inside the envelope (3.1.1 has no user properties)."""
    return build_envelope(ROBOT, seq, time.time(), 'events', 'std_msgs/msg/String',
                          {'data': f'message {seq}'})


def fill(link: MqttLink, count: int, topic: str = 'telemetry/events') -> list[int]:
    """Commit ``count`` enveloped messages."""
    return mqtt5_tests.fill(link, count, topic, payload=_envelope)


def stop_link(link: MqttLink) -> None:
    link.stop()
    link.queue.close()


def test_committed_messages_are_delivered_once_with_the_seq_in_the_envelope(
        tmp_path: Path, mosquitto_broker: Any) -> None:
    cloud = Subscriber(mosquitto_broker.port, 'cloud-311')
    cloud.start()
    # What an MQTT 5 consumer sees of a 3.1.1 robot: no user properties to take a seq from.
    observer = Subscriber(mosquitto_broker.port, 'observer-v5', protocol=mqtt.MQTTv5,
                          persistent=False)
    observer.start()
    link = make_link(tmp_path, mosquitto_broker.port)
    seqs = fill(link, 300)   # committed while offline
    link.start()
    try:
        assert wait_for(lambda: len(cloud.seqs()) >= 300, 20.0), link.stats
        assert cloud.seqs()[:300] == seqs   # one topic, one priority: in order
        assert wait_for(lambda: link.queue.stats().queued == 0, 5.0), link.queue.stats()
        stats = link.queue.stats()
        assert (stats.committed, stats.delivered, stats.queued) == (300, 300, 0)
        assert stats.balanced and sum(stats.dropped.values()) == 0
        assert len(cloud.seqs()) == 300   # a clean run: each once
        envelopes = [parse_envelope(p) for t, p, _, _ in cloud.messages]
        assert {e.robot_id for e in envelopes} == {ROBOT}
        assert link.stats.no_subscribers == 0 and link.stats.refused == 0
        assert wait_for(lambda: len(observer.messages) >= 300, 10.0)
        assert all(props == {} for _, _, _, props in observer.messages), \
            observer.messages[0]
        assert sorted(parse_envelope(p).seq for _, p, _, _ in observer.messages) == seqs
    finally:
        stop_link(link)
        cloud.stop()
        observer.stop()


def test_without_reason_codes_a_message_nobody_subscribed_to_counts_as_delivered(
        tmp_path: Path, mosquitto_broker: Any) -> None:
    """No 0x10 on 3.1.1: in ``broker`` mode only a persistent consumer session keeps them."""
    link = make_link(tmp_path, mosquitto_broker.port)
    lost = fill(link, 20)
    link.start()
    try:
        # Nobody subscribed: the broker answers a plain PUBACK and drops them; the link, which
        # cannot see 0x10, counts them delivered (MQTT 5 keeps them queued: test_mqtt_link).
        assert wait_for(lambda: link.queue.stats().delivered == 20, 10.0), link.stats
        assert link.stats.no_subscribers == 0 and link.queue.stats().queued == 0
        late = Subscriber(mosquitto_broker.port, 'cloud-late', persistent=False)
        late.start()
        (sentinel,) = fill(link, 1)
        assert wait_for(lambda: sentinel in late.seqs(), 10.0), late.seqs()
        assert late.seqs() == [sentinel]   # one publisher, one topic: order is kept
        late.stop()
        # A persistent session, subscribed once and offline now, is held by the broker.
        held = Subscriber(mosquitto_broker.port, 'cloud-held')
        held.start()
        held.stop()
        kept = fill(link, 20)
        assert wait_for(lambda: link.queue.stats().delivered == 41, 10.0), link.stats
        held.start()
        assert wait_for(lambda: sorted(set(held.seqs())) == kept, 10.0), held.seqs()
        assert not set(lost) & set(held.seqs())
        held.stop()
    finally:
        stop_link(link)


def test_a_broker_restart_mid_stream_loses_nothing(tmp_path: Path,
                                                   mosquitto_broker: Any) -> None:
    cloud = Subscriber(mosquitto_broker.port, 'cloud-311')
    cloud.start()
    # Paced at 200 msg/s so that each restart falls in the middle of a round of 150.
    link = make_link(tmp_path, mosquitto_broker.port, drain_rate_hz=200.0,
                     reconnect_min_s=1.0, reconnect_max_s=2.0)
    link.start()
    expected: list[int] = []
    try:
        for round_index in range(3):
            assert wait_for(lambda n=round_index: link.stats.connects == n + 1, 20.0), \
                link.stats
            assert cloud.subscribed.wait(20.0)   # the cloud's session is back too
            round_seqs = fill(link, 150)
            expected += round_seqs
            assert wait_for(lambda r=set(round_seqs): len(r & set(cloud.seqs())) >= 20,
                            10.0), link.stats
            assert link.queue.stats().queued > 0, 'the round drained before the restart'
            cloud.subscribed.clear()
            mosquitto_broker.stop()   # SIGTERM: sessions and queued messages are saved
            expected += fill(link, 50)   # committed while the broker is away
            mosquitto_broker.start()
        assert wait_for(lambda: set(expected) <= set(cloud.seqs()), 60.0), (
            len(set(expected) - set(cloud.seqs())), link.stats)
        assert wait_for(lambda: link.queue.stats().queued == 0, 10.0), link.queue.stats()
        stats = link.queue.stats()
        assert stats.committed == stats.delivered == len(expected) == 600 and stats.balanced
        duplicates = len(cloud.seqs()) - len(set(cloud.seqs()))
        assert duplicates <= 3 * link.cfg.inflight_window, duplicates
        assert link.stats.connects >= 4
    finally:
        stop_link(link)
        cloud.stop()


def test_commands_come_down_on_the_robots_cmd_topics_with_their_retain_flag(
        tmp_path: Path, mosquitto_broker: Any) -> None:
    planner = Subscriber(mosquitto_broker.port, 'planner', topics=('planner/unused',))
    planner.start()
    planner.client.publish(f'cobot/v1/{ROBOT}/cmd/mission', b'retained', qos=1,
                           retain=True).wait_for_publish(5)
    link = make_link(tmp_path, mosquitto_broker.port)
    got: list[tuple[str, bytes, bool]] = []
    link.on_command = lambda topic, payload, retained: got.append((topic, payload, retained))
    subscribed = threading.Event()
    granted: list[Any] = []

    def on_subscribe(client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        granted.extend(reasons)
        if len(granted) == 2:     # its commands and the model chunks it asks for
            subscribed.set()
    link.client.on_subscribe = on_subscribe   # the link itself does not watch its SUBACK
    link.start()
    try:
        assert subscribed.wait(10), link.stats
        assert [getattr(r, 'value', r) for r in granted] == [1, 1], granted   # QoS 1 granted
        for topic, payload in ((f'cobot/v1/{ROBOT}/cmd/mission', b'{"hello": 1}'),
                               ('cobot/v1/cobot-b/cmd/mission', b'not for us'),
                               (f'cobot/v1/{ROBOT}/telemetry/x', b'not a command'),
                               (f'cobot/v1/{ROBOT}/cmd/after', b'{}')):
            planner.client.publish(topic, payload, qos=1).wait_for_publish(5)
        assert wait_for(lambda: any(t.endswith('/cmd/after') for t, _, _ in got), 10.0), got
        assert got == [(f'cobot/v1/{ROBOT}/cmd/mission', b'retained', True),
                       (f'cobot/v1/{ROBOT}/cmd/mission', b'{"hello": 1}', False),
                       (f'cobot/v1/{ROBOT}/cmd/after', b'{}', False)]
    finally:
        stop_link(link)
        planner.stop()


_CRASHING_ROBOT = """
import sys, threading
from pathlib import Path
from cobot_hybrid_bridge.durable_queue import DurableQueue
from cobot_hybrid_bridge.mqtt_link import LinkConfig, MqttLink
link = MqttLink(LinkConfig(robot_id=sys.argv[1], broker_port=int(sys.argv[2]),
                           protocol='mqtt311', delivery='broker'),
                DurableQueue(Path(sys.argv[3])), threading.Lock())
link.start()
threading.Event().wait()   # until SIGKILLed
"""


def retained_status(port: int, client_id: str) -> tuple[dict[str, Any], bool]:
    """What a client subscribing now gets on the robot's status topic: (payload, retained)."""
    fresh = Subscriber(port, client_id, topics=(STATUS,), persistent=False)
    fresh.start()
    try:
        assert wait_for(lambda: fresh.on(STATUS), 5.0), 'no retained status'
        payload, retained = fresh.on(STATUS)[0]
        return json.loads(payload), retained
    finally:
        fresh.stop()


def test_online_is_retained_and_the_last_will_says_offline_after_a_crash(
        tmp_path: Path, mosquitto_broker: Any) -> None:
    port = mosquitto_broker.port
    watcher = Subscriber(port, 'status-watcher', topics=(STATUS,), persistent=False)
    watcher.start()
    log_path = tmp_path / 'robot.log'
    with log_path.open('wb') as log:
        robot = subprocess.Popen([sys.executable, '-c', _CRASHING_ROBOT, ROBOT, str(port),
                                  str(tmp_path / 'outbox.db')], stdout=log,
                                 stderr=subprocess.STDOUT)

    def states() -> list[str]:
        return [json.loads(p)['state'] for p, _ in watcher.on(STATUS)]
    try:
        assert wait_for(lambda: 'online' in states(), 20.0), (states(), log_path.read_text())
        status, retained = retained_status(port, 'late-1')
        assert status['state'] == 'online' and retained
        robot.send_signal(signal.SIGKILL)   # no DISCONNECT: the broker publishes the will
        robot.wait(10)
        assert wait_for(lambda: states()[-1:] == ['offline'], 10.0), states()
        assert states() == ['online', 'offline'], log_path.read_text()
        status, retained = retained_status(port, 'late-2')
        assert status['state'] == 'offline' and retained
    finally:
        if robot.poll() is None:
            robot.kill()
            robot.wait(10)
        watcher.stop()


def json_routes() -> list[Any]:
    return parse_routes({'routes': [{'ros_topic': 'events', 'type': 'std_msgs/msg/String',
                                     'mqtt_topic': 'telemetry/events'}]})


def test_cloud_delivery_over_mqtt311_is_acknowledged_by_the_envelope_seq(
        tmp_path: Path, mosquitto_broker: Any) -> None:
    store = FleetStore(tmp_path / 'fleet.db')
    # The planner speaks MQTT 5; from a 3.1.1 robot it gets no user properties.
    cloud = Subscriber(mosquitto_broker.port, 'planner', protocol=mqtt.MQTTv5,
                       topics=('cobot/v1/+/telemetry/#', 'cobot/v1/+/state'), store=store,
                       acking=False)
    cloud.start()
    bridge = EdgeBridge(BridgeConfig(robot_id=ROBOT, data_dir=str(tmp_path / 'data'),
                                     broker_port=mosquitto_broker.port, protocol='mqtt311',
                                     delivery='cloud', state_period_s=3600.0), json_routes())
    for index in range(100):
        bridge.offer(0, {'data': f'event {index}'}, None)
    bridge.tick()   # group commit (and the first CRDT state snapshot)
    committed = bridge.queue.stats().committed
    assert committed == 101   # 100 events + 1 state snapshot
    bridge.start()
    link = bridge.link
    try:
        # The broker took them all; the cloud has stored them but not said so: all kept.
        assert wait_for(lambda: link.stats.awaiting_cloud == committed, 15.0), link.stats
        assert wait_for(lambda: len(cloud.messages) >= committed, 5.0), len(cloud.messages)
        assert len(set(cloud.seqs())) == 100, cloud.seqs()
        assert all(props == {} for _, _, _, props in cloud.messages)   # the envelope only
        assert store.counts['accepted'] == 100 and store.counts['state merged'] == 1, \
            store.counts
        stats = bridge.queue.stats()
        assert (stats.delivered, stats.queued) == (0, committed) and stats.balanced
        cloud.acking = True
        cloud.acknowledge()
        assert wait_for(lambda: bridge.queue.stats().queued == 0, 15.0), link.stats
        stats = bridge.queue.stats()
        assert stats.delivered == committed and stats.balanced
        assert link.stats.cloud_acked == committed and link.stats.bad_delivery_acks == 0
        assert 'rejected' not in store.counts and 'duplicate' not in store.counts, \
            store.counts
    finally:
        bridge.stop()
        cloud.stop()
        store.close()


@pytest.mark.parametrize(('encoding', 'type_name'), [('jpeg', 'sensor_msgs/msg/Image'),
                                                     ('cdr', 'sensor_msgs/msg/Image')])
def test_cloud_delivery_over_mqtt311_refuses_routes_without_an_envelope(
        tmp_path: Path, encoding: str, type_name: str) -> None:
    routes = json_routes() + parse_routes({'routes': [{
        'ros_topic': 'image', 'type': type_name, 'mqtt_topic': 'events/image',
        'encoding': encoding}]})
    with pytest.raises(BridgeError, match='mqtt311') as refused:
        EdgeBridge(BridgeConfig(robot_id=ROBOT, data_dir=str(tmp_path), protocol='mqtt311',
                                delivery='cloud'), routes)
    assert "['image']" in str(refused.value)   # names the route, not the JSON one
    for fine in (BridgeConfig(robot_id=ROBOT, data_dir=str(tmp_path), protocol='mqtt311',
                              delivery='broker'),
                 BridgeConfig(robot_id=ROBOT, data_dir=str(tmp_path), protocol='mqtt5',
                              delivery='cloud')):
        EdgeBridge(fine, routes).queue.close()
