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


# A rigid transform as 12 floats: the rotation's rows, each followed by its translation part
# (r00 r01 r02 tx  r10 r11 r12 ty  r20 r21 r22 tz). Plain floats: for a 6-joint chain at the
# monitor's rate numpy's per-call overhead on 4x4 arrays costs more than the arithmetic.
Affine = tuple[float, float, float, float, float, float, float, float, float, float, float,
               float]


def _pose_matrix(xyz_quat: Sequence[float]) -> Affine:
    x, y, z, qx, qy, qz, qw = (float(v) for v in xyz_quat)
    norm = math.sqrt(qx * qx + qy * qy + qz * qz + qw * qw)
    if not math.isfinite(norm) or norm < 1e-9:
        raise ConfigError(f'arm_base_to_base quaternion {[qx, qy, qz, qw]} has no orientation')
    qx, qy, qz, qw = qx / norm, qy / norm, qz / norm, qw / norm
    return (1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qz * qw), 2 * (qx * qz + qy * qw), x,
            2 * (qx * qy + qz * qw), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qx * qw), y,
            2 * (qx * qz - qy * qw), 2 * (qy * qz + qx * qw), 1 - 2 * (qx * qx + qy * qy), z)


def _compose(m: Affine, n: Affine) -> Affine:
    """Return ``m . n`` (apply n, then m)."""
    out: list[float] = []
    for row in range(3):
        a0, a1, a2, a3 = m[4 * row:4 * row + 4]
        out += [a0 * n[0] + a1 * n[4] + a2 * n[8],
                a0 * n[1] + a1 * n[5] + a2 * n[9],
                a0 * n[2] + a1 * n[6] + a2 * n[10],
                a0 * n[3] + a1 * n[7] + a2 * n[11] + a3]
    return tuple(out)   # type: ignore[return-value]


def _dh_matrix(theta: float, d: float, a: float, alpha: float) -> Affine:
    ct, st, ca, sa = math.cos(theta), math.sin(theta), math.cos(alpha), math.sin(alpha)
    return (ct, -st * ca, st * sa, a * ct,
            st, ct * ca, -ct * sa, a * st,
            0.0, sa, ca, d)


def _origin(m: Affine) -> tuple[float, float, float]:
    return m[3], m[7], m[11]


def _apply(m: Affine, p: Sequence[float]) -> tuple[float, float, float]:
    x, y, z = p
    return (m[0] * x + m[1] * y + m[2] * z + m[3], m[4] * x + m[5] * y + m[6] * z + m[7],
            m[8] * x + m[9] * y + m[10] * z + m[11])


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
        origins = [_origin(transform)]
        for qi, (d, a, alpha, offset) in zip(q, self.dh, strict=True):
            transform = _compose(transform, _dh_matrix(qi + offset, d, a, alpha))
            origins.append(_origin(transform))
        tcp = _apply(transform, self.tool_xyz)
        capsules = [Capsule(name, origins[i], origins[i + 1], radius)
                    for i, (name, radius) in enumerate(zip(self.joint_names, self.link_radii_m,
                                                            strict=True))]
        capsules.append(Capsule('tool', origins[-1], tcp, self.tool_radius_m))
        return tuple(capsules)

