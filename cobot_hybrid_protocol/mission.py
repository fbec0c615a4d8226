"""The mission command, version 1: the contract between the cloud planner and the robot.

A mission is JSON, checked field by field with no unknown fields allowed::

    {
      "schema": "cobot_hybrid/mission/v1",
      "kind": "mission",
      "command_id": "m-42-v3",        # unique per command (replay protection)
      "robot_id": "cobot-1",
      "mission_id": "m-42",
      "version": 3,                   # a newer version supersedes an older one
      "issued_at": 1795790000.0,      # unix seconds
      "valid_until": 1795793600.0,
      "frame_id": "map",
      "tasks": [
        {"task_id": "t1", "type": "pick", "station": "press-1",
         "pose": {"x": 1.0, "y": 2.0, "z": 0.0, "yaw": 1.57},
         "duration_s": 30.0, "deadline": 1795791000.0}        # deadline optional
      ]
    }

:func:`validate_mission` returns the parsed :class:`Mission` or raises
:class:`SchemaError` naming the first field that is wrong.

The robot reports what it does with a mission's tasks, task progress version 1 (ROS
``task_progress`` as ``std_msgs/String``; MQTT ``cobot/v1/<robot_id>/events/task_progress``
inside the uplink envelope)::

    {"schema": "cobot_hybrid/task_progress/v1", "mission_id": "m-42", "version": 3,
     "task_id": "t1", "status": "started",     # started | done | failed
     "reason": "", "stamp": 1795790100.0}     # reason says why a task failed

The robot answers every mission command, mission ack version 1 (MQTT
``cobot/v1/<robot_id>/events/mission_ack`` inside the uplink envelope)::

    {"schema": "cobot_hybrid/mission_ack/v1", "mission_id": "m-42", "version": 3,
     "status": "accepted", "reason": ""}      # accepted | rejected; reason: "<code>: <why>"

A rejection of a command that could not be read at all (bad signature, malformed) has
``mission_id`` and ``version`` null; an accepted ack always names both.

A task that has started runs to its end or fails; a newer mission version replaces only the
tasks that have not started.

Every number is finite and physically bounded (what validation accepts, every consumer can
compute with): coordinates within +-:data:`MAX_COORD_M`, yaw within +-2 pi, durations up to
:data:`MAX_DURATION_S`, unix times from 0 to 2100, versions below 2**63; task ids are
unique within a mission; ids are printable text of at most 128 characters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cobot_hybrid_protocol.errors import SchemaError
from cobot_hybrid_protocol.limits import ID_MAX, is_name, is_number_in

__all__ = ['ACK_SCHEMA', 'ACK_STATUSES', 'MissionAck', 'ack_to_json', 'validate_ack',
           'MAX_COORD_M', 'MAX_DURATION_S', 'MAX_VERSION', 'MISSION_SCHEMA', 'PROGRESS_SCHEMA',
           'PROGRESS_STATUSES', 'TASK_TYPES', 'Mission',
           'Pose', 'SchemaError', 'Task', 'TaskProgress', 'mission_to_json', 'progress_to_json',
           'validate_mission', 'validate_progress']

MISSION_SCHEMA = 'cobot_hybrid/mission/v1'
PROGRESS_SCHEMA = 'cobot_hybrid/task_progress/v1'
ACK_SCHEMA = 'cobot_hybrid/mission_ack/v1'
ACK_STATUSES = ('accepted', 'rejected')
PROGRESS_STATUSES = ('started', 'done', 'failed')
TASK_TYPES = ('pick', 'place', 'inspect', 'move', 'wait', 'charge')
MAX_TASKS = 500
MAX_COORD_M = 10_000.0           # a site is smaller than 10 km
MAX_DURATION_S = 7 * 86_400.0    # one task runs at most a week
MAX_VERSION = 2**63 - 1          # SQLite INTEGER, on both sides
MIN_UNIX_S, MAX_UNIX_S = 0.0, 4_102_444_800.0   # up to 2100-01-01
MAX_REASON = 1000
_ID_MAX = ID_MAX



@dataclass(frozen=True)
class Pose:
    """A planar pose in the mission's frame [m, rad]."""

    x: float
    y: float
    z: float
    yaw: float


@dataclass(frozen=True)
class Task:
    """One step of a mission."""

    task_id: str
    type: str
    station: str
    pose: Pose
    duration_s: float
    deadline: float | None = None


@dataclass(frozen=True)
class Mission:
    """A validated mission command."""

    command_id: str
    robot_id: str
    mission_id: str
    version: int
    issued_at: float
    valid_until: float
    frame_id: str
    tasks: tuple[Task, ...]


@dataclass(frozen=True)
class TaskProgress:
    """What a robot reports about one task of a mission."""

    mission_id: str
    version: int
    task_id: str
    status: str
    stamp: float
    reason: str = ''


@dataclass(frozen=True)
class MissionAck:
    """The robot's answer to one mission command."""

    status: str                       # 'accepted' | 'rejected'
    mission_id: str | None = None     # None only for a rejected command that was unreadable
    version: int | None = None
    reason: str = ''                  # '<reject code>: <detail>' of a rejection

    def __post_init__(self) -> None:   # one rule for what is built and what is read
        if self.status not in ACK_STATUSES:
            raise SchemaError(f'status {str(self.status)[:40]!r} is not one of {ACK_STATUSES}')
        if not isinstance(self.reason, str) or len(self.reason) > MAX_REASON \
                or '\0' in self.reason:
            raise SchemaError(f'reason must be a string of at most {MAX_REASON} chars')
        if (self.mission_id is None) != (self.version is None):
            raise SchemaError('mission_id and version are both set or both null')
        if self.mission_id is None and self.status == 'accepted':
            raise SchemaError('an accepted ack names the mission_id and version')
        if self.mission_id is not None:
            _text(self.mission_id, 'mission_id')
            _version(self.version)

    @property
    def code(self) -> str:
        """The rejection code before the first colon (``superseded``, ``expired``...)."""
        return self.reason.split(':', 1)[0].strip()


def _fields(obj: Any, where: str, required: set[str],
            optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SchemaError(f'{where} must be an object')
    unknown = set(obj) - required - optional
    if unknown:
        raise SchemaError(f'{where} has unknown fields {sorted(unknown)}')
    missing = required - set(obj)
    if missing:
        raise SchemaError(f'{where} is missing {sorted(missing)}')
    return obj


def _text(value: Any, where: str) -> str:
    if not is_name(value, _ID_MAX):
        raise SchemaError(f'{where} must be a non-empty printable string of at most {_ID_MAX} '
                          'chars')
    return value


def _number(value: Any, where: str, low: float = -math.inf, high: float = math.inf) -> float:
    if not is_number_in(value, low, high):
        bounds = '' if math.isinf(low) and math.isinf(high) else f' in [{low:g}, {high:g}]'
        raise SchemaError(f'{where} must be a finite number{bounds}')
    return float(value)


def _unix(value: Any, where: str) -> float:
    return _number(value, where, MIN_UNIX_S, MAX_UNIX_S)


def _version(value: Any, where: str = 'version') -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_VERSION:
        raise SchemaError(f'{where} must be an integer in [1, 2**63 - 1]')
    return value


def validate_mission(data: Any) -> Mission:
    """Check a decoded mission JSON object against the v1 schema."""
    obj = _fields(data, 'mission', {'schema', 'kind', 'command_id', 'robot_id', 'mission_id',
                                     'version', 'issued_at', 'valid_until', 'frame_id',
                                     'tasks'})
    if obj['schema'] != MISSION_SCHEMA:
        raise SchemaError(f'schema {obj["schema"]!r} is not {MISSION_SCHEMA!r}')
    if obj['kind'] != 'mission':
        raise SchemaError(f'kind {obj["kind"]!r} is not "mission"')
    version = _version(obj['version'])
    issued, until = _unix(obj['issued_at'], 'issued_at'), _unix(obj['valid_until'],
                                                                   'valid_until')
    if until <= issued:
        raise SchemaError('valid_until must be after issued_at')
    if not isinstance(obj['tasks'], list) or len(obj['tasks']) > MAX_TASKS:
        raise SchemaError(f'tasks must be a list of at most {MAX_TASKS}')
    tasks = []
    seen: set[str] = set()
    for index, raw in enumerate(obj['tasks']):
        where = f'tasks[{index}]'
        task = _fields(raw, where, {'task_id', 'type', 'station', 'pose', 'duration_s'},
                       frozenset({'deadline'}))
        if task['type'] not in TASK_TYPES:
            raise SchemaError(f'{where}.type {task["type"]!r} is not one of {TASK_TYPES}')
        pose = _fields(task['pose'], f'{where}.pose', {'x', 'y', 'z', 'yaw'})
        duration = _number(task['duration_s'], f'{where}.duration_s', 0.0, MAX_DURATION_S)
        deadline = task.get('deadline')
        task_id = _text(task['task_id'], f'{where}.task_id')
        if task_id in seen:
            raise SchemaError(f'{where}.task_id {task_id!r} appears twice in the mission')
        seen.add(task_id)
        x, y, z = (_number(pose[k], f'{where}.pose.{k}', -MAX_COORD_M, MAX_COORD_M)
                   for k in ('x', 'y', 'z'))
        yaw = _number(pose['yaw'], f'{where}.pose.yaw', -math.tau, math.tau)
        tasks.append(Task(task_id, task['type'], _text(task['station'], f'{where}.station'),
                          Pose(x, y, z, yaw), duration, None if deadline is None else
                          _unix(deadline, f'{where}.deadline')))
    return Mission(_text(obj['command_id'], 'command_id'), _text(obj['robot_id'], 'robot_id'),
                   _text(obj['mission_id'], 'mission_id'), version, issued, until,
                   _text(obj['frame_id'], 'frame_id'), tuple(tasks))


def mission_to_json(mission: Mission) -> dict[str, Any]:
    """Return the v1 JSON object of a mission (what the planner signs and the robot shows)."""
    tasks = []
    for task in mission.tasks:
        item: dict[str, Any] = {
            'task_id': task.task_id, 'type': task.type, 'station': task.station,
            'pose': {'x': task.pose.x, 'y': task.pose.y, 'z': task.pose.z,
                     'yaw': task.pose.yaw},
            'duration_s': task.duration_s}
        if task.deadline is not None:
            item['deadline'] = task.deadline
        tasks.append(item)
    return {'schema': MISSION_SCHEMA, 'kind': 'mission', 'command_id': mission.command_id,
            'robot_id': mission.robot_id, 'mission_id': mission.mission_id,
            'version': mission.version, 'issued_at': mission.issued_at,
            'valid_until': mission.valid_until, 'frame_id': mission.frame_id, 'tasks': tasks}


def validate_progress(data: Any) -> TaskProgress:
    """Check a decoded task progress JSON object against the v1 schema."""
    obj = _fields(data, 'task progress', {'schema', 'mission_id', 'version', 'task_id',
                                           'status', 'stamp'}, frozenset({'reason'}))
    if obj['schema'] != PROGRESS_SCHEMA:
        raise SchemaError(f'schema {obj["schema"]!r} is not {PROGRESS_SCHEMA!r}')
    version = _version(obj['version'])
    if obj['status'] not in PROGRESS_STATUSES:
        raise SchemaError(f'status {obj["status"]!r} is not one of {PROGRESS_STATUSES}')
    reason = obj.get('reason', '')
    if not isinstance(reason, str) or len(reason) > MAX_REASON or '\0' in reason:
        raise SchemaError(f'reason must be a string of at most {MAX_REASON} chars')
    return TaskProgress(_text(obj['mission_id'], 'mission_id'), version,
                        _text(obj['task_id'], 'task_id'), obj['status'],
                        _unix(obj['stamp'], 'stamp'), reason)


def progress_to_json(progress: TaskProgress) -> dict[str, Any]:
    """Return the v1 JSON object of a task progress report."""
    return {'schema': PROGRESS_SCHEMA, 'mission_id': progress.mission_id,
            'version': progress.version, 'task_id': progress.task_id,
            'status': progress.status, 'reason': progress.reason, 'stamp': progress.stamp}


def validate_ack(data: Any) -> MissionAck:
    """Check a decoded mission ack JSON object against the v1 schema.

    Bridges from before the schema field was added send the same object without it; for
    one deprecation period such an ack is still read (``schema`` optional, and if present it
    must be :data:`ACK_SCHEMA`), so a fleet upgraded planner-first loses no acknowledgement.
    """
    obj = _fields(data, 'mission ack', {'mission_id', 'version', 'status', 'reason'},
                  frozenset({'schema'}))
    if obj.get('schema', ACK_SCHEMA) != ACK_SCHEMA:
        raise SchemaError(f'schema {str(obj["schema"])[:80]!r} is not {ACK_SCHEMA!r}')
    return MissionAck(obj['status'], obj['mission_id'], obj['version'], obj['reason'])


def ack_to_json(ack: MissionAck) -> dict[str, Any]:
    """Return the v1 JSON object of a mission ack."""
    return {'schema': ACK_SCHEMA, 'mission_id': ack.mission_id, 'version': ack.version,
            'status': ack.status, 'reason': ack.reason}
