"""The reference skill, and the executor driving it through ExecuteTask between processes.

Core tests of :class:`SimulatedSkill` first; then ``skill_server_node`` and
``mission_executor_node`` as separate processes over real DDS, fed a typed ``Mission``, the
speed scale and the protective stop by this process, which watches ``task_progress`` and the
skill server's own diagnostics (what the server saw: goals accepted, canceled, resumed).
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_bridge.simulated_skill import SimulatedSkill, SkillConfig

# -- the simulated skill ------------------------------------------------------------------


def test_work_advances_at_the_speed_scale_and_pauses_at_zero() -> None:
    skill = SimulatedSkill()
    skill.begin('m', 'a', 'pick', 2.0)
    assert skill.advance(1.0, 0.5).progress == pytest.approx(0.25)
    paused = skill.advance(5.0, 0.0)
    assert (paused.state, paused.progress, paused.outcome) == ('paused', 0.25, '')
    assert skill.advance(5.0, None).state == 'paused'         # no speed scale: paused
    assert skill.advance(5.0, math.nan).state == 'paused'
    running = skill.advance(1.0, 7.0)                          # clamped to full speed
    assert (running.state, running.speed_scale) == ('running', 1.0)
    done = skill.advance(0.6, 1.0)
    assert (done.outcome, done.progress) == ('done', 1.0) and skill.task is None


def test_a_cancelled_goal_carries_on_when_the_same_task_comes_back() -> None:
    skill = SimulatedSkill()
    skill.begin('m', 'a', 'pick', 4.0)
    skill.advance(3.0, 1.0)
    assert skill.cancel().outcome == 'canceled'
    assert skill.begin('m', 'b', 'pick', 4.0).work_s == 0.0     # another task: from 0
    skill.cancel()
    assert skill.begin('m', 'a', 'pick', 4.0).progress == pytest.approx(0.75)
    assert skill.counts == {'accepted': 2, 'canceled': 2, 'resumed': 1}


def test_one_goal_at_a_time_and_bad_goals_are_refused_with_the_reason() -> None:
    skill = SimulatedSkill()
    assert skill.check_goal('m', 'a', 'weld', 1.0).startswith("type 'weld'")
    assert 'duration_s' in skill.check_goal('m', 'a', 'pick', math.inf)
    assert 'duration_s' in skill.check_goal('m', 'a', 'pick', -1.0)
    assert 'must not be empty' in skill.check_goal('', 'a', 'pick', 1.0)
    skill.begin('m', 'a', 'pick', 1.0)
    assert skill.check_goal('m', 'b', 'pick', 1.0) == 'busy with task a'
    with pytest.raises(BridgeError, match='busy'):
        skill.begin('m', 'b', 'pick', 1.0)


def test_fail_types_fail_half_way_and_bad_settings_are_refused() -> None:
    skill = SimulatedSkill(SkillConfig(fail_types=('inspect',)))
    skill.begin('m', 'a', 'inspect', 2.0)
    assert skill.advance(0.5, 1.0).outcome == ''
    failed = skill.advance(0.5, 1.0)
    assert failed.outcome == 'failed' and 'simulated failure' in failed.reason
    with pytest.raises(BridgeError, match='fail_types'):
        SkillConfig(fail_types=('weld',))
    with pytest.raises(BridgeError, match='server_name'):
        SkillConfig(server_name='')


# -- the executor and the skill server as processes ---------------------------------------


class Robot:
    """This process's side: the safety inputs, the mission, and what comes back."""

    def __init__(self, make_node: Any) -> None:
        from cobot_hybrid_msgs.msg import Mission as MissionMsg
        from cobot_hybrid_msgs.msg import TaskProgress as TaskProgressMsg
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Bool, Float64

        self.harness = make_node('robot_side')
        node = self.harness.node
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.mission_pub = node.create_publisher(MissionMsg, 'mission', latched)
        self.scale_pub = node.create_publisher(Float64, 'speed_scale', latched)
        self.stop_pub = node.create_publisher(Bool, 'protective_stop', latched)
        self.stopped = False
        self.reports: list[tuple[str, str, str]] = []
        self.skill: dict[str, str] = {}
        node.create_subscription(TaskProgressMsg, 'task_progress', lambda m: self.reports.append(
            (m.task_id, m.status, m.reason)), 100)
        node.create_subscription(DiagnosticArray, 'diagnostics', self._on_diagnostics, 10)

        def safety() -> None:   # the monitor publishes both on every evaluation
            self.scale_pub.publish(Float64(data=0.0 if self.stopped else 1.0))
            self.stop_pub.publish(Bool(data=self.stopped))
        node.create_timer(0.1, safety)

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name.startswith('skill_server_node'):
                self.skill = {kv.key: kv.value for kv in status.values}

    def skill_count(self, name: str) -> int:
        return int(self.skill.get(name, '0'))

    def send(self, version: int, *tasks: tuple[str, float]) -> None:
        from builtin_interfaces.msg import Time

        from cobot_hybrid_protocol.mission import Mission, Pose, Task
        from cobot_hybrid_ros.mission_msgs import mission_to_msg
        now = time.time()
        mission = Mission(f'm-v{version}', 'cobot-1', 'm', version, now, now + 600.0, 'map',
                          tuple(Task(t, 'pick', 's1', Pose(1.0, 2.0, 0.0, 0.5), d)
                                for t, d in tasks))
        self.mission_pub.publish(mission_to_msg(mission, Time(sec=int(now))))

    def statuses(self) -> list[tuple[str, str]]:
        return [(task, status) for task, status, _ in self.reports]

    def until(self, predicate: Any, timeout_s: float, *procs: Any) -> None:
        assert self.harness.spin_until(predicate, timeout_s), (
            self.reports, self.skill, *(p.log()[-3000:] for p in procs))


def _start(ros_process: Any, robot: Robot) -> tuple[Any, Any]:
    skill = ros_process('cobot_hybrid_bridge.nodes.skill_server_node')
    executor = ros_process('cobot_hybrid_bridge.nodes.mission_executor_node', '--ros-args',
                           '-p', 'stall_timeout_s:=60.0', '-p', 'retry_delay_s:=0.2')
    node = robot.harness.node
    robot.until(lambda: node.count_subscribers('/mission') > 0
                and node.count_publishers('/task_progress') > 0 and bool(robot.skill)
                and 'execute_task/_action/status' in str(node.get_topic_names_and_types()),
                60.0, skill, executor)
    return skill, executor


@pytest.mark.ros
def test_goals_run_a_stop_cancels_and_the_clear_resumes(make_node: Any,
                                                        ros_process: Any) -> None:
    robot = Robot(make_node)
    skill, executor = _start(ros_process, robot)
    robot.send(1, ('a', 3.0), ('b', 0.5))
    robot.until(lambda: ('a', 'started') in robot.statuses(), 30.0, skill, executor)
    robot.stopped = True                                  # a person steps in
    robot.until(lambda: robot.skill_count('canceled') >= 1, 20.0, skill, executor)
    assert ('a', 'done') not in robot.statuses()
    robot.harness.spin_for(1.0)   # the subject: no goal may go out while stopped
    assert robot.skill_count('accepted') + robot.skill_count('resumed') == 1, robot.skill
    robot.stopped = False                                 # clear: the same task resumes
    robot.until(lambda: ('b', 'done') in robot.statuses(), 30.0, skill, executor)
    assert robot.statuses() == [('a', 'started'), ('a', 'done'), ('b', 'started'),
                                ('b', 'done')]
    robot.until(lambda: robot.skill_count('done') >= 2, 10.0, skill, executor)
    assert robot.skill_count('resumed') == 1 and robot.skill_count('canceled') == 1
    assert 'resume' in executor.log()


@pytest.mark.ros
def test_a_version_that_drops_the_running_task_cancels_its_goal(make_node: Any,
                                                                ros_process: Any) -> None:
    robot = Robot(make_node)
    skill, executor = _start(ros_process, robot)
    robot.send(1, ('a', 60.0), ('b', 0.5))
    robot.until(lambda: ('a', 'started') in robot.statuses(), 30.0, skill, executor)
    robot.send(2, ('b', 0.5), ('c', 0.5))                 # the planner gave a to another robot
    robot.until(lambda: ('c', 'done') in robot.statuses(), 30.0, skill, executor)
    assert robot.statuses() == [('a', 'started'), ('a', 'failed'), ('b', 'started'),
                                ('b', 'done'), ('c', 'started'), ('c', 'done')]
    reason = robot.reports[1][2]
    assert reason == 'superseded: mission m v2 no longer lists the task', reason
    robot.until(lambda: robot.skill_count('canceled') >= 1, 10.0, skill, executor)
