"""EdgeBridge without ROS or a broker: wall-clock steps, commands and the per-command boundary.

A steppable clock is injected (no system clock is changed): NTP steps of +2 days and -300 s
during a backlog must expire nothing wrongly and stall nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cobot_hybrid_bridge.bridge import EdgeBridge
from cobot_hybrid_bridge.bridge_config import BridgeConfig
from cobot_hybrid_bridge.routes import parse_routes
from cobot_hybrid_protocol.clock import SteppableClock
from cobot_hybrid_protocol.mission import MISSION_SCHEMA
from cobot_hybrid_protocol.signing import sign_command

KEY = Ed25519PrivateKey.generate()
DAY = 86_400.0
ROUTES = parse_routes({'routes': [
    {'ros_topic': 'events', 'type': 'std_msgs/msg/String', 'mqtt_topic': 'telemetry/events'},
    {'ros_topic': 'speed', 'type': 'std_msgs/msg/Float64', 'mqtt_topic': 'telemetry/speed',
     'filter': {'kind': 'aggregate', 'field': 'data', 'period_s': 10.0}},
    {'ros_topic': 'people', 'type': 'std_msgs/msg/String', 'mqtt_topic': 'telemetry/people',
     'rate_limit_hz': 1.0}]})


@pytest.fixture
def clock() -> SteppableClock:
    return SteppableClock(wall_s=1_800_000_000.0)


@pytest.fixture
def bridge(tmp_path: Path, clock: SteppableClock) -> Any:
    key = tmp_path / 'planner.pub'
    key.write_bytes(KEY.public_key().public_bytes(Encoding.PEM,
                                                  PublicFormat.SubjectPublicKeyInfo))
    cfg = BridgeConfig(robot_id='cobot-a', data_dir=str(tmp_path), message_ttl_s=3600.0,
                       cloud_public_keys=(f'planner={key}',), state_period_s=3600.0)
    edge = EdgeBridge(cfg, ROUTES, clock=clock)
    yield edge
    edge.queue.close()


def run(bridge: EdgeBridge, clock: SteppableClock, seconds: float, step: float = 0.05) -> None:
    """Let time pass with the node's timer calling tick."""
    for _ in range(round(seconds / step)):
        clock.advance(step)
        bridge.tick()


def events(bridge: EdgeBridge, count: int) -> None:
    for index in range(count):
        bridge.offer(0, {'data': f'event {index}'}, None)


def test_a_forward_step_of_two_days_expires_nothing(bridge: EdgeBridge,
                                                    clock: SteppableClock) -> None:
    events(bridge, 50)
    run(bridge, clock, 1.0)
    assert bridge.queue.stats().queued >= 50
    clock.step_wall(2 * DAY)                 # NTP, during the outage
    run(bridge, clock, 61.0, step=0.5)       # the TTL check runs every 60 s
    stats = bridge.queue.stats()
    assert stats.dropped['ttl'] == 0 and stats.queued >= 50 and stats.balanced
    assert bridge.clock_steps == 1
    assert stats.oldest_age_s < 120.0        # ages kept, not two days
    run(bridge, clock, 3600.0, step=30.0)    # real ageing still expires by TTL
    assert bridge.queue.stats().dropped['ttl'] >= 50


def test_a_backward_step_of_300_s_stalls_nothing(bridge: EdgeBridge,
                                                 clock: SteppableClock) -> None:
    events(bridge, 10)
    run(bridge, clock, 0.5)
    committed = bridge.queue.stats().committed
    clock.step_wall(-300.0)
    events(bridge, 10)
    run(bridge, clock, 0.1)                  # group commit within its period, not in 300 s
    assert bridge.queue.stats().committed >= committed + 10
    # Rate limits and summaries run on the monotonic clock too.
    sent = bridge.states[2].sent
    bridge.offer(2, {'data': 'a'}, None)
    run(bridge, clock, 1.1)
    bridge.offer(2, {'data': 'b'}, None)
    assert bridge.states[2].sent == sent + 2
    bridge.offer(1, {'data': 0.5}, None)
    before = bridge.states[1].sent
    run(bridge, clock, 10.5, step=0.5)
    assert bridge.states[1].sent == before + 1
    stats = bridge.queue.stats()
    assert stats.balanced and 0.0 < stats.oldest_age_s < 60.0   # re-based, not negative


def mission(clock: SteppableClock, version: int = 1, **fields: Any) -> bytes:
    now = clock.wall()
    command = {'schema': MISSION_SCHEMA, 'kind': 'mission', 'command_id': f'c{version}',
               'robot_id': 'cobot-a', 'mission_id': 'm', 'version': version,
               'issued_at': now, 'valid_until': now + 600, 'frame_id': 'map',
               'tasks': [{'task_id': 't', 'type': 'pick', 'station': 's', 'duration_s': 1.0,
                          'pose': {'x': 0, 'y': 0, 'z': 0, 'yaw': 0}}], **fields}
    return sign_command(KEY, 'planner', command, 'cobot-a')


def acks(bridge: EdgeBridge) -> list[dict[str, Any]]:
    bridge.queue.commit()
    rows = bridge.queue.peek(1000)
    return [json.loads(m.payload)['data'] for m in rows if m.topic.endswith('mission_ack')]


def test_one_command_failing_inside_never_stops_the_next(bridge: EdgeBridge,
                                                         clock: SteppableClock,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    verifier = bridge._verifier
    assert verifier is not None
    real = verifier.verify
    calls = [0]

    def flaky(raw: bytes, now_s: float | None = None) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError('a bug in a check')
        return real(raw, now_s)

    monkeypatch.setattr(verifier, 'verify', flaky)
    topic = 'cobot/v1/cobot-a/cmd/mission'
    bridge._on_command(topic, mission(clock, 1))
    bridge._on_command(topic, mission(clock, 2))
    bridge._on_command(topic, mission(clock, 3), True)     # retained
    accepted = bridge.take_commands()
    assert [m.version for m in accepted] == [2]
    assert bridge.internal_errors == 1
    reasons = [a['reason'] for a in acks(bridge)]
    assert reasons[0].startswith('internal_error: RuntimeError')
    assert reasons[1] == '' and reasons[2].startswith('retained:')
    assert all(r.count(r.split(':')[0] + ':') <= 1 for r in reasons if r)  # never doubled


def test_the_telemetry_state_file_is_read_within_limits(tmp_path: Path,
                                                       clock: SteppableClock,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / 'cobot-a'
    folder.mkdir()
    (folder / 'telemetry_state.json').write_text('[' * 5000 + ']' * 5000)
    edge = EdgeBridge(BridgeConfig(robot_id='cobot-a', data_dir=str(tmp_path)), ROUTES,
                      clock=clock)
    assert any('unreadable' in r.message for r in caplog.records)
    assert edge._state.counters == {}
    edge.queue.close()


def test_after_a_restart_the_robots_own_new_values_win_over_its_old_ones(
        tmp_path: Path, clock: SteppableClock) -> None:
    cfg = BridgeConfig(robot_id='cobot-a', data_dir=str(tmp_path))
    first = EdgeBridge(cfg, ROUTES, clock=clock)
    first.set_value('protective_stop', True)      # while the clock was a day ahead
    first._save_state()
    first.queue.close()
    clock.step_wall(-DAY)                          # NTP corrects it; the bridge restarts
    again = EdgeBridge(cfg, ROUTES, clock=clock)
    again.set_value('protective_stop', False)
    assert again._state.values.get('protective_stop') is False
    again.queue.close()


def test_cloud_delivery_refuses_opaque_routes_over_mqtt311(tmp_path: Path) -> None:
    from cobot_hybrid_bridge.errors import BridgeError

    jpeg = parse_routes({'routes': [{'ros_topic': 'image', 'type': 'sensor_msgs/msg/Image',
                                     'mqtt_topic': 'events/snapshot', 'encoding': 'jpeg'}]})
    with pytest.raises(BridgeError, match='mqtt311'):
        EdgeBridge(BridgeConfig(robot_id='cobot-a', data_dir=str(tmp_path),
                                protocol='mqtt311'), jpeg)
    EdgeBridge(BridgeConfig(robot_id='cobot-a', data_dir=str(tmp_path), protocol='mqtt311',
                            delivery='broker'), jpeg).queue.close()


def test_what_the_cloud_would_refuse_for_good_is_refused_and_counted_at_the_edge(
        bridge: EdgeBridge, clock: SteppableClock) -> None:
    bridge.offer(0, {'data': 'x' * 70_000}, None)     # a string over the uplink's 64 KiB
    bridge.offer(0, {'data': list(range(20_000))}, None)
    bridge.offer(0, {'data': 10**30}, None)            # a UInt64 that no JSON reader keeps
    bridge.offer(0, {'data': 'fine'}, None)
    run(bridge, clock, 0.1)
    sent = [json.loads(m.payload)['data'] for m in bridge.queue.peek(100)
            if m.topic.endswith('telemetry/events')]
    assert sent == [{'data': 'fine'}]
    assert bridge.uplink_refused == {'long_string': 1, 'too_many_items': 1, 'big_integer': 1}
    assert bridge.stats()['uplink_refused'] == dict(bridge.uplink_refused)
