"""The uplink routes file: which ROS topics go up, how, and through which edge filter.

``config/bridge_routes.yaml`` (path in the ``routes_file`` parameter)::

    routes:
      - ros_topic: detections                       # relative: namespaces and remaps apply
        type: vision_msgs/msg/Detection2DArray      # any type, resolved at run time
        mqtt_topic: telemetry/detections            # cobot/v1/<robot_id>/telemetry/ or
                                                    # .../events/ (the robots' ACL)
        encoding: json                              # json (any consumer) | cdr (ROS) | jpeg
        qos: 1
        priority: 1                                 # higher drains first, dropped last
        retain: false
        rate_limit_hz: 2.0                          # 0: no limit
        reliability: best_effort                    # reliable (default) | best_effort: the
                                                    # latter also matches sensor publishers
        filter: {kind: classes, classes: [person], min_score: 0.5}

:func:`load_routes` validates everything and names the route and key of any mistake.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_bridge.filters import FilterError, make_filter
from cobot_hybrid_protocol.errors import PayloadError
from cobot_hybrid_protocol.limits import is_number_in, parse_yaml

__all__ = ['ENCODINGS', 'UPLINK_BRANCHES', 'Route', 'RouteError', 'load_routes', 'parse_routes']

ENCODINGS = ('json', 'cdr', 'jpeg')
UPLINK_BRANCHES = ('telemetry/', 'events/')   # what a robot may write under its prefix
_TYPE = re.compile(r'^[A-Za-z][\w]*/msg/[A-Z][A-Za-z0-9]*$')
_TOPIC_LEVEL = re.compile(r'^[\w\-.]+(/[\w\-.]+)*$')
_KEYS = {'ros_topic', 'type', 'mqtt_topic', 'encoding', 'qos', 'priority', 'retain',
         'rate_limit_hz', 'reliability', 'filter'}


class RouteError(BridgeError, ValueError):
    """The routes file is wrong; the message names the route and the key."""


@dataclass(frozen=True)
class Route:
    """One ROS topic going up."""

    ros_topic: str
    type_name: str
    mqtt_topic: str
    encoding: str = 'json'
    qos: int = 1
    priority: int = 0
    retain: bool = False
    rate_limit_hz: float = 0.0
    filter_spec: Mapping[str, Any] | None = None
    reliability: str = 'reliable'

    @property
    def package(self) -> str:
        """Package of the message type (``vision_msgs``)."""
        return self.type_name.split('/')[0]

    @property
    def message(self) -> str:
        """Message name (``Detection2DArray``)."""
        return self.type_name.split('/')[-1]


def parse_routes(data: Any) -> list[Route]:
    """Validate the decoded YAML of a routes file."""
    if not isinstance(data, dict) or set(data) != {'routes'} or not isinstance(
            data['routes'], list):
        raise RouteError('the routes file must hold exactly one key, "routes", with a list')
    routes, seen = [], set()
    for index, raw in enumerate(data['routes']):
        where = f'routes[{index}]'
        if not isinstance(raw, dict):
            raise RouteError(f'{where} must be a mapping')
        unknown = set(raw) - _KEYS
        if unknown:
            raise RouteError(f'{where} has unknown keys {sorted(unknown)}')
        for key in ('ros_topic', 'type', 'mqtt_topic'):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise RouteError(f'{where}.{key} is required (a string)')
        where = f'{where} ({raw["ros_topic"]})'
        if not _TYPE.match(raw['type']):
            raise RouteError(f'{where}.type {raw["type"]!r} must look like pkg/msg/Name')
        if not _TOPIC_LEVEL.match(raw['mqtt_topic']) \
                or not raw['mqtt_topic'].startswith(UPLINK_BRANCHES):
            raise RouteError(f'{where}.mqtt_topic {raw["mqtt_topic"]!r} must be relative '
                             '(no + # or leading /) and under telemetry/ or events/ (what '
                             "the robots' ACL lets a robot write)")
        encoding = raw.get('encoding', 'json')
        if encoding not in ENCODINGS:
            raise RouteError(f'{where}.encoding {encoding!r}: use one of {ENCODINGS}')
        if encoding == 'jpeg' and raw['type'] not in ('sensor_msgs/msg/Image',
                                                      'sensor_msgs/msg/CompressedImage'):
            raise RouteError(f'{where}: encoding jpeg is for sensor_msgs images only')
        qos = raw.get('qos', 1)
        if type(qos) is not int or qos not in (0, 1, 2):
            raise RouteError(f'{where}.qos must be 0, 1 or 2')
        priority = raw.get('priority', 0)
        if type(priority) is not int or not 0 <= priority <= 9:
            raise RouteError(f'{where}.priority must be an integer 0..9 (9 drains first)')
        retain = raw.get('retain', False)
        if not isinstance(retain, bool):
            raise RouteError(f'{where}.retain must be true or false')
        rate = raw.get('rate_limit_hz', 0.0)
        if not is_number_in(rate, 0.0, 1000.0):
            raise RouteError(f'{where}.rate_limit_hz must be a number in [0, 1000] (0: none)')
        reliability = raw.get('reliability', 'reliable')
        if reliability not in ('reliable', 'best_effort'):
            raise RouteError(f'{where}.reliability {reliability!r}: use reliable or best_effort')
        try:
            make_filter(raw.get('filter'))
        except FilterError as exc:
            raise RouteError(f'{where}.filter: {exc}') from None
        if raw['mqtt_topic'] in seen:
            raise RouteError(f'{where}.mqtt_topic {raw["mqtt_topic"]!r} is used twice')
        seen.add(raw['mqtt_topic'])
        routes.append(Route(raw['ros_topic'], raw['type'], raw['mqtt_topic'], encoding, qos,
                            priority, retain, float(rate), raw.get('filter'), reliability))
    return routes


def load_routes(path: Path) -> list[Route]:
    """Read and validate a routes file."""
    try:
        data = parse_yaml(Path(path).read_bytes(), what=f'routes file {path}')
    except OSError as exc:
        raise RouteError(f'routes file {path} cannot be read: {exc.strerror}') from None
    except PayloadError as exc:
        raise RouteError(exc.detail) from None
    return parse_routes(data)
