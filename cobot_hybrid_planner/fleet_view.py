"""What the planner shows of the fleet: one line per robot's mission, its label, diagnostics.

Pure data, no ROS: ``planner_node`` passes the ledger's missions (``PlannerService.missions``)
and the stations each mission visits; it turns the :class:`MissionLine` s into markers.

* a mission the robot acknowledged as ``accepted`` is drawn green, any other (sent and not
  yet acknowledged, or rejected) orange;
* its label reads ``<robot> v<version> <acknowledgement or 'sent'>``;
* the diagnostics are always OK, with the fleet's counters as values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cobot_hybrid_planner.service import TASK_STATUSES

__all__ = ['ACCEPTED_RGBA', 'PENDING_RGBA', 'MissionLine', 'diagnostic_values',
           'fleet_health', 'is_acknowledged', 'mission_colour', 'mission_label',
           'mission_lines']

Rgba = tuple[float, float, float, float]
Xyz = tuple[float, float, float]

#: Line colour of a mission the robot accepted (green) and of any other (orange).
ACCEPTED_RGBA: Rgba = (0.1, 0.8, 0.2, 1.0)
PENDING_RGBA: Rgba = (1.0, 0.6, 0.2, 1.0)
LABEL_RGBA: Rgba = (1.0, 1.0, 1.0, 1.0)
LINE_WIDTH_M = 0.05
LINE_Z_M = 0.05
LABEL_Z_M = 0.5
LABEL_HEIGHT_M = 0.2


@dataclass(frozen=True)
class MissionLine:
    """One robot's mission as drawn: a line through its stations and a label at its start."""

    index: int
    robot_id: str
    points: tuple[Xyz, ...]
    rgba: Rgba
    label: str
    label_at: Xyz


def is_acknowledged(acked: str | None) -> bool:
    """Return whether the robot accepted the mission (its acknowledgement is ``accepted``)."""
    return acked == 'accepted'


def mission_colour(acked: str | None) -> Rgba:
    """Return the line colour of a mission with this acknowledgement."""
    return ACCEPTED_RGBA if is_acknowledged(acked) else PENDING_RGBA


def mission_label(robot_id: str, version: int, acked: str | None) -> str:
    """Return the label of a robot's mission: robot, version, ack (``sent`` without one)."""
    return f'{robot_id} v{version} {acked or "sent"}'


def mission_lines(missions: Mapping[str, Mapping[str, Any]],
                  stations: Mapping[str, Sequence[tuple[float, float]]]) -> list[MissionLine]:
    """Return a line per robot, in robot id order; ``stations[robot]``: (x, y) from its start."""
    lines = []
    for index, (robot_id, mission) in enumerate(sorted(missions.items())):
        points = tuple((float(x), float(y), LINE_Z_M) for x, y in stations[robot_id])
        start = points[0]
        lines.append(MissionLine(index, robot_id, points, mission_colour(mission['acked']),
                                 mission_label(robot_id, mission['version'], mission['acked']),
                                 (start[0], start[1], LABEL_Z_M)))
    return lines


def fleet_health(missions: Mapping[str, Mapping[str, Any]]) -> tuple[str, str]:
    """Return (level name, message) of the planner's diagnostics."""
    return 'OK', f'{len(missions)} missions'


def diagnostic_values(missions: Mapping[str, Mapping[str, Any]], online: Iterable[str],
                      sent: int, rejected_tasks: int, is_owner: bool, epoch: int,
                      task_statuses: Iterable[str]) -> dict[str, str]:
    """Return the planner's counters: robots online, missions, acks, tasks by status."""
    statuses = list(task_statuses)
    values = {'robots_online': ','.join(sorted(online)),
              'missions': str(len(missions)),
              'acknowledged': str(sum(is_acknowledged(m['acked']) for m in missions.values())),
              'missions_sent': str(sent),
              'tasks_rejected': str(rejected_tasks),
              'owner': str(is_owner), 'epoch': str(epoch)}
    values.update({f'tasks_{s}': str(statuses.count(s)) for s in TASK_STATUSES})
    return values


def model_tags(rollout: Mapping[str, Any] | None) -> dict[str, str]:
    """Return per robot the second label line of the newest rollout (``status()`` of it).

    ``yolo11n-pose v2 (candidate, running)`` on a robot that runs the candidate, ``v1
    (champion)`` on one that still runs the champion; robots the rollout never reached: none.
    """
    if not rollout:
        return {}
    candidate, champion = rollout['candidate'], rollout['champion'] or {}
    tags = {}
    for robot_id, target in rollout['targets'].items():
        sha = target['active_sha256']
        if sha == candidate['sha256']:
            tags[robot_id] = (f'{candidate["name"]} v{candidate["version"]} (candidate, '
                              f'{rollout["state"]})')
        elif sha is not None and sha == champion.get('sha256'):
            tags[robot_id] = f'{champion["name"]} v{champion["version"]} (champion)'
    return tags
