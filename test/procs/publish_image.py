"""Child process: publish an .npy array as an Image (or CompressedImage), then exit.

Publishing starts once a subscriber has matched.
"""

import argparse
import time

import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from cobot_hybrid_perception.nodes.conversions import numpy_to_compressed, numpy_to_image

parser = argparse.ArgumentParser()
parser.add_argument('--npy', required=True)
parser.add_argument('--encoding', required=True)
parser.add_argument('--topic', default='image')
parser.add_argument('--count', type=int, default=3)
parser.add_argument('--compressed', choices=['', 'png', 'jpeg'], default='')
args = parser.parse_args()

rclpy.init()
node = rclpy.create_node('publish_image')
pixels = np.load(args.npy)
header = Header(frame_id='camera')
if args.compressed:
    msg = numpy_to_compressed(pixels, args.encoding, args.compressed, header=header)
    msg_type = CompressedImage
else:
    msg = numpy_to_image(pixels, args.encoding, header)
    msg_type = Image
pub = node.create_publisher(msg_type, args.topic,
                            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
deadline = time.monotonic() + 20.0
while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.05)
for _ in range(args.count):
    msg.header.stamp = node.get_clock().now().to_msg()
    pub.publish(msg)
    rclpy.spin_once(node, timeout_sec=0.05)
# Stay until the subscriber has gone (it got what it needed) or a deadline passes, so reliable
# delivery of the last sample is not cut short by our exit.
deadline = time.monotonic() + 20.0
while pub.get_subscription_count() > 0 and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.05)
node.destroy_node()
rclpy.try_shutdown()
