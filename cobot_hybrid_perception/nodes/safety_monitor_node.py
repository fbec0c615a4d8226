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
every ``evaluation_period_s``; ``safety_status`` (``cobot_hybrid_msgs/SafetyStatus``, reliable +
transient local, depth 500) with every decision: ``header.stamp`` is the exact ``now`` it was
computed at, ``perception_stamp`` the header stamp of the detections it was made on, so
``cobot-hybrid replay`` can evaluate the recorded inputs again at the same times;
``diagnostics`` (state, reason, distances, at 2 Hz and on every
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
from cobot_hybrid_msgs.msg import SafetyStatus
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
from vision_msgs.msg import Detection2DArray
from visualization_msgs.msg import Marker, MarkerArray

from cobot_hybrid_perception import safety_inputs, safety_view
from cobot_hybrid_perception.errors import ConfigError, PerceptionError
from cobot_hybrid_perception.perception_budget import AgeWindow, BudgetWatch
from cobot_hybrid_perception.safety_pipeline import SafetyConfig, SafetyPipeline, SafetyReport
from cobot_hybrid_perception.ssm import SafetyState
from cobot_hybrid_protocol.settings import check_settings, same_as, setting
from cobot_hybrid_ros.diagnostics import diagnostic_array
from cobot_hybrid_ros.params import ParameterBinding, refuse_unknown_parameters
from cobot_hybrid_ros.runner import AutostartSetting, autostart, run_node

_LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Latched with ~5 s of history (a 30 Hz camera makes ~110 decisions a second): a recorder
# discovering the monitor after it started still gets its first decision, which a replay
# needs (the monitor's state is known from a fault stop on). Depth 50 lost them.
_STATUS_QOS = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
_MARKER_KINDS = {'cylinder': Marker.CYLINDER, 'text': Marker.TEXT_VIEW_FACING}
_seconds = safety_inputs.stamp_s


def _time(sec_nsec: tuple[int, int]) -> Time:
    return Time(sec=sec_nsec[0], nanosec=sec_nsec[1])


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
        self._detections_stamp = (0, 0)   # of the last detections the pipeline took
        self._keypoints_used = False       # whether their keypoints had arrived before them
        self._now: tuple[int, int] | None = None   # the input's arrival, for its evaluation
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
        self._status_pub = self.create_lifecycle_publisher(SafetyStatus, 'safety_status',
                                                           _STATUS_QOS)
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
        for name in ('_scale_pub', '_stop_pub', '_diag_pub', '_marker_pub', '_status_pub'):
            pub = getattr(self, name, None)
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
                setattr(self, name, None)
        self._pipeline = None
        self._detections_stamp = (0, 0)

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
        """Run an input handler, then evaluate; any exception becomes a protective stop.

        The handler and its evaluation share one ``now`` (the input's arrival), so an input
        aged by its arrival and the decision on it agree on the time, as a replay does.
        """
        def wrapped(*args: Any) -> None:
            if self._pipeline is None:
                return
            self._now = safety_inputs.ns_to_sec_nsec(self.get_clock().now().nanoseconds)
            try:
                handler(*args)
            except Exception as exc:  # noqa: BLE001 - the fail-safe boundary of the node
                self.get_logger().error(f'protective stop: {type(exc).__name__}: {exc}')
                self._publish(self._pipeline.fault(f'input error: {type(exc).__name__}: {exc}'),
                              self._now)
                return
            finally:
                now, self._now = self._now, None
            if evaluate:
                self._evaluate(now)
        return wrapped

    def _on_detections(self, msg: Detection2DArray) -> None:
        stamp = safety_inputs.stamp_key(msg.header.stamp)
        assert self._pipeline is not None
        keypoints = self._keypoints.get(stamp)
        stamp_s = safety_inputs.feed_detections(self._pipeline, msg, keypoints or {})
        # Said in safety_status: the keypoints travel apart and may come after their frame.
        self._detections_stamp, self._keypoints_used = stamp, keypoints is not None
        self._ages.window.add(stamp_s, self._now_s())

    def _on_keypoints(self, msg: Detection2DArray) -> None:
        stamp = safety_inputs.stamp_key(msg.header.stamp)
        self._keypoints[stamp] = safety_inputs.keypoint_table(msg)
        while len(self._keypoints) > 8:
            self._keypoints.popitem(last=False)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        assert self._pipeline is not None
        self._pipeline.on_camera_info(list(msg.k), msg.height)

    def _on_depth(self, msg: Image) -> None:
        assert self._pipeline is not None
        safety_inputs.feed_depth(self._pipeline, msg)

    def _on_twist(self, msg: TwistStamped) -> None:
        assert self._pipeline is not None
        safety_inputs.feed_twist(self._pipeline, msg, self._now_s())

    def _on_joint_state(self, msg: JointState) -> None:
        assert self._pipeline is not None
        safety_inputs.feed_joint_state(self._pipeline, msg, self._now_s())

    def _on_scalar_speed(self, msg: Float64) -> None:
        assert self._pipeline is not None
        self._pipeline.on_robot_speed(self._now_s(), abs(float(msg.data)))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        healthy = safety_inputs.detector_health(msg.status,
                                                self._shell.config.detector_status_prefix)
        if healthy is not None and self._pipeline is not None:
            self._pipeline.on_detector_health(healthy)

    # --- outputs -----------------------------------------------------------------------------

    def _clock_now(self) -> tuple[int, int]:
        """Now as (sec, nanosec): the arrival of the input being handled, else the clock."""
        if self._now is not None:
            return self._now
        return safety_inputs.ns_to_sec_nsec(self.get_clock().now().nanoseconds)

    def _now_s(self) -> float:
        sec, nanosec = self._clock_now()
        return float(sec) + float(nanosec) * 1e-9   # as safety_inputs.stamp_s reads a stamp

    def _evaluate(self, now: tuple[int, int] | None = None) -> None:
        if self._active and self._pipeline is not None:
            now = self._clock_now() if now is None else now
            self._publish(self._pipeline.evaluate(float(now[0]) + float(now[1]) * 1e-9), now)

    def _publish(self, report: SafetyReport, at: tuple[int, int] | None = None) -> None:
        if not self._active:
            return
        decision = report.decision
        self._scale_pub.publish(Float64(data=float(decision.speed_scale)))
        self._stop_pub.publish(Bool(data=safety_view.stop_requested(decision.state)))
        self._status_pub.publish(self._status(report, self._clock_now() if at is None
                                              else at))
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

    def _status(self, report: SafetyReport, now: tuple[int, int]) -> SafetyStatus:
        d = report.decision
        msg = SafetyStatus(state=d.state.value, cause=d.cause, reason=d.reason,
                           speed_scale=float(d.speed_scale),
                           closest_distance_m=float(d.closest_distance_m),
                           required_separation_m=float(d.required_separation_m),
                           allowed_speed_mps=float(d.allowed_speed_mps),
                           perception_age_s=float(report.perception_age_s),
                           perception_stamp=_time(self._detections_stamp),
                           keypoints_used=self._keypoints_used)
        msg.header.stamp = _time(now)
        msg.header.frame_id = self._shell.config.base_frame
        return msg

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
