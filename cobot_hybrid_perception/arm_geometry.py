"""The arm as capsules in the robot base frame, from joint states and a DH chain. No ROS.

A person's separation is measured to the moving arm, not to one fixed point: every link is a
*capsule* (a segment with a radius) between consecutive frame origins of a standard
Denavit-Hartenberg chain, plus a tool capsule from the flange to the TCP. Joint positions come
from ``sensor_msgs/JointState`` (matched by name, any order, extra joints ignored).

Standard DH, per joint i (``arm_dh`` holds ``[d, a, alpha, theta_offset]`` per joint)::

    T_i = Rot_z(q_i + theta_offset_i) . Trans_z(d_i) . Trans_x(a_i) . Rot_x(alpha_i)

The chain's base (frame 0) is placed in the robot base frame by ``arm_base_to_base``
(``[x, y, z, qx, qy, qz, qw]``; a UR's DH base is its ``base`` frame, which ur_description
rotates by pi about z from ``base_link``).

Separation follows the column model of :mod:`~cobot_hybrid_perception.ssm`: the horizontal
(x, y) distance between a person's vertical column and a capsule's axis, less the radius.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cobot_hybrid_perception.errors import ConfigError, PerceptionError

__all__ = ['ArmChain', 'ArmPoseError', 'Capsule', 'horizontal_separation']

_MAX_JOINTS = 16


class ArmPoseError(PerceptionError, ValueError):
    """A joint state that cannot give the arm's pose (a joint missing, a non-finite value)."""


@dataclass(frozen=True)
class Capsule:
    """A link: the segment ``a``-``b`` in the base frame [m] and its radius [m]."""

    name: str
    a: tuple[float, float, float]
    b: tuple[float, float, float]
    radius_m: float


def horizontal_separation(px: float, py: float, capsule: Capsule) -> float:
    """Distance [m] in the x-y plane from the column at (px, py) to the capsule's surface."""
    ax, ay = capsule.a[0], capsule.a[1]
    dx, dy = capsule.b[0] - ax, capsule.b[1] - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 <= 1e-18 else max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy)
                                                  / length2))
    return max(0.0, math.hypot(px - (ax + t * dx), py - (ay + t * dy)) - capsule.radius_m)


def _pose_matrix(xyz_quat: Sequence[float]) -> npt.NDArray[np.float64]:
    x, y, z, qx, qy, qz, qw = (float(v) for v in xyz_quat)
    norm = math.sqrt(qx * qx + qy * qy + qz * qz + qw * qw)
    if not math.isfinite(norm) or norm < 1e-9:
        raise ConfigError(f'arm_base_to_base quaternion {[qx, qy, qz, qw]} has no orientation')
    qx, qy, qz, qw = qx / norm, qy / norm, qz / norm, qw / norm
    return np.array([
        [1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qz * qw), 2 * (qx * qz + qy * qw), x],
        [2 * (qx * qy + qz * qw), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qx * qw), y],
        [2 * (qx * qz - qy * qw), 2 * (qy * qz + qx * qw), 1 - 2 * (qx * qx + qy * qy), z],
        [0.0, 0.0, 0.0, 1.0],
    ])


def _dh_matrix(theta: float, d: float, a: float, alpha: float) -> npt.NDArray[np.float64]:
    ct, st, ca, sa = math.cos(theta), math.sin(theta), math.cos(alpha), math.sin(alpha)
    return np.array([
        [ct, -st * ca, st * sa, a * ct],
        [st, ct * ca, -ct * sa, a * st],
        [0.0, sa, ca, d],
        [0.0, 0.0, 0.0, 1.0],
    ])


@dataclass(frozen=True)
class ArmChain:
    """A validated kinematic chain: joint names, DH rows, link radii, tool and base pose."""

    joint_names: tuple[str, ...]
    dh: tuple[tuple[float, float, float, float], ...]
    link_radii_m: tuple[float, ...]
    tool_xyz: tuple[float, float, float]
    tool_radius_m: float
    base_pose: tuple[float, ...]

    @classmethod
    def from_settings(cls, joint_names: Sequence[str], dh_flat: Sequence[float],
                      link_radii_m: Sequence[float], tool_xyz: Sequence[float],
                      tool_radius_m: float, base_pose: Sequence[float]) -> ArmChain:
        """Check the flat parameter arrays and build the chain (ConfigError says what is off)."""
        names = tuple(str(n) for n in joint_names)
        if not names:
            raise ConfigError('arm_joint_names is empty: list the joints of the chain from '
                              'the base outwards, as the driver names them in joint_states')
        if len(names) > _MAX_JOINTS:
            raise ConfigError(f'arm_joint_names has {len(names)} joints; at most {_MAX_JOINTS}')
        if len(set(names)) != len(names) or not all(names):
            raise ConfigError(f'arm_joint_names {list(names)} must be distinct, non-empty names')
        flat = [float(v) for v in dh_flat]
        if len(flat) != 4 * len(names):
            raise ConfigError(f'arm_dh has {len(flat)} numbers; give 4 per joint ([d, a, alpha, '
                              f'theta_offset] x {len(names)} = {4 * len(names)})')
        radii = [float(v) for v in link_radii_m]
        if len(radii) != len(names):
            raise ConfigError(f'arm_link_radii has {len(radii)} values; give one per joint '
                              f'({len(names)}), the radius of the link that joint moves')
        tool = [float(v) for v in tool_xyz]
        pose = [float(v) for v in base_pose]
        if len(tool) != 3:
            raise ConfigError(f'arm_tool_xyz {tool} must be [x, y, z] in the flange frame')
        if len(pose) != 7:
            raise ConfigError(f'arm_base_to_base {pose} must be [x, y, z, qx, qy, qz, qw]')
        values = [*flat, *radii, *tool, *pose, float(tool_radius_m)]
        if not all(math.isfinite(v) for v in values):
            raise ConfigError('arm_dh, arm_link_radii, arm_tool_xyz, arm_tool_radius_m and '
                              'arm_base_to_base must be finite numbers')
        if any(r < 0 for r in (*radii, tool_radius_m)):
            raise ConfigError('link and tool radii must be >= 0 m')
        _pose_matrix(pose)   # a zero quaternion is refused here
        rows = tuple((flat[4 * i], flat[4 * i + 1], flat[4 * i + 2], flat[4 * i + 3])
                     for i in range(len(names)))
        return cls(names, rows, tuple(radii), (tool[0], tool[1], tool[2]),
                   float(tool_radius_m), tuple(pose))

    def positions(self, names: Sequence[str], values: Sequence[float]) -> list[float]:
        """Pick the chain's joint positions, in chain order, from a joint state."""
        if len(names) != len(values):
            raise ArmPoseError(f'joint state has {len(names)} names but {len(values)} positions')
        by_name = dict(zip(names, values, strict=True))
        missing = [n for n in self.joint_names if n not in by_name]
        if missing:
            raise ArmPoseError(f'joint state lacks {missing} (has {list(names)[:16]})')
        result = [float(by_name[n]) for n in self.joint_names]
        if not all(math.isfinite(v) for v in result):
            raise ArmPoseError(f'joint state has non-finite positions {result}')
        return result

    def capsules(self, q: Sequence[float]) -> tuple[Capsule, ...]:
        """Place the links and the tool as capsules in the base frame at joint positions ``q``."""
        if len(q) != len(self.dh):
            raise ArmPoseError(f'{len(q)} joint positions for a {len(self.dh)}-joint chain')
        transform = _pose_matrix(self.base_pose)
        origins = [transform[:3, 3].copy()]
        for qi, (d, a, alpha, offset) in zip(q, self.dh, strict=True):
            transform = transform @ _dh_matrix(qi + offset, d, a, alpha)
            origins.append(transform[:3, 3].copy())
        tcp = transform @ np.array([*self.tool_xyz, 1.0])
        capsules = [Capsule(name, _xyz(origins[i]), _xyz(origins[i + 1]), radius)
                    for i, (name, radius) in enumerate(zip(self.joint_names, self.link_radii_m,
                                                            strict=True))]
        capsules.append(Capsule('tool', _xyz(origins[-1]), _xyz(tcp[:3]), self.tool_radius_m))
        return tuple(capsules)


def _xyz(v: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    return float(v[0]), float(v[1]), float(v[2])
