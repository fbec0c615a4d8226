"""From detections, depth and robot speed to an SSM decision. Pure Python, no ROS.

:class:`SafetyPipeline` holds the latest of each input the safety monitor node receives and
turns them into a :class:`~cobot_hybrid_perception.ssm.SafetyMonitor` evaluation:

* person detections (class in ``person_class_ids``, score >= ``min_score``) are placed in the
  robot base frame with aligned depth when a depth image close enough in time exists
  (``localization: auto`` or ``depth``), else on the floor plane (``auto`` or ``floor``);
* a person that cannot be placed (no camera info yet, a foot ray above the horizon, feet cut
  off by the bottom of the image, a depth hole under ``localization: depth``) is put *at the
  TCP*, which stops the robot: an unseen distance is never assumed to be large. (A box cut off
  at the bottom edge would place the feet too far away: the real feet are nearer the camera.)
* without a robot speed, or with one older than ``robot_speed_timeout_s`` (by its message
  stamp when it has one) or stamped that far in the future, the robot is assumed to move at
  ``robot_max_speed_mps`` (the largest S_p);
* the robot is its links as capsules (``robot_geometry: arm``: joint states through the DH
  chain of :mod:`~cobot_hybrid_perception.arm_geometry`) or the fixed point ``tcp_xyz``
  (``robot_geometry: tcp_point``, said so in diagnostics). With the arm, no joint state yet,
  one older than ``robot_pose_timeout_s``, stamped in the future or unreadable stops the robot:
  a stale pose is an unknown pose;
* malformed detections (non-finite boxes or scores) stop the robot until well-formed ones
  arrive and have stayed healthy for ``fault_recovery_s``; so does a detector reporting an
  error.

Every timestamp is in seconds on one clock (the node passes ROS time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy.typing as npt

from cobot_hybrid_perception.approach_speed import ApproachSpeeds
from cobot_hybrid_perception.arm_geometry import ArmChain, ArmPoseError, Capsule, link_speeds
from cobot_hybrid_perception.errors import ConfigError
from cobot_hybrid_perception.localization import (
    CameraModel,
    LocalizationError,
    RigidTransform,
    locate_on_floor,
    locate_with_depth,
)
from cobot_hybrid_perception.ssm import (
    Decision,
    MalformedInputError,
    Perception,
    Person,
    RobotState,
    SafetyMonitor,
    SsmConfig,
)
from cobot_hybrid_protocol.settings import setting

__all__ = ['LOCALIZATION_MODES', 'ROBOT_GEOMETRIES', 'PersonDetection', 'SafetyConfig',
           'SafetyPipeline', 'SafetyReport', 'measured_at', 'speed_from_twist']

LOCALIZATION_MODES = ('auto', 'depth', 'floor')
ROBOT_GEOMETRIES = ('tcp_point', 'arm')
_BORDER_PX = 2.0   # a box bottom this close to the image bottom edge is cut off
# A camera 2 m above the base origin, looking along +x, pitched 35 degrees down
# (optical frame: z forward, x right, y down).
_DEFAULT_CAMERA_TO_BASE = (0.0, 0.0, 2.0, -0.627211, 0.627211, -0.326506, 0.326506)
# A UR5e: Universal Robots' published DH parameters, [d, a, alpha, theta_offset] per joint.
_HALF_PI = math.pi / 2
_UR5E_JOINTS = ('shoulder_pan_joint', 'shoulder_lift_joint', 'elbow_joint', 'wrist_1_joint',
                'wrist_2_joint', 'wrist_3_joint')
_UR5E_DH = (0.1625, 0.0, _HALF_PI, 0.0, 0.0, -0.425, 0.0, 0.0, 0.0, -0.3922, 0.0, 0.0,
            0.1333, 0.0, _HALF_PI, 0.0, 0.0997, 0.0, -_HALF_PI, 0.0, 0.0996, 0.0, 0.0, 0.0)
# Radii cover the joint housings (about 0.15-0.18 m across on a UR5e), not just the tubes.
_UR5E_RADII = (0.09, 0.08, 0.07, 0.06, 0.06, 0.05)
# The DH segments run through the joint axes; ur_description puts the upper arm 0.138 m along
# the shoulder-lift axis (shoulder_offset) and the forearm 0.138 - 0.131 = 0.007 m (less the
# elbow_offset), each in the frame whose z is the axis of the joint that moves it.
_UR5E_OFFSETS = (0.0, 0.0, 0.0, 0.0, 0.0, 0.138, 0.0, 0.0, 0.007, 0.0, 0.0, 0.0,
                 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
# UR's DH base is its `base` frame: ur_description's base_link turned by pi about z.
_UR5E_BASE = (0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class SafetyConfig(SsmConfig):
    """SSM parameters plus how the node turns its inputs into people and a robot state."""

    person_class_ids: tuple[str, ...] = setting(('person',), 'detection class ids that are '
                                                'people', array_type='string', live=True)
    min_score: float = setting(0.3, 'ignore person detections scoring below this', low=0.0,
                               high=1.0, live=True)
    localization: str = setting('auto', 'where people are placed in 3D (auto: depth when '
                                'fresh, else the floor plane)', choices=LOCALIZATION_MODES,
                                live=True)
    camera_to_base: tuple[float, ...] = setting(
        _DEFAULT_CAMERA_TO_BASE, 'camera optical frame pose in the robot base frame [x, y, z, '
        'qx, qy, qz, qw] (floats)', array_type='double', live=True)
    floor_z: float = setting(0.0, 'floor height in the robot base frame', unit='m', low=-10.0,
                             high=10.0, live=True)
    depth_sync_tolerance_s: float = setting(0.05, 'max stamp difference of depth and detections',
                                            unit='s', low=0.001, high=1.0, live=True)
    tcp_xyz: tuple[float, ...] = setting(
        (0.0, 0.0, 0.0), 'point separations are measured to, in the base frame [m] (floats)',
        array_type='double', live=True)
    robot_speed_timeout_s: float = setting(0.5, 'older robot speed (by its stamp, or arrival '
                                           'when unstamped): assume robot_max_speed_mps',
                                           unit='s', low=0.001, high=10.0, live=True)
    robot_geometry: str = setting('tcp_point', 'what separations are measured to: tcp_point '
                                  '(the fixed tcp_xyz) | arm (the links, from joint_states '
                                  'and the arm_* chain)', choices=ROBOT_GEOMETRIES)
    arm_joint_names: tuple[str, ...] = setting(
        _UR5E_JOINTS, 'joints of the chain from the base outwards, as in joint_states '
        '(default: a UR5e)', array_type='string')
    arm_dh: tuple[float, ...] = setting(
        _UR5E_DH, 'standard DH rows [d, a, alpha, theta_offset] per joint, flattened [m, rad] '
        '(default: a UR5e)', array_type='double')
    arm_link_radii: tuple[float, ...] = setting(
        _UR5E_RADII, 'capsule radius of the link each joint moves [m] (one per joint)',
        array_type='double')
    arm_link_offsets: tuple[float, ...] = setting(
        _UR5E_OFFSETS, 'each link off its DH segment [x, y, z] per joint, in the frame of the '
        'joint that moves it (z: its axis) [m] (default: a UR5e)', array_type='double')
    arm_tool_xyz: tuple[float, ...] = setting(
        (0.0, 0.0, 0.0), 'TCP in the last joint frame (the flange) [m]; the tool is a capsule '
        'from the flange to it', array_type='double')
    arm_tool_radius_m: float = setting(0.05, 'capsule radius of the tool', unit='m', low=0.0,
                                       high=2.0)
    arm_base_to_base: tuple[float, ...] = setting(
        _UR5E_BASE, "the chain's base (DH frame 0) in the robot base frame [x, y, z, qx, qy, qz, "
        'qw] (default: a UR, base_link -> base)', array_type='double')
    robot_pose_timeout_s: float = setting(0.2, 'older joint states (by stamp, or arrival when '
                                          'unstamped): protective stop', unit='s', low=0.001,
                                          high=10.0, live=True)
    evaluation_period_s: float = setting(0.05, 'watchdog timer period', unit='s', low=0.001,
                                         high=1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        # ROS hands arrays over as lists or array.array; keep the config hashable and frozen.
        object.__setattr__(self, 'person_class_ids', tuple(str(v) for v in self.person_class_ids))
        for name in ('camera_to_base', 'tcp_xyz', 'arm_dh', 'arm_link_radii', 'arm_tool_xyz',
                     'arm_base_to_base', 'arm_link_offsets'):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        object.__setattr__(self, 'arm_joint_names', tuple(str(v) for v in self.arm_joint_names))
        if not self.person_class_ids:
            raise ConfigError('person_class_ids is empty; list the class ids of people '
                              '(e.g. ["person"] or ["0"])')
        if not 0.0 <= self.min_score <= 1.0:
            raise ConfigError(f'min_score {self.min_score} outside 0..1')
        if self.localization not in LOCALIZATION_MODES:
            raise ConfigError(f'localization {self.localization!r}: use one of '
                              f'{", ".join(LOCALIZATION_MODES)}')
        try:
            RigidTransform.from_xyz_quat(self.camera_to_base)
        except LocalizationError as exc:
            raise ConfigError(f'camera_to_base: {exc}') from None
        if len(self.tcp_xyz) != 3 or not all(math.isfinite(v) for v in self.tcp_xyz):
            raise ConfigError(f'tcp_xyz {list(self.tcp_xyz)} must be three finite numbers [m]')
        if self.robot_geometry not in ROBOT_GEOMETRIES:
            raise ConfigError(f'robot_geometry {self.robot_geometry!r}: use one of '
                              f'{", ".join(ROBOT_GEOMETRIES)}')
        if self.robot_geometry == 'arm':
            self.arm_chain()   # the chain's own checks, with the parameter named
        for name in ('depth_sync_tolerance_s', 'robot_speed_timeout_s', 'evaluation_period_s',
                     'robot_pose_timeout_s'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f'{name} = {value} must be a finite number > 0')
        if self.evaluation_period_s >= self.max_perception_age_s:
            raise ConfigError(f'evaluation_period_s {self.evaluation_period_s} must be shorter '
                              f'than max_perception_age_s {self.max_perception_age_s}, or the '
                              'watchdog fires late')

    def arm_chain(self) -> ArmChain:
        """Build the arm_* settings into a validated chain (ConfigError names what is wrong)."""
        return ArmChain.from_settings(self.arm_joint_names, self.arm_dh, self.arm_link_radii,
                                      self.arm_tool_xyz, self.arm_tool_radius_m,
                                      self.arm_base_to_base, self.arm_link_offsets)


@dataclass(frozen=True)
class PersonDetection:
    """One detection as the node read it (pixels of the detection image)."""

    class_id: str
    score: float
    bbox_xyxy: tuple[float, float, float, float]
    keypoints: npt.NDArray[Any] | None = None   # (K, 3): x, y, confidence
    label: str = ''


@dataclass(frozen=True)
class SafetyReport:
    """A decision with the context the node reports in diagnostics and markers."""

    decision: Decision
    people: tuple[Person, ...]
    robot: RobotState
    robot_speed_measured: bool
    perception_age_s: float
    methods: tuple[str, ...]
    geometry: str = ''   # what separations were measured to, for diagnostics
    approach_mps: tuple[tuple[str, float], ...] = ()   # tracked people closing in [m/s]
    human_speed_mps: float = 1.6   # the ISO speed beyond the near zone it is compared with


def measured_at(stamp_s: float | None, arrival_s: float) -> float:
    """When an input was measured: its stamp, never later than its arrival.

    ``None`` (a zero stamp: none given) is the arrival time; a stamp in the future (a robot PC
    clock ahead of ours) counts as arriving now, so it cannot stretch a freshness window.
    """
    return arrival_s if stamp_s is None else min(stamp_s, arrival_s)


def speed_from_twist(linear_xyz: Sequence[float]) -> float:
    """TCP speed [m/s] from a twist's linear part."""
    return math.sqrt(sum(float(v) * float(v) for v in linear_xyz))


@dataclass
class _Depth:
    stamp_s: float
    image: npt.NDArray[Any]
    unit_m: float


@dataclass
class _Pose:
    stamp_s: float
    links: tuple[Capsule, ...]


@dataclass
class SafetyPipeline:
    """Latest inputs of the safety monitor and the monitor itself."""

    cfg: SafetyConfig = field(default_factory=SafetyConfig)
    monitor: SafetyMonitor = field(init=False)
    _camera: CameraModel | None = None
    _image_height: int = 0
    _camera_to_base: RigidTransform = field(init=False)
    _depth: _Depth | None = None
    _perception: Perception | None = None
    _methods: tuple[str, ...] = ()
    _speed: tuple[float, float] | None = None     # (stamp_s, m/s)
    _healthy: bool = True
    _input_fault: str | None = None
    _chain: ArmChain | None = None
    _pose: _Pose | None = None
    _pose_fault: str | None = None
    ignored_joint_states: int = 0                 # joint states naming none of the chain
    _approach: ApproachSpeeds = field(default_factory=ApproachSpeeds)
    _approach_now: tuple[tuple[str, float], ...] = ()
    _approach_stamp: float | None = None

    def __post_init__(self) -> None:
        self.monitor = SafetyMonitor(self.cfg)
        self.reconfigure(self.cfg)

    def reconfigure(self, cfg: SafetyConfig) -> None:
        """Apply new parameters; the monitor keeps its state (a stop stays a stop)."""
        self.cfg = cfg
        self.monitor.cfg = cfg
        self._camera_to_base = RigidTransform.from_xyz_quat(cfg.camera_to_base)
        chain = cfg.arm_chain() if cfg.robot_geometry == 'arm' else None
        if chain != self._chain:
            # The arm_* settings are read-only (a node takes them at configure); a pipeline
            # handed another chain forgets the old pose rather than mix the two.
            self._chain, self._pose, self._pose_fault = chain, None, None

    def on_camera_info(self, k: Sequence[float], height: int) -> None:
        """Take the detection image's intrinsics (LocalizationError when uncalibrated)."""
        self._camera = CameraModel.from_k(k)
        self._image_height = int(height)

    def on_depth(self, stamp_s: float, image: npt.NDArray[Any], unit_m: float) -> None:
        """Take an aligned depth image; ``image * unit_m`` is metres."""
        self._depth = _Depth(stamp_s, image, unit_m)

    def on_robot_speed(self, stamp_s: float, speed_mps: float) -> None:
        """Take the TCP's measured speed (a negative or non-finite one is malformed input).

        ``stamp_s`` is the message's stamp, or its arrival time when it carries none.
        """
        if not math.isfinite(speed_mps) or speed_mps < 0 or not math.isfinite(stamp_s):
            self._input_fault = f'malformed input: robot speed {speed_mps} m/s at {stamp_s}'
            return
        self._speed = (stamp_s, speed_mps)

    def on_joint_state(self, stamp_s: float, names: Sequence[str],
                       positions: Sequence[float]) -> None:
        """Take the arm's joint state (ignored with ``robot_geometry: tcp_point``).

        One that names none of the chain's joints (a gripper's own ``joint_states``) is
        ignored and counted. One that names some but cannot give the pose (a chain joint
        missing, a joint twice, a non-finite position or stamp, more than
        ``MAX_JOINT_STATE`` names) stops the robot until a readable one arrives. ``stamp_s``
        is the stamp, or the arrival time. Each link's speed comes from its travel since the
        previous pose.
        """
        chain = self._chain
        if chain is None:
            return
        if not chain.mentions(names):
            self.ignored_joint_states += 1
            return
        try:
            if not math.isfinite(stamp_s):
                raise ArmPoseError(f'joint state stamp {stamp_s} is not a time')
            links = chain.capsules(chain.positions(names, positions))
        except ArmPoseError as exc:
            self._pose_fault = f'malformed input: {exc}'
            return
        before = self._pose
        if before is not None:
            dt = stamp_s - before.stamp_s
            links = (link_speeds(links, before.links, dt) if dt > 0 else
                     tuple(replace(c, speed_mps=p.speed_mps)
                           for c, p in zip(links, before.links, strict=True)))
        self._pose_fault = None
        self._pose = _Pose(stamp_s, links)

    def on_detector_health(self, healthy: bool) -> None:
        """Take whether the detector reports itself healthy (from its diagnostics)."""
        self._healthy = healthy

    def on_detections(self, stamp_s: float, detections: Sequence[PersonDetection]) -> None:
        """Take the detections of one frame (an empty list: nobody in it)."""
        try:
            people, methods = self._locate_all(stamp_s, detections)
        except MalformedInputError as exc:
            self._input_fault = f'malformed input: {exc}'
            self._perception = None
            return
        self._input_fault = None
        self._perception = Perception(stamp_s, people, healthy=True)
        self._methods = methods

    def evaluate(self, now_s: float) -> SafetyReport:
        """Decide at ``now_s``; call on every input and on a timer."""
        robot, measured = self._robot_state(now_s)
        perception = self._perception
        if perception is not None and not self._healthy:
            perception = Perception(perception.stamp_s, perception.people, healthy=False)
        pose_problem = None if self._input_fault else self._pose_problem(now_s)
        if self._input_fault is not None:
            decision = self.monitor.fault(self._input_fault, 'malformed_input')
        elif pose_problem is not None:
            decision = self.monitor.fault(pose_problem, 'robot_pose')
        else:
            decision = self.monitor.evaluate(now_s, perception, robot)
        age = math.inf if self._perception is None else now_s - self._perception.stamp_s
        people = tuple(self._perception.people) if self._perception is not None else ()
        self._update_approach(robot)
        return SafetyReport(decision, people, robot, measured, age, self._methods,
                            self._geometry(now_s), self._approach_now,
                            self.cfg.human_speed_far_mps)

    def _update_approach(self, robot: RobotState) -> None:
        """Once per new frame: each tracked person's approach speed (diagnostics only)."""
        perception = self._perception
        if perception is None or perception.stamp_s == self._approach_stamp:
            return
        self._approach_stamp = perception.stamp_s
        separations = {p.label: robot.separation(p)[0] for p in perception.people
                       if not p.unlocated}
        speeds = self._approach.update(perception.stamp_s, separations)
        self._approach_now = tuple(sorted(speeds.items(), key=lambda kv: -kv[1]))

    def fault(self, reason: str) -> SafetyReport:
        """Protective stop for a reason found outside the core (an exception in a callback)."""
        robot = self._pose_state(self.cfg.robot_max_speed_mps)
        return SafetyReport(self.monitor.fault(reason), (), robot, False, math.inf, (),
                            'unknown (fault)')

    def _pose_problem(self, now_s: float) -> str | None:
        """Why the arm's pose cannot be used now, or None (always None for tcp_point)."""
        if self._chain is None:
            return None
        if self._pose_fault is not None:
            return self._pose_fault
        if self._pose is None:
            return 'no robot pose yet: waiting for joint_states (robot_geometry: arm)'
        age = now_s - self._pose.stamp_s
        limit = self.cfg.robot_pose_timeout_s
        if age > limit:
            return f'robot pose stale: joint_states {age:.3f} s old (max {limit:.3f} s)'
        if age < -limit:
            return f'robot pose stamped {-age:.3f} s in the future (clocks disagree)'
        return None

    def _geometry(self, now_s: float) -> str:
        if self._chain is None:
            return f'tcp_point {list(self.cfg.tcp_xyz)} (configured; no arm geometry)'
        if self._pose is None:
            return f'arm, {len(self._chain.joint_names)} joints, no pose yet'
        return (f'arm, {len(self._pose.links)} capsules, pose age '
                f'{now_s - self._pose.stamp_s:.3f} s')

    def _pose_state(self, speed_mps: float) -> RobotState:
        """Return the robot at ``speed_mps``: its links when known, else the TCP point."""
        if self._chain is not None and self._pose is not None:
            x, y, z = self._pose.links[-1].b   # the tool capsule ends at the TCP
            return RobotState(x, y, z, speed_mps, self._pose.links)
        x, y, z = self.cfg.tcp_xyz
        return RobotState(x, y, z, speed_mps)

    def _robot_state(self, now_s: float) -> tuple[RobotState, bool]:
        limit = self.cfg.robot_speed_timeout_s
        if self._speed is not None and -limit <= now_s - self._speed[0] <= limit:
            return self._pose_state(self._speed[1]), True
        return self._pose_state(self.cfg.robot_max_speed_mps), False

    def _locate_all(self, stamp_s: float, detections: Sequence[PersonDetection]
                    ) -> tuple[tuple[Person, ...], tuple[str, ...]]:
        people: list[Person] = []
        methods: list[str] = []
        for index, det in enumerate(detections):
            label = det.label or f'person-{index}'
            values = (det.score, *det.bbox_xyxy)
            if len(det.bbox_xyxy) != 4 or not all(math.isfinite(v) for v in values):
                raise MalformedInputError(f'detection {label!r} has non-finite score or box '
                                          f'{list(values)}')
            if det.class_id not in self.cfg.person_class_ids or det.score < self.cfg.min_score:
                continue
            person, method = self._locate(stamp_s, det, label)
            people.append(person)
            methods.append(method)
        return tuple(people), tuple(methods)

    def _locate(self, stamp_s: float, det: PersonDetection, label: str) -> tuple[Person, str]:
        cfg = self.cfg
        try:
            if self._camera is None:
                raise LocalizationError('no camera_info received yet')
            depth = self._depth
            depth_fresh = (depth is not None
                           and abs(depth.stamp_s - stamp_s) <= cfg.depth_sync_tolerance_s)
            if cfg.localization == 'depth' or (cfg.localization == 'auto' and depth_fresh):
                if depth is None or not depth_fresh:
                    raise LocalizationError('no depth image within '
                                            f'{cfg.depth_sync_tolerance_s} s of the detections')
                located = locate_with_depth(det.bbox_xyxy, depth.image, depth.unit_m,
                                            self._camera, self._camera_to_base, det.keypoints)
            else:
                self._check_feet_visible(det)
                located = locate_on_floor(det.bbox_xyxy, self._camera, self._camera_to_base,
                                          cfg.floor_z, det.keypoints)
        except LocalizationError as exc:
            # Fail safe: a person we cannot place is treated as touching the robot.
            x, y, z = cfg.tcp_xyz
            return Person(x, y, z, 0.0, f'{label} (unlocated: {exc})', unlocated=True), \
                'unlocated'
        x, y, z = located.xyz
        return Person(x, y, z, located.uncertainty_m, label), located.method

    def _check_feet_visible(self, det: PersonDetection) -> None:
        ankles_seen = det.keypoints is not None and len(det.keypoints) > 16 and bool(
            (det.keypoints[15:17, 2] >= 0.5).any())
        if (not ankles_seen and self._image_height > 0
                and det.bbox_xyxy[3] >= self._image_height - _BORDER_PX):
            raise LocalizationError('feet cut off by the bottom of the image: the person is '
                                    'nearer than the floor method can tell')

