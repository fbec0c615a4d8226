"""The perception budget core: ages per frame, the verdict and its advice, time per cause."""

from __future__ import annotations

import math

import pytest

from cobot_hybrid_perception.perception_budget import (
    ERROR_AFTER_S,
    AgeWindow,
    BudgetWatch,
    assess,
    limit_problem,
    percentile,
)
from cobot_hybrid_perception.safety_view import MAX_CHARGED_GAP_S, CauseTimes
from cobot_hybrid_perception.ssm import (
    Decision,
    Perception,
    Person,
    RobotState,
    SafetyMonitor,
    SafetyState,
    SsmConfig,
    allowed_speed,
    protective_separation,
)


def test_the_peak_age_of_a_frame_is_the_period_before_it_plus_its_latency() -> None:
    window = AgeWindow()
    for i in range(10):   # 10 Hz camera, 30 ms from capture to publish
        window.add(i * 0.1, i * 0.1 + 0.03)
    values = window.values()
    assert values['latency_ms_p99'] == pytest.approx(30.0)
    assert values['period_ms_p50'] == pytest.approx(100.0)
    assert values['age_ms_p99'] == pytest.approx(130.0)
    assert values['age_ms_max'] == pytest.approx(130.0)


@pytest.mark.parametrize(('stamp', 'seen'), [(1.0, 0.9), (math.nan, 1.0), (1.0, math.inf),
                                             (0.0, 1e6)])
def test_implausible_frames_are_counted_not_kept(stamp: float, seen: float) -> None:
    window = AgeWindow()
    window.add(stamp, seen)
    assert window.implausible == 1 and not window.latency


def test_the_same_stamp_twice_is_no_period() -> None:
    window = AgeWindow()
    window.add(1.0, 1.01)
    window.add(1.0, 1.02)
    assert window.implausible == 1 and not window.period


def test_percentile_nearest_rank() -> None:
    assert percentile(range(1, 101), 0.99) == 99
    assert percentile([5.0], 0.5) == 5.0
    assert math.isnan(percentile([], 0.5))


def test_a_budget_with_margin_is_ok_and_says_the_share() -> None:
    verdict = assess(0.03, 0.1, 0.2)
    assert verdict.level == 'OK' and '65 %' in verdict.message


def test_little_margin_is_a_warning_with_the_fixes() -> None:
    verdict = assess(0.07, 0.1, 0.2)
    assert verdict.level == 'WARN' and 'little margin' in verdict.message
    assert 'imgsz 320' in verdict.message and 'INT8' in verdict.message


def test_over_the_limit_warns_then_errors_with_the_iso_cost_of_a_larger_limit() -> None:
    short = assess(0.3, 0.2, 0.25, over_for_s=1.0, human_speed_mps=1.6)
    assert short.level == 'WARN' and 'exceeds' in short.message
    verdict = assess(0.3, 0.2, 0.25, over_for_s=ERROR_AFTER_S, human_speed_mps=1.6)
    assert verdict.level == 'ERROR'
    assert verdict.worst_age_s == pytest.approx(0.5)
    # The detector is slower than the camera: the camera rate it keeps up with is named.
    assert 'at most 3.3 Hz' in verdict.message
    # Raising the limit to fit (0.5 s / 0.8 = 0.63 s) costs 1.6 m/s * 0.38 s of S_p.
    assert 'max_perception_age_s 0.63 s' in verdict.message
    assert 'S_p 0.61 m larger' in verdict.message


def test_a_measured_peak_age_wins_over_the_sum_of_the_two_p99s() -> None:
    assert assess(0.05, 0.12, 0.2, worst_age_s=0.15).worst_age_s == pytest.approx(0.15)


def test_no_limit_is_an_error_and_no_frames_is_ok() -> None:
    assert assess(0.01, 0.1, 0.0).level == 'ERROR'
    assert assess(math.nan, math.nan, 0.2).level == 'OK'


def test_the_watch_judges_the_warm_up_until_frames_come_then_times_the_overrun() -> None:
    watch = BudgetWatch(AgeWindow(), startup_latency_s=0.3)
    first = watch.verdict(0.0, 0.25)
    assert first.level == 'WARN' and first.latency_s == pytest.approx(0.3)
    assert watch.verdict(ERROR_AFTER_S + 0.1, 0.25).level == 'ERROR'
    for i in range(5):   # now fast frames: back under, the overrun starts again from zero
        watch.window.add(10.0 + i * 0.1, 10.0 + i * 0.1 + 0.02)
    assert watch.verdict(20.0, 0.25).level == 'OK'


def test_time_is_charged_to_the_decision_that_held_until_the_next() -> None:
    times = CauseTimes()
    stale = Decision(SafetyState.PROTECTIVE_STOP, 0.0, 'stale', cause='stale_perception')
    person = Decision(SafetyState.SLOW, 0.5, 'person', cause='person')
    times.record(0.0, stale)
    times.record(0.5, person)
    times.record(0.75, stale)
    times.record(100.0, person)   # a pause: charged at most MAX_CHARGED_GAP_S
    assert times.values() == {
        'time_s.PROTECTIVE_STOP.stale_perception': f'{0.5 + MAX_CHARGED_GAP_S:.2f}',
        'time_s.SLOW.person': '0.25'}


def test_an_older_detection_needs_a_larger_separation() -> None:
    cfg = SsmConfig()
    fresh = protective_separation(2.0, 0.5, cfg)
    old = protective_separation(2.0, 0.5, cfg, perception_age_s=0.2)
    assert old - fresh == pytest.approx(cfg.human_speed_far_mps * 0.2)
    assert allowed_speed(1.3, cfg, perception_age_s=0.2) < allowed_speed(1.3, cfg)


def test_decisions_carry_their_cause() -> None:
    monitor = SafetyMonitor(SsmConfig(fault_recovery_s=0.0, max_perception_age_s=0.2))
    robot = RobotState(0.0, 0.0, 0.0, 0.2)
    assert monitor.evaluate(0.0, None, robot).cause == 'no_perception'
    near = Perception(0.5, (Person(0.9, 0.0),))
    assert monitor.evaluate(0.55, near, robot).cause == 'person'
    assert monitor.evaluate(1.0, near, robot).cause == 'stale_perception'
    assert monitor.fault('deactivated').cause == 'fault'
    assert monitor.fault('x', 'not-a-cause').cause == 'fault'
    held = monitor.evaluate(1.5, Perception(1.5), robot)   # nobody: the raise is held first
    assert held.cause == 'holding' and held.reason.startswith('no person within range')
    assert monitor.evaluate(2.1, Perception(2.1), robot).cause == 'clear'


def test_a_stamp_in_the_future_never_lets_the_robot_go_faster() -> None:
    # Camera clock ahead: the frame looks 0.19 s younger than now. S_p must not shrink.
    cfg = SsmConfig(fault_recovery_s=0.0, hold_time_s=0.0, max_perception_age_s=0.2)
    robot = RobotState(0.0, 0.0, 0.0, 0.2)
    speeds = {}
    for skew in (0.0, 0.05, 0.19):
        monitor = SafetyMonitor(cfg)
        person = (Person(1.3, 0.0),)
        monitor.evaluate(0.0, Perception(0.0 + skew, person), robot)
        speeds[skew] = monitor.evaluate(0.1, Perception(0.1 + skew, person),
                                        robot).allowed_speed_mps
    assert speeds[0.19] <= speeds[0.0] and speeds[0.05] <= speeds[0.0]


def test_silence_and_unmeasurable_stamps_are_not_ok() -> None:
    watch = BudgetWatch(AgeWindow())
    for i in range(5):
        watch.window.add(i * 0.1, i * 0.1 + 0.02)
    assert watch.verdict(0.0, 0.2, clock_s=0.45).level == 'OK'
    silent = watch.verdict(1.0, 0.2, clock_s=2.0)   # the camera stopped 1.6 s ago
    assert silent.level == 'WARN' and 'no frame for 1.6 s' in silent.message
    assert watch.verdict(1.0 + ERROR_AFTER_S, 0.2, clock_s=5.0).level == 'ERROR'
    unstamped = BudgetWatch(AgeWindow())
    for _ in range(12):
        unstamped.window.add(0.0, 1000.0)   # stamped 0 against a wall clock
    verdict = unstamped.verdict(0.0, 0.2, clock_s=1000.0)
    assert verdict.level == 'WARN' and 'stamps that cannot be measured' in verdict.message


@pytest.mark.parametrize(('age', 'speed', 'ok'), [(0.2, 1.6, True), (math.nan, 1.6, False),
                                                  (math.inf, 1.6, False), (1e308, 1.6, False),
                                                  (5e-324, 1.6, False), (-0.2, 1.6, False),
                                                  (0.2, -1.0, False), (0.2, math.nan, False)])
def test_a_limit_answered_by_another_node_is_checked_against_the_monitors_range(
        age: float, speed: float, ok: bool) -> None:
    assert (limit_problem(age, speed) is None) is ok


def test_recovering_and_holding_are_charged_to_the_fault_they_follow() -> None:
    cfg = SsmConfig(fault_recovery_s=0.5, hold_time_s=0.5, max_perception_age_s=0.2)
    monitor, times = SafetyMonitor(cfg), CauseTimes()
    robot = RobotState(0.0, 0.0, 0.0, 0.2)
    t = 0.0
    while t < 3.0:   # fresh frames, then a gap of 0.4 s at t=1, then fresh again
        stamp = t if not 1.0 <= t < 1.4 else 0.95
        times.record(t, monitor.evaluate(t, Perception(stamp), robot))
        t = round(t + 0.05, 2)
    values = times.values()
    assert float(values['time_s.PROTECTIVE_STOP.stale_perception']) > 0.1
    assert float(values['time_s.PROTECTIVE_STOP.recovering.stale_perception']) > 0.4
    assert 'time_s.PROTECTIVE_STOP.holding.stale_perception' in values
    assert float(values['time_s.RUN.clear']) > 0


def test_every_other_frame_stamped_zero_is_not_ok() -> None:
    watch = BudgetWatch(AgeWindow())
    for i in range(60):   # 30 Hz, every second frame unstamped against a wall clock
        t = 1000.0 + i / 30
        watch.window.add(t if i % 2 else 0.0, t + 0.02)
    verdict = watch.verdict(0.0, 0.2, clock_s=1000.0 + 60 / 30)
    assert verdict.level == 'WARN' and '30 of the last 60 frames' in verdict.message
