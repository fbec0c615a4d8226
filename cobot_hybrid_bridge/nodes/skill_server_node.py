"""``skill_server_node``: the reference ``ExecuteTask`` skill server (simulated work).

Serves ``cobot_hybrid_msgs/action/ExecuteTask`` on ``server_name`` (``execute_task``, the name
``mission_executor_node`` sends every task type to by default); subscribes ``speed_scale``
(``std_msgs/Float64``, transient local) and advances each goal by ``dt * speed_scale`` with
:class:`~cobot_hybrid_bridge.simulated_skill.SimulatedSkill`, publishing feedback every
``step_period_s``. One goal at a time (another is refused while one runs); a cancel is honoured
within one step and the goal's work kept for a resume. Publishes ``diagnostics``. Replace it
with your own server on the same action name (docs/skills.md).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import rclpy
from cobot_hybrid_msgs.action import ExecuteTask
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.action.server import ActionServer, CancelResponse, GoalResponse, ServerGoalHandle
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64

from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_bridge.mission_executor import fresh_speed_scale
from cobot_hybrid_bridge.simulated_skill import SimulatedSkill, SkillConfig, SkillStep
from cobot_hybrid_ros.diagnostics import diagnostic_array
from cobot_hybrid_ros.params import ParameterBinding, refuse_unknown_parameters
from cobot_hybrid_ros.runner import run_node

#: Every config whose settings this node declares (checked against config/*.yaml).
CONFIGS = (SkillConfig,)


class SkillServerNode(Node):
    """Thin shell around :class:`SimulatedSkill`: an action server and the speed scale."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('skill_server_node', **kwargs)
        self._params = ParameterBinding(self, SkillConfig)
        refuse_unknown_parameters(self)   # a misspelt key is an error
        cfg = self._params.config
        self.skill = SimulatedSkill(cfg)
        self.rejected = 0
        self._lock = threading.Lock()      # the goal thread and the callbacks share the skill
        self._scale: tuple[float, float] | None = None   # (value, monotonic time)
        group = ReentrantCallbackGroup()
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(Float64, 'speed_scale', self._on_scale, latched,
                                 callback_group=group)
        self._server = ActionServer(
            self, ExecuteTask, cfg.server_name, execute_callback=self._execute,
            goal_callback=self._on_goal, cancel_callback=lambda _handle: CancelResponse.ACCEPT,
            callback_group=group)
        self._diag_pub = self.create_publisher(DiagnosticArray, 'diagnostics', 10)
        self.create_timer(1.0, self._diagnostics, callback_group=group)
        self.get_logger().info(f'serving ExecuteTask on {cfg.server_name}')

    def _on_scale(self, msg: Float64) -> None:
        self._scale = (float(msg.data), time.monotonic())

    def _on_goal(self, goal: ExecuteTask.Goal) -> GoalResponse:
        with self._lock:
            why = self.skill.check_goal(goal.mission_id, goal.task_id, goal.type,
                                        goal.duration_s)
            if why:
                self.rejected += 1
                self.get_logger().warning(f'goal {goal.task_id[:40]!r} refused: {why}')
                return GoalResponse.REJECT
            task = self.skill.begin(goal.mission_id, goal.task_id, goal.type, goal.duration_s)
        self.get_logger().info(f'task {task.task_id}: {goal.type} at {goal.station!r} for '
                               f'{goal.duration_s:g} s, from {task.progress:.0%}')
        return GoalResponse.ACCEPT

    def _execute(self, handle: ServerGoalHandle[Any, Any, Any]) -> ExecuteTask.Result:
        cfg = self._params.config
        last = time.monotonic()
        while True:
            with self._lock:
                if not rclpy.ok(context=self.context):
                    step = self.skill.abandon('skill server shutting down')
                elif handle.is_cancel_requested:
                    step = self.skill.cancel()
                else:
                    now = time.monotonic()
                    scale = fresh_speed_scale(self._scale, now, cfg.speed_timeout_s)
                    step = self.skill.advance(now - last, scale)
                    last = now
            if not step.outcome:
                handle.publish_feedback(ExecuteTask.Feedback(
                    progress=step.progress, state=step.state, speed_scale=step.speed_scale))
                time.sleep(cfg.step_period_s)
                continue
            return self._end(handle, step)

    def _end(self, handle: ServerGoalHandle[Any, Any, Any], step: SkillStep) -> ExecuteTask.Result:
        task_id = handle.request.task_id
        if step.outcome == 'done':
            handle.succeed()
            self.get_logger().info(f'task {task_id}: done')
        elif step.outcome == 'canceled':
            handle.canceled()
            self.get_logger().info(f'task {task_id}: canceled at {step.progress:.0%}')
        else:
            handle.abort()
            self.get_logger().warning(f'task {task_id}: failed: {step.reason}')
        return ExecuteTask.Result(outcome=step.outcome, reason=step.reason)

    def _diagnostics(self) -> None:
        with self._lock:
            task = self.skill.task
            values = {'task': task.task_id if task else '',
                      'progress': f'{task.progress:.3f}' if task else '0.0',
                      **{k: str(v) for k, v in sorted(self.skill.counts.items())},
                      'rejected': str(self.rejected)}
        self._diag_pub.publish(diagnostic_array(
            self.get_clock(), 'skill_server_node: goals', 'OK',
            f'running {values["task"]}' if task else 'idle', values))

    def destroy_node(self) -> None:
        """Destroy the action server, then the node."""
        self._server.destroy()
        super().destroy_node()


def _spin(node: SkillServerNode) -> None:
    """Goals run in their own executor thread; the speed scale keeps coming meanwhile."""
    rclpy.spin(node, executor=MultiThreadedExecutor(num_threads=4, context=node.context))


def main(args: list[str] | None = None) -> None:
    """Run the skill server until interrupted."""
    run_node('skill_server_node', SkillServerNode, (BridgeError,), args, spin=_spin)


if __name__ == '__main__':
    main()
