"""`make demo` until the full edge-cloud loop lands: real photos across DDS and MQTT, verified.

1. ``image_source_node`` runs as its own process and publishes the photos shipped in
   installed packages as ``sensor_msgs/Image`` over Fast DDS (loopback profile).
2. This process receives them, converts each through the project's image codec (zero-copy),
   and checks every pixel against the same photo read from disk.
3. Each frame is JPEG-compressed (what the bridge will send up on an event) and sent through a
   real mosquitto broker on 127.0.0.1, received back and decoded.
4. It prints what arrived and exits non-zero if any frame is missing or not bit-exact.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
from loopback_env import configure_ros_environment  # noqa: E402


def _start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = int(sock.getsockname()[1])
    conf = workdir / 'mosquitto.conf'
    user = __import__('pwd').getpwuid(os.getuid()).pw_name
    conf.write_text(f'listener {port} 127.0.0.1\nallow_anonymous true\nuser {user}\n')
    binary = shutil.which('mosquitto') or '/usr/sbin/mosquitto'
    broker = subprocess.Popen([binary, '-c', str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(('127.0.0.1', port), timeout=0.2).close()
            return broker, port
        except OSError:
            time.sleep(0.05)
    broker.kill()
    raise SystemExit('demo: mosquitto did not start on 127.0.0.1')


def main() -> int:
    """Run the smoke demo; return the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=12, help='frames to send')
    parser.add_argument('--rate', type=float, default=10.0, help='frames per second')
    args = parser.parse_args()
    configure_ros_environment(domain_id=77, log_prefix='cobot_hybrid_demo_')

    import paho.mqtt.client as mqtt
    import rclpy
    from paho.mqtt.enums import CallbackAPIVersion
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from cobot_hybrid_perception import image_codec
    from cobot_hybrid_perception.media import available_samples, load_image, sample_photo_path
    from cobot_hybrid_perception.nodes.conversions import image_to_numpy

    expected = {hashlib.sha256(load_image(sample_photo_path(n)).tobytes()).hexdigest(): n
                for n in available_samples()}
    print(f'demo: photos shipped in packages: {", ".join(expected.values())}')

    workdir = Path(tempfile.mkdtemp(prefix='cobot_hybrid_demo_'))
    broker, port = _start_broker(workdir)
    inbox: queue.Queue[bytes] = queue.Queue()
    mqtt_client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id='demo-smoke',
                              protocol=mqtt.MQTTv5)
    subscribed: queue.Queue[int] = queue.Queue()
    mqtt_client.on_message = lambda _c, _u, msg: inbox.put(msg.payload)
    mqtt_client.on_subscribe = lambda *_args: subscribed.put(1)
    mqtt_client.connect('127.0.0.1', port)
    mqtt_client.loop_start()
    mqtt_client.subscribe('cobot/v1/demo/snapshot', qos=1)
    subscribed.get(timeout=10)

    rclpy.init()
    node = rclpy.create_node('demo_receiver')
    frames: list[tuple[float, Image]] = []
    node.create_subscription(Image, 'image', lambda m: frames.append((time.time(), m)),
                             QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE))
    source = subprocess.Popen(
        [sys.executable, '-m', 'cobot_hybrid_perception.nodes.image_source_node', '--ros-args',
         '-p', 'source:=samples', '-p', f'rate_hz:={args.rate}',
         '-p', f'max_frames:={args.frames}', '-p', 'wait_for_subscribers:=true',
         '--log-level', 'warn'])
    rows, latencies, raw_bytes, jpeg_bytes = [], [], 0, 0
    deadline = time.monotonic() + 30 + args.frames / args.rate
    try:
        while len(rows) < args.frames and time.monotonic() < deadline:
            if source.poll() is not None and not frames:
                # The source has finished: give in-flight frames a moment, then stop waiting.
                deadline = min(deadline, time.monotonic() + 2.0)
            rclpy.spin_once(node, timeout_sec=0.1)
            while frames:
                arrived, msg = frames.pop(0)
                stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
                latencies.append((arrived - stamp) * 1e3)
                pixels = image_to_numpy(msg)
                name = expected.get(hashlib.sha256(pixels.tobytes()).hexdigest())
                payload, fmt = image_codec.encode_compressed(pixels, msg.encoding, 'jpeg', 85)
                mqtt_client.publish('cobot/v1/demo/snapshot', payload, qos=1)
                back, _ = image_codec.decode_compressed(inbox.get(timeout=10), fmt)
                raw_bytes += len(msg.data)
                jpeg_bytes += len(payload)
                rows.append((name, msg, back.shape == pixels.shape))
                print(f'  frame {len(rows):2d}  {name or "UNKNOWN":9s} {msg.width}x{msg.height} '
                      f'{msg.encoding}  DDS {latencies[-1]:5.1f} ms  bit-exact '
                      f'{"yes" if name else "NO"}  MQTT jpeg {len(payload) / 1024:6.1f} KiB '
                      f'-> {"decoded" if rows[-1][2] else "WRONG SHAPE"}')
    finally:
        source.send_signal(signal.SIGINT)
        source.wait(timeout=10)
        node.destroy_node()
        rclpy.try_shutdown()
        mqtt_client.loop_stop()
        mqtt_client.disconnect()
        broker.terminate()
        broker.wait(timeout=10)

    exact = sum(1 for name, _, ok in rows if name and ok)
    print(f'demo: received {len(rows)}/{args.frames} frames over DDS, {exact} bit-exact and '
          f'round-tripped through mosquitto')
    if latencies:
        print(f'demo: DDS latency p50 {statistics.median(latencies):.1f} ms, '
              f'max {max(latencies):.1f} ms; raw {raw_bytes / 1e6:.1f} MB vs JPEG '
              f'{jpeg_bytes / 1e6:.2f} MB ({raw_bytes / max(jpeg_bytes, 1):.0f}x smaller)')
    return 0 if exact == args.frames else 1


if __name__ == '__main__':
    sys.exit(main())
