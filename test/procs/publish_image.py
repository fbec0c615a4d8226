"""Child process: publish an .npy array as an Image (or CompressedImage), then exit.

Publishing starts once a subscriber has matched.
"""

import argparse

import numpy as np
import rclpy
from matched_publish import publish_when_matched
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from cobot_hybrid_ros.images import numpy_to_compressed, numpy_to_image

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


def _stamped() -> Image | CompressedImage:
    msg.header.stamp = node.get_clock().now().to_msg()
    return msg


publish_when_matched(node, pub, _stamped, args.count)
node.destroy_node()
rclpy.try_shutdown()
