"""Child process: a stand-in detector publishing a person walking towards the robot.

Publishes at ``--rate`` Hz: ``camera_info``, ``detections`` (the person, plus a cup that is not
a person) whose box stands on the floor point (distance, 0, 0) of the robot base, and the
robot's TCP ``robot_speed`` (TwistStamped). The person stays at ``--start`` for ``--dwell``
seconds, walks to ``--end`` in ``--walk`` seconds, then stays there until the process is
stopped. With ``--unhealthy-after`` it reports an ERROR diagnostic from then on. With
``--joint-positions`` it also publishes the arm's ``joint_states`` (a UR5e's joint names),
until ``--joints-until`` seconds have passed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

CAMERA_K = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]
WIDTH, HEIGHT = 640, 480
# Camera 2 m behind and 2 m above the base origin, looking along +x, pitched 35 deg down.
CAMERA_TO_BASE = [-2.0, 0.0, 2.0, -0.627211, 0.627211, -0.326506, 0.326506]


def person_box(distance_m: float) -> tuple[float, float, float, float]:
    """Pixel box (x1, y1, x2, y2) of a person standing at (distance, 0, 0) in the base frame."""
    from cobot_hybrid_perception.localization import CameraModel, RigidTransform

    camera = CameraModel.from_k(CAMERA_K)
    transform = RigidTransform.from_xyz_quat(CAMERA_TO_BASE)
    u, v = camera.project(transform.inverse_apply(np.array([distance_m, 0.0, 0.0])))
    return (u - 30.0, v - 200.0, u + 30.0, v)


def distance_at(elapsed: float, start: float, end: float, dwell: float, walk: float) -> float:
    """Where the person stands ``elapsed`` seconds after the first frame."""
    if elapsed <= dwell:
        return start
    progress = min(1.0, (elapsed - dwell) / walk) if walk > 0 else 1.0
    return start + (end - start) * progress


def detection(det_id: str, class_id: str, score: float,
              box: tuple[float, float, float, float]):  # noqa: ANN201 - message type
    """A vision_msgs/Detection2D for a pixel box."""
    from vision_msgs.msg import Detection2D, ObjectHypothesisWithPose

    det = Detection2D(id=det_id)
    det.bbox.center.position.x = (box[0] + box[2]) / 2
    det.bbox.center.position.y = (box[1] + box[3]) / 2
    det.bbox.size_x = box[2] - box[0]
    det.bbox.size_y = box[3] - box[1]
    hyp = ObjectHypothesisWithPose()
    hyp.hypothesis.class_id = class_id
    hyp.hypothesis.score = score
    det.results.append(hyp)
    return det


def main() -> None:
    """Publish until interrupted."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from geometry_msgs.msg import TwistStamped
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo
    from vision_msgs.msg import Detection2DArray

    parser = argparse.ArgumentParser()
    parser.add_argument('--start', type=float, default=4.0)
    parser.add_argument('--end', type=float, default=4.0)
    parser.add_argument('--dwell', type=float, default=1.5)
    parser.add_argument('--walk', type=float, default=3.0)
    parser.add_argument('--rate', type=float, default=30.0)
    parser.add_argument('--speed', type=float, default=0.25)
    parser.add_argument('--unhealthy-after', type=float, default=-1.0)
    parser.add_argument('--joint-positions', default='',
                        help='comma-separated UR5e joint positions [rad]; empty: none')
    parser.add_argument('--joints-until', type=float, default=float('inf'))
    args = parser.parse_args()
    from sensor_msgs.msg import JointState

    from cobot_hybrid_perception.safety_pipeline import SafetyConfig
    joints = JointState(name=list(SafetyConfig().arm_joint_names))
    joints.position = [float(v) for v in args.joint_positions.split(',') if v]

    rclpy.init()
    node = rclpy.create_node('detector_node')
    det_pub = node.create_publisher(Detection2DArray, 'detections', qos_profile_sensor_data)
    info_pub = node.create_publisher(CameraInfo, 'camera_info', qos_profile_sensor_data)
    speed_pub = node.create_publisher(TwistStamped, 'robot_speed', 10)
    diag_pub = node.create_publisher(DiagnosticArray, 'diagnostics', 10)
    joint_pub = node.create_publisher(JointState, 'joint_states', 10)
    info = CameraInfo(width=WIDTH, height=HEIGHT, k=CAMERA_K)
    info.header.frame_id = 'camera_optical_frame'
    t0 = time.monotonic()
    try:
        while rclpy.ok():
            elapsed = time.monotonic() - t0
            stamp = node.get_clock().now().to_msg()
            distance = distance_at(elapsed, args.start, args.end, args.dwell, args.walk)
            info.header.stamp = stamp
            info_pub.publish(info)
            twist = TwistStamped()
            twist.header.stamp = stamp
            twist.twist.linear.x = args.speed
            speed_pub.publish(twist)
            if joints.position and elapsed < args.joints_until:
                joints.header.stamp = stamp
                joint_pub.publish(joints)
            msg = Detection2DArray()
            msg.header.stamp = stamp
            msg.header.frame_id = 'camera_optical_frame'
            msg.detections = [detection('person-0', 'person', 0.9, person_box(distance)),
                              detection('cup-0', 'cup', 0.8, (10.0, 10.0, 40.0, 40.0))]
            det_pub.publish(msg)
            if 0 <= args.unhealthy_after <= elapsed:
                status = DiagnosticStatus(level=DiagnosticStatus.ERROR,
                                          name='detector_node: inference',
                                          message='CUDA error (synthetic)')
                diag_pub.publish(DiagnosticArray(status=[status]))
            print(f'{elapsed:.3f} distance {distance:.3f}', flush=True)
            rclpy.spin_once(node, timeout_sec=1.0 / args.rate)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
