"""Frames: what messages carry, what TF connects, and the static transform publisher."""

from __future__ import annotations

from typing import Any

import pytest

from cobot_hybrid_ros.frames import FrameTree, frame_ids, message_type


def transform(parent: str, child: str) -> Any:
    from geometry_msgs.msg import TransformStamped

    msg = TransformStamped()
    msg.header.frame_id, msg.child_frame_id = parent, child
    return msg


def test_frame_ids_are_found_in_nested_messages_and_arrays() -> None:
    from nav_msgs.msg import Path
    from sensor_msgs.msg import Image
    from tf2_msgs.msg import TFMessage
    from visualization_msgs.msg import Marker, MarkerArray

    markers = MarkerArray(markers=[Marker(), Marker(), Marker()])
    markers.markers[0].header.frame_id = 'base_link'
    markers.markers[1].header.frame_id = '/map'           # a leading slash is the same frame
    assert frame_ids(markers) == {'base_link', 'map'}     # the empty third one is no frame
    image = Image()
    image.header.frame_id = 'camera_optical_frame'
    assert frame_ids(image) == {'camera_optical_frame'}
    assert frame_ids(TFMessage(transforms=[transform('map', 'base_link')])) == {'map',
                                                                                 'base_link'}
    path = Path()
    assert frame_ids(path) == set()


def test_the_tree_connects_in_both_directions_and_names_what_it_cannot_reach() -> None:
    from tf2_msgs.msg import TFMessage

    tree = FrameTree()
    tree.add(TFMessage(transforms=[transform('map', 'base_link'),
                                   transform('base_link', 'camera_optical_frame')]))
    frames = {'map', 'base_link', 'camera_optical_frame', 'wrist_camera'}
    assert tree.unconnected(frames, 'base_link') == {'wrist_camera'}
    assert tree.unconnected(frames - {'wrist_camera'}, 'camera_optical_frame') == set()
    assert FrameTree().unconnected({'base_link', 'map'}, 'base_link') == {'map'}


def test_two_parents_and_loops_are_what_tf_would_reject() -> None:
    from tf2_msgs.msg import TFMessage

    tree = FrameTree()
    tree.add(TFMessage(transforms=[transform('map', 'base_link'),
                                   transform('base_link', 'camera_optical_frame')]))
    assert tree.conflicts() == []
    # A robot description that already places the camera, plus camera_tf:=true.
    tree.add(TFMessage(transforms=[transform('tool0', 'camera_optical_frame')]))
    assert tree.conflicts() == ['camera_optical_frame has 2 parents (base_link, tool0)']
    loop = FrameTree({('a', 'b'), ('b', 'c'), ('c', 'a')})
    assert 'a is its own ancestor (a loop)' in loop.conflicts()


def test_message_types_resolve_by_name() -> None:
    from std_msgs.msg import Float64

    assert message_type('std_msgs/msg/Float64') is Float64
    with pytest.raises(ImportError):
        message_type('no_such_msgs/msg/Thing')


@pytest.mark.parametrize(('params', 'needle'), [
    (['parents:=[map]', 'children:=[base_link,extra]'], 'one parent and one child'),
    (['transforms:=[0.0,0.0,0.0,0.0,0.0,0.0,0.0]'], 'non-zero quaternion'),
    (['parents:=[base_link]'], 'not its parent'),
])
def test_a_wrong_static_transform_is_refused(ros_process: Any, params: list[str],
                                             needle: str) -> None:
    args = ['--ros-args']
    for param in params:
        args += ['-p', param]
    node = ros_process('cobot_hybrid_ros.nodes.static_transform_node', *args)
    assert node.wait(30.0) == 2, node.log()
    assert needle in node.log()


@pytest.mark.ros
def test_static_transforms_reach_a_late_subscriber(make_node: Any, ros_process: Any) -> None:
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from tf2_msgs.msg import TFMessage

    publisher = ros_process('cobot_hybrid_ros.nodes.static_transform_node', '--ros-args',
                            '-p', 'parents:=[map,base_link]',
                            '-p', 'children:=[base_link,camera_optical_frame]',
                            '-p', 'transforms:=[1.0,2.0,0.0,0.0,0.0,0.0,2.0,'
                                  '0.0,0.0,2.0,0.0,0.0,0.0,1.0]')
    harness = make_node('tf_listener')
    assert harness.spin_until(lambda: 'static transforms' in publisher.log(), 30.0)
    heard: list[Any] = []
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    harness.node.create_subscription(TFMessage, '/tf_static', heard.append, latched)
    assert harness.spin_until(lambda: bool(heard), 20.0), publisher.log()
    first, second = heard[0].transforms
    assert (first.header.frame_id, first.child_frame_id) == ('map', 'base_link')
    assert (first.transform.translation.x, first.transform.translation.y) == (1.0, 2.0)
    assert first.transform.rotation.w == 1.0            # normalised
    assert second.transform.translation.z == 2.0
