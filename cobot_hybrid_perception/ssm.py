"""ISO/TS 15066 speed-and-separation monitoring (SSM) that fails safe. Pure Python, no ROS.

Protective separation distance (ISO/TS 15066 clause 5.5.4, human speeds from ISO 13855)::

    S_p = S_h + S_r + S_s + C + Z_d + Z_r
    S_h = v_h * (A + T_R + T_S)  human travel since the detections were taken (their age A,
                               at most ``max_perception_age_s``; a stamp in the future counts
                               as that oldest age) and while the robot reacts and stops
    S_r = v_r * T_R            robot travel during its reaction time
    S_s = v_r * T_S / 2        robot travel while braking (constant deceleration), or a fixed
                               stopping distance from the robot's data sheet
    v_h = 2.0 m/s within 0.5 m of the robot, 1.6 m/s beyond

People are treated as vertical columns: their separation from the robot is the horizontal
(x, y) distance in the robot base frame between the person's point and the nearest part of
the robot: its links as capsules when the arm's pose is known
(:mod:`~cobot_hybrid_perception.arm_geometry`), else the TCP point. The person's own position
uncertainty raises Z_d. A person the node could not place (``unlocated``) is at separation 0.

Decision, for the worst person:

* ``PROTECTIVE_STOP`` when the separation is below S_p at the robot's *measured* speed (the
  ISO check), or no speed at all would be safe;
* else the allowed speed v_allowed solves ``separation = S_p(v_allowed)``; the speed scale is
  ``min(1, v_allowed / robot_max_speed)`` (``SLOW`` below 1, ``RUN`` at 1). It depends on the
  separation only, so slowing down does not feed back into speeding up.

Scale drops take effect at once. Raising it needs the raise to hold for ``hold_time_s`` with
the separation shortened by ``hysteresis_m``, so a person standing on a boundary cannot make it
oscillate. Stale or missing perception, an unhealthy detector, a clock jump or malformed input
stops the robot; leaving a stop caused by such a fault needs fresh, healthy perception for
``fault_recovery_s``.

This is an advisory monitor for speed scaling; it does not replace certified safety hardware.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from cobot_hybrid_perception.arm_geometry import Capsule, horizontal_separation
from cobot_hybrid_perception.errors import ConfigError, PerceptionError
from cobot_hybrid_protocol.settings import check_settings, setting

__all__ = [
    'Decision',
    'MalformedInputError',
    'Perception',
    'Person',
    'RobotState',
    'SafetyMonitor',
    'SafetyState',
    'SsmConfig',
    'allowed_speed',
    'protective_separation',
]


class MalformedInputError(PerceptionError, ValueError):
    """A person, robot state or timestamp handed to the monitor is not usable."""


class SafetyState(str, Enum):
    """Outcome of one evaluation, from most to least permissive."""

    RUN = 'RUN'
    SLOW = 'SLOW'
    PROTECTIVE_STOP = 'PROTECTIVE_STOP'


@dataclass(frozen=True)
class SsmConfig:
    """SSM parameters (SI units). Defaults suit a small cobot and a 30 Hz camera."""

    reaction_time_s: float = setting(0.1, "T_R: the robot's reaction to a new speed scale "
                                     '(driver + controller); the age of the detections is '
                                     'added to it as measured', unit='s',
                                     low=0.001, high=5.0, live=True)
    stopping_time_s: float = setting(0.3, 'T_S: robot stopping time from speed', unit='s',
                                     low=0.001, high=5.0, live=True)
    stopping_distance_m: float = setting(-1.0,
                                         'S_s from the data sheet [m]; < 0 derives v_r*T_S/2',
                                         low=-1.0, high=5.0, live=True)
    intrusion_distance_m: float = setting(0.2, 'C: reach beyond the detected point', unit='m',
                                          low=0.0, high=2.0, live=True)
    detection_uncertainty_m: float = setting(0.1, 'Z_d: minimum position uncertainty', unit='m',
                                             low=0.0, high=2.0, live=True)
    robot_uncertainty_m: float = setting(0.02, 'Z_r: robot position uncertainty', unit='m',
                                         low=0.0, high=1.0, live=True)
    human_speed_near_mps: float = setting(2.0,
                                          'human speed within near_distance_m (ISO 13855: 2.0)',
                                          low=0.1, high=5.0, live=True)
    human_speed_far_mps: float = setting(1.6,
                                         'human speed beyond near_distance_m (ISO 13855: 1.6)',
                                         low=0.1, high=5.0, live=True)
    near_distance_m: float = setting(0.5, 'separation below which the near human speed applies',
                                     unit='m', low=0.0, high=5.0, live=True)
    robot_max_speed_mps: float = setting(1.0, 'TCP speed at speed scale 1.0', unit='m/s', low=0.01,
                                         high=10.0, live=True)
    hysteresis_m: float = setting(0.1, 'separation margin required before speeding up', unit='m',
                                  low=0.0, high=2.0, live=True)
    hold_time_s: float = setting(0.5, 'a speed-up must hold this long', unit='s', low=0.0,
                                 high=10.0, live=True)
    max_perception_age_s: float = setting(0.2, 'older detections: protective stop', unit='s',
                                          low=0.01, high=5.0, live=True)
    fault_recovery_s: float = setting(1.0, 'fresh healthy perception needed after a fault',
                                      unit='s', low=0.0, high=60.0, live=True)
    max_clock_step_s: float = setting(1.0, 'larger clock jumps between evaluations: a fault',
                                      unit='s', low=0.01, high=60.0, live=True)

    def __post_init__(self) -> None:
        check_settings(self, ConfigError)
        positive = ('reaction_time_s', 'stopping_time_s', 'human_speed_near_mps',
                    'human_speed_far_mps', 'robot_max_speed_mps', 'max_perception_age_s',
                    'max_clock_step_s')
        non_negative = ('intrusion_distance_m', 'detection_uncertainty_m',
                        'robot_uncertainty_m', 'near_distance_m', 'hysteresis_m',
                        'hold_time_s', 'fault_recovery_s')
        for name in positive + non_negative:
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ConfigError(f'{name} = {value} is not a finite number')
            if name in positive and value <= 0:
                raise ConfigError(f'{name} = {value} must be > 0')
            if name in non_negative and value < 0:
                raise ConfigError(f'{name} = {value} must be >= 0')
        if not math.isfinite(self.stopping_distance_m):
            raise ConfigError('stopping_distance_m must be finite (< 0 derives it)')
        if self.human_speed_near_mps < self.human_speed_far_mps:
            raise ConfigError('human_speed_near_mps must be >= human_speed_far_mps (ISO 13855 '
                              'uses 2.0 m/s near, 1.6 m/s far)')


@dataclass(frozen=True)
class Person:
    """A person's point in the robot base frame [m] and its 1-sigma uncertainty [m]."""

    x: float
    y: float
    z: float = 0.0
    uncertainty_m: float = 0.0
    label: str = ''
    unlocated: bool = False   # seen but not placed: treated as touching the robot


@dataclass(frozen=True)
class RobotState:
    """TCP position in the base frame [m], its measured speed [m/s] and the arm's links.

    With ``links`` empty the robot is the TCP point; else separations are measured to the
    nearest capsule (the TCP is the end of the last one).
    """

    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    speed_mps: float = 0.0
    links: tuple[Capsule, ...] = ()

    def separation(self, person: Person) -> tuple[float, str]:
        """Horizontal separation [m] of ``person`` from the robot and the part it is nearest."""
        if person.unlocated:
            return 0.0, 'unlocated'
        if not self.links:
            return math.hypot(person.x - self.x, person.y - self.y), 'tcp'
        distance, index = min((horizontal_separation(person.x, person.y, c), i)
                              for i, c in enumerate(self.links))
        return distance, self.links[index].name

    @property
    def fastest_mps(self) -> float:
        """The speed S_p is computed with: the TCP's, or a link's when one moves faster.

        An elbow can swing faster than the TCP moves (a folded arm turning at the shoulder);
        any part of the arm may be the one that closes in, so the fastest counts.
        """
        return max([self.speed_mps, *(link.speed_mps for link in self.links)])


@dataclass(frozen=True)
class Perception:
    """The latest perception result: when it was taken, whether its source is healthy."""

    stamp_s: float
    people: Sequence[Person] = ()
    healthy: bool = True


@dataclass(frozen=True)
class Decision:
    """What the monitor decided and why."""

    state: SafetyState
    speed_scale: float
    reason: str
    closest_distance_m: float = math.inf
    required_separation_m: float = 0.0
    allowed_speed_mps: float = 0.0
    closest_part: str = ''   # the link (or 'tcp') nearest the closest person
    #: Why, as one of :data:`CAUSES` (what stop time is counted under).
    cause: str = 'clear'
    #: For ``recovering`` and ``holding``: the fault the robot is coming back from ('' none).
    after: str = ''


#: What a decision is down to: ``clear`` (RUN), ``person`` (a person's separation slows or
#: stops the robot), ``holding`` (nobody in range, the speed held for ``hold_time_s`` before it
#: rises), ``recovering`` (fresh perception not yet long enough after a fault),
#: ``stale_perception``, ``no_perception``, ``detector_unhealthy``, ``clock``,
#: ``malformed_input``, ``robot_pose`` and ``fault`` (stopped from outside the monitor).
CAUSES = ('clear', 'person', 'holding', 'recovering', 'stale_perception', 'no_perception',
          'detector_unhealthy', 'clock', 'malformed_input', 'robot_pose', 'fault')


def _human_speed(separation_m: float, cfg: SsmConfig) -> float:
    if separation_m <= cfg.near_distance_m:
        return cfg.human_speed_near_mps
    return cfg.human_speed_far_mps


def _static_terms(separation_m: float, uncertainty_m: float, cfg: SsmConfig,
                  perception_age_s: float = 0.0) -> float:
    """S_h + C + Z_d + Z_r: the part of S_p that does not depend on robot speed.

    S_h is the human's travel over the age of the detections (the person was seen that long
    ago) plus T_R + T_S: an older detection needs a larger separation.
    """
    s_h = _human_speed(separation_m, cfg) * (max(0.0, perception_age_s) + cfg.reaction_time_s
                                             + cfg.stopping_time_s)
    z_d = max(cfg.detection_uncertainty_m, uncertainty_m)
    return s_h + cfg.intrusion_distance_m + z_d + cfg.robot_uncertainty_m


def protective_separation(separation_m: float, robot_speed_mps: float, cfg: SsmConfig,
                          uncertainty_m: float = 0.0, perception_age_s: float = 0.0) -> float:
    """S_p for a person at ``separation_m`` and a robot moving at ``robot_speed_mps``.

    ``perception_age_s``: how long ago the person was seen there.
    """
    s_r = robot_speed_mps * cfg.reaction_time_s
    if cfg.stopping_distance_m >= 0:
        s_s = cfg.stopping_distance_m
    else:
        s_s = robot_speed_mps * cfg.stopping_time_s / 2.0
    return _static_terms(separation_m, uncertainty_m, cfg, perception_age_s) + s_r + s_s


def allowed_speed(separation_m: float, cfg: SsmConfig, uncertainty_m: float = 0.0,
                  perception_age_s: float = 0.0) -> float:
    """Largest robot speed v with separation >= S_p(v); 0 if even a still robot is too close."""
    budget = separation_m - _static_terms(separation_m, uncertainty_m, cfg, perception_age_s)
    if cfg.stopping_distance_m >= 0:
        budget -= cfg.stopping_distance_m
        per_mps = cfg.reaction_time_s
    else:
        per_mps = cfg.reaction_time_s + cfg.stopping_time_s / 2.0
    return max(0.0, budget / per_mps)


def _from(part: str) -> str:
    """' from <link>' for a reason text; nothing for the TCP point (the classic case)."""
    return f' from {part}' if part not in ('', 'tcp') else ''


def _check_finite(label: str, *values: float) -> None:
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise MalformedInputError(f'{label} has non-finite values {values}')


@dataclass
class _Hold:
    target: float = 0.0
    since_s: float | None = None


@dataclass
class SafetyMonitor:
    """Stateful SSM decision with hysteresis, hold time and a perception watchdog.

    Starts in ``PROTECTIVE_STOP``: the robot moves only once perception has been fresh and
    healthy for ``fault_recovery_s``. Call :meth:`evaluate` on every input and on a timer.
    """

    cfg: SsmConfig = field(default_factory=SsmConfig)
    _scale: float = 0.0
    _last_now_s: float | None = None
    _healthy_since_s: float | None = None
    _hold: _Hold = field(default_factory=_Hold)
    _in_fault: bool = True
    _after: str = 'no_perception'   # the last fault, until the robot runs or a person rules

    def evaluate(self, now_s: float, perception: Perception | None,
                 robot: RobotState) -> Decision:
        """Decide the state and speed scale at time ``now_s`` (monotonic seconds)."""
        fault = self._fault_reason(now_s, perception, robot)
        self._last_now_s = now_s if math.isfinite(now_s) else self._last_now_s
        if fault is not None:
            return self._stop_for_fault(fault[1], fault[0])
        assert perception is not None
        if self._in_fault:
            if self._healthy_since_s is None:
                self._healthy_since_s = now_s
            waited = now_s - self._healthy_since_s
            if waited < self.cfg.fault_recovery_s:
                return Decision(SafetyState.PROTECTIVE_STOP, 0.0,
                                f'recovering: perception healthy for {waited:.2f} s of '
                                f'{self.cfg.fault_recovery_s:.2f} s', cause='recovering',
                                after=self._after)
            self._in_fault = False
            self._scale = 0.0
            self._hold = _Hold()
        return self._decide(now_s, perception, robot)

    def _fault_reason(self, now_s: float, perception: Perception | None,
                      robot: RobotState) -> tuple[str, str] | None:
        """(cause, reason) of a fault that stops the robot, or None."""
        if not math.isfinite(now_s):
            return 'clock', f'clock gave a non-finite time {now_s}'
        if self._last_now_s is not None:
            step = now_s - self._last_now_s
            if step < 0:
                return 'clock', f'clock jumped backwards by {-step:.3f} s'
            if step > self.cfg.max_clock_step_s:
                return 'clock', f'clock jumped forwards by {step:.3f} s'
        if perception is None:
            return 'no_perception', 'no perception received yet'
        if not perception.healthy:
            return 'detector_unhealthy', 'detector reports itself unhealthy'
        try:
            _check_finite('perception stamp', perception.stamp_s)
            _check_finite('robot state', robot.x, robot.y, robot.z, robot.speed_mps)
            for link in robot.links:   # a sum is non-finite iff a term is (or it overflows)
                if not math.isfinite(sum(link.a) + sum(link.b) + link.radius_m
                                     + link.speed_mps) or link.speed_mps < 0:
                    raise MalformedInputError(f'link {link.name!r} has non-finite values '
                                              f'{link.a} {link.b} {link.radius_m}')
            if robot.speed_mps < 0:
                raise MalformedInputError(f'robot speed {robot.speed_mps} < 0')
            for person in perception.people:
                _check_finite(f'person {person.label!r}', person.x, person.y, person.z,
                              person.uncertainty_m)
                if person.uncertainty_m < 0:
                    raise MalformedInputError(f'person {person.label!r} has negative '
                                              f'uncertainty {person.uncertainty_m}')
        except MalformedInputError as exc:
            return 'malformed_input', f'malformed input: {exc}'
        age = now_s - perception.stamp_s
        if age > self.cfg.max_perception_age_s:
            return 'stale_perception', (f'perception stale: last detections {age:.3f} s old '
                                        f'(max {self.cfg.max_perception_age_s:.3f} s)')
        if age < -self.cfg.max_perception_age_s:
            return 'clock', f'perception stamped {-age:.3f} s in the future (clocks disagree)'
        return None

    def fault(self, reason: str, cause: str = 'fault') -> Decision:
        """Force a protective stop from outside (e.g. an exception at the node boundary)."""
        return self._stop_for_fault(reason, cause if cause in CAUSES else 'fault')

    def _stop_for_fault(self, reason: str, cause: str) -> Decision:
        self._in_fault = True
        self._after = cause
        self._healthy_since_s = None
        self._scale = 0.0
        self._hold = _Hold()
        return Decision(SafetyState.PROTECTIVE_STOP, 0.0, reason, cause=cause)

    def _decide(self, now_s: float, perception: Perception, robot: RobotState) -> Decision:
        cfg = self.cfg
        raw = raw_held = 1.0
        closest, required, v_allowed, worst = math.inf, 0.0, cfg.robot_max_speed_mps, ''
        part = ''
        speed = robot.fastest_mps   # one speed for every person: any part may close in
        # How long ago the people were seen. A stamp in the future means the clocks disagree
        # and the true age is unknown: S_p takes the oldest age the watchdog lets through.
        age = now_s - perception.stamp_s
        age = cfg.max_perception_age_s if age < 0 else age
        violation: tuple[float, float, str, str] | None = None  # (separation, S_p, label, part)
        for person in perception.people:
            d, nearest = robot.separation(person)
            s_p = protective_separation(d, speed, cfg, person.uncertainty_m, age)
            v = allowed_speed(d, cfg, person.uncertainty_m, age)
            v_held = allowed_speed(max(0.0, d - cfg.hysteresis_m), cfg, person.uncertainty_m,
                                   age)
            if d < s_p and (violation is None or s_p - d > violation[1] - violation[0]):
                violation = (d, s_p, person.label, nearest)
            if v < v_allowed or (v == v_allowed and d < closest):
                v_allowed, required, worst = v, s_p, person.label
            if d < closest:
                closest, part = d, nearest
            raw = min(raw, v / cfg.robot_max_speed_mps)
            raw_held = min(raw_held, v_held / cfg.robot_max_speed_mps)
        if violation is not None:
            raw = raw_held = 0.0
        self._apply(now_s, raw, raw_held)
        return self._report(closest, required, min(v_allowed, cfg.robot_max_speed_mps), worst,
                            violation, robot, part)

    def _apply(self, now_s: float, raw: float, raw_held: float) -> None:
        if raw < self._scale:
            self._scale = raw
            self._hold = _Hold()
            return
        if raw_held > self._scale:
            since = now_s if self._hold.since_s is None else self._hold.since_s
            self._hold = _Hold(raw_held, since)
            if now_s - since >= self.cfg.hold_time_s:
                self._scale = raw_held
                self._hold = _Hold()
        else:
            self._hold = _Hold()

    def _report(self, closest: float, required: float, v_allowed: float, worst: str,
                violation: tuple[float, float, str, str] | None,
                robot: RobotState, part: str) -> Decision:
        scale = self._scale
        where = _from(part)
        if scale <= 0.0:
            state = SafetyState.PROTECTIVE_STOP
            if violation is not None:
                separation, s_p, label, near = violation
                reason = (f'separation {separation:.2f} m{_from(near)} < S_p {s_p:.2f} m at '
                          f'robot speed {robot.fastest_mps:.2f} m/s (person {label!r})')
            elif math.isinf(closest):
                reason = 'no person within range'
            else:
                reason = (f'person {worst!r} too close: no robot speed is safe at '
                          f'{closest:.2f} m{where}')
        elif scale < 1.0:
            state = SafetyState.SLOW
            reason = f'person {worst!r} at {closest:.2f} m{where} allows {v_allowed:.2f} m/s'
        else:
            state = SafetyState.RUN
            reason = 'no person within range' if math.isinf(closest) else 'clear'
        if self._hold.since_s is not None:
            reason += f' (holding before raising to {self._hold.target:.2f})'
        cause = ('clear' if state is SafetyState.RUN else
                 'person' if math.isfinite(closest) else 'holding')
        if cause != 'holding':
            self._after = ''
        return Decision(state, scale, reason, closest, required, v_allowed, part, cause,
                        self._after if cause == 'holding' else '')
