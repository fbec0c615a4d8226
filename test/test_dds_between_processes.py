"""Real DDS between separate processes: images bit-exact through our conversion, vision_msgs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cobot_hybrid_perception.media import load_image, sample_photo_path

pytestmark = pytest.mark.ros


def _collect(harness: Any, msg_type: Any, topic: str) -> list[Any]:
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    received: list[Any] = []
    harness.node.create_subscription(
        msg_type, topic, received.append,
        QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    return received


@pytest.mark.parametrize(('height', 'width'), [(720, 1280), (1080, 1920)])
def test_bgr8_image_crosses_processes_bit_exact(make_node: Any, ros_process: Any,
                                                tmp_path: Path, height: int,
                                                width: int) -> None:
    from sensor_msgs.msg import Image

    from cobot_hybrid_ros.images import image_to_numpy

    pixels = np.random.default_rng(height).integers(0, 256, (height, width, 3), np.uint8)
    np.save(tmp_path / 'frame.npy', pixels)
    harness = make_node('receiver')
    received = _collect(harness, Image, 'image')
    child = ros_process('publish_image.py', '--npy', str(tmp_path / 'frame.npy'),
                        '--encoding', 'bgr8', '--count', '3')
    assert harness.spin_until(lambda: len(received) >= 3, 30.0), child.log()
    for msg in received:
        assert (msg.height, msg.width, msg.encoding, msg.step) == (height, width, 'bgr8',
                                                                    width * 3)
        view = image_to_numpy(msg)
        assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))  # zero-copy receive
        np.testing.assert_array_equal(view, pixels)


def test_compressed_png_crosses_processes_lossless(make_node: Any, ros_process: Any,
                                                   tmp_path: Path) -> None:
    from sensor_msgs.msg import CompressedImage

    from cobot_hybrid_ros.images import compressed_to_numpy

    pixels = load_image(sample_photo_path('astronaut'), 'rgb8')
    np.save(tmp_path / 'frame.npy', pixels)
    harness = make_node('receiver')
    received = _collect(harness, CompressedImage, 'image/compressed')
    child = ros_process('publish_image.py', '--npy', str(tmp_path / 'frame.npy'),
                        '--encoding', 'rgb8', '--topic', 'image/compressed',
                        '--compressed', 'png', '--count', '1')
    assert harness.spin_until(lambda: len(received) >= 1, 30.0), child.log()
    decoded, encoding = compressed_to_numpy(received[0])
    assert encoding == 'rgb8'
    np.testing.assert_array_equal(decoded, pixels)


def test_image_source_node_publishes_real_photo(make_node: Any, ros_process: Any) -> None:
    from sensor_msgs.msg import Image

    from cobot_hybrid_ros.images import image_to_numpy

    expected = load_image(sample_photo_path('camera'), 'bgr8')
    harness = make_node('receiver')
    received = _collect(harness, Image, 'image')
    node = ros_process('cobot_hybrid_perception.nodes.image_source_node', '--ros-args',
                       '-p', 'source:=sample:camera', '-p', 'rate_hz:=30.0',
                       '-p', 'frame_id:=test_cam')
    assert harness.spin_until(lambda: len(received) >= 2, 30.0), node.log()
    msg = received[-1]
    assert msg.header.frame_id == 'test_cam' and msg.encoding == 'bgr8'
    np.testing.assert_array_equal(image_to_numpy(msg), expected)


def test_image_source_node_rejects_bad_source_with_reason(ros_process: Any) -> None:
    node = ros_process('cobot_hybrid_perception.nodes.image_source_node', '--ros-args',
                       '-p', 'source:=/no/such/video.mp4')
    assert node.wait(30.0) == 2
    assert "source '/no/such/video.mp4' is neither" in node.log()


def test_detection2darray_crosses_processes(make_node: Any, ros_process: Any) -> None:
    from vision_msgs.msg import Detection2DArray

    harness = make_node('receiver')
    received = _collect(harness, Detection2DArray, 'detections')
    child = ros_process('publish_detections.py')
    assert harness.spin_until(lambda: len(received) >= 1, 30.0), child.log()
    msg = received[0]
    assert msg.header.frame_id == 'camera_optical_frame'
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1234, 5678)
    got = [(d.id, d.results[0].hypothesis.class_id, d.results[0].hypothesis.score,
            d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.size_x, d.bbox.size_y,
            d.results[0].pose.pose.position.z) for d in msg.detections]
    assert got == [
        ('track-0', 'person', 0.91, 100.0, 200.5, 40.0, 80.25, 1.5),
        ('track-1', 'person', 0.42, 110.0, 200.5, 41.0, 80.25, 3.0),
        ('track-2', 'cup', 0.77, 120.0, 200.5, 42.0, 80.25, 4.5),
    ]


def test_finite_source_waits_for_a_subscriber_and_loses_no_frame(make_node: Any,
                                                                 ros_process: Any) -> None:
    from sensor_msgs.msg import Image

    node = ros_process('cobot_hybrid_perception.nodes.image_source_node', '--ros-args',
                       '-p', 'source:=samples', '-p', 'rate_hz:=50.0', '-p', 'max_frames:=4',
                       '-p', 'wait_for_subscribers:=true')
    harness = make_node('late_receiver')
    graph = harness.node

    def source_up() -> bool:
        return graph.count_publishers('/image') > 0 and 'publishing samples' in node.log()
    # Its publisher is in the graph and its 50 Hz timer runs, with nobody subscribed.
    assert harness.spin_until(source_up, 30.0), node.log()
    # The subject: 25 ticks with nobody listening (a source that did not wait would have
    # sent its 4 frames into the void and left in 80 ms). Still there, nothing ended.
    harness.spin_for(0.5)
    assert graph.count_publishers('/image') > 0, node.log()
    assert node.popen.poll() is None and 'source ended' not in node.log(), node.log()
    received = _collect(harness, Image, 'image')
    assert harness.spin_until(lambda: len(received) >= 4, 30.0), node.log()
    assert node.wait(10.0) == 0, node.log()   # it leaves once its 4 frames are out
    assert len(received) == 4
    assert [m.width for m in received[:3]] == [512, 512, 600]  # astronaut, camera, coffee


def test_live_parameter_changes_respect_ranges_and_read_only(make_node: Any,
                                                            ros_process: Any) -> None:
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    node = ros_process('cobot_hybrid_perception.nodes.image_source_node', '--ros-args',
                       '-p', 'source:=sample:coffee', '-p', 'rate_hz:=5.0')
    harness = make_node('param_client')
    client = harness.node.create_client(SetParameters, '/image_source_node/set_parameters')
    assert harness.spin_until(client.service_is_ready, 30.0), node.log()

    def set_param(name: str, value: ParameterValue) -> Any:
        future = client.call_async(SetParameters.Request(
            parameters=[Parameter(name=name, value=value)]))
        assert harness.spin_until(future.done, 10.0)
        return future.result().results[0]

    double = ParameterType.PARAMETER_DOUBLE
    ok = set_param('rate_hz', ParameterValue(type=double, double_value=20.0))
    assert ok.successful, ok.reason
    too_fast = set_param('rate_hz', ParameterValue(type=double, double_value=500.0))
    assert not too_fast.successful and 'rate_hz' in too_fast.reason
    read_only = set_param('source', ParameterValue(type=ParameterType.PARAMETER_STRING,
                                                   string_value='samples'))
    assert not read_only.successful
    assert node.popen.poll() is None, node.log()
