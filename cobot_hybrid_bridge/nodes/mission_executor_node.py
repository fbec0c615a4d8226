"""``mission_executor_node``: the reference robot-side executor of cloud missions.

Subscribes ``mission`` (``std_msgs/String``, mission JSON v1, as ``bridge_node`` publishes it
once verified) and ``speed_scale`` (``std_msgs/Float64`` from the safety monitor); runs the
tasks with :class:`~cobot_hybrid_bridge.mission_executor.MissionExecutor` and publishes
``task_progress`` (``std_msgs/String``, task progress JSON v1), which ``bridge_node`` sends up
to the planner, and ``diagnostics``. Replace it with your own skill server that publishes the
same ``task_progress`` reports.
"""

from __future__ import annotations

import json
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64, String

from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_bridge.mission_executor import (
    ExecutorConfig,
    MissionExecutor,
    fresh_speed_scale,
)
from cobot_hybrid_protocol.errors import PayloadError
from cobot_hybrid_protocol.limits import COMMAND_LIMITS, parse_json
from cobot_hybrid_protocol.mission import SchemaError, progress_to_json, validate_mission
from cobot_hybrid_ros.diagnostics import diagnostic_array
from cobot_hybrid_ros.params import ParameterBinding, refuse_unknown_parameters
from cobot_hybrid_ros.runner import run_node

#: Every config whose settings this node declares (checked against config/*.yaml).
CONFIGS = (ExecutorConfig,)


class MissionExecutorNode(Node):
    """Thin shell around :class:`MissionExecutor`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('mission_executor_node', **kwargs)
        self._params = ParameterBinding(self, ExecutorConfig)
        refuse_unknown_parameters(self)   # a misspelt key is an error
        cfg = self._params.config
        self.executor_core = MissionExecutor(cfg)
        self._scale: tuple[float, float] | None = None   # (value, monotonic time)
        self.rejected = 0
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(String, 'mission', self._on_mission, latched)
        self.create_subscription(Float64, 'speed_scale', self._on_scale, latched)
        self._progress_pub = self.create_publisher(String, 'task_progress', 100)
        self._diag_pub = self.create_publisher(DiagnosticArray, 'diagnostics', 10)
        self.create_timer(cfg.step_period_s, self._step)
        self.create_timer(1.0, self._diagnostics)

    def _on_mission(self, msg: String) -> None:
        try:
            mission = validate_mission(parse_json(msg.data, COMMAND_LIMITS, 'the mission'))
        except (PayloadError, SchemaError) as exc:
            self.rejected += 1
            self.get_logger().error(f'mission ignored: {exc} (expected mission JSON v1)')
            return
        if self.executor_core.accept(mission):
            self.get_logger().info(f'executing mission {mission.mission_id} v{mission.version}'
                                   f': {len(mission.tasks)} tasks')

    def _on_scale(self, msg: Float64) -> None:
        self._scale = (float(msg.data), time.monotonic())

    def _step(self) -> None:
        scale = fresh_speed_scale(self._scale, time.monotonic(),
                                  self._params.config.speed_timeout_s)
        for report in self.executor_core.step(time.time(), scale):
            self._progress_pub.publish(String(data=json.dumps(progress_to_json(report))))
            if report.status == 'failed':  # rclpy: one severity per call site
                self.get_logger().warning(f'task {report.task_id} failed: {report.reason}')
            else:
                self.get_logger().info(f'task {report.task_id}: {report.status}')

    def _diagnostics(self) -> None:
        level, message = self.executor_core.health(self.rejected)
        self._diag_pub.publish(diagnostic_array(
            self.get_clock(), 'mission_executor_node: tasks', level, message,
            self.executor_core.diagnostic_values(self.rejected)))


def main(args: list[str] | None = None) -> None:
    """Run the executor until interrupted."""
    run_node('mission_executor_node', MissionExecutorNode, (BridgeError,), args)

if __name__ == '__main__':
    main()
