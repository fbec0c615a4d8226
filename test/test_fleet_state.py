"""Fleet state from telemetry: de-duplication, CRDT merge, liveness, restart, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cobot_hybrid_planner.fleet_state import FleetStore
from cobot_hybrid_protocol.crdt import HLC, PNCounter, TelemetryState
from cobot_hybrid_protocol.envelope import build_envelope
from cobot_hybrid_protocol.mission import MissionAck, ack_to_json


def snapshot(stops: int, speed: float, stamp_ms: int) -> dict:
    state = TelemetryState()
    state.counters['stops'] = PNCounter()
    state.counters['stops'].add('cobot-a', stops)
    state.values.set('speed_scale', speed, HLC('cobot-a').now(stamp_ms))
    return state.to_json()


#: The start of an uplink envelope, for payloads written out byte by byte.
ENV = b'{"robot_id": "cobot-a", "stamp": 1.0, "topic": "x", "type": "x", '


def send(store: FleetStore, kind: str, seq: int, data: object, now: float = 100.0) -> str:
    payload = build_envelope('cobot-a', seq, now, kind, 'x', data)  # type: ignore[arg-type]
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
    send(store, 'events/mission_ack', 2, ack_to_json(MissionAck('accepted', 'm-1', 3)))
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
    ('cobot/v1/cobot-a/telemetry/x', b'{}', {}, 'must have exactly the fields'),
    ('cobot/v1/cobot-a/telemetry/x', b'\xff\xd8 a JPEG', {}, 'no (robot_id, seq)'),
    ('cobot/v1/cobot-a/telemetry/x', ENV + b'"seq": 3, "data": {}, "extra": 1}', {},
     "unknown ['extra']"),
    ('cobot/v1/cobot-a/events/x', ENV + b'"seq": 3, "data": {}}', {'seq': '4'},
     "seq in the user properties is not the envelope's"),
    ('cobot/v1/cobot-a/events/x', b'{"robot_id": "cobot-a", "stamp": -5, "topic": "x", '
     b'"type": "x", "seq": 3, "data": {}}', {}, 'stamp must be unix seconds'),
    ('cobot/v1/cobot-a/telemetry/x', b'{}', {'seq': str(2**70)}, '1..2^63-1'),
    ('cobot/v1/cobot-a/state', ENV + b'"seq": 9, "data": {"counters": 1}}', {},
     'state snapshot'),
    ('cobot/v1/cobot-a/events/mission_ack', ENV + b'"seq": 10, "data": {"status": "maybe"}}',
     {},
     'mission ack'),
    ('cobot/v1/cobot-a/events/mission_ack', ENV + b'"seq": 11, "data": {"mission_id": "m", '
     b'"version": 99999999999999999999999, "status": "accepted"}}', {}, 'big_integer'),
    # the crashes of the hardening issue, each one a regression test
    ('cobot/v1/cobot-a/telemetry/x', ENV + b'"seq": Infinity}', {}, 'non_finite'),
    ('cobot/v1/cobot-a/telemetry/x', ENV + b'"seq": 1e400}', {}, 'non_finite'),
    ('cobot/v1/cobot-a/telemetry/x', ENV + b'"seq": 1, "data": ' + b'[' * 3000 + b']' * 3000
     + b'}', {}, 'too_deep'),
    ('cobot/v1/cobot-a/status', b'{"state": ' + b'[' * 300 + b']' * 300 + b'}', {},
     'too_deep'),
    ('cobot/v1/cobot-a/status', b'{"state": "online", "pad": "' + b'x' * 2000 + b'"}', {},
     'too_large'),
    ('cobot/v1/cobot-a/telemetry/x', ENV + b'"seq": 12}', {'seq': '\u00b2'}, '1..2^63-1'),
    ('cobot/v1/cobot-a/telemetry/x', ENV + b'"seq": true, "data": {}}', {}, '1..2**63-1'),
    ('cobot/v1/cobot-a/state', ENV + b'"seq": 13, "data": {"counters": {"c": {"p": {"r": '
     + str(10**30).encode() + b'}, "n": {}}}, "values": {}, "alarms": {"adds": {}, '
     b'"removed": []}}}', {}, 'big_integer'),
    ('cobot/v1/cobot-a/state', ENV + b'"seq": 14, "data": {"counters": {"c": {"p": {"r": '
     + str(2**60).encode() + b'}, "n": {}}}, "values": {}, "alarms": {"adds": {}, '
     b'"removed": []}}}', {}, '2**53'),
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


def _state_payload(seq: int, values: dict, counters: int = 0) -> bytes:
    data = {'counters': {f'c{i}': {'p': {'r': 1}, 'n': {}} for i in range(counters)},
            'values': values, 'alarms': {'adds': {}, 'removed': []}}
    return build_envelope('cobot-a', seq, 1.0, 'state', 'x', data)


def test_future_stamps_cannot_freeze_a_value(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / 'fleet.db', max_skew_s=60.0)
    now = 1_800_000_000.0
    frozen = {'protective_stop': [[2**52, 0, 'cobot-a'], True],
              'speed_scale': [[int(now * 1000), 0, 'cobot-a'], 0.5]}
    outcome = store.ingest('cobot/v1/cobot-a/state', _state_payload(1, frozen), {}, now)
    assert outcome.startswith('state merged') and '1 future-stamped' in outcome
    assert store.future_stamps == 1
    state = store.state('cobot-a')
    assert state.values.get('protective_stop') is None and state.values.get('speed_scale') == 0.5
    later = {'protective_stop': [[int(now * 1000) + 1000, 0, 'cobot-a'], False]}
    store.ingest('cobot/v1/cobot-a/state', _state_payload(2, later), {}, now + 1)
    assert store.state('cobot-a').values.get('protective_stop') is False
    store.close()


def test_a_state_row_is_bounded_in_size(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / 'fleet.db', max_state_bytes=2000)
    outcome = store.ingest('cobot/v1/cobot-a/state', _state_payload(1, {}, counters=100), {},
                           1.0)
    assert outcome.startswith('rejected') and 'exceeds 2000' in outcome
    assert store.state('cobot-a').counters == {}
    store.close()


def test_only_robots_of_the_site_are_stored(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / 'fleet.db', robots_allowed=frozenset({'cobot-a'}))
    online = b'{"state": "online"}'
    assert store.ingest('cobot/v1/intruder/status', online, now_s=1.0).startswith('rejected')
    assert 'not in the site' in store.ingest('cobot/v1/intruder/telemetry/x', b'{}',
                                             {'seq': '1'}, 1.0)
    assert store.ingest('cobot/v1/cobot-a/status', online, now_s=1.0) == 'status: online'
    assert set(store.robots(now_s=1.0)) == {'cobot-a'}
    store.close()


def test_retained_events_are_ignored_and_retained_status_still_counts(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / 'fleet.db')
    ack = build_envelope('cobot-a', 1, 1.0, 'mission_ack', 'x',
                         ack_to_json(MissionAck('accepted', 'm', 1)))
    assert store.ingest('cobot/v1/cobot-a/events/mission_ack', ack, {'seq': '1'}, 1.0,
                        retained=True).startswith('ignored')
    assert store.ack_of('cobot-a', 'm', 1) is None
    assert store.ingest('cobot/v1/cobot-a/status', b'{"state": "online"}', {}, 1.0,
                        retained=True) == 'status: online'
    store.close()


def test_one_failing_message_does_not_lose_the_rest_of_its_batch(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    store = FleetStore(tmp_path / 'fleet.db')
    real = store._merge_state

    def broken(robot_id: str, data: object, now: float) -> str:
        store._db.execute("INSERT INTO state VALUES ('half-written', '{}')")
        raise RuntimeError('a bug')

    monkeypatch.setattr(store, '_merge_state', broken)
    outcomes = store.ingest_many([
        ('cobot/v1/cobot-a/telemetry/x', b'{}', {'seq': '1'}),
        ('cobot/v1/cobot-a/state', _state_payload(2, {}), {}),
        ('cobot/v1/cobot-a/telemetry/x', b'{}', {'seq': '3'})], now_s=1.0)
    assert outcomes[0] == 'accepted' and outcomes[2] == 'accepted'
    assert outcomes[1] == 'rejected: internal error RuntimeError'
    monkeypatch.setattr(store, '_merge_state', real)
    assert store.state('half-written').counters == {}      # rolled back alone
    # the failed message's seq was rolled back too: it can be stored when sent again
    assert store.ingest('cobot/v1/cobot-a/state', _state_payload(2, {}), {}, 2.0) \
        == 'state merged'
    store.close()


def test_a_wiped_outbox_starting_its_seqs_again_loses_nothing(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / 'fleet.db')
    first = build_envelope('cobot-a', 1, 10.0, 'x', 'x', {'n': 'before the wipe'})
    assert store.ingest('cobot/v1/cobot-a/telemetry/x', first, {'seq': '1'}, 10.0) \
        == 'accepted'
    assert store.ingest('cobot/v1/cobot-a/telemetry/x', first, {'seq': '1'}, 11.0) \
        == 'duplicate'                      # the same bytes again: a resend
    again = build_envelope('cobot-a', 1, 20.0, 'x', 'x', {'n': 'after the wipe'})
    assert store.ingest('cobot/v1/cobot-a/telemetry/x', again, {'seq': '1'}, 20.0) \
        == 'accepted'                       # another message under seq 1: not a duplicate
    assert store.seq_reused == 1
    assert store.ingest('cobot/v1/cobot-a/telemetry/x', again, {'seq': '1'}, 21.0) \
        == 'duplicate'
    store.close()


def test_the_robot_id_of_the_properties_and_envelope_must_be_the_topics(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / 'fleet.db')
    # A certificate named "cobot-a/events" may write under cobot/v1/cobot-a/events/...
    spoof = build_envelope('cobot-a/events', 5, 1.0, 'x', 'x', {})
    outcome = store.ingest('cobot/v1/cobot-a/events/telemetry/x', spoof,
                           {'robot_id': 'cobot-a/events', 'seq': '5'}, 1.0)
    assert outcome.startswith('rejected') and 'robot_id' in outcome
    outcome = store.ingest('cobot/v1/cobot-a/state', build_envelope('cobot-b', 6, 1.0, 's', 's',
                                                                   {}), {}, 1.0)
    assert outcome.startswith('rejected') and 'envelope' in outcome
    store.close()


def test_telemetry_payloads_are_not_parsed_when_the_seq_is_in_the_properties(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cobot_hybrid_planner.fleet_state as fleet_state

    parsed: list[int] = []
    real = fleet_state.parse_envelope
    monkeypatch.setattr(fleet_state, 'parse_envelope',
                        lambda raw, *a, **k: parsed.append(len(raw)) or real(raw, *a, **k))
    store = FleetStore(tmp_path / 'fleet.db')
    huge = b'{"data": "' + b'x' * 500_000 + b'"}'
    assert store.ingest('cobot/v1/cobot-a/telemetry/x', huge, {'seq': '1'}, 1.0) == 'accepted'
    assert parsed == []
    store.close()


def test_a_refused_message_with_a_known_seq_is_acknowledged_so_it_never_blocks_the_robot(
        tmp_path: Path) -> None:
    """Refused for good: re-sending it until its TTL would fill the robot's cloud window."""
    store = FleetStore(tmp_path / 'fleet.db')
    huge = build_envelope('cobot-a', 5, 1.0, 'x', 'std_msgs/msg/String', {'data': 'x' * 70_000})
    outcome = store.ingest('cobot/v1/cobot-a/events/log', huge, {'seq': '5'}, 1.0)
    assert outcome.startswith('rejected') and 'long_string' in outcome
    deep = build_envelope('cobot-a', 6, 1.0, 'x', 'x', {'data': [[[[[[1]]]]]]}).replace(
        b'[[[[[[1]]]]]]', b'[' * 40 + b']' * 40)
    assert 'too_deep' in store.ingest('cobot/v1/cobot-a/events/log', deep, {'seq': '6'}, 1.0)
    assert store.delivered.pending == {'cobot-a': {5, 6}}
    # without a seq it cannot be named: nothing is acknowledged
    store.ingest('cobot/v1/cobot-a/events/log', deep.replace(b'"seq":6', b'"seq":7'), {}, 1.0)
    assert store.delivered.pending == {'cobot-a': {5, 6}}
    store.close()


@pytest.mark.parametrize('kind', ['foo/bar', 'state/extra', 'status/x', 'cmdx', 'telemetry'])
def test_topics_a_robot_never_publishes_are_refused(tmp_path: Path, kind: str) -> None:
    store = FleetStore(tmp_path / 'fleet.db')
    outcome = store.ingest(f'cobot/v1/cobot-a/{kind}', build_envelope(
        'cobot-a', 1, 1.0, 'x', 'x', {}), {'seq': '1'}, 1.0)
    assert outcome.startswith('rejected') and 'not a topic a robot publishes' in outcome
    assert not store.delivered.pending
    store.close()


def test_an_ack_from_a_bridge_before_the_schema_field_is_still_read(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / 'fleet.db')
    old = {'mission_id': 'm-1', 'version': 3, 'status': 'accepted', 'reason': ''}
    outcome = send(store, 'events/mission_ack', 1, old)
    assert outcome == 'ack: accepted' and outcome.ack is not None
    assert store.ack_of('cobot-a', 'm-1', 3) == 'accepted'
    wrong = {**old, 'schema': 'cobot_hybrid/mission_ack/v9'}
    assert send(store, 'events/mission_ack', 2, wrong).startswith('rejected')
    store.close()
