"""The safety monitor's messages into :class:`SafetyPipeline` calls. Pure Python, no ROS.

The functions read messages by their ROS field names only (``header.stamp.sec``,
``bbox.center.position.x``...), so the node (rclpy messages) and the offline replay (rosbags
messages of the same types) hand the pipeline the very same numbers: one code path, and
``replay`` agreeing with the monitor is not luck.

Times: a stamp is ``sec + nanosec * 1e-9`` (:func:`stamp_s`); the node computes its ``now``
from its clock's nanoseconds the same way (:func:`ns_to_sec_nsec`), and stamps each
``safety_status`` with it, so a replay evaluates at exactly the float the monitor used.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from cobot_hybrid_perception import safety_view
from cobot_hybrid_perception.errors import PerceptionError
from cobot_hybrid_perception.frame_policy import depth_scale_m
from cobot_hybrid_perception.safety_pipeline import (
    PersonDetection,
    SafetyPipeline,
    measured_at,
    speed_from_twist,
)
from cobot_hybrid_ros.diagnostic_levels import level_name
from cobot_hybrid_ros.image_codec import image_view

__all__ = ['KeypointTable', 'detector_health', 'feed_depth', 'feed_detections',
           'feed_joint_state', 'feed_twist', 'has_stamp', 'keypoint_table',
           'ns_to_sec_nsec', 'person_detections', 'stamp_key', 'stamp_s']

KeypointTable = dict[str, npt.NDArray[Any]]


def stamp_s(stamp: Any) -> float:
    """Return a ``builtin_interfaces/Time`` in seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def stamp_key(stamp: Any) -> tuple[int, int]:
    """Return a stamp as (sec, nanosec): exact, for matching and ordering."""
    return int(stamp.sec), int(stamp.nanosec)


def has_stamp(stamp: Any) -> bool:
    """Whether a stamp was set (zero: none given)."""
    return bool(stamp.sec or stamp.nanosec)


def ns_to_sec_nsec(ns: int) -> tuple[int, int]:
    """Clock nanoseconds as a stamp's (sec, nanosec)."""
    return divmod(int(ns), 1_000_000_000)


def keypoint_table(msg: Any) -> KeypointTable:
    """Per detection id, its keypoints (K, 3): x, y, confidence."""
    return {det.id: np.array([(r.pose.pose.position.x, r.pose.pose.position.y,
                               r.hypothesis.score) for r in det.results], dtype=np.float64)
            for det in msg.detections}


def _person_detection(det: Any, keypoints: KeypointTable) -> PersonDetection:
    if not det.results:
        raise PerceptionError(f'detection {det.id!r} has no class hypothesis')
    best = max(det.results, key=lambda r: r.hypothesis.score)
    cx, cy = det.bbox.center.position.x, det.bbox.center.position.y
    hw, hh = det.bbox.size_x / 2.0, det.bbox.size_y / 2.0
    return PersonDetection(best.hypothesis.class_id, float(best.hypothesis.score),
                           (cx - hw, cy - hh, cx + hw, cy + hh), keypoints.get(det.id), det.id)


def person_detections(msg: Any, keypoints: KeypointTable) -> list[PersonDetection]:
    """Return a ``Detection2DArray`` as pipeline detections (PerceptionError: unusable)."""
    return [_person_detection(det, keypoints) for det in msg.detections]


def feed_detections(pipeline: SafetyPipeline, msg: Any, keypoints: KeypointTable) -> float:
    """Hand one frame's detections over; return their stamp [s]."""
    detections = person_detections(msg, keypoints)
    stamp = stamp_s(msg.header.stamp)
    pipeline.on_detections(stamp, detections)
    return stamp


def feed_depth(pipeline: SafetyPipeline, msg: Any) -> None:
    """Hand an aligned depth image over (ImageCodecError / PerceptionError: unusable)."""
    unit_m = depth_scale_m(msg.encoding)
    pixels = image_view(msg.data, height=msg.height, width=msg.width, encoding=msg.encoding,
                        step=msg.step, is_bigendian=msg.is_bigendian)
    pipeline.on_depth(stamp_s(msg.header.stamp), pixels, unit_m)


def _measured(stamp: Any, now_s: float) -> float:
    return measured_at(stamp_s(stamp) if has_stamp(stamp) else None, now_s)


def feed_twist(pipeline: SafetyPipeline, msg: Any, now_s: float) -> None:
    """Hand a ``TwistStamped`` of the TCP over, aged by its stamp (``now_s``: unstamped)."""
    linear = msg.twist.linear
    pipeline.on_robot_speed(_measured(msg.header.stamp, now_s),
                            speed_from_twist((linear.x, linear.y, linear.z)))


def feed_joint_state(pipeline: SafetyPipeline, msg: Any, now_s: float) -> None:
    """Hand a ``JointState`` over, aged by its stamp (``now_s``: unstamped)."""
    # Not copied: the core refuses more than MAX_JOINT_STATE names before reading them.
    pipeline.on_joint_state(_measured(msg.header.stamp, now_s), msg.name, msg.position)


def detector_health(statuses: Iterable[Any], prefix: str) -> bool | None:
    """Return the detector's health from a ``DiagnosticArray``'s statuses (None: none)."""
    return safety_view.detector_healthy(((s.name, level_name(s.level)) for s in statuses),
                                        prefix)
