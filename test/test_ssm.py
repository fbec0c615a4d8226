"""ISO/TS 15066 SSM core: hand-computed distances, fail-safe watchdog, property tests."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cobot_hybrid_perception.errors import ConfigError
from cobot_hybrid_perception.ssm import (
    Perception,
    Person,
    RobotState,
    SafetyMonitor,
    SafetyState,
    SsmConfig,
    allowed_speed,
    protective_separation,
)

CFG = SsmConfig()  # T_R 0.1, T_S 0.3, C 0.2, Z_d 0.1, Z_r 0.02, v_max 1.0
DT = 0.02  # 50 Hz evaluation


# --- S_p against hand-computed values --------------------------------------------------------

@pytest.mark.parametrize(('separation', 'speed', 'cfg', 'uncertainty', 'expected'), [
    # far (1.6 m/s): S_h 0.64 + S_r 0.05 + S_s 0.075 + C 0.2 + Z_d 0.1 + Z_r 0.02
    (1.0, 0.5, CFG, 0.0, 1.085),
    # within 0.5 m (2.0 m/s): S_h 0.80
    (0.4, 0.5, CFG, 0.0, 1.245),
    (0.5, 0.5, CFG, 0.0, 1.245),
    # robot at rest: S_h + C + Z only
    (2.0, 0.0, CFG, 0.0, 0.96),
    # fixed stopping distance from the data sheet replaces v_r*T_S/2
    (1.0, 0.5, SsmConfig(stopping_distance_m=0.15), 0.0, 1.16),
    # the person's own uncertainty (0.25) replaces the smaller configured Z_d (0.1)
    (1.0, 0.5, CFG, 0.25, 1.235),
    # faster robot: S_r 0.15 + S_s 0.225
    (1.0, 1.5, CFG, 0.0, 1.335),
])
def test_protective_separation_hand_computed(separation: float, speed: float, cfg: SsmConfig,
                                             uncertainty: float, expected: float) -> None:
    assert protective_separation(separation, speed, cfg, uncertainty) == pytest.approx(expected)


@pytest.mark.parametrize(('separation', 'expected'), [
    (1.5, 2.16),   # budget 1.5 - 0.96 = 0.54 over (T_R + T_S/2) = 0.25
    (1.0, 0.16),   # budget 0.04
    (0.9, 0.0),    # even a still robot is too close
])
def test_allowed_speed_hand_computed(separation: float, expected: float) -> None:
    assert allowed_speed(separation, CFG) == pytest.approx(expected)
    if expected > 0:  # at the allowed speed the separation equals S_p exactly
        assert protective_separation(separation, expected, CFG) == pytest.approx(separation)


@pytest.mark.parametrize('bad', [
    {'reaction_time_s': 0.0}, {'stopping_time_s': -1.0}, {'intrusion_distance_m': -0.1},
    {'robot_max_speed_mps': math.nan}, {'human_speed_near_mps': 1.0},
    {'stopping_distance_m': math.inf},
])
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ConfigError):
        SsmConfig(**bad)


# --- Decisions over time ---------------------------------------------------------------------

def run(monitor: SafetyMonitor, people: list[Person], robot: RobotState, start: float,
        duration: float) -> list:
    """Evaluate at 50 Hz with perception fresh at every step; return the decisions."""
    decisions = []
    steps = int(round(duration / DT))
    for i in range(steps):
        now = start + i * DT
        decisions.append(monitor.evaluate(now, Perception(now, people), robot))
    return decisions


def steady_scale(distance: float, speed: float, cfg: SsmConfig = CFG) -> float:
    monitor = SafetyMonitor(cfg)
    settle = cfg.fault_recovery_s + cfg.hold_time_s + 0.2
    return run(monitor, [Person(distance, 0.0)], RobotState(speed_mps=speed), 0.0,
               settle)[-1].speed_scale


def test_starts_stopped_and_recovers_after_healthy_perception() -> None:
    monitor = SafetyMonitor(CFG)
    decisions = run(monitor, [], RobotState(), 0.0, 2.0)
    assert decisions[0].state is SafetyState.PROTECTIVE_STOP
    assert 'recovering' in decisions[0].reason
    first_run = next(i for i, d in enumerate(decisions) if d.state is SafetyState.RUN)
    assert first_run * DT == pytest.approx(CFG.fault_recovery_s + CFG.hold_time_s, abs=2 * DT)


def test_person_walking_in_slows_then_stops() -> None:
    monitor = SafetyMonitor(CFG)
    robot = RobotState(speed_mps=0.2)
    run(monitor, [Person(3.0, 0.0)], robot, 0.0, 2.0)
    states, now = [], 2.0
    for step in range(100):  # walks from 3.0 m to 0.5 m at 1.25 m/s
        distance = 3.0 - step * 0.025
        states.append(monitor.evaluate(now, Perception(now, [Person(distance, 0.0)]), robot))
        now += DT
    kinds = [d.state for d in states]
    assert kinds[0] is SafetyState.RUN
    assert SafetyState.SLOW in kinds
    assert kinds[-1] is SafetyState.PROTECTIVE_STOP
    assert kinds.index(SafetyState.SLOW) < kinds.index(SafetyState.PROTECTIVE_STOP)
    scales = [d.speed_scale for d in states]
    assert all(b <= a for a, b in pairwise(scales))  # approaching never speeds up


def test_iso_violation_at_measured_speed_stops_even_if_a_slower_speed_would_do() -> None:
    monitor = SafetyMonitor(CFG)
    person = [Person(1.2, 0.0)]
    slow = run(monitor, person, RobotState(speed_mps=0.1), 0.0, 2.0)[-1]
    assert slow.state is SafetyState.SLOW
    now = 2.0
    fast = monitor.evaluate(now, Perception(now, person), RobotState(speed_mps=1.5))
    assert fast.state is SafetyState.PROTECTIVE_STOP
    assert 'S_p' in fast.reason and fast.required_separation_m > 1.2


@pytest.mark.parametrize(('perception', 'robot', 'needle'), [
    (None, RobotState(), 'no perception'),
    (Perception(10.0, [], healthy=False), RobotState(), 'unhealthy'),
    (Perception(10.0 - 0.25, []), RobotState(), 'stale'),
    (Perception(10.0, [Person(math.nan, 0.0)]), RobotState(), 'malformed'),
    (Perception(10.0, [Person(1.0, 0.0, uncertainty_m=-1)]), RobotState(), 'malformed'),
    (Perception(10.0, []), RobotState(speed_mps=-0.5), 'malformed'),
    (Perception(10.0, []), RobotState(x=math.inf), 'malformed'),
    (Perception(11.0, []), RobotState(), 'future'),
])
def test_faults_stop_with_a_reason(perception: Perception | None, robot: RobotState,
                                   needle: str) -> None:
    monitor = SafetyMonitor(CFG)
    run(monitor, [], RobotState(), 8.0, 1.98)
    assert monitor.evaluate(9.99, Perception(9.99, []), RobotState()).state is SafetyState.RUN
    decision = monitor.evaluate(10.0, perception, robot)
    assert decision.state is SafetyState.PROTECTIVE_STOP and decision.speed_scale == 0.0
    assert needle in decision.reason


@pytest.mark.parametrize(('jump', 'needle'), [(-0.5, 'backwards'), (5.0, 'forwards')])
def test_clock_jumps_stop(jump: float, needle: str) -> None:
    monitor = SafetyMonitor(CFG)
    run(monitor, [], RobotState(), 0.0, 2.0)
    now = 2.0 + jump
    decision = monitor.evaluate(now, Perception(now, []), RobotState())
    assert decision.state is SafetyState.PROTECTIVE_STOP and needle in decision.reason


def test_recovery_after_stale_perception_needs_the_recovery_hold() -> None:
    monitor = SafetyMonitor(CFG)
    run(monitor, [], RobotState(), 0.0, 2.0)
    stale = monitor.evaluate(2.3, Perception(2.0, []), RobotState())
    assert stale.state is SafetyState.PROTECTIVE_STOP
    after = run(monitor, [], RobotState(), 2.32, 2.0)
    first_run = next(i for i, d in enumerate(after) if d.state is SafetyState.RUN)
    assert first_run * DT >= CFG.fault_recovery_s


def test_external_fault_forces_stop() -> None:
    monitor = SafetyMonitor(CFG)
    run(monitor, [], RobotState(), 0.0, 2.0)
    decision = monitor.fault('exception in detector callback: ValueError')
    assert decision.state is SafetyState.PROTECTIVE_STOP
    assert monitor.evaluate(2.0, Perception(2.0, []), RobotState()).state is \
        SafetyState.PROTECTIVE_STOP


# --- Properties ------------------------------------------------------------------------------

distances = st.floats(0.0, 6.0, allow_nan=False)
speeds = st.floats(0.0, 2.0, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(distances, distances, speeds)
def test_property_closer_never_faster(d1: float, d2: float, speed: float) -> None:
    near, far = sorted((d1, d2))
    assert steady_scale(near, speed) <= steady_scale(far, speed)


@settings(max_examples=150, deadline=None)
@given(distances, speeds, speeds)
def test_property_faster_robot_never_faster_scale(distance: float, v1: float,
                                                  v2: float) -> None:
    slower, faster = sorted((v1, v2))
    assert steady_scale(distance, faster) <= steady_scale(distance, slower)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(distances, distances), max_size=5), speeds,
       st.floats(CFG.max_perception_age_s + 1e-3, 100.0), st.floats(0.0, 1.98))
def test_property_stale_perception_always_stops(people: list, speed: float, age: float,
                                                history: float) -> None:
    monitor = SafetyMonitor(CFG)
    crowd = [Person(x, y) for x, y in people]
    run(monitor, crowd, RobotState(speed_mps=speed), 0.0, history)
    now = history + DT
    decision = monitor.evaluate(now, Perception(now - age, crowd), RobotState(speed_mps=speed))
    assert decision.state is SafetyState.PROTECTIVE_STOP and decision.speed_scale == 0.0
    missing = monitor.evaluate(now + DT, None, RobotState(speed_mps=speed))
    assert missing.state is SafetyState.PROTECTIVE_STOP


@settings(max_examples=150, deadline=None)
@given(distances, speeds)
def test_property_constant_input_never_oscillates(distance: float, speed: float) -> None:
    monitor = SafetyMonitor(CFG)
    decisions = run(monitor, [Person(distance, 0.0)], RobotState(speed_mps=speed), 0.0, 4.0)
    scales = [d.speed_scale for d in decisions]
    assert all(b >= a for a, b in pairwise(scales))
    assert sum(1 for a, b in pairwise(scales) if a != b) <= 1


@settings(max_examples=100, deadline=None)
@given(st.floats(1.0, 3.0), st.lists(st.floats(-0.5, 0.5), min_size=50, max_size=200))
def test_property_person_on_a_boundary_never_makes_it_drop_back(
        distance: float, noise: list[float]) -> None:
    """Jitter smaller than half the hysteresis never lowers the scale once settled."""
    amplitude = CFG.hysteresis_m / 2
    monitor = SafetyMonitor(CFG)
    run(monitor, [Person(distance, 0.0)], RobotState(), 0.0, 2.0)
    scales, now = [], 2.0
    for n in noise:
        person = Person(distance + n * 2 * amplitude * 0.99, 0.0)
        scales.append(monitor.evaluate(now, Perception(now, [person]), RobotState()).speed_scale)
        now += DT
    assume(scales)
    assert all(b >= a for a, b in pairwise(scales))
