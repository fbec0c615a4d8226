"""safety_monitor_node over real DDS: walk-in, detector killed, recovery, lifecycle, YAML."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

pytestmark = pytest.mark.ros

NODE = 'cobot_hybrid_perception.nodes.safety_monitor_node'
SAFETY_YAML = ROOT / 'config' / 'safety.yaml'
CAMERA_TO_BASE = [-2.0, 0.0, 2.0, -0.627211, 0.627211, -0.326506, 0.326506]


@dataclass
class Listener:
    """What the test process hears from the safety monitor, with arrival times."""

    scales: list[tuple[float, float]] = field(default_factory=list)
    stops: list[tuple[float, bool]] = field(default_factory=list)
    reasons: list[tuple[float, str]] = field(default_factory=list)

    def last_scale(self) -> float | None:
        return self.scales[-1][1] if self.scales else None

    def stopped(self) -> bool:
        return bool(self.stops) and self.stops[-1][1]

    def running(self) -> bool:
        """Full speed on both outputs (they are separate topics and arrive separately)."""
        return self.last_scale() == 1.0 and bool(self.stops) and not self.stops[-1][1]

    def reasons_since(self, t: float) -> list[str]:
        return [reason for when, reason in self.reasons if when >= t]


def listen(harness: Any) -> Listener:
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Bool, Float64

    latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    heard = Listener()
    node = harness.node
    node.create_subscription(Float64, 'speed_scale',
                             lambda m: heard.scales.append((time.monotonic(), m.data)), latched)
    node.create_subscription(Bool, 'protective_stop',
                             lambda m: heard.stops.append((time.monotonic(), m.data)), latched)

    def on_diag(msg: Any) -> None:
        for status in msg.status:
            if status.name == 'safety_monitor_node: ssm':
                heard.reasons.append((time.monotonic(), status.message))

    node.create_subscription(DiagnosticArray, 'diagnostics', on_diag, 10)
    return heard


def params_file(tmp_path: Path, **overrides: Any) -> str:
    path = tmp_path / 'safety_test.yaml'
    # 0.5 s, not the shipped 0.2 s: with both cores busy (the suite runs two workers) frames
    # arrive late now and then, and 1 s of fresh perception before running never came; the
    # shipped timing itself is measured by benchmarks/bench_safety_stop.py.
    values = {'camera_to_base': CAMERA_TO_BASE, 'max_perception_age_s': 0.5, **overrides}
    path.write_text(yaml.safe_dump({'safety_monitor_node': {'ros__parameters': values}}))
    return str(path)


def start_monitor(ros_process: Any, tmp_path: Path, **overrides: Any) -> Any:
    return ros_process(NODE, '--ros-args', '--params-file', str(SAFETY_YAML),
                       '--params-file', params_file(tmp_path, **overrides))


def test_person_walking_in_slows_then_stops_the_robot(make_node: Any, ros_process: Any,
                                                      tmp_path: Path) -> None:
    harness = make_node('safety_listener')
    heard = listen(harness)
    monitor = start_monitor(ros_process, tmp_path)
    detector = ros_process('synthetic_detector.py', '--start', '4.0', '--end', '0.6',
                           '--dwell', '2.5', '--walk', '3.0')

    def slowed_then_stopped() -> bool:
        values = [v for _, v in heard.scales]
        if 1.0 not in values:
            return False
        after_run = values[values.index(1.0):]
        return any(0.0 < v < 1.0 for v in after_run) and after_run[-1] == 0.0
    assert harness.spin_until(slowed_then_stopped, 30.0), (monitor.log(), detector.log())

    values = [v for _, v in heard.scales]
    after_run = values[values.index(1.0):]
    # The person only comes closer: the scale never rises again once it has dropped.
    assert all(b <= a for a, b in zip(after_run, after_run[1:], strict=False)), after_run
    assert harness.spin_until(heard.stopped, 5.0)  # the Bool comes on its own topic
    assert harness.spin_until(lambda: any('separation' in r or 'too close' in r
                                          for r in heard.reasons_since(0.0)), 5.0), \
        heard.reasons   # the diagnostics say why


def test_killed_detector_stops_the_robot_and_recovery_waits(make_node: Any, ros_process: Any,
                                                            tmp_path: Path) -> None:
    harness = make_node('safety_listener')
    heard = listen(harness)
    start_monitor(ros_process, tmp_path)
    detector = ros_process('synthetic_detector.py', '--start', '4.0')
    assert harness.spin_until(heard.running, 30.0), detector.log()

    detector.kill()  # SIGKILL: no goodbye, no last message
    killed_at = time.monotonic()
    assert harness.spin_until(heard.stopped, 10.0)
    stop_at = next(t for t, stop in heard.stops if t >= killed_at and stop)
    assert harness.spin_until(lambda: any('perception stale' in r for r in
                                          heard.reasons_since(killed_at)), 5.0), heard.reasons
    print(f'kill -> protective stop received after {1e3 * (stop_at - killed_at):.0f} ms')

    restarted_at = time.monotonic()
    ros_process('synthetic_detector.py', '--start', '4.0')
    assert harness.spin_until(heard.running, 30.0)
    recovering = [r for r in heard.reasons_since(restarted_at) if r.startswith('recovering')]
    assert recovering, heard.reasons  # stopped while fresh perception was being held
    stops_after_restart = [s for t, s in heard.stops if t >= restarted_at]
    assert stops_after_restart.count(True) > 1 and stops_after_restart[-1] is False


def test_detector_reporting_an_error_stops_the_robot(make_node: Any, ros_process: Any,
                                                     tmp_path: Path) -> None:
    harness = make_node('safety_listener')
    heard = listen(harness)
    start_monitor(ros_process, tmp_path)
    # healthy for 8 s of its own clock: discovery plus fault_recovery_s (1 s) of fresh healthy
    # perception must fit before it (3 s did not always, with both cores busy)
    ros_process('synthetic_detector.py', '--start', '4.0', '--unhealthy-after', '8.0')
    assert harness.spin_until(heard.running, 30.0)
    assert harness.spin_until(heard.stopped, 15.0)
    assert harness.spin_until(lambda: any('unhealthy' in r for r in heard.reasons_since(0.0)),
                              5.0), heard.reasons


def test_lifecycle_transitions_and_stop_on_deactivate(make_node: Any, ros_process: Any,
                                                      tmp_path: Path) -> None:
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    harness = make_node('lifecycle_client')
    heard = listen(harness)
    monitor = start_monitor(ros_process, tmp_path, autostart=False)
    change = harness.node.create_client(ChangeState, '/safety_monitor_node/change_state')
    get = harness.node.create_client(GetState, '/safety_monitor_node/get_state')
    assert harness.spin_until(lambda: change.service_is_ready() and get.service_is_ready(),
                              30.0), monitor.log()

    def call(client: Any, request: Any) -> Any:
        future = client.call_async(request)
        assert harness.spin_until(future.done, 10.0)
        return future.result()

    assert call(get, GetState.Request()).current_state.id == State.PRIMARY_STATE_UNCONFIGURED
    harness.spin_for(0.3)   # the subject: time for an output that must not come
    assert heard.scales == []  # nothing published before activation
    for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
        assert call(change, ChangeState.Request(transition=Transition(id=transition))).success
    assert call(get, GetState.Request()).current_state.id == State.PRIMARY_STATE_ACTIVE
    assert harness.spin_until(lambda: len(heard.scales) >= 3, 10.0)
    assert heard.stopped()  # no perception at all: stopped
    ros_process('synthetic_detector.py', '--start', '4.0')
    assert harness.spin_until(heard.running, 30.0)

    deactivate = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE))
    assert call(change, deactivate).success
    assert harness.spin_until(heard.stopped, 10.0)
    count = len(heard.scales)
    harness.spin_for(0.5)   # the subject: time for an output that must not come
    assert len(heard.scales) == count  # inactive: silent, and the last word was a stop
    assert heard.last_scale() == 0.0


@pytest.mark.parametrize(('name', 'value', 'message'), [
    ('localization', 'lidar', 'localization'),
    ('evaluation_period_s', 0.5, 'evaluation_period_s'),
])
def test_bad_parameter_at_start_exits_with_the_reason(ros_process: Any, tmp_path: Path,
                                                      name: str, value: Any,
                                                      message: str) -> None:
    monitor = start_monitor(ros_process, tmp_path, **{name: value})
    assert monitor.wait(30.0) == 2
    assert message in monitor.log()


def test_the_camera_pose_is_published_as_a_static_transform_for_rviz(
        make_node: Any, ros_process: Any, tmp_path: Path) -> None:
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from tf2_msgs.msg import TFMessage

    harness = make_node('tf_listener')
    got: list[Any] = []
    harness.node.create_subscription(
        TFMessage, '/tf_static', got.append,
        QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                   durability=DurabilityPolicy.TRANSIENT_LOCAL))
    monitor = ros_process(NODE, '--ros-args', '--params-file', str(SAFETY_YAML),
                          '--params-file', params_file(tmp_path, publish_camera_tf=True,
                                                       camera_frame='cam_optical',
                                                       base_frame='arm_base'))
    assert harness.spin_until(lambda: bool(got), 30.0), monitor.log()
    (transform,) = got[-1].transforms
    assert (transform.header.frame_id, transform.child_frame_id) == ('arm_base', 'cam_optical')
    t, r = transform.transform.translation, transform.transform.rotation
    assert [t.x, t.y, t.z, r.x, r.y, r.z, r.w] == pytest.approx(CAMERA_TO_BASE)
