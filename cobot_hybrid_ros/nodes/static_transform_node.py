"""``static_transform_node``: publish fixed transforms on ``/tf_static`` (latched).

For a venv without ``tf2_ros`` (whose ``static_transform_publisher`` does this in a ROS
distribution): the site pose of a fixed cobot (``map -> base_link``), a camera on a bracket.
Parameters: ``parents`` and ``children`` (frame names, one per transform) and ``transforms``
(``[x, y, z, qx, qy, qz, qw]`` per transform, flattened). All transforms go out in one
``tf2_msgs/TFMessage`` that late subscribers (rviz) still receive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from geometry_msgs.msg import TransformStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from tf2_msgs.msg import TFMessage

from cobot_hybrid_protocol.settings import check_settings, setting
from cobot_hybrid_ros.errors import RosHelperError
from cobot_hybrid_ros.params import ParameterBinding, refuse_unknown_parameters
from cobot_hybrid_ros.runner import run_node

_LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass(frozen=True)
class StaticTransformsConfig:
    """The transforms to publish."""

    parents: tuple[str, ...] = setting(('map',), 'parent frame of each transform',
                                       array_type='string')
    children: tuple[str, ...] = setting(('base_link',), 'child frame of each transform',
                                        array_type='string')
    transforms: tuple[float, ...] = setting(
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0), 'each child in its parent [x, y, z, qx, qy, qz, '
        'qw], flattened (floats)', array_type='double')

    def __post_init__(self) -> None:
        for name in ('parents', 'children'):
            object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        object.__setattr__(self, 'transforms', tuple(float(v) for v in self.transforms))
        check_settings(self, RosHelperError)
        count = len(self.parents)
        if count == 0 or len(self.children) != count or len(self.transforms) != 7 * count:
            raise RosHelperError(
                f'{count} parents, {len(self.children)} children and {len(self.transforms)} '
                'transform numbers: give one parent and one child per transform, and 7 numbers '
                '[x, y, z, qx, qy, qz, qw] each')
        if not all(self.parents) or not all(self.children) or any(
                p == c for p, c in zip(self.parents, self.children, strict=True)):
            raise RosHelperError('frame names must be non-empty and a child is not its parent')
        for index in range(count):
            pose = self.transforms[7 * index:7 * index + 7]
            norm = math.sqrt(sum(v * v for v in pose[3:]))
            if not all(math.isfinite(v) for v in pose) or norm < 1e-9:
                raise RosHelperError(f'transform {index} ({self.parents[index]} -> '
                                     f'{self.children[index]}) {list(pose)}: finite numbers '
                                     'and a non-zero quaternion')


CONFIGS = (StaticTransformsConfig,)


class StaticTransformNode(Node):
    """Publishes the configured transforms once, latched."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('static_transform_node', **kwargs)
        cfg = ParameterBinding(self, StaticTransformsConfig).config
        refuse_unknown_parameters(self)
        self._pub = self.create_publisher(TFMessage, '/tf_static', _LATCHED)
        stamp = self.get_clock().now().to_msg()
        transforms = []
        for index, (parent, child) in enumerate(zip(cfg.parents, cfg.children, strict=True)):
            x, y, z, qx, qy, qz, qw = cfg.transforms[7 * index:7 * index + 7]
            norm = math.sqrt(qx * qx + qy * qy + qz * qz + qw * qw)
            msg = TransformStamped()
            msg.header.stamp = stamp
            msg.header.frame_id, msg.child_frame_id = parent, child
            t, r = msg.transform.translation, msg.transform.rotation
            t.x, t.y, t.z = x, y, z
            r.x, r.y, r.z, r.w = qx / norm, qy / norm, qz / norm, qw / norm
            transforms.append(msg)
        self._pub.publish(TFMessage(transforms=transforms))
        self.get_logger().info('static transforms: ' + ', '.join(
            f'{p} -> {c}' for p, c in zip(cfg.parents, cfg.children, strict=True)))


def main(args: list[str] | None = None) -> None:
    """Publish, then keep the latched message available until interrupted."""
    run_node('static_transform_node', StaticTransformNode, (), args)


if __name__ == '__main__':
    main()
