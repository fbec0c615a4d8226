"""cobot_hybrid_msgs says what the contract says: every field both ways, and the conversions.

The typed ROS messages mirror the JSON schemas of the robot-cloud contract (and the safety
monitor's decision, the bridge's statistics). A field added to one side only fails here, with
its name; so does a field whose kind (text, number, integer, list) differs.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
from builtin_interfaces.msg import Time
from cobot_hybrid_msgs.action import ExecuteTask
from cobot_hybrid_msgs.msg import BridgeStatus, MissionAck, SafetyStatus, Task, TaskProgress
from cobot_hybrid_msgs.msg import Mission as MissionMsg
from hypothesis import given, settings
from hypothesis import strategies as st

from cobot_hybrid_bridge.bridge import EdgeBridge
from cobot_hybrid_bridge.bridge_config import BridgeConfig
from cobot_hybrid_perception.safety_pipeline import SafetyReport
from cobot_hybrid_perception.ssm import Decision, SafetyState
from cobot_hybrid_protocol import mission as proto
from cobot_hybrid_protocol.errors import SchemaError
from cobot_hybrid_protocol.schemas import SCHEMAS
from cobot_hybrid_ros.mission_msgs import (
    ack_to_msg,
    mission_from_msg,
    mission_markers,
    mission_to_msg,
    progress_from_msg,
    progress_to_msg,
    task_goal,
)

ROOT = Path(__file__).resolve().parent.parent

#: JSON schema type -> the rosidl types a message field of it may have.
_KINDS = {'string': {'string'}, 'number': {'double', 'float'},
          'integer': {'uint64', 'int64', 'uint32', 'int32'}, 'array': {'sequence'},
          'object': {'cobot_hybrid_msgs/TaskPose'}}


def _fields(message: Any) -> dict[str, str]:
    return dict(message.get_fields_and_field_types())


def _properties(schema: dict[str, Any]) -> dict[str, Any]:
    return dict(schema['properties'])


def _kind(prop: dict[str, Any]) -> str:
    if 'const' in prop or 'enum' in prop:   # the contract's enumerations are text
        return 'string'
    if 'oneOf' in prop:   # a value or null: the value's kind
        return next(p['type'] for p in prop['oneOf'] if p.get('type') != 'null')
    return str(prop['type'])


def _same_fields(schema_props: dict[str, Any], message_fields: dict[str, str],
                 where: str) -> None:
    missing = sorted(set(schema_props) - set(message_fields))
    extra = sorted(set(message_fields) - set(schema_props))
    assert not missing, f'{where}: the contract has {missing}, the message has not'
    assert not extra, f'{where}: the message has {extra}, the contract has not'
    for name, prop in schema_props.items():
        ros_type = message_fields[name].split('<', 1)[0]
        assert ros_type in _KINDS[_kind(prop)], \
            f'{where}.{name}: the contract says {_kind(prop)}, the message {ros_type}'


def _constants(message: Any, prefix: str) -> set[str]:
    return {getattr(message, name) for name in dir(message)
            if name.startswith(prefix) and name.isupper()}


def test_mission_and_its_tasks_have_the_contracts_fields() -> None:
    props = _properties(SCHEMAS['Mission'])
    assert props.pop('schema')['const'] == proto.MISSION_SCHEMA   # constants, not fields
    assert props.pop('kind')['const'] == 'mission'
    props.pop('frame_id')                                        # header.frame_id
    fields = _fields(MissionMsg)
    assert fields.pop('header') == 'std_msgs/Header'
    _same_fields(props, fields, 'Mission')
    task_props = _properties(SCHEMAS['Mission']['properties']['tasks']['items'])
    _same_fields(task_props, _fields(Task), 'Task')
    _same_fields(_properties(task_props['pose']), _fields(Task().pose), 'TaskPose')
    assert _constants(Task, 'TYPE_') == set(proto.TASK_TYPES)


def test_progress_and_ack_have_the_contracts_fields() -> None:
    props = _properties(SCHEMAS['TaskProgressEnvelope']['properties']['data'])
    assert props.pop('schema')['const'] == proto.PROGRESS_SCHEMA
    _same_fields(props, _fields(TaskProgress), 'TaskProgress')
    assert _constants(TaskProgress, 'STATUS_') == set(proto.PROGRESS_STATUSES)
    props = _properties(SCHEMAS['MissionAckEnvelope']['properties']['data'])
    assert props.pop('schema')['const'] == proto.ACK_SCHEMA
    _same_fields(props, _fields(MissionAck), 'MissionAck')
    assert _constants(MissionAck, 'STATUS_') == set(proto.ACK_STATUSES)


def test_the_execute_task_goal_is_a_task_of_a_mission_version() -> None:
    goal = _fields(ExecuteTask.Goal)
    assert goal.pop('mission_id') == 'string' and goal.pop('version') == 'uint64'
    assert goal.pop('target') == 'geometry_msgs/PoseStamped'        # the pose, as a pose goal
    assert goal.pop('parameters') == 'sequence<diagnostic_msgs/KeyValue>'   # executor's own
    assert goal == _fields(Task)
    assert _constants(ExecuteTask.Result, 'OUTCOME_') == {'done', 'failed', 'canceled'}


def test_safety_status_carries_the_monitors_decision() -> None:
    fields = _fields(SafetyStatus)
    assert fields.pop('header') == 'std_msgs/Header'
    assert fields.pop('perception_stamp') == 'builtin_interfaces/Time'   # for the replay
    assert fields.pop('keypoints_used') == 'boolean'                       # for the replay
    report = {f.name for f in dataclasses.fields(SafetyReport)}
    decision = {f.name for f in dataclasses.fields(Decision)}
    assert 'perception_age_s' in report and fields.pop('perception_age_s') == 'double'
    assert set(fields) <= decision, sorted(set(fields) - decision)
    assert _constants(SafetyStatus, 'STATE_') == {s.value for s in SafetyState}


def test_bridge_status_fields_are_the_bridge_telemetrys(tmp_path: Path) -> None:
    stats = EdgeBridge(BridgeConfig(robot_id='cobot-a', data_dir=str(tmp_path)), []).stats()
    fields = _fields(BridgeStatus)
    fields.pop('header'), fields.pop('robot_id')
    missing = sorted(set(fields) - set(stats))
    assert not missing, f'BridgeStatus has {missing}, the bridge telemetry has not'
    for name, ros_type in fields.items():
        value = stats[name]
        if ros_type.startswith('sequence<cobot_hybrid_msgs/ReasonCount>'):
            assert isinstance(value, dict), name
        elif ros_type == 'boolean':
            assert isinstance(value, bool), name
        else:
            assert isinstance(value, (int, float)) and not isinstance(value, bool), name


_ids = st.text(st.characters(codec='utf-8', categories=['L', 'N', 'P']), min_size=1,
               max_size=20)
_coord = st.floats(-proto.MAX_COORD_M, proto.MAX_COORD_M)
_tasks = st.builds(
    proto.Task, task_id=_ids, type=st.sampled_from(proto.TASK_TYPES), station=_ids,
    pose=st.builds(proto.Pose, _coord, _coord, _coord, st.floats(-math.tau, math.tau)),
    duration_s=st.floats(0.0, proto.MAX_DURATION_S),
    deadline=st.none() | st.floats(1.0, proto.MAX_UNIX_S))


@settings(max_examples=60, deadline=None)
@given(tasks=st.lists(_tasks, max_size=6, unique_by=lambda t: t.task_id),
       version=st.integers(1, proto.MAX_VERSION), issued=st.floats(0.0, 4.0e9))
def test_a_mission_survives_the_message_and_back(tasks: list[proto.Task], version: int,
                                                issued: float) -> None:
    mission = proto.Mission('c-1', 'cobot-a', 'm-1', version, issued, issued + 60.0, 'map',
                            tuple(tasks))
    assert mission_from_msg(mission_to_msg(mission, Time())) == mission


@pytest.mark.parametrize('spoil, field', [
    (lambda m: setattr(m.tasks[0].pose, 'x', math.nan), 'tasks[0].pose.x'),
    (lambda m: setattr(m.tasks[0].pose, 'yaw', math.inf), 'tasks[0].pose.yaw'),
    (lambda m: setattr(m, 'version', 2**64 - 1), 'version'),
    (lambda m: setattr(m, 'version', 0), 'version'),
    (lambda m: setattr(m, 'mission_id', 'a\nb'), 'mission_id'),
    (lambda m: setattr(m.header, 'frame_id', ''), 'frame_id'),
    (lambda m: setattr(m.tasks[1], 'task_id', m.tasks[0].task_id), 'appears twice'),
    (lambda m: setattr(m.tasks[0], 'type', 'dance'), 'tasks[0].type'),
    (lambda m: setattr(m.tasks[0], 'deadline', math.nan), 'tasks[0].deadline'),
    (lambda m: setattr(m, 'valid_until', m.issued_at), 'valid_until'),
])
def test_a_spoilt_mission_message_is_refused_with_the_field(spoil: Any, field: str) -> None:
    task = proto.Task('t1', 'pick', 'press', proto.Pose(1.0, 2.0, 0.0, 0.5), 5.0)
    mission = proto.Mission('c', 'cobot-a', 'm', 3, 1.0e9, 1.0e9 + 60, 'map',
                            (task, dataclasses.replace(task, task_id='t2')))
    msg = mission_to_msg(mission, Time())
    spoil(msg)
    with pytest.raises(SchemaError, match=field.replace('[', r'\[').replace(']', r'\]')):
        mission_from_msg(msg)


def test_progress_and_acks_convert_both_ways_and_bad_progress_is_refused() -> None:
    report = proto.TaskProgress('m', 7, 't1', 'failed', 1.7e9, 'gripper open')
    assert progress_from_msg(progress_to_msg(report)) == report
    bad = progress_to_msg(report)
    bad.status = 'exploded'
    with pytest.raises(SchemaError, match='status'):
        progress_from_msg(bad)
    bad = progress_to_msg(report)
    bad.stamp = math.nan
    with pytest.raises(SchemaError, match='stamp'):
        progress_from_msg(bad)
    unreadable = ack_to_msg(proto.MissionAck('rejected', None, None, 'bad_signature: x'))
    assert (unreadable.mission_id, unreadable.version) == ('', 0)
    accepted = ack_to_msg(proto.MissionAck('accepted', 'm', 3, ''))
    assert (accepted.mission_id, accepted.version, accepted.status) == ('m', 3, 'accepted')


def test_a_goal_and_the_markers_follow_the_task() -> None:
    task = proto.Task('t1', 'place', 'rack', proto.Pose(1.0, -2.0, 0.5, math.pi / 2), 8.0,
                      1.8e9)
    mission = proto.Mission('c', 'cobot-a', 'm', 3, 1.0e9, 1.0e9 + 60, 'site',
                            (task, dataclasses.replace(task, task_id='t2', deadline=None)))
    goal = task_goal(mission, task, {'gripper': 'soft'}, Time(sec=5))
    assert (goal.mission_id, goal.version, goal.task_id, goal.type) == ('m', 3, 't1', 'place')
    assert (goal.pose.x, goal.pose.y, goal.pose.yaw, goal.deadline) == (1.0, -2.0, math.pi / 2,
                                                                        1.8e9)
    assert goal.target.header.frame_id == 'site' and goal.target.pose.position.y == -2.0
    assert math.isclose(goal.target.pose.orientation.z, math.sin(math.pi / 4))
    assert [(kv.key, kv.value) for kv in goal.parameters] == [('gripper', 'soft')]
    assert task_goal(mission, mission.tasks[1], {}, Time()).deadline == 0.0
    markers = mission_markers(mission, Time()).markers
    assert markers[0].action == markers[0].DELETEALL and len(markers) == 5
    assert 'place t2 @ rack' in markers[4].text
