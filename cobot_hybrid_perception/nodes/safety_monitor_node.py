"""``safety_monitor_node``: ISO/TS 15066 speed-and-separation monitoring, lifecycle node.

Subscribes (relative names):

* ``detections`` (``vision_msgs/Detection2DArray``): people in the camera image; an empty
  array is a frame with nobody in it, and the detector must publish one per frame;
* ``keypoints`` (``vision_msgs/Detection2DArray``, optional): per person the COCO-17 keypoints
  as ``results`` (``class_id`` = keypoint name, ``score`` = confidence, ``pose.position.x/y`` =
  pixel), matched to ``detections`` by header stamp and detection ``id``;
* ``camera_info`` (``sensor_msgs/CameraInfo``), ``depth`` (``sensor_msgs/Image``, ``16UC1`` mm
  or ``32FC1`` m, aligned to the detection image, optional);
* ``robot_speed`` (``geometry_msgs/TwistStamped`` of the TCP, aged by its header stamp when it
  has one, or ``std_msgs/Float64`` [m/s] when ``robot_speed_type`` is ``scalar``);
* ``joint_states`` (``sensor_msgs/JointState``, only with ``robot_geometry: arm``): the arm's
  pose, aged by its stamp; stale or unreadable stops the robot;
* ``diagnostics`` (``diagnostic_msgs/DiagnosticArray``): statuses named ``detector_node...``
  at ERROR or STALE mark the detector unhealthy.

Publishes ``speed_scale`` (``std_msgs/Float64`` in [0, 1], as cobot drivers' speed scaling),
``protective_stop`` (``std_msgs/Bool``), both reliable + transient local, on every input and
every ``evaluation_period_s``; ``diagnostics`` (state, reason, distances, at 2 Hz and on every
state change) and ``safety_markers`` (``visualization_msgs/MarkerArray`` of zones and people).
The diagnostics also carry the time spent per state and cause since activation
(``time_s.PROTECTIVE_STOP.stale_perception``, ``time_s.SLOW.person``...) and a second status,
``<node>: perception budget``: the age of the detections as they arrive (p50/p99/max of the
age just before each new frame, the capture-to-arrival latency, the frame period) judged
against ``max_perception_age_s`` (:mod:`cobot_hybrid_perception.perception_budget`).

Lifecycle: inputs are wired in ``on_configure``; speed scale is published only while active;
deactivating publishes a protective stop first. ``autostart`` configures and activates at start.
Any exception while handling an input stops the robot with the exception as the reason.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TransformStamped, TwistStamped
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (
    DurabilityPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, ColorRGBA, Float64
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection2D, Detection2DArray
from visualization_msgs.msg import Marker, MarkerArray

from cobot_hybrid_perception import safety_view
from cobot_hybrid_perception.errors import ConfigError, PerceptionError
from cobot_hybrid_perception.frame_policy import depth_scale_m
from cobot_hybrid_perception.perception_budget import AgeWindow, BudgetWatch
from cobot_hybrid_perception.safety_pipeline import (
    PersonDetection,
    SafetyConfig,
    SafetyPipeline,
    SafetyReport,
    measured_at,
    speed_from_twist,
)
from cobot_hybrid_perception.ssm import SafetyState
from cobot_hybrid_protocol.settings import check_settings, same_as, setting
from cobot_hybrid_ros.diagnostics import diagnostic_array, level_name
from cobot_hybrid_ros.images import image_to_numpy
from cobot_hybrid_ros.params import ParameterBinding, refuse_unknown_parameters
from cobot_hybrid_ros.runner import AutostartSetting, autostart, run_node

_LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
_MARKER_KINDS = {'cylinder': Marker.CYLINDER, 'text': Marker.TEXT_VIEW_FACING}


def _seconds(stamp: Time) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def _to_person_detection(det: Detection2D, keypoints: dict[str, np.ndarray]) -> PersonDetection:
    if not det.results:
        raise PerceptionError(f'detection {det.id!r} has no class hypothesis')
    best = max(det.results, key=lambda r: r.hypothesis.score)
    cx, cy = det.bbox.center.position.x, det.bbox.center.position.y
    hw, hh = det.bbox.size_x / 2.0, det.bbox.size_y / 2.0
    return PersonDetection(best.hypothesis.class_id, float(best.hypothesis.score),
                           (cx - hw, cy - hh, cx + hw, cy + hh), keypoints.get(det.id), det.id)


def _keypoint_table(msg: Detection2DArray) -> dict[str, np.ndarray]:
    return {det.id: np.array([(r.pose.pose.position.x, r.pose.pose.position.y,
                               r.hypothesis.score) for r in det.results], dtype=np.float64)
            for det in msg.detections}


@dataclass(frozen=True)
class SafetyNodeConfig:
    """The shell's own parameters (the monitor's are :class:`SafetyConfig`)."""

    robot_speed_type: str = setting('twist', 'twist: geometry_msgs/TwistStamped | scalar: '
                                    'std_msgs/Float64 [m/s]', choices=('twist', 'scalar'))
    base_frame: str = setting('base_link', 'frame_id of the markers (the robot base frame)',
                              live=True)
    detector_status_prefix: str = setting('detector_node', 'diagnostic status names of the '
                                          'detector start with this', live=True)
    publish_camera_tf: bool = setting(False, 'publish camera_to_base as the static transform '
                                      'base_frame -> camera_frame on /tf_static (off when '
                                      'your robot description already does)')
    camera_frame: str = setting('camera_optical_frame', "the camera's frame_id (its "
                                'detections and camera_info)')
    autostart: bool = same_as(AutostartSetting, 'autostart')

    def __post_init__(self) -> None:
        check_settings(self, ConfigError)


#: Every config whose settings this node declares (checked against config/*.yaml).
CONFIGS = (SafetyConfig, SafetyNodeConfig)


class SafetyMonitorNode(LifecycleNode):
    """Lifecycle shell around :class:`SafetyPipeline`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('safety_monitor_node', **kwargs)
        self._params = ParameterBinding(self, SafetyConfig, on_change=self._reconfigure)
        self._shell = ParameterBinding(self, SafetyNodeConfig)   # read where used
        refuse_unknown_parameters(self)   # a misspelt key is an error
        self._pipeline: SafetyPipeline | None = None
        self._active = False
        self._entities: list[Any] = []
        self._keypoints: OrderedDict[tuple[int, int], dict[str, np.ndarray]] = OrderedDict()
        self._last_state: SafetyState | None = None
        self._last_diag_s = 0.0
        self._published = 0
        self._ages = BudgetWatch(AgeWindow())
        self._times = safety_view.CauseTimes()

    # --- lifecycle ---------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Build the pipeline and wire the topics."""
        cfg = self._params.config
        self._pipeline = SafetyPipeline(cfg)
        self._scale_pub = self.create_lifecycle_publisher(Float64, 'speed_scale', _LATCHED)
        self._stop_pub = self.create_lifecycle_publisher(Bool, 'protective_stop', _LATCHED)
        self._diag_pub = self.create_lifecycle_publisher(DiagnosticArray, 'diagnostics', 10)
        self._marker_pub = self.create_lifecycle_publisher(MarkerArray, 'safety_markers', 1)
        sensor = qos_profile_sensor_data
        speed_type = self._shell.config.robot_speed_type
        if speed_type == 'twist':
            speed_sub = self.create_subscription(TwistStamped, 'robot_speed',
                                                 self._guard(self._on_twist), 10)
        elif speed_type == 'scalar':
            speed_sub = self.create_subscription(Float64, 'robot_speed',
                                                 self._guard(self._on_scalar_speed), 10)
        else:
            self.get_logger().error(f'robot_speed_type {speed_type!r}: use twist or scalar')
            return TransitionCallbackReturn.FAILURE
        self._entities = [
            self.create_subscription(Detection2DArray, 'detections',
                                     self._guard(self._on_detections), sensor),
            self.create_subscription(Detection2DArray, 'keypoints', self._on_keypoints, sensor),
            self.create_subscription(CameraInfo, 'camera_info',
                                     self._guard(self._on_camera_info), sensor),
            self.create_subscription(Image, 'depth', self._guard(self._on_depth), sensor),
            speed_sub,
            self.create_subscription(DiagnosticArray, 'diagnostics',
                                     self._guard(self._on_diagnostics), 10),
        ]
        if cfg.robot_geometry == 'arm':
            self._entities.append(self.create_subscription(
                JointState, 'joint_states', self._guard(self._on_joint_state, evaluate=False),
                sensor))   # stored on arrival, judged by the timer: drivers publish at 500 Hz
        self._timer = self.create_timer(cfg.evaluation_period_s, self._guard(lambda: None))
        self._timer.cancel()
        if self._shell.config.publish_camera_tf:
            self._tf_pub = self.create_publisher(TFMessage, '/tf_static', _LATCHED)
            self._publish_camera_tf(cfg)
        self.get_logger().info(
            f'configured: localization {cfg.localization}, max perception age '
            f'{cfg.max_perception_age_s} s, evaluation every {cfg.evaluation_period_s} s')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start publishing (the monitor starts in PROTECTIVE_STOP)."""
        result = super().on_activate(state)
        self._active = True
        self._ages = BudgetWatch(AgeWindow())
        self._times = safety_view.CauseTimes()
        self._timer.reset()
        self._evaluate()
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the robot, then stop publishing."""
        if self._pipeline is not None:
            self._publish(self._pipeline.fault('safety monitor deactivated'))
        self._active = False
        self._timer.cancel()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Drop the topics and the pipeline."""
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the robot if active, then release everything."""
        if self._active and self._pipeline is not None:
            self._publish(self._pipeline.fault('safety monitor shutting down'))
        self._active = False
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        for entity in self._entities:
            self.destroy_subscription(entity)
        self._entities = []
        if getattr(self, '_timer', None) is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        for name in ('_scale_pub', '_stop_pub', '_diag_pub', '_marker_pub'):
            pub = getattr(self, name, None)
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
                setattr(self, name, None)
        self._pipeline = None

    def _reconfigure(self, cfg: SafetyConfig) -> None:
        if self._pipeline is not None:
            self._pipeline.reconfigure(cfg)
            if self._shell.config.publish_camera_tf:
                self._publish_camera_tf(cfg)   # a recalibrated camera moves in rviz too

    def _publish_camera_tf(self, cfg: SafetyConfig) -> None:
        shell = self._shell.config
        view = safety_view.camera_transform(cfg.camera_to_base, shell.base_frame,
                                            shell.camera_frame)
        msg = TransformStamped()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id, msg.child_frame_id = view.parent, view.child
        t, r = msg.transform.translation, msg.transform.rotation
        t.x, t.y, t.z = view.translation
        r.x, r.y, r.z, r.w = view.rotation
        self._tf_pub.publish(TFMessage(transforms=[msg]))

    # --- inputs ------------------------------------------------------------------------------

    def _guard(self, handler: Callable[..., None], evaluate: bool = True) -> Callable[..., None]:
        """Run an input handler, then evaluate; any exception becomes a protective stop."""
        def wrapped(*args: Any) -> None:
            if self._pipeline is None:
                return
            try:
                handler(*args)
            except Exception as exc:  # noqa: BLE001 - the fail-safe boundary of the node
                self.get_logger().error(f'protective stop: {type(exc).__name__}: {exc}')
                self._publish(self._pipeline.fault(f'input error: {type(exc).__name__}: {exc}'))
                return
            if evaluate:
                self._evaluate()
        return wrapped

    def _on_detections(self, msg: Detection2DArray) -> None:
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        keypoints = self._keypoints.get(stamp, {})
        detections = [_to_person_detection(det, keypoints) for det in msg.detections]
        assert self._pipeline is not None
        self._pipeline.on_detections(_seconds(msg.header.stamp), detections)
        self._ages.window.add(_seconds(msg.header.stamp), self._now_s())

    def _on_keypoints(self, msg: Detection2DArray) -> None:
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        self._keypoints[stamp] = _keypoint_table(msg)
        while len(self._keypoints) > 8:
            self._keypoints.popitem(last=False)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        assert self._pipeline is not None
        self._pipeline.on_camera_info(list(msg.k), msg.height)

    def _on_depth(self, msg: Image) -> None:
        unit_m = depth_scale_m(msg.encoding)
        assert self._pipeline is not None
        self._pipeline.on_depth(_seconds(msg.header.stamp), image_to_numpy(msg), unit_m)

    def _stamp_or_now(self, stamp: Time) -> float:
        """Return when a message was measured (:func:`measured_at`; zero: no stamp)."""
        return measured_at(_seconds(stamp) if (stamp.sec or stamp.nanosec) else None,
                           self._now_s())

    def _on_twist(self, msg: TwistStamped) -> None:
        assert self._pipeline is not None
        linear = msg.twist.linear
        self._pipeline.on_robot_speed(self._stamp_or_now(msg.header.stamp),
                                      speed_from_twist((linear.x, linear.y, linear.z)))

    def _on_joint_state(self, msg: JointState) -> None:
        assert self._pipeline is not None
        # Not copied: the core refuses more than MAX_JOINT_STATE names before reading them.
        self._pipeline.on_joint_state(self._stamp_or_now(msg.header.stamp), msg.name,
                                      msg.position)

    def _on_scalar_speed(self, msg: Float64) -> None:
        assert self._pipeline is not None
        self._pipeline.on_robot_speed(self._now_s(), abs(float(msg.data)))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        healthy = safety_view.detector_healthy(
            ((s.name, level_name(s.level)) for s in msg.status),
            self._shell.config.detector_status_prefix)
        if healthy is not None and self._pipeline is not None:
            self._pipeline.on_detector_health(healthy)

    # --- outputs -----------------------------------------------------------------------------

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _evaluate(self) -> None:
        if self._active and self._pipeline is not None:
            self._publish(self._pipeline.evaluate(self._now_s()))

    def _publish(self, report: SafetyReport) -> None:
        if not self._active:
            return
        decision = report.decision
        self._scale_pub.publish(Float64(data=float(decision.speed_scale)))
        self._stop_pub.publish(Bool(data=safety_view.stop_requested(decision.state)))
        self._published += 1
        now = time.monotonic()
        self._times.record(now, decision)
        if safety_view.diagnostics_due(decision.state, self._last_state, now,
                                       self._last_diag_s):
            if decision.state != self._last_state:
                self.get_logger().info(f'{decision.state.value}: {decision.reason}')
            self._last_state = decision.state
            self._last_diag_s = now
            self._diag_pub.publish(self._diagnostics(report))
            self._marker_pub.publish(self._markers(report))

    def _diagnostics(self, report: SafetyReport) -> DiagnosticArray:
        d = report.decision
        values = {**safety_view.diagnostic_values(report, self._published),
                  'cause': d.cause, **self._times.values()}
        array = diagnostic_array(self.get_clock(), f'{self.get_name()}: ssm',
                                 safety_view.level(d.state), d.reason, values)
        assert self._pipeline is not None
        cfg = self._pipeline.cfg
        verdict = self._ages.verdict(time.monotonic(), cfg.max_perception_age_s,
                                     cfg.human_speed_far_mps, self._now_s())
        ages = {f'perception_{key}': f'{value:.1f}'
                for key, value in self._ages.window.values().items()}
        array.status.extend(diagnostic_array(
            self.get_clock(), f'{self.get_name()}: perception budget', verdict.level,
            verdict.message, {**ages, 'limit_ms': f'{1e3 * cfg.max_perception_age_s:.1f}',
                              'frames_implausible': str(self._ages.window.implausible)}
        ).status)
        return array

    def _markers(self, report: SafetyReport) -> MarkerArray:
        assert self._pipeline is not None
        frame = self._shell.config.base_frame
        stamp = self.get_clock().now().to_msg()
        markers = [Marker(action=Marker.DELETEALL)]
        for shape in safety_view.markers(report, self._pipeline.cfg):
            marker = Marker(ns=shape.ns, id=shape.id, type=_MARKER_KINDS[shape.kind],
                            action=Marker.ADD, text=shape.text)
            marker.header.frame_id = frame
            marker.header.stamp = stamp
            marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = \
                shape.position
            o = marker.pose.orientation
            o.x, o.y, o.z, o.w = shape.orientation
            marker.scale.x, marker.scale.y, marker.scale.z = shape.scale
            r, g, b, a = shape.rgba
            marker.color = ColorRGBA(r=r, g=g, b=b, a=a)
            markers.append(marker)
        return MarkerArray(markers=markers)


def _spin(node: SafetyMonitorNode) -> None:
    if node._shell.config.autostart:
        autostart(node)
    rclpy.spin(node)


def main(args: list[str] | None = None) -> None:
    """Run the safety monitor until interrupted."""
    run_node('safety_monitor_node', SafetyMonitorNode, (PerceptionError,), args, spin=_spin)

if __name__ == '__main__':
    main()
