"""``mission_executor_node``: drives each task of the robot's mission through a skill action.

Subscribes ``mission`` (``cobot_hybrid_msgs/Mission``, transient local, as ``bridge_node``
publishes it once verified), ``speed_scale`` (``std_msgs/Float64``) and ``protective_stop``
(``std_msgs/Bool``) from the safety monitor; sends every task as a
``cobot_hybrid_msgs/action/ExecuteTask`` goal to the skill server of its type (``execute_task``
unless ``skill_servers`` names another; ``skill_server_node`` is the reference one) and
publishes ``task_progress`` (``cobot_hybrid_msgs/TaskProgress``), which ``bridge_node`` sends
up to the planner, and ``diagnostics`` (the goal's feedback among them). Every rule (retries,
cancel on a protective stop, resume, supersede) is
:class:`~cobot_hybrid_bridge.mission_executor.MissionExecutor`'s; see docs/skills.md.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from action_msgs.msg import GoalStatus
from cobot_hybrid_msgs.action import ExecuteTask
from cobot_hybrid_msgs.msg import Mission as MissionMsg
from cobot_hybrid_msgs.msg import TaskProgress as TaskProgressMsg
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.action.client import ActionClient
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from std_msgs.msg import Bool, Float64

from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_bridge.mission_executor import (
    CancelGoal,
    ExecutorConfig,
    MissionExecutor,
    SendGoal,
    fresh_speed_scale,
    result_outcome,
)
from cobot_hybrid_protocol.mission import SchemaError
from cobot_hybrid_ros.diagnostics import diagnostic_array
from cobot_hybrid_ros.mission_msgs import mission_from_msg, progress_to_msg, task_goal
from cobot_hybrid_ros.params import ParameterBinding, refuse_unknown_parameters
from cobot_hybrid_ros.runner import run_node

#: Every config whose settings this node declares (checked against config/*.yaml).
CONFIGS = (ExecutorConfig,)
_STATUS = {GoalStatus.STATUS_SUCCEEDED: 'succeeded', GoalStatus.STATUS_CANCELED: 'canceled',
           GoalStatus.STATUS_ABORTED: 'aborted'}


class MissionExecutorNode(Node):
    """Thin shell around :class:`MissionExecutor`: messages and action calls in and out."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('mission_executor_node', **kwargs)
        self._params = ParameterBinding(self, ExecutorConfig)
        refuse_unknown_parameters(self)   # a misspelt key is an error
        cfg = self._params.config
        self.executor_core = MissionExecutor(cfg)
        self._skill_clients: dict[str, ActionClient[Any, Any, Any]] = {
            name: ActionClient(self, ExecuteTask, name) for name in cfg.servers()}
        self._handles: dict[int, Any] = {}   # accepted goal key -> ClientGoalHandle
        self._feedback: dict[str, str] = {}
        self._scale: tuple[float, float] | None = None   # (value, monotonic time)
        self._stop: tuple[bool, float] | None = None
        self.rejected = 0
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(MissionMsg, 'mission', self._on_mission, latched)
        self.create_subscription(Float64, 'speed_scale', self._on_scale, latched)
        self.create_subscription(Bool, 'protective_stop', self._on_stop, latched)
        self._progress_pub = self.create_publisher(
            TaskProgressMsg, 'task_progress',
            QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self._diag_pub = self.create_publisher(DiagnosticArray, 'diagnostics', 10)
        self.create_timer(cfg.step_period_s, self._step)
        self.create_timer(1.0, self._diagnostics)
        self.get_logger().info(f'skill servers: {", ".join(cfg.servers()) or "none"}')

    def _on_mission(self, msg: MissionMsg) -> None:
        try:
            mission = mission_from_msg(msg)
        except SchemaError as exc:
            self.rejected += 1
            self.get_logger().error(f'mission ignored: {exc}')
            return
        if self.executor_core.accept(mission, time.time()):
            self.get_logger().info(f'executing mission {mission.mission_id} v{mission.version}'
                                   f': {len(mission.tasks)} tasks')
        self._flush()

    def _on_scale(self, msg: Float64) -> None:
        self._scale = (float(msg.data), time.monotonic())

    def _on_stop(self, msg: Bool) -> None:
        self._stop = (bool(msg.data), time.monotonic())

    def _step(self) -> None:
        timeout = self._params.config.speed_timeout_s
        now = time.monotonic()
        self.executor_core.servers_ready(
            {name: client.server_is_ready() for name, client in self._skill_clients.items()})
        self.executor_core.step(time.time(), fresh_speed_scale(self._scale, now, timeout),
                                fresh_speed_scale(self._stop, now, timeout))
        self._flush()

    def _flush(self) -> None:
        """Carry out what the core decided: goals, cancels, reports."""
        intents, reports = self.executor_core.take()
        for intent in intents:
            if isinstance(intent, SendGoal):
                self._send(intent)
            elif isinstance(intent, CancelGoal):
                self._cancel(intent)
        for report in reports:
            self._progress_pub.publish(progress_to_msg(report))
            if report.status == 'failed':  # rclpy: one severity per call site
                self.get_logger().warning(f'task {report.task_id} failed: {report.reason}')
            else:
                self.get_logger().info(f'task {report.task_id}: {report.status}')

    def _send(self, intent: SendGoal) -> None:
        goal = task_goal(intent.mission, intent.task, intent.parameters,
                         self.get_clock().now().to_msg())
        self.get_logger().info(f'task {intent.task.task_id}: goal {intent.key} to '
                               f'{intent.server}' + (' (resume)' if intent.resume else ''))
        future = self._skill_clients[intent.server].send_goal_async(
            goal, feedback_callback=partial(self._on_feedback, intent.key))
        future.add_done_callback(partial(self._on_goal_response, intent.key))

    def _cancel(self, intent: CancelGoal) -> None:
        handle = self._handles.get(intent.key)
        if handle is None:   # the core only cancels goals it was told were accepted
            self.get_logger().error(f'cancel of goal {intent.key}: no handle of it')
            return
        self.get_logger().info(f'cancelling goal {intent.key}: {intent.reason}')
        handle.cancel_goal_async()

    def _on_goal_response(self, key: int, future: Future[Any]) -> None:
        now = time.time()
        try:
            handle = future.result()
        except Exception as exc:  # noqa: BLE001 - the action boundary: one failed attempt
            self.executor_core.on_rejected(key, now, f'{type(exc).__name__}: {exc}')
            self._flush()
            return
        if handle is None or not handle.accepted:
            self.executor_core.on_rejected(key, now)
        else:
            self._handles[key] = handle
            self.executor_core.on_accepted(key, now)
            handle.get_result_async().add_done_callback(partial(self._on_result, key))
        self._flush()

    def _on_result(self, key: int, future: Future[Any]) -> None:
        self._handles.pop(key, None)
        try:
            response: Any = future.result()
            status = _STATUS.get(response.status, 'unknown')
            outcome, reason = response.result.outcome, response.result.reason
        except Exception as exc:  # noqa: BLE001 - the action boundary: count it failed
            status, outcome, reason = 'aborted', '', f'{type(exc).__name__}: {exc}'
        self.executor_core.on_result(key, result_outcome(status, outcome), reason, time.time())
        self._flush()

    def _on_feedback(self, key: int, msg: Any) -> None:
        feedback = msg.feedback
        self.executor_core.on_feedback(key, float(feedback.progress), str(feedback.state))
        self._feedback = {'feedback_goal': str(key), 'feedback_state': str(feedback.state),
                          'feedback_progress': f'{feedback.progress:.3f}',
                          'feedback_speed_scale': f'{feedback.speed_scale:.3f}'}

    def _diagnostics(self) -> None:
        level, message = self.executor_core.health(self.rejected)
        self._diag_pub.publish(diagnostic_array(
            self.get_clock(), 'mission_executor_node: tasks', level, message,
            {**self.executor_core.diagnostic_values(self.rejected), **self._feedback}))

    def destroy_node(self) -> None:
        """Destroy the action clients, then the node."""
        for client in self._skill_clients.values():
            client.destroy()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    """Run the executor until interrupted."""
    run_node('mission_executor_node', MissionExecutorNode, (BridgeError,), args)


if __name__ == '__main__':
    main()
