"""Hypothesis at every boundary: hostile payloads and files are refusals, never exceptions.

The classes of the hardening issue are generated on purpose (huge integers, deep nesting,
non-finite numbers, long strings, wrong types, duplicate keys, retained flags, other robots'
ids) around otherwise valid messages, for: the planner's ingest, the bridge's downlink, and
the routes, site and order files. After each hostile input the component must still take a
valid one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cobot_hybrid_bridge.bridge import EdgeBridge
from cobot_hybrid_bridge.bridge_config import BridgeConfig
from cobot_hybrid_bridge.routes import RouteError, parse_routes
from cobot_hybrid_planner.fleet_state import FleetStore
from cobot_hybrid_planner.orders import ORDERS_SCHEMA, OrderError, validate_orders
from cobot_hybrid_planner.site import SiteError, parse_site
from cobot_hybrid_protocol.envelope import build_envelope
from cobot_hybrid_protocol.mission import MISSION_SCHEMA
from cobot_hybrid_protocol.signing import sign_command

KEY = Ed25519PrivateKey.generate()
FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])

# Raw JSON texts of the hostile classes, to splice into otherwise valid documents.
HOSTILE_TEXT = st.sampled_from([
    '9' * 5000, '-' + '9' * 30, '1e400', '-1e400', 'NaN', 'Infinity', '[' * 3000 + ']' * 3000,
    '{"a":' * 600 + '1' + '}' * 600, '"' + 'x' * 70_000 + '"', '"\\ud800"', 'true', 'null',
    '[]', '{}', '"cobot-b"', '-1', '0', '9223372036854775808', '1.5', '""'])
SCALARS = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() \
    | st.text(max_size=30)
TREES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4)
                     | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)


def splice(document: dict[str, Any], path: list[str], hostile: str) -> bytes:
    """``document`` as JSON with the value at ``path`` replaced by a raw hostile text."""
    marker = '"@@HOSTILE@@"'
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = '@@HOSTILE@@'
    return json.dumps(document).replace(marker, hostile, 1).encode()


# --- the planner's ingest -----------------------------------------------------------------------

def _good_state() -> dict[str, Any]:
    return {'counters': {'c': {'p': {'cobot-a': 1}, 'n': {}}},
            'values': {'k': [[1000, 0, 'cobot-a'], 1]}, 'alarms': {'adds': {}, 'removed': []}}


ENVELOPE = {'robot_id': 'cobot-a', 'stamp': 1000.0, 'topic': 'x', 'type': 'x'}
KINDS = {
    'status': (lambda: {'state': 'online'}, [['state']]),
    'state': (lambda: {**ENVELOPE, 'seq': 1, 'data': _good_state()},
              [['seq'], ['data'], ['data', 'counters'], ['data', 'values'],
               ['data', 'alarms']]),
    'events/mission_ack': (lambda: {**ENVELOPE, 'seq': 1, 'data': {
        'schema': 'cobot_hybrid/mission_ack/v1', 'mission_id': 'm', 'version': 1,
        'status': 'accepted', 'reason': ''}},
        [['seq'], ['data', 'version'], ['data', 'mission_id'], ['data', 'reason'],
         ['robot_id'], ['stamp']]),
    'events/task_progress': (lambda: {**ENVELOPE, 'seq': 1, 'data': {
        'schema': 'cobot_hybrid/task_progress/v1', 'mission_id': 'm', 'version': 1,
        'task_id': 't', 'status': 'done', 'stamp': 1000.0}},
        [['seq'], ['data', 'stamp'], ['data', 'version'], ['data', 'task_id']]),
    'telemetry/x': (lambda: {**ENVELOPE, 'seq': 1, 'data': {'v': 1}},
                    [['seq'], ['data'], ['topic'], ['type']]),
}


@pytest.fixture(scope='module')
def store(tmp_path_factory: pytest.TempPathFactory) -> FleetStore:
    fleet = FleetStore(tmp_path_factory.mktemp('fuzz') / 'fleet.db',
                       robots_allowed=frozenset({'cobot-a'}))
    yield fleet
    fleet.close()


@FUZZ
@given(kind=st.sampled_from(sorted(KINDS)), data=st.data(), hostile=HOSTILE_TEXT,
       robot=st.sampled_from(['cobot-a', 'cobot-b', '']), retained=st.booleans(),
       seq_prop=st.none() | st.text(max_size=25) | st.sampled_from(['1', '2' * 30, '²']))
def test_hostile_telemetry_is_a_reason_never_an_exception(
        store: FleetStore, kind: str, data: st.DataObject, hostile: str, robot: str,
        retained: bool, seq_prop: str | None) -> None:
    make, paths = KINDS[kind]
    payload = splice(make(), data.draw(st.sampled_from(paths)), hostile)
    props = {} if seq_prop is None else {'seq': seq_prop}
    outcome = store.ingest(f'cobot/v1/{robot}/{kind}', payload, props, now_s=2000.0,
                           retained=retained)
    assert outcome.split(':')[0] in ('rejected', 'ignored', 'duplicate', 'accepted',
                                     'status', 'state merged', 'ack', 'progress'), outcome
    # Still healthy: the next valid message is stored.
    good = build_envelope('cobot-a', data.draw(st.integers(10**6, 10**12)), 2000.0, 'x', 'x',
                         {'v': 1})
    assert store.ingest('cobot/v1/cobot-a/telemetry/x', good, {}, now_s=2000.0) \
        in ('accepted', 'duplicate')


# --- the bridge's downlink ----------------------------------------------------------------------

@pytest.fixture(scope='module')
def bridge(tmp_path_factory: pytest.TempPathFactory) -> EdgeBridge:
    folder = tmp_path_factory.mktemp('bridge')
    key = folder / 'planner.pub'
    key.write_bytes(KEY.public_key().public_bytes(Encoding.PEM,
                                                  PublicFormat.SubjectPublicKeyInfo))
    edge = EdgeBridge(BridgeConfig(robot_id='cobot-a', data_dir=str(folder),
                                   cloud_public_keys=(f'planner={key}',)), [])
    yield edge
    edge.queue.close()


def _mission(version: int, now: float) -> dict[str, Any]:
    return {'schema': MISSION_SCHEMA, 'kind': 'mission', 'command_id': f'c-{version}',
            'robot_id': 'cobot-a', 'mission_id': 'm', 'version': version, 'issued_at': now,
            'valid_until': now + 600, 'frame_id': 'map', 'tasks': [
                {'task_id': 't', 'type': 'pick', 'station': 's', 'duration_s': 1.0,
                 'pose': {'x': 0.0, 'y': 0.0, 'z': 0.0, 'yaw': 0.0}}]}


MISSION_PATHS = [['version'], ['issued_at'], ['valid_until'], ['tasks'], ['robot_id'],
                 ['command_id'], ['frame_id'], ['kind']]
_version = iter(range(1, 10**9))


@FUZZ
@given(data=st.data(), hostile=HOSTILE_TEXT, signed=st.booleans(), retained=st.booleans(),
       tree=TREES)
def test_hostile_commands_are_acked_rejections_and_the_next_one_is_taken(
        bridge: EdgeBridge, data: st.DataObject, hostile: str, signed: bool,
        retained: bool, tree: Any) -> None:
    import time

    now = time.time()
    if signed:   # a hostile value inside a validly signed command
        raw = splice(_mission(next(_version), now), data.draw(st.sampled_from(MISSION_PATHS)),
                     hostile)
        envelope = json.loads(sign_command(KEY, 'planner', {'placeholder': 1}, 'cobot-a'))
        import base64
        envelope['payload'] = base64.b64encode(raw).decode()
        envelope['signature'] = base64.b64encode(KEY.sign(raw + b'\ncobot-a')).decode()
        payload = json.dumps(envelope).encode()
    else:        # an unsigned envelope with a hostile or random field
        payload = data.draw(st.sampled_from([
            splice({'key_id': 'planner', 'payload': '', 'signature': ''},
                   [data.draw(st.sampled_from(['key_id', 'payload', 'signature']))], hostile),
            json.dumps(tree, allow_nan=True).encode()]))
    rejected = sum(bridge.rejected.values())
    bridge._on_command('cobot/v1/cobot-a/cmd/mission', payload, retained)
    bridge.take_commands()
    assert sum(bridge.rejected.values()) in (rejected, rejected + 1)
    good = sign_command(KEY, 'planner', _mission(next(_version) + 10**6, now), 'cobot-a')
    bridge._on_command('cobot/v1/cobot-a/cmd/mission', good)
    assert len(bridge.take_commands()) == 1
    assert bridge.internal_errors == 0


# --- files ------------------------------------------------------------------------------------

@FUZZ
@given(tree=TREES, where=st.sampled_from(['stations', 'robots', 'travel_speed_mps',
                                          'travel_overrides_s', 'frame_id']))
def test_any_site_document_is_a_site_or_a_site_error(tree: Any, where: str) -> None:
    base: dict[str, Any] = {'stations': {'a': {'x': 0, 'y': 0}},
                            'robots': {'r': {'capabilities': ['pick'], 'start': 'a'}}}
    try:
        parse_site({**base, where: tree})
    except SiteError:
        pass


@FUZZ
@given(tree=TREES, key=st.sampled_from(['ros_topic', 'type', 'mqtt_topic', 'qos', 'priority',
                                        'retain', 'rate_limit_hz', 'filter', 'encoding',
                                        'reliability']))
def test_any_routes_document_is_routes_or_a_route_error(tree: Any, key: str) -> None:
    route = {'ros_topic': 'a', 'type': 'std_msgs/msg/Bool', 'mqtt_topic': 'telemetry/a',
             key: tree}
    try:
        parse_routes({'routes': [route]})
    except RouteError:
        pass


@FUZZ
@given(tree=TREES, key=st.sampled_from(['task_id', 'type', 'station', 'capability',
                                        'duration_s', 'priority', 'release_s', 'deadline_s',
                                        'after']), order_level=st.booleans())
def test_any_order_is_tasks_and_rejections_or_an_order_error(tree: Any, key: str,
                                                             order_level: bool) -> None:
    site = parse_site({'stations': {'a': {'x': 0, 'y': 0}},
                       'robots': {'r': {'capabilities': ['pick'], 'start': 'a'}}})
    task = {'task_id': 't', 'type': 'pick', 'station': 'a', 'capability': 'pick',
            'duration_s': 1, key: tree}
    order = {'schema': ORDERS_SCHEMA, 'order_id': 'o', 'tasks': [task]}
    if order_level:
        order = {'schema': ORDERS_SCHEMA, 'order_id': tree, 'tasks': tree}
    try:
        tasks, rejected = validate_orders(order, site)
    except OrderError:
        return
    assert len(tasks) + len(rejected) >= (0 if order_level else 1)


def test_the_splice_helper_really_puts_the_hostile_text_in(tmp_path: Path) -> None:
    raw = splice({'a': {'b': 1}}, ['a', 'b'], '9' * 30)
    assert raw == b'{"a": {"b": ' + b'9' * 30 + b'}}'
