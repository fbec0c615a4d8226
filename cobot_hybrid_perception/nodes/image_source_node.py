"""``image_source_node``: publishes real frames (sample photos, image files, video) as Images.

A stand-in camera for demos, tests and benchmarks. Publishes ``image``
(``sensor_msgs/Image``, reliable, depth 5, so both reliable and best-effort subscribers match)
at ``rate_hz``; with ``max_frames`` > 0 it exits after that many frames. With
``wait_for_subscribers`` it starts once a subscriber has matched, so none of a finite run is
published into the void.
"""

from __future__ import annotations

from typing import Any

import rclpy
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from cobot_hybrid_perception.errors import PerceptionError
from cobot_hybrid_perception.media import ImageSourceConfig, iter_frames
from cobot_hybrid_ros.images import numpy_to_image
from cobot_hybrid_ros.params import ParameterBinding, refuse_unknown_parameters
from cobot_hybrid_ros.runner import run_node

#: Every config whose settings this node declares (checked against config/*.yaml).
CONFIGS = (ImageSourceConfig,)


class ImageSourceNode(Node):
    """Publishes frames of a media source at a fixed rate."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('image_source_node', **kwargs)
        self._params = ParameterBinding(self, ImageSourceConfig,
                                        on_change=self._reconfigure)
        refuse_unknown_parameters(self)   # a misspelt key is an error
        cfg = self._params.config
        self.finished = Future()
        self._frames = iter_frames(cfg.source, cfg.encoding, loop=cfg.loop,
                                   max_frames=cfg.max_frames)
        self._pub = self.create_publisher(
            Image, 'image', QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        self._published = 0
        self._timer = self.create_timer(1.0 / cfg.rate_hz, self._tick)
        self.get_logger().info(f'publishing {cfg.source} as {cfg.encoding} at {cfg.rate_hz} Hz')

    def _reconfigure(self, cfg: ImageSourceConfig) -> None:
        self._timer.timer_period_ns = int(1e9 / cfg.rate_hz)

    def _tick(self) -> None:
        if self._params.config.wait_for_subscribers and self._pub.get_subscription_count() == 0:
            return
        frame = next(self._frames, None)
        if frame is None:
            self._timer.cancel()
            # Reliable delivery of the last frames needs this process alive until acked.
            acked = self._pub.wait_for_all_acked(Duration(seconds=5.0))
            self.get_logger().info(f'source ended after {self._published} frames'
                                   f'{"" if acked else " (not all acknowledged in 5 s)"}')
            self.finished.set_result(self._published)
            return
        header = Header(stamp=self.get_clock().now().to_msg(),
                        frame_id=self._params.config.frame_id)
        self._pub.publish(numpy_to_image(frame.pixels, frame.encoding, header))
        self._published += 1


def main(args: list[str] | None = None) -> None:
    """Run the node until its source ends (max_frames) or it is interrupted."""
    run_node('image_source_node', ImageSourceNode, (PerceptionError,), args,
             spin=lambda node: rclpy.spin_until_future_complete(node, node.finished))

if __name__ == '__main__':
    main()
