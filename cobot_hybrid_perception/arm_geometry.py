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

__all__ = ['MAX_JOINT_STATE', 'ArmChain', 'ArmPoseError', 'Capsule', 'horizontal_separation',
           'link_speeds']

_MAX_JOINTS = 16
#: A joint state naming more joints than this is refused before it is read (a whole robot's
#: joint_states has a few dozen; a hostile one could hold millions and stall the monitor).
MAX_JOINT_STATE = 64
_MAX_LENGTH_M = 5.0       # |d|, |a| of a DH row
_MAX_ANGLE_RAD = 4 * math.pi
_MAX_RADIUS_M = 1.0
_MAX_OFFSET_M = 1.0       # a link's offset from its DH segment, the tool's from the flange
_MAX_BASE_M = 100.0


class ArmPoseError(PerceptionError, ValueError):
    """A joint state that cannot give the arm's pose (a joint missing, a non-finite value)."""


@dataclass(frozen=True)
class Capsule:
    """A link: the segment ``a``-``b`` in the base frame [m] and its radius [m]."""

    name: str
    a: tuple[float, float, float]
    b: tuple[float, float, float]
    radius_m: float
    speed_mps: float = 0.0   # the faster end's speed, from the last two poses


def link_speeds(now: Sequence[Capsule], before: Sequence[Capsule], dt_s: float
                ) -> tuple[Capsule, ...]:
    """Return ``now`` with each capsule's speed: its faster end's travel since ``before``."""
    if dt_s <= 0 or len(now) != len(before):
        return tuple(now)
    return tuple(Capsule(c.name, c.a, c.b, c.radius_m,
                         max(math.dist(c.a, p.a), math.dist(c.b, p.b)) / dt_s)
                 for c, p in zip(now, before, strict=True))


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


def _rotate(m: Affine, v: Sequence[float]) -> tuple[float, float, float]:
    x, y, z = v
    return (m[0] * x + m[1] * y + m[2] * z, m[4] * x + m[5] * y + m[6] * z,
            m[8] * x + m[9] * y + m[10] * z)


def _add(p: Sequence[float], v: Sequence[float]) -> tuple[float, float, float]:
    return p[0] + v[0], p[1] + v[1], p[2] + v[2]


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
    link_offsets: tuple[tuple[float, float, float], ...] = ()

    @classmethod
    def from_settings(cls, joint_names: Sequence[str], dh_flat: Sequence[float],
                      link_radii_m: Sequence[float], tool_xyz: Sequence[float],
                      tool_radius_m: float, base_pose: Sequence[float],
                      link_offsets: Sequence[float] = ()) -> ArmChain:
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
        offsets = [float(v) for v in link_offsets] or [0.0] * (3 * len(names))
        if len(offsets) != 3 * len(names):
            raise ConfigError(f'arm_link_offsets has {len(offsets)} numbers; give 3 per joint '
                              f'([x, y, z] x {len(names)} = {3 * len(names)})')
        values = [*flat, *radii, *tool, *pose, *offsets, float(tool_radius_m)]
        if not all(math.isfinite(v) for v in values):
            raise ConfigError('arm_dh, arm_link_radii, arm_link_offsets, arm_tool_xyz, '
                              'arm_tool_radius_m and arm_base_to_base must be finite numbers')
        if any(r < 0 for r in (*radii, tool_radius_m)):
            raise ConfigError('link and tool radii must be >= 0 m')
        limits = (('arm_dh d and a', [v for i, v in enumerate(flat) if i % 4 in (0, 1)],
                   _MAX_LENGTH_M),
                  ('arm_dh alpha and theta_offset',
                   [v for i, v in enumerate(flat) if i % 4 in (2, 3)], _MAX_ANGLE_RAD),
                  ('arm_link_radii and arm_tool_radius_m', [*radii, float(tool_radius_m)],
                   _MAX_RADIUS_M),
                  ('arm_link_offsets and arm_tool_xyz', [*offsets, *tool], _MAX_OFFSET_M),
                  ('arm_base_to_base x, y, z', pose[:3], _MAX_BASE_M))
        for what, numbers, bound in limits:
            if any(abs(v) > bound for v in numbers):
                raise ConfigError(f'{what} must be within +-{bound:g} (m or rad); got '
                                  f'{max(numbers, key=abs)}: a cobot is not that large')
        _pose_matrix(pose)   # a zero quaternion is refused here
        rows = tuple((flat[4 * i], flat[4 * i + 1], flat[4 * i + 2], flat[4 * i + 3])
                     for i in range(len(names)))
        return cls(names, rows, tuple(radii), (tool[0], tool[1], tool[2]),
                   float(tool_radius_m), tuple(pose),
                   tuple((offsets[3 * i], offsets[3 * i + 1], offsets[3 * i + 2])
                         for i in range(len(names))))

    def mentions(self, names: Sequence[str]) -> bool:
        """Return whether a joint state names any joint of the chain (else it is another's)."""
        if len(names) > MAX_JOINT_STATE:
            return True   # too big to search: positions() refuses it with the reason
        return not set(self.joint_names).isdisjoint(names)

    def positions(self, names: Sequence[str], values: Sequence[float]) -> list[float]:
        """Pick the chain's joint positions, in chain order, from a joint state."""
        if len(names) > MAX_JOINT_STATE:
            raise ArmPoseError(f'joint state names {len(names)} joints (at most '
                               f'{MAX_JOINT_STATE} are read)')
        if len(names) != len(values):
            raise ArmPoseError(f'joint state has {len(names)} names but {len(values)} positions')
        if len(set(names)) != len(names):
            raise ArmPoseError(f'joint state names a joint twice: {list(names)}')
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
        frames = [transform]
        for qi, (d, a, alpha, offset) in zip(q, self.dh, strict=True):
            transform = _compose(transform, _dh_matrix(qi + offset, d, a, alpha))
            frames.append(transform)
        tcp = _apply(transform, self.tool_xyz)
        offsets = self.link_offsets or ((0.0, 0.0, 0.0),) * len(self.dh)
        capsules = []
        for i, (name, radius) in enumerate(zip(self.joint_names, self.link_radii_m,
                                               strict=True)):
            # The link joint i moves runs from frame i to frame i + 1, shifted by its offset
            # in frame i (whose z is that joint's axis: a UR's upper arm sits 0.138 m along it).
            shift = _rotate(frames[i], offsets[i])
            start, end = _origin(frames[i]), _origin(frames[i + 1])
            capsules.append(Capsule(name, _add(start, shift), _add(end, shift), radius))
        capsules.append(Capsule('tool', _origin(frames[-1]), tcp, self.tool_radius_m))
        return tuple(capsules)

