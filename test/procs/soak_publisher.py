"""Child process: publish std_msgs/String on ``soak`` at a steady rate with periodic bursts."""

import argparse
import time

import rclpy
from std_msgs.msg import String

parser = argparse.ArgumentParser()
parser.add_argument('--rate', type=float, default=200.0)
parser.add_argument('--burst', type=int, default=1000)
parser.add_argument('--burst-every', type=float, default=10.0)
args = parser.parse_args()

rclpy.init()
node = rclpy.create_node('soak_publisher')
pub = node.create_publisher(String, 'soak', 1000)
count, start, next_burst = 0, time.monotonic(), time.monotonic() + args.burst_every
try:
    while rclpy.ok():
        now = time.monotonic()
        due = int((now - start) * args.rate) - count
        if now >= next_burst:  # 1,000 messages within one second
            due += args.burst
            next_burst += args.burst_every
        for _ in range(max(0, due)):
            pub.publish(String(data=f'{count} ' + 'x' * 200))
            count += 1
        rclpy.spin_once(node, timeout_sec=0.002)
except KeyboardInterrupt:
    pass
finally:
    print(f'published {count}', flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
