"""Detections to 3D: depth median and floor-plane intersection against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from cobot_hybrid_perception.localization import (
    CameraModel,
    LocalizationError,
    RigidTransform,
    locate_on_floor,
    locate_with_depth,
)

CAMERA = CameraModel.from_k([500.0, 0, 320.0, 0, 500.0, 240.0, 0, 0, 1])
# Camera 1 m above the base origin, looking along +x of the base, level.
LEVEL = RigidTransform.from_xyz_quat([0.0, 0.0, 1.0, -0.5, 0.5, -0.5, 0.5])


def test_quaternion_gives_the_optical_to_base_rotation() -> None:
    expected = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)
    np.testing.assert_allclose(LEVEL.rotation, expected, atol=1e-12)


@pytest.mark.parametrize(('foot_u', 'foot_v', 'xy', 'sigma'), [
    (320.0, 490.0, (2.0, 0.0), (4 + 1) / 1 * 5 / 500),     # R = fy*h/(v-cy) = 2 m
    (445.0, 490.0, (2.0, -0.5), None),                      # 0.25 to the right -> -y
    (320.0, 365.0, (4.0, 0.0), (16 + 1) / 1 * 5 / 500),     # farther: larger sigma
])
def test_floor_plane_hand_computed(foot_u: float, foot_v: float, xy: tuple,
                                   sigma: float | None) -> None:
    box = [foot_u - 40, foot_v - 300, foot_u + 40, foot_v]
    located = locate_on_floor(box, CAMERA, LEVEL)
    assert located.xyz == pytest.approx((xy[0], xy[1], 0.0))
    if sigma is not None:
        assert located.uncertainty_m == pytest.approx(sigma)


def test_floor_plane_prefers_ankle_keypoints() -> None:
    keypoints = np.zeros((17, 3))
    keypoints[15] = (300.0, 488.0, 0.9)
    keypoints[16] = (340.0, 490.0, 0.9)
    located = locate_on_floor([100, 100, 200, 300], CAMERA, LEVEL, keypoints=keypoints)
    assert located.xyz[0] == pytest.approx(2.0)


def test_foot_above_horizon_is_an_error() -> None:
    with pytest.raises(LocalizationError, match='horizon'):
        locate_on_floor([280, 100, 360, 230], CAMERA, LEVEL)


def _depth_scene() -> np.ndarray:
    depth = np.full((480, 640), 5000, np.uint16)        # wall at 5 m
    depth[100:461, 200:441] = 2000                       # person at 2 m
    rng = np.random.default_rng(0)
    holes = rng.integers(0, 2, depth.shape).astype(bool) & (rng.random(depth.shape) < 0.2)
    depth[holes] = 0                                     # 10 % invalid pixels
    depth[250:255, 300:305] = 65535                      # speckle
    return depth


def test_depth_median_ignores_background_holes_and_speckle() -> None:
    located = locate_with_depth([200, 100, 440, 460], _depth_scene(), 0.001, CAMERA, LEVEL)
    # centre pixel (320, 280): ray (0, 0.08, 1) * 2 m -> base (2.0, 0.0, 1.0 - 0.16)
    assert located.xyz == pytest.approx((2.0, 0.0, 0.84))
    assert located.uncertainty_m == pytest.approx(0.0)
    assert located.method == 'depth'


def test_depth_in_metres_float32_with_nans() -> None:
    depth = _depth_scene().astype(np.float32) / 1000.0
    depth[depth == 0] = np.nan
    located = locate_with_depth([200, 100, 440, 460], depth, 1.0, CAMERA, LEVEL)
    assert located.xyz[0] == pytest.approx(2.0)


def test_depth_without_valid_pixels_is_an_error() -> None:
    with pytest.raises(LocalizationError, match='valid depth pixels'):
        locate_with_depth([200, 100, 440, 460], np.zeros((480, 640), np.uint16), 0.001,
                          CAMERA, LEVEL)
    with pytest.raises(LocalizationError, match='outside'):
        locate_with_depth([700, 500, 800, 600], _depth_scene(), 0.001, CAMERA, LEVEL)


@pytest.mark.parametrize('k', [[0.0] * 9, [500.0, 0, 320.0, 0, 500.0, 240.0]])
def test_uncalibrated_camera_is_an_error(k: list) -> None:
    with pytest.raises(LocalizationError, match='not calibrated'):
        CameraModel.from_k(k)


def test_degenerate_quaternion_is_an_error() -> None:
    with pytest.raises(LocalizationError, match='no orientation'):
        RigidTransform.from_xyz_quat([0, 0, 1, 0, 0, 0, 0])
