"""A model swapped in a running detector_node over DDS, with the safety monitor watching.

Real processes: ``detector_node`` (ONNX Runtime, the default model at 320, model updates on),
``image_source_node`` (zidane.jpg at 10 Hz) and ``safety_monitor_node``; the test process plays
the bridge: it publishes a signed install of the default model at 640 (another sha256) as a
``LocalUpdate`` on ``model_update``, and listens to ``model_status``, ``model_metrics``, the
detector's and the monitor's diagnostics and ``protective_stop``. Then the detector restarts
and runs the stored 640 version instead of its ``model`` parameter.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from test_detector_node import PERCEPTION_YAML, SOURCE
from test_model_manager import PASS, ROBOT, Fleet, ref_of, require_default_models
from test_safety_monitor_node import start_monitor

from cobot_hybrid_perception.models import default_model_path
from cobot_hybrid_protocol.model_update import ModelStatus, validate_metrics, validate_status

pytestmark = pytest.mark.ros

NODE = 'cobot_hybrid_perception.nodes.detector_node'
MAX_AGE_S = 0.5      # the monitor's limit in these tests (test_safety_monitor_node says why)
# A camera 10 m up, pitched 35 degrees down, with a long lens: zidane's two people stand about
# 12 m from the robot, far enough for RUN, so a stop would be the watchdog's (not theirs).
CAMERA_TO_BASE = [-2.0, 0.0, 10.0, -0.627211, 0.627211, -0.326506, 0.326506]
CAMERA_K = [9000.0, 0.0, 640.0, 0.0, 9000.0, 360.0, 0.0, 0.0, 1.0]


@dataclass
class Heard:
    """What the test process hears, with arrival times (monotonic)."""

    statuses: list[tuple[float, ModelStatus]] = field(default_factory=list)
    metrics: list[Any] = field(default_factory=list)
    detector: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    monitor: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    stops: list[tuple[float, bool]] = field(default_factory=list)
    detections: list[float] = field(default_factory=list)

    def states(self) -> list[str]:
        return [s.state for _, s in self.statuses]

    def last_detector(self) -> dict[str, str]:
        return self.detector[-1][1] if self.detector else {}

    def stale_s(self, until: float = float('inf')) -> float:
        """Seconds the monitor had charged to stale perception by ``until`` (monotonic)."""
        reports = [values for t, values in self.monitor if t <= until]
        if not reports:
            return 0.0
        return sum(float(v) for k, v in reports[-1].items()
                   if k.startswith('time_s.') and 'stale_perception' in k)


def listen(harness: Any) -> Heard:
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Bool, String
    from vision_msgs.msg import Detection2DArray

    heard = Heard()
    latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node = harness.node

    def on_status(msg: Any) -> None:
        heard.statuses.append((time.monotonic(), validate_status(json.loads(msg.data))))

    def on_diag(msg: Any) -> None:
        for status in msg.status:
            values = {v.key: v.value for v in status.values}
            if status.name == 'detector_node: inference':
                heard.detector.append((time.monotonic(), values))
            elif status.name == 'safety_monitor_node: ssm':
                heard.monitor.append((time.monotonic(), values))

    node.create_subscription(String, 'model_status', on_status, latched)
    node.create_subscription(String, 'model_metrics', lambda m: heard.metrics.append(
        validate_metrics(json.loads(m.data))), 10)
    node.create_subscription(DiagnosticArray, 'diagnostics', on_diag, 50)
    node.create_subscription(Bool, 'protective_stop',
                             lambda m: heard.stops.append((time.monotonic(), m.data)), latched)
    node.create_subscription(Detection2DArray, 'detections',
                             lambda m: heard.detections.append(time.monotonic()), 50)
    return heard


def _update_qos() -> Any:
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    # the bridge's: the newest update, kept for a detector that comes later
    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def start_detector(ros_process: Any, store: Path, public_key: Path) -> Any:
    return ros_process(NODE, '--ros-args', '--params-file', str(PERCEPTION_YAML),
                       '-p', 'backend:=ort-cpu', '-p', 'threads:=1', '-p', 'imgsz:=320',
                       '-p', 'model_updates:=true', '-p', f'robot_id:={ROBOT}',
                       '-p', f'cloud_public_keys:=[planner={public_key}]',
                       '-p', f'model_store:={store}', '-p', 'metrics_period_s:=1.0')


def test_a_signed_install_swaps_the_model_between_frames_under_the_watchdog(
        make_node: Any, ros_process: Any, tmp_path: Path) -> None:
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import String

    require_default_models()
    fleet = Fleet(tmp_path)
    public_key = fleet.write_public_key(tmp_path / 'planner.pub')
    store = tmp_path / 'fleet'
    harness = make_node('model_bridge')
    heard = listen(harness)
    info_pub = harness.node.create_publisher(CameraInfo, 'camera_info', 10)
    update_pub = harness.node.create_publisher(String, 'model_update', _update_qos())
    monitor = start_monitor(ros_process, tmp_path, max_perception_age_s=MAX_AGE_S,
                            camera_to_base=CAMERA_TO_BASE)
    detector = start_detector(ros_process, store, public_key)
    camera = ros_process(SOURCE, '--ros-args', '-p', 'source:=sample:zidane',
                         '-p', 'rate_hz:=10.0')
    info = CameraInfo(width=1280, height=720, k=CAMERA_K)

    def spin_until(predicate: Any, timeout_s: float) -> bool:
        def check() -> bool:
            info_pub.publish(info)
            return bool(predicate())
        return harness.spin_until(check, timeout_s)

    small = default_model_path(320)
    big_path = default_model_path(640)
    big = ref_of(big_path, 3, imgsz=640)

    # Steady state: the 320 model runs, the monitor sees fresh perception.
    def steady() -> bool:
        return bool(heard.statuses) and len(heard.detections) >= 10 \
            and heard.last_detector().get('model') == small.name \
            and bool(heard.monitor) and heard.monitor[-1][1].get('state') == 'RUN' \
            and heard.monitor[-1][1].get('people') == '2'
    assert spin_until(steady, 60.0), (detector.log()[-3000:], monitor.log()[-2000:],
                                      camera.log()[-1000:])
    boot = heard.statuses[0][1]
    assert boot.state == 'active' and boot.revision == 0
    assert boot.active is not None and boot.active.imgsz == 320
    old_hash = heard.last_detector()['model_hash']

    assert spin_until(lambda: update_pub.get_subscription_count() > 0, 10.0)
    stale_before = heard.stale_s()
    sent_at = time.monotonic()
    acceptance = replace(PASS, min_agreement=0.8, smoke_frames=8)
    update_pub.publish(String(data=fleet.update(fleet.command(big, time.time(),
                                                              acceptance=acceptance),
                                                big_path)))

    def done() -> bool:
        return any(s.state in ('active', 'failed') and s.revision for _, s in heard.statuses)
    assert spin_until(done, 90.0), (heard.states(), detector.log()[-3000:])
    active_at, active = [(t, s) for t, s in heard.statuses if s.revision][-1]
    assert active.state == 'active', (active.reason, detector.log()[-3000:])
    assert heard.states()[1:] == ['received', 'verifying', 'loading', 'smoke_testing',
                                  'active']
    assert active.model == big and active.active == big
    assert {'agreement', 'latency_p99_ms', 'smoke_frames', 'swap_ms'} <= set(active.metrics)
    assert active.metrics['smoke_frames'] >= 8

    # The diagnostics name the new model; frames lost across the swap, measured by the node.
    def swapped() -> bool:
        diag = heard.last_detector()
        return diag.get('model') == f'{big.sha256}.onnx' and 'model_swap_frames_lost' in diag
    assert spin_until(swapped, 20.0), (heard.last_detector(), detector.log()[-2000:])
    diag = heard.last_detector()
    assert diag['model_hash'] == big.sha256[:16] != old_hash
    assert diag['model_version'] == big.label
    # At most one frame more than the load alone lost between two frames just before (0 on
    # a quiet machine: the frame path is held for a reference assignment).
    lost, before = int(diag['model_swap_frames_lost']), int(diag['model_swap_frames_lost_before'])
    assert lost <= before + 1, diag
    # Metrics of the new model come tagged with it, and detections keep coming.
    assert spin_until(lambda: any(m.model == big and m.frames > 0 for m in heard.metrics),
                      15.0), heard.metrics[-3:]
    count = len(heard.detections)
    assert spin_until(lambda: len(heard.detections) >= count + 10, 15.0)

    # The watchdog across the swap: no stale perception; had there been, it would have stopped.
    stale = heard.stale_s() - stale_before
    stopped_for_stale = [v for t, v in heard.monitor if t >= sent_at
                         and v.get('state') == 'PROTECTIVE_STOP'
                         and 'stale' in v.get('cause', '')]
    if stale == 0.0:      # the robot ran through the swap
        assert True not in [stop for t, stop in heard.stops if t >= sent_at], heard.monitor
    else:                 # perception went stale (a busy machine): the watchdog stopped it
        assert stopped_for_stale, (stale, heard.monitor[-1])
    # Reported, not asserted: on a busy machine the 640 model itself (after the swap) or the
    # smoke check beside the 320 one (before it) may be too slow for the limit.
    checking = heard.stale_s(active_at) - stale_before
    swapping = heard.stale_s(active_at + 1.0) - stale_before - checking
    print(f'swap: {active.metrics}, frames lost {lost} (before: {before}), '
          f'gap {diag["model_swap_gap_ms"]} ms, '
          f'load {diag["model_load_ms"]} ms, smoke {diag["model_smoke_ms"]} ms, '
          f'status after {active_at - sent_at:.2f} s; stale perception {stale:.2f} s '
          f'({checking:.2f} s while checking, {swapping:.2f} s within 1 s of the swap, the '
          f'rest while the 640 model ran), '
          f'load average {os.getloadavg()[0]:.1f}; monitor states '
          f'{sorted({(v.get("state"), v.get("cause")) for _, v in heard.monitor})}')

    # A restart runs the stored version, over the model parameter, and says so.
    detector.stop()
    heard.statuses.clear()
    again = start_detector(ros_process, store, public_key)
    assert spin_until(lambda: any(s.state == 'active' for _, s in heard.statuses[-3:])
                      and heard.last_detector().get('model') == f'{big.sha256}.onnx', 60.0), \
        again.log()[-3000:]
    restart = [s for _, s in heard.statuses if s.state == 'active'][-1]
    assert restart.active == big and restart.revision == 0
    assert 'overrides the model parameter' in again.log()
