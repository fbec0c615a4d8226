"""Fleet state from telemetry: de-duplication, CRDT merge, liveness, restart, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cobot_hybrid_bridge.codecs import json_envelope
from cobot_hybrid_bridge.crdt import HLC, PNCounter, TelemetryState
from cobot_hybrid_planner.fleet_state import FleetStore


def snapshot(stops: int, speed: float, stamp_ms: int) -> dict:
    state = TelemetryState()
    state.counters['stops'] = PNCounter()
    state.counters['stops'].add('cobot-a', stops)
    state.values.set('speed_scale', speed, HLC('cobot-a').now(stamp_ms))
    return state.to_json()


def send(store: FleetStore, kind: str, seq: int, data: object, now: float = 100.0) -> str:
    payload = json_envelope('cobot-a', seq, now, kind, 'x', data)  # type: ignore[arg-type]
    return store.ingest(f'cobot/v1/cobot-a/{kind}', payload, {'seq': str(seq)}, now)


def test_duplicates_are_dropped_and_state_merges_in_any_order(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / 'fleet.db')
    newer, older = snapshot(5, 0.3, 2000), snapshot(3, 1.0, 1000)
    assert send(store, 'state', 2, newer) == 'state merged'
    assert send(store, 'state', 1, older) == 'state merged'   # arrives late
    assert send(store, 'state', 2, newer) == 'duplicate'
    state = store.state('cobot-a')
    assert state.counters['stops'].value == 5 and state.values.get('speed_scale') == 0.3
    assert store.counts['duplicate'] == 1
    store.close()


def test_liveness_from_status_will_and_silence(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / 'fleet.db', offline_after_s=10.0)
    online = json.dumps({'state': 'online'}).encode()
    assert store.ingest('cobot/v1/cobot-a/status', online, now_s=0.0) == 'status: online'
    send(store, 'telemetry/people', 1, {}, now=5.0)
    assert store.robots(now_s=6.0)['cobot-a'].online
    assert not store.robots(now_s=20.0)['cobot-a'].online  # silent for 15 s
    will = json.dumps({'state': 'offline'}).encode()
    store.ingest('cobot/v1/cobot-a/status', will, now_s=21.0)
    assert not store.robots(now_s=21.5)['cobot-a'].online
    store.close()


def test_a_restart_resumes_from_the_store(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / 'fleet.db')
    send(store, 'state', 1, snapshot(2, 0.5, 10))
    send(store, 'events/mission_ack', 2, {'mission_id': 'm-1', 'version': 3,
                                          'status': 'accepted', 'reason': ''})
    store.close()
    again = FleetStore(tmp_path / 'fleet.db')
    assert send(again, 'state', 1, snapshot(2, 0.5, 10)) == 'duplicate'  # seen survives
    assert again.state('cobot-a').counters['stops'].value == 2
    assert again.ack_of('cobot-a', 'm-1', 3) == 'accepted'
    assert again.ack_of('cobot-a', 'm-1', 4) is None
    again.close()


@pytest.mark.parametrize(('topic', 'payload', 'props', 'reason'), [
    ('elsewhere/x', b'{}', {}, 'is not cobot/v1'),
    ('cobot/v1/cobot-a/status', b'{"state": "asleep"}', {}, 'status must be'),
    ('cobot/v1/cobot-a/telemetry/x', b'{}', {}, 'no (robot_id, seq)'),
    ('cobot/v1/cobot-a/telemetry/x', b'{}', {'seq': str(2**70)}, 'outside'),
    ('cobot/v1/cobot-a/state', b'{"seq": 9, "data": {"counters": 1}}', {}, 'state snapshot'),
    ('cobot/v1/cobot-a/events/mission_ack', b'{"seq": 10, "data": {"status": "maybe"}}', {},
     'mission ack'),
    ('cobot/v1/cobot-a/events/mission_ack', b'{"seq": 11, "data": {"mission_id": "m", '
     b'"version": 99999999999999999999999, "status": "accepted"}}', {}, 'mission ack'),
])
def test_bad_messages_are_rejected_with_a_reason(tmp_path: Path, topic: str, payload: bytes,
                                                 props: dict, reason: str) -> None:
    store = FleetStore(tmp_path / 'fleet.db')
    outcome = store.ingest(topic, payload, props, now_s=1.0)
    assert outcome.startswith('rejected') and reason in outcome
    store.close()


@settings(max_examples=150, deadline=None)
@given(topic=st.text(max_size=40), payload=st.binary(max_size=200),
       seq=st.one_of(st.none(), st.text(max_size=5), st.integers()))
def test_fuzzed_messages_never_raise(tmp_path_factory: pytest.TempPathFactory, topic: str,
                                     payload: bytes, seq: object) -> None:
    store = FleetStore(tmp_path_factory.mktemp('fuzz') / 'fleet.db')
    try:
        props = {} if seq is None else {'seq': str(seq)}
        assert isinstance(store.ingest(topic, payload, props, now_s=1.0), str)
        assert isinstance(store.ingest('cobot/v1/r/state', payload, props, now_s=1.0), str)
    finally:
        store.close()
