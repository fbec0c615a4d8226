"""The arm as capsules: DH forward kinematics, separation to links, stale/unreadable pose."""

from __future__ import annotations

import math

import pytest
from test_safety_pipeline import FAST, HEIGHT, K, person_at

from cobot_hybrid_perception.arm_geometry import (
    ArmChain,
    ArmPoseError,
    Capsule,
    horizontal_separation,
)
from cobot_hybrid_perception.errors import ConfigError
from cobot_hybrid_perception.safety_pipeline import SafetyConfig, SafetyPipeline
from cobot_hybrid_perception.ssm import Person, RobotState, SafetyState

UR5E = SafetyConfig(robot_geometry='arm')
JOINTS = list(UR5E.arm_joint_names)
DT = 0.033


def ur5e() -> ArmChain:
    return UR5E.arm_chain()


def test_ur5e_zero_pose_matches_the_published_closed_form() -> None:
    # UR's DH at q = 0: TCP = (a2 + a3, -(d4 + d6), d1 - d5) in `base`; base_link is turned
    # by pi about z, so x and y change sign.
    capsules = ur5e().capsules([0.0] * 6)
    tcp = capsules[-1].b
    assert tcp == pytest.approx((0.425 + 0.3922, 0.1333 + 0.0996, 0.1625 - 0.0997), abs=1e-9)
    assert [c.name for c in capsules] == [*JOINTS, 'tool']
    # The upper arm sits 0.138 m along the shoulder-lift axis (+y of base_link at q = 0),
    # the forearm 0.007 m: ur_description's shoulder_offset and elbow_offset.
    upper, fore = capsules[1], capsules[2]
    assert (upper.a, upper.b) == (pytest.approx((0.0, 0.138, 0.1625), abs=1e-9),
                                  pytest.approx((0.425, 0.138, 0.1625), abs=1e-9))
    assert fore.b == pytest.approx((0.8172, 0.007, 0.1625), abs=1e-9)


def test_a_joint_turns_the_links_outboard_of_it() -> None:
    chain = ur5e()
    turned = chain.capsules([math.pi / 2, 0, 0, 0, 0, 0])
    straight = chain.capsules([0.0] * 6)
    x, y, z = straight[-1].b
    # The shoulder pan turns everything about the base z axis by +90 degrees.
    assert turned[-1].b == pytest.approx((-y, x, z), abs=1e-9)
    assert turned[0].a == straight[0].a


def test_separation_is_horizontal_to_the_segment_less_the_radius() -> None:
    link = Capsule('l', (0.0, 0.0, 0.0), (1.0, 0.0, 1.0), 0.1)
    assert horizontal_separation(0.5, 1.0, link) == pytest.approx(0.9)     # beside the middle
    assert horizontal_separation(2.0, 0.0, link) == pytest.approx(0.9)     # past the end
    assert horizontal_separation(0.5, 0.05, link) == 0.0                   # inside
    vertical = Capsule('v', (1.0, 1.0, 0.0), (1.0, 1.0, 2.0), 0.0)        # a point from above
    assert horizontal_separation(4.0, 5.0, vertical) == pytest.approx(5.0)


def test_robot_state_uses_the_nearest_link_and_unlocated_people_touch_it() -> None:
    links = (Capsule('a', (0, 0, 0), (1, 0, 0), 0.0), Capsule('b', (1, 0, 0), (1, 1, 0), 0.0))
    robot = RobotState(1.0, 1.0, 0.0, 0.5, links)
    assert robot.separation(Person(0.5, -2.0)) == (pytest.approx(2.0), 'a')
    assert robot.separation(Person(3.0, 0.8)) == (pytest.approx(2.0), 'b')
    assert robot.separation(Person(9.0, 9.0, unlocated=True)) == (0.0, 'unlocated')
    assert RobotState(0.0, 0.0).separation(Person(3.0, 4.0)) == (5.0, 'tcp')


@pytest.mark.parametrize(('overrides', 'needle'), [
    (dict(arm_joint_names=[]), 'arm_joint_names is empty'),
    (dict(arm_joint_names=['a', 'a', 'b', 'c', 'd', 'e']), 'distinct'),
    (dict(arm_dh=[0.1] * 23), 'give 4 per joint'),
    (dict(arm_link_radii=[0.05] * 5), 'one per joint'),
    (dict(arm_link_radii=[0.05] * 5 + [-0.1]), '>= 0'),
    (dict(arm_dh=[math.nan] + [0.0] * 23), 'finite'),
    (dict(arm_tool_xyz=[0.0, 0.1]), 'arm_tool_xyz'),
    (dict(arm_base_to_base=[0.0] * 7), 'no orientation'),
    (dict(arm_joint_names=[f'j{i}' for i in range(17)], arm_dh=[0.0] * 68,
          arm_link_radii=[0.0] * 17), 'at most 16'),
])
def test_a_bad_chain_is_refused_naming_the_parameter(overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        SafetyConfig(robot_geometry='arm', **overrides)


def test_a_bad_chain_is_not_checked_while_the_arm_is_not_used() -> None:
    assert SafetyConfig(arm_dh=[0.1] * 3).robot_geometry == 'tcp_point'


def test_joint_states_are_matched_by_name_in_any_order() -> None:
    chain = ur5e()
    names = list(reversed(JOINTS)) + ['gripper_finger_joint']
    values = [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.7]
    assert chain.positions(names, values) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    with pytest.raises(ArmPoseError, match='lacks'):
        chain.positions(JOINTS[:5], [0.0] * 5)
    with pytest.raises(ArmPoseError, match='non-finite'):
        chain.positions(JOINTS, [0.0] * 5 + [math.inf])
    with pytest.raises(ArmPoseError, match='names but'):
        chain.positions(JOINTS, [0.0] * 5)


# --- the pipeline with the arm --------------------------------------------------------------

# At q = 0 the UR5e lies along +x of base_link; its TCP is at (0.8172, 0.2329).
TCP_AT_ZERO = (0.8172, 0.2329, 0.0)
BESIDE_THE_BASE = (0.3, -1.2)   # 1.52 m from the TCP, 1.2 m from the upper arm


def arm_pipeline(**overrides: object) -> SafetyPipeline:
    pipeline = SafetyPipeline(SafetyConfig(**{**FAST, 'robot_geometry': 'arm', **overrides}))
    pipeline.on_camera_info(K, HEIGHT)
    return pipeline


def drive(pipeline: SafetyPipeline, where: tuple[float, float], start_s: float,
          duration_s: float, joints: bool = True, pose_stamp_lag_s: float = 0.0) -> list:
    now, reports = start_s, []
    while now < start_s + duration_s:
        pipeline.on_robot_speed(now, 0.25)
        if joints:
            pipeline.on_joint_state(now - pose_stamp_lag_s, JOINTS, [0.0] * 6)
        pipeline.on_detections(now, [person_at(*where)])
        reports.append(pipeline.evaluate(now))
        now += DT
    return reports


def test_a_person_near_a_link_but_far_from_the_tcp_slows_the_robot() -> None:
    point = SafetyPipeline(SafetyConfig(**FAST, tcp_xyz=TCP_AT_ZERO))
    point.on_camera_info(K, HEIGHT)
    point_reports = drive(point, BESIDE_THE_BASE, 0.0, 1.0)
    assert point_reports[-1].decision.state is SafetyState.RUN   # the TCP is far away

    arm = arm_pipeline()
    reports = drive(arm, BESIDE_THE_BASE, 0.0, 1.0)
    decision = reports[-1].decision
    assert decision.state is SafetyState.SLOW, decision.reason
    # The base column (radius 0.09) and the forearm's elbow end (0.07) are both ~1.14 m away.
    assert decision.closest_part in ('shoulder_pan_joint', 'elbow_joint')
    assert decision.closest_distance_m == pytest.approx(1.145, abs=0.01)
    assert f'from {decision.closest_part}' in decision.reason
    assert reports[-1].geometry.startswith('arm, 7 capsules')


def test_without_joint_states_the_arm_stops() -> None:
    reports = drive(arm_pipeline(), (5.0, 0.0), 0.0, 1.0, joints=False)
    assert all(r.decision.state is SafetyState.PROTECTIVE_STOP for r in reports)
    assert 'waiting for joint_states' in reports[-1].decision.reason


def test_a_stale_robot_pose_stops_the_robot_and_recovers_when_fresh() -> None:
    pipeline = arm_pipeline(robot_pose_timeout_s=0.1)
    assert drive(pipeline, (5.0, 0.0), 0.0, 1.0)[-1].decision.state is SafetyState.RUN
    stale = drive(pipeline, (5.0, 0.0), 1.0, 0.5, joints=False)
    assert stale[-1].decision.state is SafetyState.PROTECTIVE_STOP
    assert 'robot pose stale' in stale[-1].decision.reason
    # A pose whose stamp lags by more than the limit is stale even though it keeps arriving.
    lagging = drive(pipeline, (5.0, 0.0), 1.5, 0.5, pose_stamp_lag_s=0.3)
    assert 'robot pose stale' in lagging[-1].decision.reason
    assert drive(pipeline, (5.0, 0.0), 2.0, 1.0)[-1].decision.state is SafetyState.RUN


def test_a_pose_stamped_in_the_future_or_unreadable_stops_the_robot() -> None:
    pipeline = arm_pipeline(robot_pose_timeout_s=0.1)
    future = drive(pipeline, (5.0, 0.0), 0.0, 0.5, pose_stamp_lag_s=-5.0)
    assert 'in the future' in future[-1].decision.reason
    assert drive(pipeline, (5.0, 0.0), 0.5, 1.0)[-1].decision.state is SafetyState.RUN
    pipeline.on_joint_state(1.5, JOINTS[:5], [0.0] * 5)
    report = pipeline.evaluate(1.5)
    assert report.decision.state is SafetyState.PROTECTIVE_STOP
    assert 'lacks' in report.decision.reason
    pipeline.on_joint_state(1.52, JOINTS, [0.0] * 5 + [math.nan])
    assert 'non-finite' in pipeline.evaluate(1.52).decision.reason


def test_the_tcp_point_mode_says_so_in_the_report() -> None:
    pipeline = SafetyPipeline(SafetyConfig(**FAST))
    pipeline.on_camera_info(K, HEIGHT)
    pipeline.on_joint_state(0.0, JOINTS, [0.0] * 6)   # ignored: no chain configured
    report = drive(pipeline, (5.0, 0.0), 0.0, 1.0, joints=False)[-1]
    assert report.decision.state is SafetyState.RUN
    assert report.geometry.startswith('tcp_point')


def test_a_robot_speed_is_aged_by_its_stamp() -> None:
    pipeline = SafetyPipeline(SafetyConfig(**FAST))
    pipeline.on_camera_info(K, HEIGHT)
    now = 0.0
    for _ in range(40):
        pipeline.on_robot_speed(now - 2.0, 0.0)   # stamped 2 s ago: older than the 0.5 s limit
        pipeline.on_detections(now, [person_at(1.1)])
        report = pipeline.evaluate(now)
        now += DT
    assert not report.robot_speed_measured
    assert report.robot.speed_mps == pipeline.cfg.robot_max_speed_mps
    pipeline.on_robot_speed(now + 5.0, 0.0)        # from the future: not trusted either
    assert not pipeline.evaluate(now).robot_speed_measured
    pipeline.on_robot_speed(now, 0.1)
    assert pipeline.evaluate(now).robot_speed_measured


def test_another_chain_forgets_the_old_pose() -> None:
    pipeline = arm_pipeline()
    assert drive(pipeline, (5.0, 0.0), 0.0, 1.0)[-1].decision.state is SafetyState.RUN
    moved = SafetyConfig(**{**FAST, 'robot_geometry': 'arm',
                            'arm_base_to_base': [0.0, 2.0, 0.0, 0.0, 0.0, 1.0, 0.0]})
    pipeline.reconfigure(moved)
    report = pipeline.evaluate(1.0)
    assert 'waiting for joint_states' in report.decision.reason   # not the old links moved
    pipeline.on_joint_state(1.01, JOINTS, [0.0] * 6)
    assert pipeline.evaluate(1.01).robot.y == pytest.approx(TCP_AT_ZERO[1] + 2.0, abs=1e-3)


def test_a_reconfigure_keeps_a_standing_pose_fault() -> None:
    pipeline = arm_pipeline(fault_recovery_s=0.0)
    drive(pipeline, (5.0, 0.0), 0.0, 0.5)
    pipeline.on_joint_state(0.6, JOINTS, [math.nan] * 6)
    pipeline.reconfigure(SafetyConfig(**{**FAST, 'robot_geometry': 'arm', 'min_score': 0.4,
                                         'fault_recovery_s': 0.0}))
    assert 'non-finite' in pipeline.evaluate(0.6).decision.reason


def test_a_joint_state_of_another_device_is_ignored_and_counted() -> None:
    pipeline = arm_pipeline()
    now, reports = 0.0, []
    while now < 1.5:   # the arm at 30 Hz, a gripper's own joint_states in between
        pipeline.on_joint_state(now, JOINTS, [0.0] * 6)
        pipeline.on_joint_state(now + 0.01, ['finger_joint'], [0.04])
        pipeline.on_robot_speed(now, 0.25)
        pipeline.on_detections(now, [person_at(5.0)])
        reports.append(pipeline.evaluate(now + 0.01))
        now += DT
    assert reports[-1].decision.state is SafetyState.RUN, reports[-1].decision.reason
    assert pipeline.ignored_joint_states == len(reports)


@pytest.mark.parametrize(('names', 'positions', 'needle'), [
    ([f'j{i}' for i in range(65)] + JOINTS, [0.0] * 71, 'at most 64'),
    (JOINTS + [JOINTS[0]], [0.0] * 7, 'twice'),
    (JOINTS[:3], [0.0] * 3, 'lacks'),
])
def test_an_unreadable_joint_state_naming_the_arm_stops_it(names: list, positions: list,
                                                           needle: str) -> None:
    pipeline = arm_pipeline()
    drive(pipeline, (5.0, 0.0), 0.0, 1.0)
    pipeline.on_joint_state(1.0, names, positions)
    decision = pipeline.evaluate(1.0).decision
    assert decision.state is SafetyState.PROTECTIVE_STOP and needle in decision.reason


def test_a_fast_link_sets_the_robot_speed_for_the_person_beside_it() -> None:
    # The TCP reports 0.05 m/s, but the arm swings up (shoulder lift at 1 rad/s, its far end
    # at 0.8 m/s): a person 1.11 m beside the base is judged at that speed, which needs a
    # stop (S_p 1.16 m), not at the TCP's (S_p 0.97 m: a slowdown).
    pipeline = arm_pipeline()
    now, q2 = 0.0, 0.0
    report = None
    while now < 1.5:
        pipeline.on_robot_speed(now, 0.05)
        pipeline.on_joint_state(now, JOINTS, [0.0, q2, 0.0, 0.0, 0.0, 0.0])
        pipeline.on_detections(now, [person_at(0.0, -1.2)])
        report = pipeline.evaluate(now)
        now += DT
        q2 -= 1.0 * DT
    assert report is not None
    link = next(c for c in report.robot.links if c.name == 'elbow_joint')
    assert link.speed_mps > 0.5                      # the forearm's far end sweeps fastest
    assert report.decision.state is SafetyState.PROTECTIVE_STOP, report.decision.reason
    assert 'at robot speed 0.' in report.decision.reason and 'robot speed 0.05' not in \
        report.decision.reason


def test_an_input_is_measured_by_its_stamp_never_after_its_arrival() -> None:
    from cobot_hybrid_perception.safety_pipeline import measured_at

    assert measured_at(None, 10.0) == 10.0        # no stamp: its arrival
    assert measured_at(9.5, 10.0) == 9.5          # its stamp
    assert measured_at(10.49, 10.0) == 10.0       # from the future: as if now


@pytest.mark.parametrize(('overrides', 'needle'), [
    (dict(arm_dh=[1e300] + [0.0] * 23), 'a cobot is not that large'),
    (dict(arm_link_offsets=[0.0] * 17), '3 per joint'),
    (dict(arm_link_radii=[0.05] * 5 + [3.0]), 'within'),
])
def test_a_finite_but_absurd_chain_is_refused(overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        SafetyConfig(robot_geometry='arm', **overrides)
