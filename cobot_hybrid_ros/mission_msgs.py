"""The contract's mission, task progress and acks as ``cobot_hybrid_msgs`` messages, and back.

The typed messages mirror the JSON schemas of :mod:`cobot_hybrid_protocol.mission` field by
field (``test_interface_drift`` keeps them equal). Two rules where ROS has no JSON null:

* ``Task.deadline`` and ``ExecuteTask.Goal.deadline`` are ``0`` for a task without one;
* a ``MissionAck`` of an unreadable command has ``mission_id ''`` and ``version 0``.

A message read from ROS goes through the protocol's own validator (:func:`mission_from_msg`,
:func:`progress_from_msg`): a typed subscriber is still a boundary, and its values get the same
bounds, printable ids and unique task ids as the JSON. The result is a
:class:`~cobot_hybrid_protocol.errors.SchemaError` naming the field, never a half-read message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from builtin_interfaces.msg import Time
from cobot_hybrid_msgs.action import ExecuteTask
from cobot_hybrid_msgs.msg import Mission as MissionMsg
from cobot_hybrid_msgs.msg import MissionAck as MissionAckMsg
from cobot_hybrid_msgs.msg import Task as TaskMsg
from cobot_hybrid_msgs.msg import TaskPose
from cobot_hybrid_msgs.msg import TaskProgress as TaskProgressMsg
from diagnostic_msgs.msg import KeyValue
from geometry_msgs.msg import PoseStamped
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from cobot_hybrid_protocol.mission import (
    MISSION_SCHEMA,
    PROGRESS_SCHEMA,
    Mission,
    MissionAck,
    Task,
    TaskProgress,
    validate_mission,
    validate_progress,
)

__all__ = ['ack_to_msg', 'mission_from_msg', 'mission_markers', 'mission_to_msg',
           'progress_from_msg', 'progress_to_msg', 'task_goal', 'task_to_msg']

#: rviz colours of the task markers, by task type.
_TYPE_COLOURS = {'pick': (0.2, 0.6, 1.0), 'place': (0.1, 0.8, 0.4), 'inspect': (1.0, 0.8, 0.1),
                 'move': (0.7, 0.7, 0.7), 'wait': (0.6, 0.4, 0.9), 'charge': (1.0, 0.4, 0.2)}


def task_to_msg(task: Task) -> TaskMsg:
    """Return the ``cobot_hybrid_msgs/Task`` of a validated task."""
    return TaskMsg(task_id=task.task_id, type=task.type, station=task.station,
                   pose=TaskPose(x=task.pose.x, y=task.pose.y, z=task.pose.z,
                                 yaw=task.pose.yaw),
                   duration_s=task.duration_s,
                   deadline=0.0 if task.deadline is None else task.deadline)


def mission_to_msg(mission: Mission, stamp: Time) -> MissionMsg:
    """Return the ``cobot_hybrid_msgs/Mission`` of a validated mission, accepted at ``stamp``."""
    msg = MissionMsg(command_id=mission.command_id, robot_id=mission.robot_id,
                     mission_id=mission.mission_id, version=mission.version,
                     issued_at=mission.issued_at, valid_until=mission.valid_until,
                     tasks=[task_to_msg(task) for task in mission.tasks])
    msg.header.frame_id = mission.frame_id
    msg.header.stamp = stamp
    return msg


def _task_json(task: TaskMsg) -> dict[str, Any]:
    item: dict[str, Any] = {
        'task_id': task.task_id, 'type': task.type, 'station': task.station,
        'pose': {'x': task.pose.x, 'y': task.pose.y, 'z': task.pose.z, 'yaw': task.pose.yaw},
        'duration_s': task.duration_s}
    if task.deadline != 0.0:   # NaN and inf stay, and the validator names them
        item['deadline'] = task.deadline
    return item


def mission_from_msg(msg: MissionMsg) -> Mission:
    """Validate a received ``Mission`` as the contract does; SchemaError names the field."""
    return validate_mission({
        'schema': MISSION_SCHEMA, 'kind': 'mission', 'command_id': msg.command_id,
        'robot_id': msg.robot_id, 'mission_id': msg.mission_id, 'version': msg.version,
        'issued_at': msg.issued_at, 'valid_until': msg.valid_until,
        'frame_id': msg.header.frame_id, 'tasks': [_task_json(t) for t in msg.tasks]})


def progress_to_msg(progress: TaskProgress) -> TaskProgressMsg:
    """Return the ``cobot_hybrid_msgs/TaskProgress`` of a report."""
    return TaskProgressMsg(mission_id=progress.mission_id, version=progress.version,
                           task_id=progress.task_id, status=progress.status,
                           reason=progress.reason, stamp=progress.stamp)


def progress_from_msg(msg: TaskProgressMsg) -> TaskProgress:
    """Validate a received ``TaskProgress`` as the contract does; SchemaError names the field."""
    return validate_progress({
        'schema': PROGRESS_SCHEMA, 'mission_id': msg.mission_id, 'version': msg.version,
        'task_id': msg.task_id, 'status': msg.status, 'reason': msg.reason,
        'stamp': msg.stamp})


def ack_to_msg(ack: MissionAck) -> MissionAckMsg:
    """Return the ``cobot_hybrid_msgs/MissionAck`` of an ack (null id: ``''`` and ``0``)."""
    return MissionAckMsg(mission_id=ack.mission_id or '', version=ack.version or 0,
                         status=ack.status, reason=ack.reason)


def task_goal(mission: Mission, task: Task, parameters: Mapping[str, str],
              stamp: Time) -> ExecuteTask.Goal:
    """Return the ``ExecuteTask`` goal of one task of a mission."""
    target = PoseStamped()
    target.header.frame_id = mission.frame_id
    target.header.stamp = stamp
    target.pose.position.x, target.pose.position.y = task.pose.x, task.pose.y
    target.pose.position.z = task.pose.z
    target.pose.orientation.z = math.sin(task.pose.yaw / 2.0)
    target.pose.orientation.w = math.cos(task.pose.yaw / 2.0)
    item = task_to_msg(task)
    return ExecuteTask.Goal(
        mission_id=mission.mission_id, version=mission.version, task_id=task.task_id,
        type=task.type, station=task.station, pose=item.pose, target=target,
        duration_s=task.duration_s, deadline=item.deadline,
        parameters=[KeyValue(key=k, value=v) for k, v in sorted(parameters.items())])


def mission_markers(mission: Mission, stamp: Time) -> MarkerArray:
    """Return rviz markers of a mission: per task an arrow at its pose and a label above.

    The first marker deletes every earlier one, so the tasks of a superseded version vanish.
    """
    clear = Marker(action=Marker.DELETEALL)
    clear.header.frame_id = mission.frame_id
    markers = [clear]
    for index, task in enumerate(mission.tasks):
        r, g, b = _TYPE_COLOURS.get(task.type, (1.0, 1.0, 1.0))
        arrow = Marker(ns='mission_tasks', id=index, type=Marker.ARROW, action=Marker.ADD,
                       color=ColorRGBA(r=r, g=g, b=b, a=0.9))
        arrow.header.frame_id, arrow.header.stamp = mission.frame_id, stamp
        arrow.pose.position.x, arrow.pose.position.y = task.pose.x, task.pose.y
        arrow.pose.position.z = task.pose.z
        arrow.pose.orientation.z = math.sin(task.pose.yaw / 2.0)
        arrow.pose.orientation.w = math.cos(task.pose.yaw / 2.0)
        arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.4, 0.08, 0.08
        label = Marker(ns='mission_task_labels', id=index, type=Marker.TEXT_VIEW_FACING,
                       action=Marker.ADD, color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0),
                       text=f'{index + 1}. {task.type} {task.task_id} @ {task.station}')
        label.header = arrow.header
        label.pose.position.x, label.pose.position.y = task.pose.x, task.pose.y
        label.pose.position.z = task.pose.z + 0.3
        label.pose.orientation.w = 1.0
        label.scale.z = 0.15
        markers += [arrow, label]
    return MarkerArray(markers=markers)
