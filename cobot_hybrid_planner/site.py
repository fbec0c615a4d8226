"""The site: stations with poses, travel times between them, robots and their capabilities.

``site.yaml``::

    frame_id: map
    travel_speed_mps: 0.5            # straight-line distance / speed, unless overridden
    travel_overrides_s: {press-1/tray: 12.0}   # measured times, both directions
    stations:
      press-1: {x: 0.0, y: 0.0, yaw: 0.0}
      tray:    {x: 3.0, y: 1.0, yaw: 1.57}
    robots:
      cobot-1: {capabilities: [pick, place], start: tray}

Pure Python; :func:`load_site` names the key of any mistake. Every number is bounded so that
any site that loads plans without overflow: coordinates within +-10 km, yaw within +-2 pi,
travel speed in (0.01, 100] m/s, measured travel times up to a day; robot ids are MQTT topic
levels (1-64 characters, no ``/ + # $`` or spaces); the file is read with the bounded YAML
parser (size, depth, aliases).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_protocol.errors import PayloadError
from cobot_hybrid_protocol.limits import ID_MAX, is_name, is_number_in, parse_yaml
from cobot_hybrid_protocol.topics import RobotIdError, check_robot_id

__all__ = ['Robot', 'Site', 'SiteError', 'Station', 'load_site', 'parse_site']


class SiteError(PlannerError, ValueError):
    """The site file is wrong; the message names the key."""


@dataclass(frozen=True)
class Station:
    """A place where tasks happen."""

    name: str
    x: float
    y: float
    yaw: float = 0.0


@dataclass(frozen=True)
class Robot:
    """A cobot of the fleet as the site knows it."""

    robot_id: str
    capabilities: frozenset[str]
    start: str


@dataclass
class Site:
    """Stations, robots and travel times."""

    stations: dict[str, Station]
    robots: dict[str, Robot]
    travel_speed_mps: float = 0.5
    travel_overrides_s: dict[tuple[str, str], float] = field(default_factory=dict)
    frame_id: str = 'map'

    def travel_s(self, a: str, b: str) -> float:
        """Seconds from station ``a`` to ``b`` (0 for the same station)."""
        if a == b:
            return 0.0
        override = self.travel_overrides_s.get((a, b))
        if override is not None:
            return override
        sa, sb = self.stations[a], self.stations[b]
        return math.hypot(sa.x - sb.x, sa.y - sb.y) / self.travel_speed_mps

    @property
    def capabilities(self) -> frozenset[str]:
        """Every capability some robot has."""
        return frozenset().union(*(r.capabilities for r in self.robots.values()))


MAX_COORD_M = 10_000.0
MAX_TRAVEL_S = 86_400.0
_ID_MAX = ID_MAX


def _number(value: Any, where: str, low: float, high: float) -> float:
    if not is_number_in(value, low, high):
        raise SiteError(f'{where} must be a finite number in [{low:g}, {high:g}]')
    return float(value)


def _name(value: Any, where: str, robot: bool = False) -> str:
    text = str(value)
    if robot:
        try:
            return check_robot_id(text)
        except RobotIdError as exc:
            raise SiteError(f'{where}: {exc}') from None
    if not is_name(text, _ID_MAX):
        raise SiteError(f'{where}: {text[:40]!r} must be printable, 1-{_ID_MAX} characters')
    return text


def parse_site(data: Any) -> Site:
    """Validate a decoded site file."""
    if not isinstance(data, Mapping):
        raise SiteError('the site file must be a mapping')
    unknown = set(data) - {'frame_id', 'travel_speed_mps', 'travel_overrides_s', 'stations',
                           'robots'}
    if unknown:
        raise SiteError(f'unknown keys {sorted(unknown)}')
    stations_raw, robots_raw = data.get('stations'), data.get('robots')
    if not isinstance(stations_raw, Mapping) or not stations_raw:
        raise SiteError('stations: a non-empty mapping of name -> {x, y, yaw}')
    if not isinstance(robots_raw, Mapping) or not robots_raw:
        raise SiteError('robots: a non-empty mapping of id -> {capabilities, start}')
    stations = {}
    for name, pose in stations_raw.items():
        name = _name(name, 'stations')
        if not isinstance(pose, Mapping) or not {'x', 'y'} <= set(pose) \
                or set(pose) - {'x', 'y', 'yaw'}:
            raise SiteError(f'stations.{name} must be {{x, y[, yaw]}}')
        x, y = (_number(pose[k], f'stations.{name}.{k}', -MAX_COORD_M, MAX_COORD_M)
                for k in ('x', 'y'))
        stations[name] = Station(name, x, y, _number(pose.get('yaw', 0.0),
                                                     f'stations.{name}.yaw', -math.tau, math.tau))
    robots = {}
    for robot_id, spec in robots_raw.items():
        robot_id = _name(robot_id, 'robots', robot=True)
        where = f'robots.{robot_id}'
        if not isinstance(spec, Mapping) or set(spec) != {'capabilities', 'start'}:
            raise SiteError(f'{where} must be exactly {{capabilities, start}}')
        caps = spec['capabilities']
        if not isinstance(caps, list) or not caps or len(caps) > 64:
            raise SiteError(f'{where}.capabilities must be a non-empty list (at most 64)')
        caps = [_name(c, f'{where}.capabilities') for c in caps]
        if spec['start'] not in stations:
            raise SiteError(f'{where}.start {spec["start"]!r} is not a station')
        robots[str(robot_id)] = Robot(str(robot_id), frozenset(map(str, caps)),
                                      str(spec['start']))
    speed = _number(data.get('travel_speed_mps', 0.5), 'travel_speed_mps', 0.01, 100.0)
    overrides: dict[tuple[str, str], float] = {}
    raw_overrides = data.get('travel_overrides_s') or {}
    if not isinstance(raw_overrides, Mapping):
        raise SiteError('travel_overrides_s must map station-a/station-b -> seconds')
    for pair, seconds in raw_overrides.items():
        a, _, b = str(pair).partition('/')
        if a not in stations or b not in stations:
            raise SiteError(f'travel_overrides_s.{pair}: use station-a/station-b')
        overrides[(a, b)] = overrides[(b, a)] = _number(seconds, f'travel_overrides_s.{pair}',
                                                        0.0, MAX_TRAVEL_S)
    return Site(stations, robots, speed, overrides,
                _name(data.get('frame_id', 'map'), 'frame_id'))


def load_site(path: Path) -> Site:
    """Read and validate a site file."""
    try:
        return parse_site(parse_yaml(Path(path).read_bytes(), what=f'site file {path}'))
    except OSError as exc:
        raise SiteError(f'site file {path} cannot be read: {exc.strerror}') from None
    except PayloadError as exc:
        raise SiteError(str(exc.detail)) from None
