"""End-to-end ROS latency: image published in one process -> detections in another.

``image_source_node`` (a real photo, zidane.jpg 1280x720, at a fixed rate) and
``detector_node`` (ONNX Runtime on the CPU) run as their own processes over Fast DDS on
loopback; this process receives ``detections`` and measures now - image stamp. Scenarios: a
rate the CPU keeps up with, and rates faster than inference (overload), where the detector
must drop frames rather than queue them, so p99 stays near one inference time.

Run (loopback only): tools/run_isolated.sh .venv/bin/python benchmarks/bench_detector_ros.py
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
from loopback_env import configure_ros_environment  # noqa: E402

SCENARIOS = ((320, 30.0), (320, 120.0), (640, 30.0))


def run_scenario(imgsz: int, rate_hz: float, seconds: float, domain_id: int
                 ) -> dict[str, float]:
    """Latencies and counts of one (input size, camera rate) run."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from vision_msgs.msg import Detection2DArray

    env = {**os.environ, 'ROS_DOMAIN_ID': str(domain_id)}
    detector = subprocess.Popen(
        [sys.executable, '-m', 'cobot_hybrid_perception.nodes.detector_node', '--ros-args',
         '-p', 'backend:=ort-cpu', '-p', f'imgsz:={imgsz}'], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    source = subprocess.Popen(
        [sys.executable, '-m', 'cobot_hybrid_perception.nodes.image_source_node', '--ros-args',
         '-p', 'source:=sample:zidane', '-p', f'rate_hz:={rate_hz}',
         '-p', 'wait_for_subscribers:=true'], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = rclpy.create_node('latency_probe', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    latencies: list[float] = []
    diag: dict[str, str] = {}

    def on_detections(msg: Detection2DArray) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        latencies.append(1e3 * (time.time() - stamp))

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == 'detector_node: inference':
                diag.update({v.key: v.value for v in status.values})

    node.create_subscription(Detection2DArray, 'detections', on_detections, 10)
    node.create_subscription(DiagnosticArray, 'diagnostics', on_diag, 10)
    try:
        deadline = time.monotonic() + 60.0
        while len(latencies) < 5 and time.monotonic() < deadline:  # warm-up frames
            executor.spin_once(timeout_sec=0.05)
        latencies.clear()
        start_processed = int(diag.get('processed', 0))
        start_dropped = int(diag.get('dropped', 0))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        for proc in (source, detector):
            proc.terminate()
            proc.wait(timeout=10)
    ordered = sorted(latencies)
    return {'received': len(latencies), 'p50': statistics.median(latencies),
            'p99': ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            'max': ordered[-1], 'infer_p50': float(diag.get('infer_ms_p50', 'nan')),
            'dropped': int(diag.get('dropped', 0)) - start_dropped,
            'processed': int(diag.get('processed', 0)) - start_processed}


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=15.0)
    args = parser.parse_args()
    configure_ros_environment(log_prefix='cobot_hybrid_bench_')
    print(f'image_source_node -> detector_node (ort-cpu) -> this process, zidane.jpg 1280x720, '
          f'{args.seconds:.0f} s per row')
    print(f'{"imgsz":>5} {"camera Hz":>9} {"infer p50":>9} {"received":>8} {"dropped":>7} '
          f'{"p50 ms":>7} {"p99 ms":>7} {"max ms":>7}')
    for index, (imgsz, rate) in enumerate(SCENARIOS):
        r = run_scenario(imgsz, rate, args.seconds, 70 + index)
        print(f'{imgsz:>5} {rate:>9.0f} {r["infer_p50"]:>9.1f} {r["received"]:>8.0f} '
              f'{r["dropped"]:>7.0f} {r["p50"]:>7.1f} {r["p99"]:>7.1f} {r["max"]:>7.1f}')


if __name__ == '__main__':
    main()
