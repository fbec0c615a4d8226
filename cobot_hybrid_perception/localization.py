"""From 2D person detections to 3D points in the robot base frame. Pure numpy, no ROS.

Two methods, chosen by what the camera gives:

* **Aligned depth** (``16UC1`` in mm or ``32FC1`` in m, registered to the colour image): the
  person's range is the *median* of the valid depth pixels in the torso region (shoulder and
  hip keypoints when present, else the central half of the box), so background pixels at the
  box edges, holes (0 / NaN) and speckle do not move it. The spread (median absolute deviation,
  scaled to a standard deviation) is the position uncertainty. Assumes the depth image is
  aligned to the detection image pixel for pixel.
* **Floor plane** (no depth): the person stands on the floor (``z = floor_z`` in the base
  frame). The ray through the feet (ankle keypoints, else the bottom centre of the box) is
  intersected with that plane. Assumes a flat floor, a known camera-to-base transform and an
  unoccluded foot point; the uncertainty grows with range as ``(R^2 + h^2) / h * dv / fy`` for
  a foot-pixel error ``dv``. A foot ray that never reaches the floor raises
  :class:`LocalizationError`; callers treat such a person as being at the robot (fail safe).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cobot_hybrid_perception.errors import PerceptionError

__all__ = ['CameraModel', 'LocalizationError', 'Located', 'RigidTransform',
           'locate_with_depth', 'locate_on_floor']

# COCO-17 keypoint indices used here.
_TORSO = (5, 6, 11, 12)      # shoulders, hips
_ANKLES = (15, 16)


class LocalizationError(PerceptionError, ValueError):
    """A detection cannot be placed in 3D (no valid depth, foot ray misses the floor...)."""


@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics in pixels (from ``sensor_msgs/CameraInfo.k``)."""

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_k(cls, k: Sequence[float]) -> CameraModel:
        """Build from the row-major 3x3 ``K`` of a CameraInfo."""
        if len(k) != 9 or k[0] <= 0 or k[4] <= 0:
            raise LocalizationError(f'camera matrix K {list(k)} is not calibrated (fx, fy > 0)')
        return cls(float(k[0]), float(k[4]), float(k[2]), float(k[5]))

    def ray(self, u: float, v: float) -> npt.NDArray[np.float64]:
        """Direction (optical frame: x right, y down, z forward) through pixel (u, v)."""
        return np.array([(u - self.cx) / self.fx, (v - self.cy) / self.fy, 1.0])

    def project(self, point: npt.NDArray[np.float64]) -> tuple[float, float]:
        """Pixel (u, v) of a point in the optical frame (in front of the camera)."""
        if point[2] <= 0:
            raise LocalizationError(f'point {point.tolist()} is behind the camera')
        return (self.fx * float(point[0]) / float(point[2]) + self.cx,
                self.fy * float(point[1]) / float(point[2]) + self.cy)


@dataclass(frozen=True)
class RigidTransform:
    """Maps points from a source frame (the camera's optical frame) into the robot base."""

    rotation: npt.NDArray[np.float64]
    translation: npt.NDArray[np.float64]

    @classmethod
    def from_xyz_quat(cls, xyz_quat: Sequence[float]) -> RigidTransform:
        """From ``[x, y, z, qx, qy, qz, qw]`` (as in a TF transform, camera pose in base)."""
        if len(xyz_quat) != 7:
            raise LocalizationError(f'expected [x, y, z, qx, qy, qz, qw], got {list(xyz_quat)}')
        x, y, z, qx, qy, qz, qw = (float(v) for v in xyz_quat)
        norm = math.sqrt(qx * qx + qy * qy + qz * qz + qw * qw)
        if not math.isfinite(norm) or norm < 1e-9:
            raise LocalizationError(f'quaternion {[qx, qy, qz, qw]} has no orientation')
        qx, qy, qz, qw = qx / norm, qy / norm, qz / norm, qw / norm
        rotation = np.array([
            [1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qz * qw), 2 * (qx * qz + qy * qw)],
            [2 * (qx * qy + qz * qw), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qx * qw)],
            [2 * (qx * qz - qy * qw), 2 * (qy * qz + qx * qw), 1 - 2 * (qx * qx + qy * qy)],
        ])
        return cls(rotation, np.array([x, y, z]))

    def apply(self, point: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Transform a point (or direction, with ``translation`` ignored by the caller)."""
        result: npt.NDArray[np.float64] = self.rotation @ point + self.translation
        return result

    def inverse_apply(self, point: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Map a base-frame point back into the source (camera) frame."""
        result: npt.NDArray[np.float64] = self.rotation.T @ (point - self.translation)
        return result


@dataclass(frozen=True)
class Located:
    """A person's point in the base frame and its 1-sigma uncertainty [m]."""

    xyz: tuple[float, float, float]
    uncertainty_m: float
    method: str


def _visible(keypoints: npt.NDArray[Any] | None, indices: Sequence[int],
             min_conf: float) -> list[tuple[float, float]]:
    if keypoints is None or len(keypoints) <= max(indices):
        return []
    return [(float(keypoints[i][0]), float(keypoints[i][1])) for i in indices
            if keypoints[i][2] >= min_conf]


def locate_with_depth(bbox_xyxy: Sequence[float], depth: npt.NDArray[Any], depth_unit_m: float,
                      camera: CameraModel, camera_to_base: RigidTransform,
                      keypoints: npt.NDArray[Any] | None = None,
                      min_keypoint_conf: float = 0.5, min_valid_pixels: int = 20) -> Located:
    """Place a person using an aligned depth image (``depth * depth_unit_m`` = metres)."""
    height, width = depth.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in bbox_xyxy)
    torso = _visible(keypoints, _TORSO, min_keypoint_conf)
    if len(torso) >= 3:
        us, vs = zip(*torso, strict=True)
        u0, u1, v0, v1 = min(us), max(us), min(vs), max(vs)
    else:
        cw, ch = (x2 - x1) / 4, (y2 - y1) / 4
        u0, u1, v0, v1 = x1 + cw, x2 - cw, y1 + ch, y2 - ch
    c0, c1 = max(0, int(math.floor(u0))), min(width, int(math.ceil(u1)) + 1)
    r0, r1 = max(0, int(math.floor(v0))), min(height, int(math.ceil(v1)) + 1)
    if c1 <= c0 or r1 <= r0:
        raise LocalizationError(f'box {list(bbox_xyxy)} lies outside the {width}x{height} depth')
    patch = depth[r0:r1, c0:c1].astype(np.float64) * depth_unit_m
    valid = patch[np.isfinite(patch) & (patch > 0.05) & (patch < 60.0)]
    if valid.size < min_valid_pixels:
        raise LocalizationError(
            f'only {valid.size} valid depth pixels in the torso region of box '
            f'{list(bbox_xyxy)} (need {min_valid_pixels}); depth holes or misalignment')
    range_m = float(np.median(valid))
    spread = 1.4826 * float(np.median(np.abs(valid - range_m)))  # MAD -> sigma
    u, v = (u0 + u1) / 2, (v0 + v1) / 2
    point_cam = camera.ray(u, v) * range_m
    xyz = camera_to_base.apply(point_cam)
    return Located((float(xyz[0]), float(xyz[1]), float(xyz[2])), spread, 'depth')


def locate_on_floor(bbox_xyxy: Sequence[float], camera: CameraModel,
                    camera_to_base: RigidTransform, floor_z: float = 0.0,
                    keypoints: npt.NDArray[Any] | None = None, min_keypoint_conf: float = 0.5,
                    foot_pixel_error: float = 5.0, max_range_m: float = 30.0) -> Located:
    """Place a person by intersecting the ray through their feet with the floor plane."""
    ankles = _visible(keypoints, _ANKLES, min_keypoint_conf)
    if ankles:
        u = sum(a[0] for a in ankles) / len(ankles)
        v = max(a[1] for a in ankles)
    else:
        u, v = (bbox_xyxy[0] + bbox_xyxy[2]) / 2, float(bbox_xyxy[3])
    origin = camera_to_base.translation
    direction = camera_to_base.rotation @ camera.ray(u, v)
    height = float(origin[2]) - floor_z
    if height <= 0:
        raise LocalizationError(f'camera is {height:.2f} m above the floor; the floor method '
                                'needs the camera above it (check camera_to_base, floor_z)')
    if direction[2] >= -1e-9:
        raise LocalizationError(f'foot point ({u:.0f}, {v:.0f}) is at or above the horizon: '
                                'its ray never reaches the floor')
    t = height / -float(direction[2])
    point = origin + t * direction
    horizontal = math.hypot(float(point[0] - origin[0]), float(point[1] - origin[1]))
    if horizontal > max_range_m:
        raise LocalizationError(f'foot ray meets the floor {horizontal:.1f} m away '
                                f'(> {max_range_m} m): too close to the horizon to trust')
    sigma = (horizontal ** 2 + height ** 2) / height * foot_pixel_error / camera.fy
    return Located((float(point[0]), float(point[1]), float(floor_z)), sigma, 'floor')
