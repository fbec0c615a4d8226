"""The in-memory broker and link of the core tests behave as mosquitto does where they model it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cobot_hybrid_bridge.durable_queue import DurableQueue
from cobot_hybrid_bridge.memory_link import MemoryLink
from cobot_hybrid_bridge.mqtt_link import LinkConfig
from cobot_hybrid_protocol.delivery import delivered_payload
from cobot_hybrid_protocol.topics import delivered_topic
from cobot_hybrid_protocol.transport import MemoryBroker, Message, topic_matches


@pytest.mark.parametrize(('topic_filter', 'topic', 'matches'), [
    ('cobot/v1/#', 'cobot/v1/r1/status', True),
    ('cobot/v1/+/status', 'cobot/v1/r1/status', True),
    ('cobot/v1/+/status', 'cobot/v1/r1/state', False),
    ('cobot/v1/r1/#', 'cobot/v1/r1', True),             # '#' also matches the parent level
    ('cobot/v1/+', 'cobot/v1/r1/status', False),
    ('#', '$SYS/broker/uptime', False),                  # $ topics are not in wildcards
    ('$share/g/cobot/v1/orders', 'cobot/v1/orders', True),
])
def test_filters_match_as_mqtt_says(topic_filter: str, topic: str, matches: bool) -> None:
    assert topic_matches(topic_filter, topic) is matches


def test_retained_shared_takeover_and_a_held_session() -> None:
    broker = MemoryBroker()
    robot, heard = broker.transport('r1'), []
    robot.connect([], lambda m: None)
    robot.publish('cobot/v1/r1/status', b'online', retain=True)
    late = broker.transport('cloud')
    late.connect([('cobot/v1/+/status', 1)], heard.append)
    assert [m.payload for m in heard] == [b'online']     # retained, on subscribe
    robot.publish('cobot/v1/r1/status', b'', retain=True)
    assert 'cobot/v1/r1/status' not in broker.retained   # an empty retained payload clears
    got: dict[str, list[Message]] = {'a': [], 'b': []}
    for name in got:
        broker.transport(name).connect([('$share/p/cobot/v1/orders', 1)], got[name].append)
    for _ in range(4):
        robot.publish('cobot/v1/orders', b'o')
    assert len(got['a']) == len(got['b']) == 2            # one member per message
    again = broker.transport('cloud')
    again.connect([], lambda m: None)
    assert not late.connected                            # the same client id took over
    offline = broker.transport('planner')
    handle = offline.publish('cobot/v1/r1/cmd/mission', b'm', qos=1)
    dropped = offline.publish('cobot/v1/r1/cmd/mission', b'q0', qos=0)
    assert not handle.is_published() and not dropped.is_published()
    offline.connect([], lambda m: None)
    assert handle.is_published() and not dropped.is_published()
    assert [p for s, m in broker.log if s == 'planner' for p in [m.payload]] == [b'm']


def test_the_memory_link_keeps_the_cloud_window(tmp_path: Path) -> None:
    broker = MemoryBroker()
    cloud, seen = broker.transport('cloud'), []
    cloud.connect([('cobot/v1/r1/#', 1)], seen.append)
    queue = DurableQueue(tmp_path / 'q.db')
    link = MemoryLink(LinkConfig(robot_id='r1', delivery='cloud', cloud_window=20,
                                 inflight_window=20), queue, threading.Lock(),
                      lambda *a: None, broker.transport('r1'))
    seqs = [queue.put('cobot/v1/r1/telemetry/x', b'{}') for _ in range(50)]
    queue.commit()
    link.start()
    sent = [m for m in seen if m.topic.endswith('telemetry/x')]
    assert len(sent) == 20 and link.stats.awaiting_cloud == 20
    cloud.publish(delivered_topic('r1'), delivered_payload('r1', [(seqs[0], seqs[19])]))
    sent = [m for m in seen if m.topic.endswith('telemetry/x')]
    assert len(sent) == 40                               # the window opened again
    queue.flush_delivered()
    assert queue.stats().delivered == 20 and link.stats.cloud_acked == 20
    link.stop()
    queue.close()
