"""``planner_node``: the cloud planner as a ROS 2 node (for ROS-based cloud deployments).

Runs :class:`~cobot_hybrid_planner.service.PlannerService` (MQTT in and out) on a timer and
shows the fleet's missions in rviz: ``fleet_missions`` (``visualization_msgs/MarkerArray``,
one line per robot through its task stations, labelled with the mission version and whether
the robot acknowledged it) and ``diagnostics`` (robots online, open tasks, rejected tasks,
missions sent and acknowledged).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point
from rclpy.node import Node
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_planner.service import (
    TASK_STATUSES,
    PlannerConfig,
    PlannerService,
    load_orders_file,
    load_private_key,
)
from cobot_hybrid_planner.site import load_site
from cobot_hybrid_ros.params import ParameterBinding
from cobot_hybrid_ros.runner import run_node

#: Every config whose settings this node declares (checked against config/*.yaml).
CONFIGS = (PlannerConfig,)


class PlannerNode(Node):
    """Thin shell around :class:`PlannerService`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('planner_node', **kwargs)
        self.service: PlannerService | None = None
        self._params = ParameterBinding(self, PlannerConfig, on_change=self._reconfigure)
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
        missions = self.service.missions()
        frame = self.site.frame_id
        markers = [Marker(action=Marker.DELETEALL)]
        for index, (robot_id, mission) in enumerate(sorted(missions.items())):
            line = Marker(ns='missions', id=index, type=Marker.LINE_STRIP, action=Marker.ADD)
            line.header.frame_id = frame
            line.scale.x = 0.05
            line.pose.orientation.w = 1.0
            acked = mission['acked'] == 'accepted'
            line.color = ColorRGBA(r=0.1 if acked else 1.0, g=0.8 if acked else 0.6, b=0.2,
                                   a=1.0)
            start = self.site.stations[self.site.robots[robot_id].start]
            stations = [start] + [self.site.stations[self.service.task_station(t)]
                                  for t in mission['tasks']]
            line.points = [Point(x=s.x, y=s.y, z=0.05) for s in stations]
            label = Marker(ns='labels', id=index, type=Marker.TEXT_VIEW_FACING,
                           action=Marker.ADD, text=f'{robot_id} v{mission["version"]} '
                           f'{mission["acked"] or "sent"}')
            label.header.frame_id = frame
            label.pose.position = Point(x=start.x, y=start.y, z=0.5)
            label.pose.orientation.w = 1.0
            label.scale.z = 0.2
            label.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
            markers.extend((line, label))
        self._markers.publish(MarkerArray(markers=markers))
        values = {'robots_online': ','.join(sorted(self.service.online())),
                  'missions': str(len(missions)),
                  'acknowledged': str(sum(m['acked'] == 'accepted' for m in missions.values())),
                  'missions_sent': str(self.service.sent),
                  'tasks_rejected': str(len(self.service.rejected_tasks)),
                  'owner': str(self.service.is_owner), 'epoch': str(self.service.epoch)}
        statuses = [t['status'] for t in self.service.task_status().values()]
        values.update({f'tasks_{s}': str(statuses.count(s)) for s in TASK_STATUSES})
        status = DiagnosticStatus(level=DiagnosticStatus.OK, name='planner_node: fleet',
                                  message=f'{len(missions)} missions',
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag.publish(msg)


def main(args: list[str] | None = None) -> None:
    """Run the planner until interrupted; its stores keep everything for the next start."""
    run_node('planner_node', PlannerNode, (PlannerError,), args,
             cleanup=lambda node: node.service.stop())

if __name__ == '__main__':
    main()
