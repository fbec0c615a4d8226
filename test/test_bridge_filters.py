"""Edge filters, routes file validation and message-to-JSON conversion (no ROS, no broker)."""

from __future__ import annotations

import array
import json
from pathlib import Path

import numpy as np
import pytest

from cobot_hybrid_bridge.codecs import message_to_dict
from cobot_hybrid_bridge.filters import (
    Aggregate,
    EventTrigger,
    FilterError,
    RateLimiter,
    make_filter,
    resolve_path,
)
from cobot_hybrid_bridge.routes import RouteError, load_routes, parse_routes
from cobot_hybrid_protocol.envelope import build_envelope

ROOT = Path(__file__).resolve().parent.parent


def detections(*items: tuple[str, float]) -> dict:
    return {'header': {'frame_id': 'cam'}, 'detections': [
        {'id': str(i), 'results': [{'hypothesis': {'class_id': c, 'score': s}}]}
        for i, (c, s) in enumerate(items)]}


def test_class_filter_keeps_only_confident_people() -> None:
    f = make_filter({'kind': 'classes', 'classes': ['person'], 'min_score': 0.5})
    (out,) = f.offer(detections(('person', 0.9), ('person', 0.3), ('cup', 0.99)), 0.0)
    assert [d['id'] for d in out['detections']] == ['0']
    assert f.offer(detections(('cup', 0.99)), 1.0) == []


def test_on_change_sends_transitions_only() -> None:
    f = make_filter({'kind': 'on_change', 'fields': ['data']})
    sent = [bool(f.offer({'data': v}, t)) for t, v in enumerate([False, False, True, True,
                                                                  False])]
    assert sent == [True, False, True, False, True]


def test_aggregate_summarises_each_window() -> None:
    f = make_filter({'kind': 'aggregate', 'field': 'detections', 'period_s': 10.0})
    assert isinstance(f, Aggregate)
    for t in range(20):  # 20 frames over 10 s with 0..3 people
        assert f.offer(detections(*[('person', 0.9)] * (t % 4)), 0.5 * t) == []
    assert f.tick(9.0) == []
    (summary,) = f.tick(10.0)
    assert summary['count'] == 20 and summary['rate_hz'] == 2.0
    assert (summary['min'], summary['max'], summary['p50']) == (0.0, 3.0, 2.0)
    (empty,) = f.tick(20.0)
    assert empty['count'] == 0 and 'mean' not in empty


def test_event_trigger_fires_on_transitions() -> None:
    trigger = EventTrigger('data', True)
    assert [trigger.fires({'data': v}) for v in (True, True, False, True)] == \
        [True, False, False, True]


def test_rate_limiter() -> None:
    limiter = RateLimiter(2.0)
    assert [limiter.allow(t / 10) for t in range(12)].count(True) == 3  # 0.0, 0.5, 1.0


def test_paths_and_bad_filters() -> None:
    assert resolve_path({'status': [{'level': 2}]}, 'status.0.level') == 2
    with pytest.raises(FilterError, match='status.1.level'):
        resolve_path({'status': [{'level': 2}]}, 'status.1.level')
    for spec, message in [({'kind': 'magic'}, 'kind'), ({'kind': 'classes'}, 'classes'),
                          ({'kind': 'on_change', 'fields': 'data'}, 'fields'),
                          ({'kind': 'aggregate', 'field': 'x'}, 'period_s'),
                          ({'kind': 'pass', 'x': 1}, 'does not take')]:
        with pytest.raises(FilterError, match=message):
            make_filter(spec)


def test_the_shipped_routes_file_is_valid() -> None:
    routes = load_routes(ROOT / 'config' / 'bridge_routes.yaml')
    assert {r.mqtt_topic for r in routes} >= {'events/protective_stop', 'telemetry/people'}
    stop = next(r for r in routes if r.ros_topic == 'protective_stop')
    assert stop.priority == max(r.priority for r in routes)


@pytest.mark.parametrize(('data', 'message'), [
    ({'routes': [{'ros_topic': 'a', 'type': 'std_msgs/Bool', 'mqtt_topic': 'telemetry/x'}]},
     'pkg/msg'),
    ({'routes': [{'ros_topic': 'a', 'type': 'std_msgs/msg/Bool', 'mqtt_topic': 'telemetry/#'}]},
     'relative'),
    ({'routes': [{'ros_topic': 'a', 'type': 'std_msgs/msg/Bool', 'mqtt_topic': 'cmd/x'}]},
     'telemetry/ or events/'),
    ({'routes': [{'ros_topic': 'a', 'type': 'std_msgs/msg/Bool', 'mqtt_topic': 'status'}]},
     'telemetry/ or events/'),
    ({'routes': [{'ros_topic': 'a', 'type': 'std_msgs/msg/Bool', 'mqtt_topic': 'telemetry/x',
                  'encoding': 'xml'}]}, 'encoding'),
    ({'routes': [{'ros_topic': 'a', 'type': 'std_msgs/msg/Bool', 'mqtt_topic': 'telemetry/x',
                  'encoding': 'jpeg'}]}, 'images only'),
    ({'routes': [{'ros_topic': 'a', 'type': 'std_msgs/msg/Bool', 'mqtt_topic': 'telemetry/x',
                  'qos': 3}]}, 'qos'),
    ({'routes': [{'ros_topic': 'a', 'type': 'std_msgs/msg/Bool', 'mqtt_topic': 'telemetry/x',
                  'colour': 'red'}]}, 'unknown keys'),
    ({'routes': [{'ros_topic': 'a', 'type': 'std_msgs/msg/Bool', 'mqtt_topic': 'telemetry/x'},
                 {'ros_topic': 'b', 'type': 'std_msgs/msg/Bool', 'mqtt_topic': 'telemetry/x'}]},
     'twice'),
    ({'routes': [{'ros_topic': 'a', 'type': 'std_msgs/msg/Bool', 'mqtt_topic': 'telemetry/x',
                  'filter': {'kind': 'nope'}}]}, r'routes\[0\] \(a\)\.filter'),
    ({'paths': []}, 'exactly one key'),
])
def test_routes_errors_name_the_route_and_key(data: dict, message: str) -> None:
    with pytest.raises(RouteError, match=message):
        parse_routes(data)


def test_missing_or_broken_routes_file(tmp_path: Path) -> None:
    with pytest.raises(RouteError, match='cannot be read'):
        load_routes(tmp_path / 'none.yaml')
    (tmp_path / 'bad.yaml').write_text('routes: [unclosed')
    with pytest.raises(RouteError, match='not valid YAML'):
        load_routes(tmp_path / 'bad.yaml')


class _Point:
    @staticmethod
    def get_fields_and_field_types() -> dict:
        return {'x': 'double', 'y': 'double'}

    def __init__(self, x: float, y: float) -> None:
        self.x, self.y = x, y


class _Msg:
    @staticmethod
    def get_fields_and_field_types() -> dict:
        return {'name': 'string', 'points': 'sequence<Point>', 'data': 'sequence<uint8>',
                'values': 'sequence<double>', 'score': 'double', 'matrix': 'double[4]'}

    def __init__(self) -> None:
        self.name = 'n'
        self.points = [_Point(1.0, 2.0)]
        self.data = array.array('B', b'\x00\x01\xff')
        self.values = array.array('d', [0.5, float('nan')])
        self.score = float('inf')
        self.matrix = np.array([1.0, 0.0, 0.0, 1.0])


def test_message_to_dict_and_envelope() -> None:
    data = message_to_dict(_Msg())
    assert data == {'name': 'n', 'points': [{'x': 1.0, 'y': 2.0}], 'data': 'AAH/',
                    'values': [0.5, 'nan'], 'score': 'inf', 'matrix': [1.0, 0.0, 0.0, 1.0]}
    envelope = json.loads(build_envelope('cobot-a', 7, 12.5, 'detections',
                                        'x/msg/Y', data))
    assert (envelope['robot_id'], envelope['seq'], envelope['data']['name']) == \
        ('cobot-a', 7, 'n')
