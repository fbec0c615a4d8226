"""``planner_node``: the cloud planner as a ROS 2 node (for ROS-based cloud deployments).

Runs :class:`~cobot_hybrid_planner.service.PlannerService` (MQTT in and out) on a timer and
shows the fleet's missions in rviz: ``fleet_missions`` (``visualization_msgs/MarkerArray``,
one line per robot through its task stations, labelled with the mission version and whether
the robot acknowledged it, and during a model rollout with the model it runs) and
``diagnostics`` (robots online, open tasks, rejected tasks, missions sent and acknowledged;
``planner_node: model rollouts``: the newest rollout's state, step and reason).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point
from rclpy.node import Node
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from cobot_hybrid_planner import fleet_view
from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_planner.rollout import rollout_health
from cobot_hybrid_planner.service import (
    PlannerConfig,
    PlannerService,
    load_orders_file,
    load_private_key,
)
from cobot_hybrid_planner.site import load_site
from cobot_hybrid_ros.diagnostics import diagnostic_array
from cobot_hybrid_ros.params import ParameterBinding, refuse_unknown_parameters
from cobot_hybrid_ros.runner import run_node

#: Every config whose settings this node declares (checked against config/*.yaml).
CONFIGS = (PlannerConfig,)


class PlannerNode(Node):
    """Thin shell around :class:`PlannerService`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('planner_node', **kwargs)
        self.service: PlannerService | None = None
        self._params = ParameterBinding(self, PlannerConfig, on_change=self._reconfigure)
        refuse_unknown_parameters(self)   # a misspelt key is an error
        params = self._params.config
        params.require_files()
        self.site = load_site(Path(params.site_file).expanduser())
        self.service = PlannerService(params, self.site,
                                      load_private_key(Path(params.private_key_file)))
        if params.orders_file:
            accepted = self.service.add_orders(load_orders_file(Path(params.orders_file)))
            self.get_logger().info(f'{len(accepted)} tasks from {params.orders_file}')
        self._markers = self.create_publisher(MarkerArray, 'fleet_missions', 1)
        self._diag = self.create_publisher(DiagnosticArray, 'diagnostics', 10)
        self.create_timer(params.step_period_s, self._step)
        self.create_timer(1.0, self._report)
        self.service.start()
        self.get_logger().info(f'planning {len(self.site.robots)} robots, broker '
                               f'{params.broker_host}:{params.broker_port}')

    def _reconfigure(self, cfg: PlannerConfig) -> None:
        if self.service is not None:   # the live settings apply from the next step
            self.service.reconfigure(cfg)

    def _step(self) -> None:
        self.service.step()

    def _report(self) -> None:
        service = self.service
        assert service is not None
        missions = service.missions()
        site = self.site
        stations = {robot_id: [(s.x, s.y) for s in (
            [site.stations[site.robots[robot_id].start]]
            + [site.stations[service.task_station(t)] for t in mission['tasks']])]
            for robot_id, mission in missions.items()}
        lines = fleet_view.mission_lines(missions, stations)
        rollouts = service.rollouts
        newest = [rollouts.status(r) for r, _ in rollouts.rollouts()[-1:]]
        tags = fleet_view.model_tags(newest[0] if newest else None)
        self._markers.publish(MarkerArray(markers=[Marker(action=Marker.DELETEALL)] + [
            marker for line in lines for marker in self._line_markers(line, tags)]))
        level, message = fleet_view.fleet_health(missions)
        values = fleet_view.diagnostic_values(
            missions, service.online(), service.sent, len(service.rejected_tasks),
            service.is_owner, service.epoch,
            [t['status'] for t in service.task_status().values()])
        self._diag.publish(diagnostic_array(self.get_clock(), 'planner_node: fleet', level,
                                            message, values))
        level, message, values = rollout_health(newest)
        self._diag.publish(diagnostic_array(self.get_clock(), 'planner_node: model rollouts',
                                            level, message, values))

    def _line_markers(self, line: fleet_view.MissionLine, tags: dict[str, str]
                      ) -> tuple[Marker, Marker]:
        frame = self.site.frame_id
        marker = Marker(ns='missions', id=line.index, type=Marker.LINE_STRIP,
                        action=Marker.ADD)
        marker.header.frame_id = frame
        marker.scale.x = fleet_view.LINE_WIDTH_M
        marker.pose.orientation.w = 1.0
        marker.color = _colour(line.rgba)
        marker.points = [Point(x=x, y=y, z=z) for x, y, z in line.points]
        tag = tags.get(line.robot_id)
        label = Marker(ns='labels', id=line.index, type=Marker.TEXT_VIEW_FACING,
                       action=Marker.ADD, text=f'{line.label}\n{tag}' if tag else line.label)
        label.header.frame_id = frame
        x, y, z = line.label_at
        label.pose.position = Point(x=x, y=y, z=z)
        label.pose.orientation.w = 1.0
        label.scale.z = fleet_view.LABEL_HEIGHT_M
        label.color = _colour(fleet_view.LABEL_RGBA)
        return marker, label


def _colour(rgba: tuple[float, float, float, float]) -> ColorRGBA:
    r, g, b, a = rgba
    return ColorRGBA(r=r, g=g, b=b, a=a)


def main(args: list[str] | None = None) -> None:
    """Run the planner until interrupted; its stores keep everything for the next start."""
    run_node('planner_node', PlannerNode, (PlannerError,), args,
             cleanup=lambda node: node.service.stop())

if __name__ == '__main__':
    main()
