"""Per tracked person approach speed: from separations over frames, diagnostics only."""

from __future__ import annotations

import json

import pytest
from test_safety_pipeline import FAST, HEIGHT, K, person_at

from cobot_hybrid_perception import safety_view
from cobot_hybrid_perception.approach_speed import ApproachSpeeds
from cobot_hybrid_perception.safety_pipeline import SafetyConfig, SafetyPipeline


def test_a_person_walking_in_reads_positive_and_one_walking_away_negative() -> None:
    speeds = ApproachSpeeds(smoothing=1.0)
    result = {}
    for frame in range(5):
        t = frame * 0.1
        result = speeds.update(t, {'person-1': 4.0 - 0.12 * frame,     # 1.2 m/s closer
                                   'person-2': 2.0 + 0.05 * frame})   # 0.5 m/s away
    assert result == {'person-1': pytest.approx(1.2), 'person-2': pytest.approx(-0.5)}


def test_smoothing_damps_a_one_frame_jump() -> None:
    speeds = ApproachSpeeds(smoothing=0.5)
    speeds.update(0.0, {'person-1': 3.0})
    speeds.update(0.1, {'person-1': 3.0})
    jump = speeds.update(0.2, {'person-1': 2.8})['person-1']   # 2 m/s for one frame
    assert jump == pytest.approx(1.0)


def test_untracked_ids_gaps_and_time_going_back_start_over() -> None:
    speeds = ApproachSpeeds(smoothing=1.0, max_gap_s=0.5)
    speeds.update(0.0, {'new-4': 3.0, 'det-0': 3.0, 'person-1': 3.0})
    assert speeds.update(0.1, {'new-4': 2.9, 'det-0': 2.0, 'person-1': 2.9}) == {
        'person-1': pytest.approx(1.0)}                              # only the confirmed one
    assert speeds.update(1.0, {'person-1': 2.0}) == {}               # unseen 0.9 s: new start
    assert speeds.update(1.1, {'person-1': 2.0}) == {'person-1': 0.0}
    assert speeds.update(0.5, {'person-1': 1.0}) == {}               # time went back
    assert speeds.update(0.5, {'person-1': float('nan')}) == {}


def test_at_most_max_people_are_followed_the_nearest_first() -> None:
    speeds = ApproachSpeeds(max_people=2, smoothing=1.0)
    speeds.update(0.0, {f'person-{i}': float(i) for i in range(1, 6)})
    assert set(speeds.update(0.1, {f'person-{i}': float(i) for i in range(1, 6)})) == {
        'person-1', 'person-2'}
    # Someone new and nearer than all of them displaces the farthest followed one.
    crowd = {f'person-{i}': float(i) for i in range(1, 6)} | {'person-9': 0.5}
    speeds.update(0.2, crowd)
    assert set(speeds.update(0.3, crowd)) == {'person-9', 'person-1'}


def test_the_safety_monitor_reports_tracked_approach_in_diagnostics() -> None:
    pipeline = SafetyPipeline(SafetyConfig(**FAST))
    pipeline.on_camera_info(K, HEIGHT)
    now = 0.0
    report = None
    for _ in range(30):   # person-3 runs in at 2.4 m/s from 6 m; person-8 stands
        distance = 6.0 - 2.4 * now
        pipeline.on_robot_speed(now, 0.1)
        pipeline.on_detections(now, [person_at(distance, label='person-3'),
                                     person_at(3.0, 1.0, label='person-8')])
        report = pipeline.evaluate(now)
        now += 0.033
    assert report is not None
    speeds = dict(report.approach_mps)
    assert speeds['person-3'] == pytest.approx(2.4, abs=0.05)
    assert speeds['person-8'] == pytest.approx(0.0, abs=0.01)
    values = safety_view.diagnostic_values(report, 1)
    assert json.loads(values['approach_speed_mps'])['person-3'] == pytest.approx(2.4, abs=0.05)
    assert values['faster_than_iso_human_speed'] == 'person-3'   # 2.4 > ISO's 1.6 m/s
