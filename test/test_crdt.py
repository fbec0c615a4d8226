"""CRDT merges: commutative, associative, idempotent; delivery order does not matter."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cobot_hybrid_protocol.crdt import (
    HLC,
    CrdtError,
    GCounter,
    HlcTimestamp,
    LWWMap,
    ORSet,
    PNCounter,
    TelemetryState,
)

REPLICAS = ['robot-a', 'robot-b', 'cloud']


@st.composite
def states(draw: st.DrawFn) -> TelemetryState:
    """A telemetry state built by random operations on random replicas."""
    state = TelemetryState()
    clock = {r: HLC(r) for r in REPLICAS}
    for _ in range(draw(st.integers(0, 12))):
        replica = draw(st.sampled_from(REPLICAS))
        op = draw(st.sampled_from(['count', 'set', 'alarm', 'clear']))
        key = draw(st.sampled_from(['stops', 'speed', 'e-stop', 'lidar']))
        if op == 'count':
            state.counters.setdefault(key, PNCounter()).add(replica, draw(st.integers(-3, 5)))
        elif op == 'set':
            stamp = clock[replica].now(draw(st.integers(0, 50)))
            state.values.set(key, draw(st.integers(0, 9)), stamp)
        else:   # raise or clear an alarm: a stamped flag
            stamp = clock[replica].now(draw(st.integers(0, 50)))
            state.alarms.set(key, op == 'alarm', stamp)
    return state


def canon(state: TelemetryState) -> str:
    return json.dumps(state.to_json(), sort_keys=True)


@settings(max_examples=200)
@given(a=states(), b=states())
def test_merge_is_commutative(a: TelemetryState, b: TelemetryState) -> None:
    assert canon(a.merge(b)) == canon(b.merge(a))


@settings(max_examples=200)
@given(a=states(), b=states(), c=states())
def test_merge_is_associative(a: TelemetryState, b: TelemetryState, c: TelemetryState) -> None:
    assert canon(a.merge(b).merge(c)) == canon(a.merge(b.merge(c)))


@settings(max_examples=200)
@given(a=states(), b=states())
def test_merge_is_idempotent(a: TelemetryState, b: TelemetryState) -> None:
    merged = a.merge(b)
    assert canon(merged.merge(b)) == canon(merged)
    assert canon(a.merge(a)) == canon(a)


@settings(max_examples=100)
@given(snapshots=st.lists(states(), min_size=1, max_size=6), seed=st.integers(0, 1000))
def test_any_delivery_order_with_duplicates_gives_the_same_view(
        snapshots: list[TelemetryState], seed: int) -> None:
    expected = TelemetryState()
    for snapshot in snapshots:
        expected = expected.merge(snapshot)
    rng = random.Random(seed)
    deliveries = snapshots + rng.choices(snapshots, k=len(snapshots))  # duplicates
    rng.shuffle(deliveries)
    view = TelemetryState()
    for snapshot in deliveries:
        view = view.merge(TelemetryState.from_json(json.loads(json.dumps(snapshot.to_json()))))
    assert canon(view) == canon(expected)


def test_counters() -> None:
    counter = PNCounter()
    counter.add('a', 5)
    counter.add('b', -2)
    other = PNCounter()
    other.add('a', 3)  # a stale view of replica a
    assert counter.merge(other).value == 3
    with pytest.raises(CrdtError):
        GCounter().increment('a', -1)


def test_lww_prefers_the_causally_later_write_even_with_a_slow_clock() -> None:
    fast, slow = HLC('fast'), HLC('slow')
    first = fast.now(physical_ms=10_000)
    slow.observe(first, physical_ms=5_000)  # slow's wall clock is 5 s behind
    second = slow.now(physical_ms=5_001)
    assert second > first
    values = LWWMap()
    values.set('mode', 'auto', second)
    values.set('mode', 'manual', first)  # arrives late: must not win
    assert values.get('mode') == 'auto'


def test_or_set_readd_after_remove_and_concurrent_add_win() -> None:
    robot = ORSet()
    robot.add('overheat', 't1')
    cloud = ORSet().merge(robot)
    cloud.remove('overheat')          # the cloud acknowledged the alarm it saw (t1)
    robot.add('overheat', 't2')       # meanwhile it fired again on the robot
    merged = robot.merge(cloud)
    assert 'overheat' in merged and merged.elements == {'overheat'}
    robot.remove('overheat')
    assert 'overheat' not in robot.merge(cloud)


@pytest.mark.parametrize('payload', [
    [], {'counters': {}, 'values': {}}, {'counters': [], 'values': {}, 'alarms': {}},
    {'counters': {'x': {'p': {'a': -1}, 'n': {}}}, 'values': {}, 'alarms':
     {'adds': {}, 'removed': []}},
    {'counters': {}, 'values': {'k': [[1, 2], 3]}, 'alarms': {'adds': {}, 'removed': []}},
    {'counters': {}, 'values': {}, 'alarms': {'adds': 5, 'removed': []}},
    {'counters': {}, 'values': {}, 'alarms': {'stop': [[1, 0, 'r'], 'yes']}},   # not a bool
])
def test_malformed_snapshots_are_rejected(payload: object) -> None:
    with pytest.raises(CrdtError):
        TelemetryState.from_json(payload)


def test_hlc_is_monotone_when_the_wall_clock_stalls() -> None:
    clock = HLC('r')
    stamps = [clock.now(physical_ms=100) for _ in range(3)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    assert HlcTimestamp.from_json(stamps[0].to_json()) == stamps[0]


def test_an_alarm_toggled_ten_thousand_times_is_one_entry() -> None:
    """The observed-remove set kept a tombstone per clearing: ~4,000 stops outgrew the cloud."""
    state, clock = TelemetryState(), HLC('r')
    for index in range(10_000):
        state.alarms.set('protective_stop', index % 2 == 0, clock.now(index))
    assert len(state.alarms.entries) == 1 and state.active_alarms == set()
    assert len(json.dumps(state.to_json())) < 200


def test_a_snapshot_in_the_earlier_alarm_form_is_still_read() -> None:
    legacy = {'counters': {}, 'values': {},
              'alarms': {'adds': {'stop': ['t1'], 'door': ['t2']}, 'removed': ['t2']}}
    state = TelemetryState.from_json(legacy)
    assert state.active_alarms == {'stop'}
    newer = TelemetryState()
    newer.alarms.set('stop', False, HLC('r').now(1000))
    assert state.merge(newer).active_alarms == set()   # any newer change wins
