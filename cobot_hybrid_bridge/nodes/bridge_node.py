"""``bridge_node``: ROS 2 <-> MQTT with a durable offline queue (see :mod:`..bridge`).

Subscribes the ROS topics of the routes file (any message type, resolved at run time) and
publishes what the cloud sends down once verified:

* ``mission`` (``cobot_hybrid_msgs/Mission``, transient local: the robot keeps its last valid
  mission), ``mission_path`` (``nav_msgs/Path`` of the mission's poses) and
  ``mission_markers`` (``visualization_msgs/MarkerArray``: one labelled marker per task), for
  rviz;
* ``mission_ack`` (``cobot_hybrid_msgs/MissionAck``): every answer it sends up to a mission
  command, accepted or rejected with its reason;
* ``bridge_status`` (``cobot_hybrid_msgs/BridgeStatus``) and ``diagnostics`` (link state,
  backlog, drops by reason, drain rate, RTT, rejected commands), every stats period;
* ``advisories`` (``diagnostic_msgs/DiagnosticArray``, level WARN): each verified cloud
  advisory (:mod:`cobot_hybrid_protocol.advisory`: the cloud's second look at a snapshot),
  also in the node's log; no safety decision reads it.

It sends up the robot's ``task_progress`` (``cobot_hybrid_msgs/TaskProgress``) next to the
mission acknowledgements, and watches ``protective_stop`` and ``speed_scale`` (when routed)
for the CRDT telemetry state it sends up.

Deprecated, for one release (``json_topics``, on by default): the same missions as
``std_msgs/String`` JSON v1 on ``mission_json`` and JSON task progress taken on
``task_progress_json``.

Model updates (``cmd/model``): the file is fetched in chunks over MQTT
(:mod:`..model_fetch`), then handed to the detector on ``model_update`` (``std_msgs/String``,
:class:`~cobot_hybrid_protocol.model_update.LocalUpdate` JSON, transient local); the
detector's ``model_status`` and ``model_metrics`` (``std_msgs/String`` JSON) go up as
``events/model_status`` and ``events/model_metrics``.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any

from cobot_hybrid_msgs.msg import BridgeStatus, ReasonCount
from cobot_hybrid_msgs.msg import Mission as MissionMsg
from cobot_hybrid_msgs.msg import MissionAck as MissionAckMsg
from cobot_hybrid_msgs.msg import TaskProgress as TaskProgressMsg
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Path as PathMsg
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import serialize_message
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from cobot_hybrid_bridge.bridge import EdgeBridge, routes_path
from cobot_hybrid_bridge.bridge_config import BridgeConfig
from cobot_hybrid_bridge.codecs import message_to_dict
from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_bridge.robot_state import link_health, state_update
from cobot_hybrid_bridge.routes import Route, load_routes
from cobot_hybrid_protocol.errors import SchemaError
from cobot_hybrid_protocol.mission import Mission, mission_to_json
from cobot_hybrid_protocol.model_update import local_update_to_json
from cobot_hybrid_ros.diagnostics import diagnostic_array
from cobot_hybrid_ros.mission_msgs import (
    ack_to_msg,
    mission_markers,
    mission_to_msg,
    progress_from_msg,
)
from cobot_hybrid_ros.params import ParameterBinding, refuse_unknown_parameters
from cobot_hybrid_ros.runner import run_node
from cobot_hybrid_ros.share import share_dir

_TICK_S = 0.01


def resolve_type(route: Route) -> Any:
    """Return the Python class of a route's message type (BridgeError naming it)."""
    try:
        module = importlib.import_module(f'{route.package}.msg')
        return getattr(module, route.message)
    except (ImportError, AttributeError):
        raise BridgeError(f'message type {route.type_name} of route {route.ros_topic!r} is '
                          f'not installed (is the {route.package} package built/sourced?)'
                          ) from None


def _share() -> Path:
    return share_dir() / 'config'


#: Every config whose settings this node declares (checked against config/*.yaml).
CONFIGS = (BridgeConfig,)


class BridgeNode(Node):
    """Thin shell around :class:`EdgeBridge`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('bridge_node', **kwargs)
        self._params = ParameterBinding(self, BridgeConfig)
        refuse_unknown_parameters(self)   # a misspelt key is an error
        cfg = self._params.config
        routes = load_routes(routes_path(cfg.routes_file, _share()))
        types = [resolve_type(route) for route in routes]
        self.bridge = EdgeBridge(cfg, routes)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._mission_pub = self.create_publisher(MissionMsg, 'mission', latched)
        self._path_pub = self.create_publisher(PathMsg, 'mission_path', latched)
        self._markers_pub = self.create_publisher(MarkerArray, 'mission_markers', latched)
        self._ack_pub = self.create_publisher(MissionAckMsg, 'mission_ack', 10)
        self._status_pub = self.create_publisher(BridgeStatus, 'bridge_status', 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, 'diagnostics', 10)
        # cloud advisories (verified): shown and logged, read by no safety decision
        self._advisory_pub = self.create_publisher(DiagnosticArray, 'advisories', 10)
        self.create_subscription(TaskProgressMsg, 'task_progress', self._on_progress, 100)
        self._json_pub = None
        if cfg.json_topics:   # deprecated: std_msgs/String JSON, for one release
            self._json_pub = self.create_publisher(String, 'mission_json', latched)
            self.create_subscription(String, 'task_progress_json', self._on_json_progress, 100)
        # Model updates: fetched files to the detector (it opens the signed command itself),
        # its statuses and metrics up.
        # The newest update only (depth 1): a detector that was down gets it when it returns.
        newest = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._update_pub = self.create_publisher(String, 'model_update', newest)
        statuses = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(String, 'model_status', self._on_model_status, statuses)
        self.create_subscription(String, 'model_metrics', self._on_model_metrics, 10)
        self._latest_images: dict[int, Any] = {}
        # One subscription per topic, type and reliability: routes sharing a topic (people and
        # people-per-frame summary on `detections`) share its conversion too.
        groups: dict[tuple[str, str, str], list[int]] = {}
        for index, route in enumerate(routes):
            groups.setdefault((route.ros_topic, route.type_name, route.reliability),
                              []).append(index)
        for (topic, _, reliability), indices in groups.items():
            # Reliable routes keep 100 samples so a burst is not overwritten before it is
            # queued; best effort also matches sensor publishers.
            qos = qos_profile_sensor_data if reliability == 'best_effort' else 100
            self.create_subscription(types[indices[0]], topic,
                                     lambda msg, i=tuple(indices): self._on_message(i, msg),
                                     qos)
        self.create_timer(_TICK_S, self._tick)
        self.create_timer(cfg.stats_period_s, lambda: self._guarded('stats', self._stats))
        self.bridge.start()
        self.get_logger().info(
            f'{len(routes)} routes to {cfg.broker_host}:{cfg.broker_port} as {cfg.robot_id}; '
            f'queue {self.bridge.queue.path}; '
            f'{"commands verified with " + str(len(cfg.cloud_public_keys)) + " key(s)" if cfg.cloud_public_keys else "no cloud key: every command is refused"}')  # noqa: E501

    def _guarded(self, what: str, call: Any, *args: Any) -> None:
        """Run one callback's work; an unexpected error is logged and counted, never fatal.

        rclpy ends ``spin`` on an exception from a callback: one bad message would stop the
        uplink and the commands of this robot.
        """
        try:
            call(*args)
        except Exception as exc:  # noqa: BLE001 - the per-message boundary of the node
            self.bridge.internal_errors += 1
            self.get_logger().error(f'{what}: {type(exc).__name__}: {exc} (the bridge goes '
                                    'on)', throttle_duration_sec=5.0)

    def _on_progress(self, msg: TaskProgressMsg) -> None:
        self._guarded('task_progress', self._send_progress, msg)

    def _send_progress(self, msg: TaskProgressMsg) -> None:
        try:
            progress = progress_from_msg(msg)
        except SchemaError as exc:
            self.bridge.refuse_progress(exc)
            return
        self.bridge.send_progress(progress)

    def _on_json_progress(self, msg: String) -> None:
        self._guarded('task_progress_json', self.bridge.report_progress, msg.data)

    def _on_model_status(self, msg: String) -> None:
        self._guarded('model_status', self.bridge.report_model_status, msg.data)

    def _on_model_metrics(self, msg: String) -> None:
        self._guarded('model_metrics', self.bridge.report_model_metrics, msg.data)

    def _on_message(self, indices: tuple[int, ...], msg: Any) -> None:
        self._guarded(self.bridge.states[indices[0]].route.ros_topic, self._route_message,
                      indices, msg)

    def _route_message(self, indices: tuple[int, ...], msg: Any) -> None:
        data: dict[str, Any] | None = None
        raw: bytes | None = None
        for index in indices:
            state = self.bridge.states[index]
            route = state.route
            try:
                if route.encoding == 'jpeg':
                    self._latest_images[index] = msg
                    continue
                if route.encoding == 'cdr' and raw is None:
                    raw = serialize_message(msg)
                if (route.encoding != 'cdr' or state.trigger is not None) and data is None:
                    data = message_to_dict(msg)  # once per message, whatever the routes
                fired = self.bridge.offer(index, data if route.encoding != 'cdr' or
                                          state.trigger is not None else None,
                                          raw if route.encoding == 'cdr' else None)
                for snapshot in fired:
                    self._send_snapshot(snapshot)
            except BridgeError as exc:
                self.get_logger().error(f'{route.ros_topic}: {exc}', throttle_duration_sec=5.0)
        self._track_state(self.bridge.states[indices[0]].route, data)  # same topic and type

    def _track_state(self, route: Route, data: dict[str, Any] | None) -> None:
        update = state_update(route.type_name, route.ros_topic, data)
        for name, active in update.alarms.items():
            self.bridge.set_alarm(name, active)
        for key, value in update.values.items():
            self.bridge.set_value(key, value)

    def _send_snapshot(self, index: int) -> None:
        from cobot_hybrid_ros.image_codec import encode_compressed
        from cobot_hybrid_ros.images import compressed_to_numpy, image_to_numpy

        msg = self._latest_images.get(index)
        if msg is None:
            return
        if hasattr(msg, 'format'):
            pixels, encoding = compressed_to_numpy(msg)
        else:
            pixels, encoding = image_to_numpy(msg), msg.encoding
        jpeg, _ = encode_compressed(pixels, encoding, 'jpeg', 80)
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self.bridge.send_snapshot(index, bytes(jpeg), pixels.shape[1], pixels.shape[0],
                                  msg.header.frame_id, stamp if stamp > 0 else None)
        self.bridge.record('stop_snapshots')

    def _tick(self) -> None:
        self._guarded('tick', self.bridge.tick)
        self._guarded('commands', self._take_commands)

    def _take_commands(self) -> None:
        for mission in self.bridge.take_commands():
            self._publish_mission(mission)
        while self.bridge.acks:
            self._ack_pub.publish(ack_to_msg(self.bridge.acks.popleft()))
        while self.bridge.advisories:
            advisory = self.bridge.advisories.popleft()
            self._advisory_pub.publish(diagnostic_array(
                self.get_clock(), 'bridge_node: cloud advisory', 'WARN', advisory.summary,
                {'verdict': advisory.verdict, 'upload': f'{advisory.upload_kind} seq '
                 f'{advisory.upload_seq}', 'cloud_people': advisory.cloud_people,
                 'edge_people': advisory.edge_people, 'missed': len(advisory.missed),
                 'false_alarms': len(advisory.false_alarms),
                 'similar': ', '.join(f'{n["robot_id"]} seq {n["seq"]} ({n["similarity"]:.2f})'
                                      for n in advisory.similar)},
                self.bridge.cfg.robot_id))
        for update in self.bridge.take_model_updates():
            self._update_pub.publish(String(data=json.dumps(local_update_to_json(update))))
            where = update.path or '(a rollback to a version it keeps)'
            self.get_logger().info(f'model file ready for the detector: {where}')

    def _publish_mission(self, mission: Mission) -> None:
        stamp = self.get_clock().now().to_msg()
        self._mission_pub.publish(mission_to_msg(mission, stamp))
        if self._json_pub is not None:
            self._json_pub.publish(String(data=json.dumps(mission_to_json(mission))))
        self._markers_pub.publish(mission_markers(mission, stamp))
        path = PathMsg()
        path.header.frame_id = mission.frame_id
        path.header.stamp = stamp
        for task in mission.tasks:
            pose = PoseStamped()
            pose.header = path.header
            pose.pose.position.x, pose.pose.position.y = task.pose.x, task.pose.y
            pose.pose.position.z = task.pose.z
            pose.pose.orientation.z = math.sin(task.pose.yaw / 2.0)
            pose.pose.orientation.w = math.cos(task.pose.yaw / 2.0)
            path.poses.append(pose)
        self._path_pub.publish(path)
        self.get_logger().info(f'mission {mission.mission_id} v{mission.version}: '
                               f'{len(mission.tasks)} tasks')

    def _stats(self) -> None:
        stats = self.bridge.send_stats()
        self._status_pub.publish(self._bridge_status(stats))
        level, message = link_health(stats)
        self._diag_pub.publish(diagnostic_array(self.get_clock(), 'bridge_node: link', level,
                                                message, stats, self._params.config.robot_id))

    def _bridge_status(self, stats: dict[str, Any]) -> BridgeStatus:
        msg = BridgeStatus(
            robot_id=self._params.config.robot_id, connected=bool(stats['connected']),
            rtt_ms=float(stats['rtt_ms']), drain_rate_hz=float(stats['drain_rate_hz']),
            inflight=int(stats['inflight']), committed=int(stats['committed']),
            delivered=int(stats['delivered']),
            backlog_messages=int(stats['backlog_messages']),
            backlog_bytes=int(stats['backlog_bytes']),
            oldest_age_s=float(stats['oldest_age_s']),
            dropped=[ReasonCount(reason=k, count=int(v))
                     for k, v in sorted(stats['dropped'].items())],
            commands_rejected=[ReasonCount(reason=k, count=int(v))
                               for k, v in sorted(stats['commands_rejected'].items())],
            internal_errors=int(stats['internal_errors']))
        msg.header.stamp = self.get_clock().now().to_msg()
        return msg


def main(args: list[str] | None = None) -> None:
    """Run the bridge until interrupted; queued messages stay on disk for the next start."""
    run_node('bridge_node', BridgeNode, (BridgeError,), args,
             cleanup=lambda node: node.bridge.stop())

if __name__ == '__main__':
    main()
