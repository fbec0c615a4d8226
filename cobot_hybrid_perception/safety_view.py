"""What the safety monitor shows of a decision, and what it reads of the detector's health.

Pure data, no ROS: ``safety_monitor_node`` turns these into messages.

* outputs: ``protective_stop`` is true exactly in ``PROTECTIVE_STOP`` (:func:`stop_requested`);
* diagnostics: level per state (:data:`LEVELS`: RUN OK, SLOW WARN, PROTECTIVE_STOP ERROR),
  the values (:func:`diagnostic_values`), published on every state change and at least every
  :data:`DIAG_PERIOD_S` (:func:`diagnostics_due`);
* markers (:func:`markers`): the protective zone at the robot's speed, the slow zone at its
  maximum speed (both around the TCP), the arm's links as cylinders when its geometry is known,
  each person as a cylinder in the colour of the state with a label giving its separation from
  the robot;
* detector health (:func:`detector_healthy`): the detector is unhealthy while any of its
  statuses is ERROR or STALE (anything but OK and WARN);
* time per cause (:class:`CauseTimes`): how long the robot was held, slowed or let run, by
  the decision's cause (a person, stale perception, a fault...), reported as
  ``time_s.<state>.<cause>``; recovering and holding after a fault carry it
  (``time_s.PROTECTIVE_STOP.recovering.stale_perception``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from cobot_hybrid_perception.arm_geometry import Capsule
from cobot_hybrid_perception.safety_pipeline import SafetyConfig, SafetyReport
from cobot_hybrid_perception.ssm import (
    Decision,
    Person,
    RobotState,
    SafetyState,
    protective_separation,
)

__all__ = ['COLOURS', 'DIAG_PERIOD_S', 'HEALTHY_LEVELS', 'LEVELS', 'CauseTimes', 'Rgba', 'Shape',
           'detector_healthy', 'diagnostic_values', 'diagnostics_due', 'level', 'markers',
           'person_colour', 'stop_requested']

Rgba = tuple[float, float, float, float]
Xyz = tuple[float, float, float]
Quat = tuple[float, float, float, float]

#: Diagnostic level of each safety state.
LEVELS: dict[SafetyState, str] = {SafetyState.RUN: 'OK', SafetyState.SLOW: 'WARN',
                                  SafetyState.PROTECTIVE_STOP: 'ERROR'}
#: Marker colour (r, g, b) of each safety state: green, amber, red.
COLOURS: dict[SafetyState, tuple[float, float, float]] = {
    SafetyState.RUN: (0.1, 0.8, 0.1), SafetyState.SLOW: (1.0, 0.8, 0.0),
    SafetyState.PROTECTIVE_STOP: (0.9, 0.1, 0.1)}
#: Detector status levels that count as healthy.
HEALTHY_LEVELS = frozenset({'OK', 'WARN'})
#: Diagnostics (and markers) are published at least this often [s].
DIAG_PERIOD_S = 0.5

PERSON_ALPHA = 0.8
PROTECTIVE_ZONE_RGBA: Rgba = (0.9, 0.1, 0.1, 0.25)
SLOW_ZONE_RGBA: Rgba = (1.0, 0.8, 0.0, 0.12)
LABEL_RGBA: Rgba = (1.0, 1.0, 1.0, 1.0)
LINK_RGBA: Rgba = (0.6, 0.6, 0.7, 0.6)
#: Zones are drawn for a person this far beyond ``near_distance_m`` (the far human speed).
_ZONE_FAR_M = 10.0


@dataclass(frozen=True)
class Shape:
    """One marker as plain data: ``kind`` is a cylinder or a text facing the viewer."""

    ns: str
    id: int
    kind: Literal['cylinder', 'text']
    position: Xyz
    scale: Xyz
    rgba: Rgba
    text: str = ''
    orientation: Quat = (0.0, 0.0, 0.0, 1.0)


def level(state: SafetyState) -> str:
    """Return the diagnostic level name of a safety state."""
    return LEVELS[state]


def person_colour(state: SafetyState) -> Rgba:
    """Return the colour of the people markers in a safety state."""
    return (*COLOURS[state], PERSON_ALPHA)


def stop_requested(state: SafetyState) -> bool:
    """Return whether ``protective_stop`` is true in this state."""
    return state is SafetyState.PROTECTIVE_STOP


def diagnostics_due(state: SafetyState, last_state: SafetyState | None, now_s: float,
                    last_s: float) -> bool:
    """Return whether to publish diagnostics and markers (state change, DIAG_PERIOD_S)."""
    return state != last_state or now_s - last_s >= DIAG_PERIOD_S


#: A gap between two decisions longer than this [s] is not counted (the node was paused or
#: inactive): time is charged to a decision only until the next one, at most this long.
MAX_CHARGED_GAP_S = 1.0


class CauseTimes:
    """Seconds spent per (state, cause) of the decisions, on a monotonic clock."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], float] = {}
        self._last: tuple[float, str, str] | None = None

    def record(self, now_s: float, decision: Decision) -> None:
        """Charge the time since the previous decision to it; this one starts now."""
        if self._last is not None:
            since, state, cause = self._last
            step = now_s - since
            if 0.0 < step:
                key = (state, cause)
                self.seconds[key] = self.seconds.get(key, 0.0) + min(step, MAX_CHARGED_GAP_S)
        cause = f'{decision.cause}.{decision.after}' if decision.after else decision.cause
        self._last = (now_s, decision.state.value, cause)

    def values(self) -> dict[str, str]:
        """``time_s.<STATE>.<cause>`` for every pair seen, seconds to 2 decimals."""
        return {f'time_s.{state}.{cause}': f'{secs:.2f}'
                for (state, cause), secs in sorted(self.seconds.items())}


def diagnostic_values(report: SafetyReport, published: int) -> dict[str, str]:
    """Return what the monitor reports of a decision (``published``: evaluations so far)."""
    d = report.decision
    return {
        'state': d.state.value,
        'speed_scale': f'{d.speed_scale:.3f}',
        'closest_distance_m': f'{d.closest_distance_m:.3f}',
        'required_separation_m': f'{d.required_separation_m:.3f}',
        'allowed_speed_mps': f'{d.allowed_speed_mps:.3f}',
        'robot_speed_mps': f'{report.robot.speed_mps:.3f}',
        'robot_speed_source': 'measured' if report.robot_speed_measured
        else 'assumed robot_max_speed_mps (no fresh robot_speed)',
        'robot_geometry': report.geometry,
        'closest_part': d.closest_part or '-',
        'perception_age_s': f'{report.perception_age_s:.3f}',
        'people': str(len(report.people)),
        'localization': ','.join(report.methods),
        'evaluations_published': str(published),
        # Tracked people by approach speed (positive: closing in); the decision keeps using
        # the ISO 13855 human speeds, this shows who moves faster than they assume.
        'approach_speed_mps': json.dumps({label: round(v, 2)
                                          for label, v in report.approach_mps[:8]}),
        'faster_than_iso_human_speed': ','.join(
            label for label, v in report.approach_mps if v > report.human_speed_mps) or '-',
    }


def _zones(robot: RobotState, cfg: SafetyConfig) -> list[Shape]:
    far = cfg.near_distance_m + _ZONE_FAR_M
    zones = (('protective', protective_separation(far, robot.speed_mps, cfg),
              PROTECTIVE_ZONE_RGBA),
             ('slow', protective_separation(far, cfg.robot_max_speed_mps, cfg),
              SLOW_ZONE_RGBA))
    return [Shape('zones', index, 'cylinder', (robot.x, robot.y, cfg.floor_z + 0.01),
                  (2.0 * radius, 2.0 * radius, 0.02), rgba, name)
            for index, (name, radius, rgba) in enumerate(zones)]


def _z_to(direction: Xyz) -> Quat:
    """Return the rotation taking +z onto ``direction`` (a cylinder axis) as x, y, z, w."""
    dx, dy, dz = direction
    norm = math.sqrt(dx * dx + dy * dy + dz * dz)
    if norm < 1e-12:
        return (0.0, 0.0, 0.0, 1.0)
    dx, dy, dz = dx / norm, dy / norm, dz / norm
    if dz < -1.0 + 1e-12:
        return (1.0, 0.0, 0.0, 0.0)          # straight down: half a turn about x
    # Half-way quaternion between z and d: axis z x d = (-dy, dx, 0), w = 1 + z.d.
    x, y, z, w = -dy, dx, 0.0, 1.0 + dz
    n = math.sqrt(x * x + y * y + w * w)
    return (x / n, y / n, z, w / n)


def _link(index: int, capsule: Capsule) -> Shape:
    a, b = capsule.a, capsule.b
    axis = (b[0] - a[0], b[1] - a[1], b[2] - a[2])
    length = math.sqrt(sum(v * v for v in axis))
    middle = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, (a[2] + b[2]) / 2)
    diameter = 2.0 * capsule.radius_m
    return Shape('links', index, 'cylinder', middle, (diameter, diameter, length + diameter),
                 LINK_RGBA, capsule.name, _z_to(axis))


def _person(index: int, person: Person, state: SafetyState, robot: RobotState,
            cfg: SafetyConfig) -> list[Shape]:
    diameter = 0.5 + 2.0 * person.uncertainty_m
    distance, _ = robot.separation(person)
    return [Shape('people', index, 'cylinder', (person.x, person.y, cfg.floor_z + 0.85),
                  (diameter, diameter, 1.7), person_colour(state)),
            Shape('labels', index, 'text', (person.x, person.y, cfg.floor_z + 1.9),
                  (0.0, 0.0, 0.15), LABEL_RGBA, f'{person.label} {distance:.2f} m')]


def markers(report: SafetyReport, cfg: SafetyConfig) -> list[Shape]:
    """Return the zones, the links, then a body and a label per person (robot base frame)."""
    shapes = _zones(report.robot, cfg)
    shapes.extend(_link(index, capsule) for index, capsule in enumerate(report.robot.links))
    for index, person in enumerate(report.people):
        shapes.extend(_person(index, person, report.decision.state, report.robot, cfg))
    return shapes


def detector_healthy(statuses: Iterable[tuple[str, str]], prefix: str) -> bool | None:
    """Return the detector's health from (status name, level name) pairs; None: no status.

    Only statuses whose name starts with ``prefix`` count; one that is not OK or WARN (ERROR,
    STALE, a level outside the standard four) makes the detector unhealthy.
    """
    levels = [lvl for name, lvl in statuses if name.startswith(prefix)]
    if not levels:
        return None
    return all(lvl in HEALTHY_LEVELS for lvl in levels)


@dataclass(frozen=True)
class StaticTransform:
    """The camera's pose in the robot base frame, as a TF transform (parent -> child)."""

    parent: str
    child: str
    translation: tuple[float, float, float]
    rotation: tuple[float, float, float, float]   # x, y, z, w


def camera_transform(camera_to_base: tuple[float, ...], base_frame: str,
                     camera_frame: str) -> StaticTransform:
    """Return the static transform ``camera_to_base`` ([x, y, z, qx, qy, qz, qw]) describes."""
    x, y, z, qx, qy, qz, qw = (float(v) for v in camera_to_base)
    return StaticTransform(base_frame, camera_frame, (x, y, z), (qx, qy, qz, qw))
