"""Safety pipeline core: detections + camera + robot speed -> SSM decision, fail-safe paths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cobot_hybrid_perception.errors import ConfigError
from cobot_hybrid_perception.localization import CameraModel, RigidTransform
from cobot_hybrid_perception.safety_pipeline import (
    PersonDetection,
    SafetyConfig,
    SafetyPipeline,
    speed_from_twist,
)
from cobot_hybrid_perception.ssm import SafetyState

K = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]
HEIGHT = 480
# Camera 2 m behind and 2 m above the base origin, looking along +x, pitched 35 deg down.
CAMERA_TO_BASE = (-2.0, 0.0, 2.0, -0.627211, 0.627211, -0.326506, 0.326506)
FAST = dict(camera_to_base=CAMERA_TO_BASE, fault_recovery_s=0.2, hold_time_s=0.1)
DT = 0.033


def person_at(x: float, y: float = 0.0, label: str = 'p', score: float = 0.9,
              class_id: str = 'person') -> PersonDetection:
    """A box whose bottom centre is the image of the floor point (x, y, 0)."""
    camera = CameraModel.from_k(K)
    u, v = camera.project(RigidTransform.from_xyz_quat(CAMERA_TO_BASE).inverse_apply(
        np.array([x, y, 0.0])))
    return PersonDetection(class_id, score, (u - 30, v - 200, u + 30, v), None, label)


def run(pipeline: SafetyPipeline, detections: list[PersonDetection], start_s: float,
        duration_s: float, speed: float | None = 0.25) -> tuple[float, list]:
    """Feed the same frame at 30 Hz for a while; return the end time and the reports."""
    now, reports = start_s, []
    while now < start_s + duration_s:
        if speed is not None:
            pipeline.on_robot_speed(now, speed)
        pipeline.on_detections(now, detections)
        reports.append(pipeline.evaluate(now))
        now += DT
    return now, reports


def ready_pipeline(**overrides: object) -> SafetyPipeline:
    pipeline = SafetyPipeline(SafetyConfig(**{**FAST, **overrides}))
    pipeline.on_camera_info(K, HEIGHT)
    return pipeline


def test_projection_round_trip_places_the_person_where_it_stands() -> None:
    pipeline = ready_pipeline()
    _, reports = run(pipeline, [person_at(1.8, 0.4)], 0.0, 0.5)
    person = reports[-1].people[0]
    assert (person.x, person.y) == pytest.approx((1.8, 0.4), abs=1e-6)
    assert reports[-1].methods == ('floor',)


@pytest.mark.parametrize(('distance', 'state'), [
    (4.0, SafetyState.RUN),              # allowed speed far above robot_max_speed
    (1.1, SafetyState.SLOW),             # budget 0.14 m -> 0.56 m/s of 1.0
    (0.9, SafetyState.PROTECTIVE_STOP),  # inside S_p even for a still robot
])
def test_state_follows_distance_after_recovery(distance: float, state: SafetyState) -> None:
    pipeline = ready_pipeline()
    _, reports = run(pipeline, [person_at(distance)], 0.0, 1.0)
    assert reports[0].decision.state is SafetyState.PROTECTIVE_STOP  # starts stopped
    assert reports[-1].decision.state is state, reports[-1].decision.reason


def test_other_classes_and_low_scores_are_not_people() -> None:
    pipeline = ready_pipeline()
    frame = [person_at(0.5, class_id='cup'), person_at(0.5, score=0.1)]
    _, reports = run(pipeline, frame, 0.0, 1.0)
    assert reports[-1].decision.state is SafetyState.RUN
    assert reports[-1].people == ()


def test_person_without_camera_info_stops_the_robot() -> None:
    pipeline = SafetyPipeline(SafetyConfig(**FAST))
    _, reports = run(pipeline, [person_at(4.0)], 0.0, 1.0)
    assert reports[-1].decision.state is SafetyState.PROTECTIVE_STOP
    assert 'no camera_info' in reports[-1].people[0].label
    assert reports[-1].methods == ('unlocated',)


def test_empty_frames_without_camera_info_run() -> None:
    pipeline = SafetyPipeline(SafetyConfig(**FAST))
    _, reports = run(pipeline, [], 0.0, 1.0)
    assert reports[-1].decision.state is SafetyState.RUN


def test_feet_cut_off_by_the_image_bottom_stop_the_robot() -> None:
    pipeline = ready_pipeline()
    cut = PersonDetection('person', 0.9, (290.0, 200.0, 350.0, float(HEIGHT)), None, 'cut')
    _, reports = run(pipeline, [cut], 0.0, 1.0)
    assert reports[-1].decision.state is SafetyState.PROTECTIVE_STOP
    assert 'feet cut off' in reports[-1].people[0].label


def test_visible_ankles_make_a_cut_box_usable() -> None:
    pipeline = ready_pipeline()
    keypoints = np.zeros((17, 3))
    foot = person_at(3.0).bbox_xyxy
    keypoints[15] = keypoints[16] = ((foot[0] + foot[2]) / 2, foot[3], 0.9)
    cut = PersonDetection('person', 0.9, (foot[0], foot[1], foot[2], float(HEIGHT)),
                          keypoints, 'ankles')
    _, reports = run(pipeline, [cut], 0.0, 1.0)
    assert reports[-1].people[0].x == pytest.approx(3.0, abs=1e-6)
    assert reports[-1].decision.state is SafetyState.RUN


def test_fresh_depth_is_preferred_and_stale_depth_falls_back_to_the_floor() -> None:
    pipeline = ready_pipeline(camera_to_base=(0.0, 0.0, 1.0, -0.5, 0.5, -0.5, 0.5))
    depth = np.full((HEIGHT, 640), 3000, dtype=np.uint16)  # 3 m everywhere
    box = (300.0, 100.0, 340.0, 300.0)
    pipeline.on_depth(0.0, depth, 1e-3)
    pipeline.on_detections(0.0, [PersonDetection('person', 0.9, box)])
    report = pipeline.evaluate(0.0)
    assert report.methods == ('depth',)
    assert report.people[0].x == pytest.approx(3.0, abs=0.05)
    pipeline.on_detections(0.5, [PersonDetection('person', 0.9, box)])  # depth 0.5 s old
    assert pipeline.evaluate(0.5).methods == ('floor',)


def test_depth_mode_without_fresh_depth_stops() -> None:
    pipeline = ready_pipeline(localization='depth')
    _, reports = run(pipeline, [person_at(4.0)], 0.0, 1.0)
    assert reports[-1].decision.state is SafetyState.PROTECTIVE_STOP
    assert 'no depth image' in reports[-1].people[0].label


def test_missing_or_stale_robot_speed_assumes_full_speed() -> None:
    pipeline = ready_pipeline()
    _, reports = run(pipeline, [person_at(1.1)], 0.0, 1.0, speed=None)
    report = reports[-1]
    assert not report.robot_speed_measured
    assert report.robot.speed_mps == pytest.approx(1.0)
    # At 1 m/s, S_p(1.1 m) = 0.96 + 0.35 = 1.31 m > 1.1 m: a stop, not a slow-down.
    assert report.decision.state is SafetyState.PROTECTIVE_STOP
    pipeline.on_robot_speed(1.0, 0.1)
    assert pipeline.evaluate(1.0).robot_speed_measured
    assert not pipeline.evaluate(1.6).robot_speed_measured  # 0.6 s > 0.5 s timeout


def test_malformed_detection_stops_until_good_input_recovers() -> None:
    pipeline = ready_pipeline()
    now, _ = run(pipeline, [person_at(4.0)], 0.0, 1.0)
    bad = PersonDetection('person', math.nan, (1.0, 2.0, 3.0, 4.0))
    pipeline.on_detections(now, [bad])
    report = pipeline.evaluate(now)
    assert report.decision.state is SafetyState.PROTECTIVE_STOP
    assert 'malformed input' in report.decision.reason
    _, reports = run(pipeline, [person_at(4.0)], now + DT, 1.0)
    assert reports[0].decision.state is SafetyState.PROTECTIVE_STOP
    assert reports[-1].decision.state is SafetyState.RUN


def test_malformed_robot_speed_stops() -> None:
    pipeline = ready_pipeline()
    now, _ = run(pipeline, [person_at(4.0)], 0.0, 1.0)
    pipeline.on_robot_speed(now, -0.5)
    assert pipeline.evaluate(now).decision.state is SafetyState.PROTECTIVE_STOP


def test_unhealthy_detector_stops_and_recovers_after_the_hold() -> None:
    pipeline = ready_pipeline()
    now, _ = run(pipeline, [person_at(4.0)], 0.0, 1.0)
    pipeline.on_detector_health(False)
    now, reports = run(pipeline, [person_at(4.0)], now, 0.5)
    assert {r.decision.state for r in reports} == {SafetyState.PROTECTIVE_STOP}
    assert 'unhealthy' in reports[-1].decision.reason
    pipeline.on_detector_health(True)
    _, reports = run(pipeline, [person_at(4.0)], now, 1.0)
    assert 'recovering' in reports[0].decision.reason
    assert reports[-1].decision.state is SafetyState.RUN


def test_silence_stops_within_the_perception_age() -> None:
    pipeline = ready_pipeline()
    now, _ = run(pipeline, [person_at(4.0)], 0.0, 1.0)
    last = now - DT
    assert pipeline.evaluate(last + 0.19).decision.state is SafetyState.RUN
    stale = pipeline.evaluate(last + 0.21).decision
    assert stale.state is SafetyState.PROTECTIVE_STOP and 'stale' in stale.reason


def test_fault_from_outside_reports_a_stop() -> None:
    pipeline = ready_pipeline()
    run(pipeline, [person_at(4.0)], 0.0, 1.0)
    report = pipeline.fault('input error: KeyError')
    assert report.decision.state is SafetyState.PROTECTIVE_STOP
    assert report.decision.reason == 'input error: KeyError'


def test_ros_arrays_become_tuples() -> None:
    cfg = SafetyConfig(person_class_ids=['person', '0'], tcp_xyz=[0, 0, 1],
                       camera_to_base=list(CAMERA_TO_BASE))
    assert cfg.person_class_ids == ('person', '0')
    assert cfg.tcp_xyz == (0.0, 0.0, 1.0)
    hash(cfg)


@pytest.mark.parametrize(('overrides', 'message'), [
    ({'localization': 'lidar'}, 'localization'),
    ({'person_class_ids': []}, 'person_class_ids'),
    ({'min_score': 1.5}, 'min_score'),
    ({'camera_to_base': (0.0, 0.0, 1.0)}, 'camera_to_base'),
    ({'camera_to_base': (0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0)}, 'camera_to_base'),
    ({'tcp_xyz': (0.0, math.nan, 0.0)}, 'tcp_xyz'),
    ({'evaluation_period_s': 0.3}, 'evaluation_period_s'),
    ({'robot_speed_timeout_s': 0.0}, 'robot_speed_timeout_s'),
    ({'reaction_time_s': -0.1}, 'reaction_time_s'),
])
def test_bad_config_names_the_parameter(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SafetyConfig(**overrides)


def test_reconfigure_keeps_the_stop() -> None:
    pipeline = ready_pipeline()
    pipeline.on_detections(0.0, [person_at(4.0)])
    assert pipeline.evaluate(0.0).decision.state is SafetyState.PROTECTIVE_STOP
    pipeline.reconfigure(SafetyConfig(**{**FAST, 'min_score': 0.5}))
    assert pipeline.evaluate(0.01).decision.state is SafetyState.PROTECTIVE_STOP


def test_twist_speed_is_the_norm_of_the_linear_part() -> None:
    assert speed_from_twist((0.3, -0.4, 0.0)) == pytest.approx(0.5)
