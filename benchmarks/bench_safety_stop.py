"""Time from the last detection to the protective stop, received in another process.

A ``safety_monitor_node`` runs as its own process. This process plays the detector (camera
info, person detections at 30 Hz, robot speed) and listens to ``protective_stop``. Each trial:
publish until the robot runs at full speed, then go silent, and time from the last detection
published to the stop received. Run for two watchdog timer periods; the target is
``max_perception_age_s + evaluation_period_s + 10 ms``.

Peers, for reading the table: ssm_safety_ros scales speed from poses but has no perception
watchdog (silence keeps the last speed); Nav2's collision_monitor drops a source after
``source_timeout`` (default 2 s) and has no SSM.

Run (loopback only): tools/run_isolated.sh .venv/bin/python benchmarks/bench_safety_stop.py
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
sys.path.insert(0, str(ROOT / 'test' / 'procs'))
from loopback_env import configure_ros_environment  # noqa: E402
from synthetic_detector import CAMERA_K, CAMERA_TO_BASE, HEIGHT, WIDTH, detection, person_box  # noqa: E402, I001


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_trials(period_s: float, trials: int, domain_id: int, workdir: Path) -> list[float]:
    """Latencies [s] from the last detection to the stop, one per trial."""
    import rclpy
    from geometry_msgs.msg import TwistStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Bool, Float64
    from vision_msgs.msg import Detection2DArray

    params = workdir / f'safety_{period_s}.yaml'
    params.write_text(yaml.safe_dump({'safety_monitor_node': {'ros__parameters': {
        'camera_to_base': CAMERA_TO_BASE, 'evaluation_period_s': period_s,
        'fault_recovery_s': 0.3, 'hold_time_s': 0.1}}}))
    env_domain = {'ROS_DOMAIN_ID': str(domain_id)}
    monitor = subprocess.Popen(
        [sys.executable, '-m', 'cobot_hybrid_perception.nodes.safety_monitor_node', '--ros-args',
         '--params-file', str(ROOT / 'config' / 'safety.yaml'), '--params-file', str(params)],
        env={**os.environ, **env_domain}, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = rclpy.create_node('detector_node', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    det_pub = node.create_publisher(Detection2DArray, 'detections', qos_profile_sensor_data)
    info_pub = node.create_publisher(CameraInfo, 'camera_info', qos_profile_sensor_data)
    speed_pub = node.create_publisher(TwistStamped, 'robot_speed', 10)
    latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    state = {'stop': True, 'scale': 0.0, 'stop_at': 0.0, 'publishing': True, 'last': 0.0}

    def on_stop(msg: Bool) -> None:
        if msg.data and not state['stop']:
            state['stop_at'] = time.perf_counter()
        state['stop'] = msg.data

    node.create_subscription(Bool, 'protective_stop', on_stop, latched)
    node.create_subscription(Float64, 'speed_scale',
                             lambda m: state.__setitem__('scale', m.data), latched)
    info = CameraInfo(width=WIDTH, height=HEIGHT, k=CAMERA_K)
    frame = Detection2DArray(detections=[detection('person-0', 'person', 0.9, person_box(4.0))])

    def tick() -> None:
        if not state['publishing']:
            return
        stamp = node.get_clock().now().to_msg()
        info.header.stamp = frame.header.stamp = stamp
        twist = TwistStamped()
        twist.header.stamp = stamp
        twist.twist.linear.x = 0.25
        info_pub.publish(info)
        speed_pub.publish(twist)
        det_pub.publish(frame)
        state['last'] = time.perf_counter()

    node.create_timer(1 / 30, tick)

    def spin_until(predicate: object, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():  # type: ignore[operator]
                return True
            executor.spin_once(timeout_sec=0.01)
        return False

    latencies: list[float] = []
    try:
        for _ in range(trials):
            state['publishing'] = True
            if not spin_until(lambda: state['scale'] == 1.0 and not state['stop'], 30.0):
                raise SystemExit('bench: the monitor never reached RUN; is it running?')
            spin_until(lambda: False, 0.2)
            state['publishing'] = False
            if not spin_until(lambda: state['stop'], 5.0):
                raise SystemExit('bench: no protective stop within 5 s')
            latencies.append(state['stop_at'] - state['last'])
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        monitor.terminate()
        monitor.wait(timeout=10)
    return latencies


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--trials', type=int, default=60)
    args = parser.parse_args()
    configure_ros_environment(log_prefix='cobot_hybrid_bench_')
    workdir = Path(tempfile.mkdtemp(prefix='cobot_hybrid_bench_'))
    print(f'last detection -> protective_stop received in another process, {args.trials} '
          'trials each (max_perception_age_s 0.2)')
    print(f'{"timer period":>12} {"target [ms]":>11} {"p50 [ms]":>9} {"p99 [ms]":>9} '
          f'{"max [ms]":>9}')
    for domain, period in ((61, 0.05), (62, 0.02)):
        samples = [1e3 * s for s in run_trials(period, args.trials, domain, workdir)]
        print(f'{period * 1e3:>10.0f}ms {(0.2 + period + 0.01) * 1e3:>11.0f} '
              f'{statistics.median(samples):>9.1f} {_percentile(samples, 0.99):>9.1f} '
              f'{max(samples):>9.1f}')


if __name__ == '__main__':
    main()
