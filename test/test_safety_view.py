"""What the safety monitor shows: level and colour per state, values, zones, detector health."""

from __future__ import annotations

import dataclasses

import pytest

from cobot_hybrid_perception import safety_view
from cobot_hybrid_perception.safety_pipeline import SafetyConfig, SafetyReport
from cobot_hybrid_perception.ssm import Decision, Person, RobotState, SafetyState

RUN, SLOW, STOP = SafetyState.RUN, SafetyState.SLOW, SafetyState.PROTECTIVE_STOP


def report(state: SafetyState = SLOW, *people: Person, speed: float = 0.4,
           measured: bool = True, tcp: tuple[float, float, float] = (0.0, 0.0, 0.0)
           ) -> SafetyReport:
    decision = Decision(state, 0.5 if state is SLOW else float(state is RUN), 'why',
                        closest_distance_m=1.23456, required_separation_m=0.9876,
                        allowed_speed_mps=0.5)
    return SafetyReport(decision, people, RobotState(*tcp, speed_mps=speed), measured, 0.0421,
                        ('depth', 'ground'))


@pytest.mark.parametrize(('state', 'level', 'rgb', 'stop'), [
    (RUN, 'OK', (0.1, 0.8, 0.1), False),
    (SLOW, 'WARN', (1.0, 0.8, 0.0), False),
    (STOP, 'ERROR', (0.9, 0.1, 0.1), True),
])
def test_each_state_has_its_level_colour_and_stop(state: SafetyState, level: str,
                                                  rgb: tuple[float, float, float],
                                                  stop: bool) -> None:
    assert safety_view.level(state) == level
    assert safety_view.person_colour(state) == (*rgb, 0.8)
    assert safety_view.stop_requested(state) is stop


def test_every_state_is_covered() -> None:
    assert set(safety_view.LEVELS) == set(safety_view.COLOURS) == set(SafetyState)


@pytest.mark.parametrize(('measured', 'source'), [
    (True, 'measured'), (False, 'assumed robot_max_speed_mps (no fresh robot_speed)')])
def test_diagnostic_values(measured: bool, source: str) -> None:
    values = safety_view.diagnostic_values(report(SLOW, Person(1.0, 0.0), measured=measured),
                                           published=7)
    assert values == {
        'state': 'SLOW', 'speed_scale': '0.500', 'closest_distance_m': '1.235',
        'required_separation_m': '0.988', 'allowed_speed_mps': '0.500',
        'robot_speed_mps': '0.400', 'robot_speed_source': source,
        'robot_geometry': '', 'closest_part': '-',
        'perception_age_s': '0.042', 'people': '1', 'localization': 'depth,ground',
        'evaluations_published': '7', 'approach_speed_mps': '{}',
        'faster_than_iso_human_speed': '-'}


def test_nobody_and_no_distance_read_as_inf() -> None:
    decision = Decision(RUN, 1.0, 'clear')
    values = safety_view.diagnostic_values(
        SafetyReport(decision, (), RobotState(), False, 0.0, ()), 0)
    assert (values['closest_distance_m'], values['people'], values['localization']) == \
        ('inf', '0', '')


@pytest.mark.parametrize(('state', 'last', 'now', 'last_s', 'due'), [
    (SLOW, RUN, 10.0, 9.99, True),         # a change: at once
    (STOP, None, 0.0, 0.0, True),          # the first one
    (SLOW, SLOW, 10.0, 9.6, False),
    (SLOW, SLOW, 10.0, 10.0 - safety_view.DIAG_PERIOD_S, True),
])
def test_diagnostics_due(state: SafetyState, last: SafetyState | None, now: float,
                         last_s: float, due: bool) -> None:
    assert safety_view.diagnostics_due(state, last, now, last_s) is due


def test_zones_at_the_robot_speed_and_at_its_maximum() -> None:
    cfg = SafetyConfig()
    # Far human speed 1.6 m/s * (T_R 0.1 + T_S 0.3) + C 0.2 + Z_d 0.1 + Z_r 0.02 = 0.96 m,
    # plus v * (T_R + T_S / 2) = 0.25 v.
    zones = safety_view.markers(report(RUN, speed=0.0), cfg)
    assert [(z.ns, z.id, z.kind, z.text) for z in zones] == [
        ('zones', 0, 'cylinder', 'protective'), ('zones', 1, 'cylinder', 'slow')]
    protective, slow = zones
    assert protective.scale == pytest.approx((1.92, 1.92, 0.02))
    assert slow.scale == pytest.approx((2.42, 2.42, 0.02))
    assert protective.rgba == (0.9, 0.1, 0.1, 0.25) and slow.rgba == (1.0, 0.8, 0.0, 0.12)
    moving = safety_view.markers(report(RUN, speed=1.0), cfg)[0]
    assert moving.scale[0] == pytest.approx(2.42)


def test_zones_sit_at_the_tcp_on_the_floor() -> None:
    cfg = dataclasses.replace(SafetyConfig(), floor_z=-0.1)
    for zone in safety_view.markers(report(tcp=(0.5, -0.25, 0.8)), cfg):
        assert zone.position == pytest.approx((0.5, -0.25, -0.09))


def test_people_are_coloured_by_state_and_labelled_with_their_distance() -> None:
    cfg = SafetyConfig()
    people = (Person(4.0, 4.0, uncertainty_m=0.1, label='person 0.91'), Person(1.0, -2.0))
    shapes = safety_view.markers(report(STOP, *people, tcp=(1.0, 0.0, 0.5)), cfg)[2:]
    assert [(s.ns, s.id, s.kind) for s in shapes] == [
        ('people', 0, 'cylinder'), ('labels', 0, 'text'),
        ('people', 1, 'cylinder'), ('labels', 1, 'text')]
    body, label = shapes[0], shapes[1]
    assert body.position == (4.0, 4.0, 0.85) and body.scale == pytest.approx((0.7, 0.7, 1.7))
    assert body.rgba == (0.9, 0.1, 0.1, 0.8)
    assert label.text == 'person 0.91 5.00 m'    # hypot(3, 4) from the TCP, in the plane
    assert label.position == (4.0, 4.0, 1.9) and label.scale == (0.0, 0.0, 0.15)
    assert label.rgba == (1.0, 1.0, 1.0, 1.0)
    assert shapes[3].text == ' 2.00 m'


@pytest.mark.parametrize(('statuses', 'healthy'), [
    ([('detector_node: inference', 'OK')], True),
    ([('detector_node: inference', 'WARN')], True),
    ([('detector_node: inference', 'ERROR')], False),
    ([('detector_node: inference', 'STALE')], False),
    ([('detector_node: inference', 'LEVEL_7')], False),   # a foreign level: not healthy
    ([('detector_node: inference', 'OK'), ('detector_node: camera', 'ERROR')], False),
    ([('bridge_node: link', 'ERROR'), ('detector_node: inference', 'OK')], True),
    ([('bridge_node: link', 'ERROR')], None),               # nothing of the detector
    ([], None),
])
def test_detector_health_from_its_statuses(statuses: list[tuple[str, str]],
                                           healthy: bool | None) -> None:
    assert safety_view.detector_healthy(statuses, 'detector_node') is healthy


def test_detector_health_reads_the_configured_prefix() -> None:
    statuses = [('cam1/detector: inference', 'ERROR')]
    assert safety_view.detector_healthy(statuses, 'cam1/detector') is False
    assert safety_view.detector_healthy(statuses, 'detector_node') is None


def test_camera_to_base_becomes_the_parent_to_camera_transform() -> None:
    view = safety_view.camera_transform((1.0, 2.0, 3.0, 0.0, 0.0, 0.7071, 0.7071), 'base_link',
                                        'camera_optical_frame')
    assert (view.parent, view.child) == ('base_link', 'camera_optical_frame')
    assert view.translation == (1.0, 2.0, 3.0) and view.rotation == (0.0, 0.0, 0.7071, 0.7071)


def test_links_are_cylinders_along_their_capsules() -> None:
    import math

    from cobot_hybrid_perception.arm_geometry import Capsule

    links = (Capsule('up', (1.0, 1.0, 0.0), (1.0, 1.0, 0.4), 0.05),
             Capsule('out', (1.0, 1.0, 0.4), (1.6, 1.0, 0.4), 0.04),
             Capsule('down', (1.6, 1.0, 0.4), (1.6, 1.0, 0.0), 0.03))
    robot = RobotState(1.6, 1.0, 0.0, 0.2, links)
    shown = SafetyReport(Decision(RUN, 1.0, 'clear'), (Person(1.6, 3.0),), robot, True, 0.0, ())
    shapes = safety_view.markers(shown, SafetyConfig())
    zones = [s for s in shapes if s.ns == 'zones']
    assert all(z.position[:2] == (1.6, 1.0) for z in zones)   # around the TCP
    up, out, down = (s for s in shapes if s.ns == 'links')
    assert up.position == pytest.approx((1.0, 1.0, 0.2)) and up.orientation == (0, 0, 0, 1)
    assert up.scale == pytest.approx((0.1, 0.1, 0.5))          # length + both end caps
    # +z turned onto +x: a quarter turn about y.
    assert out.orientation == pytest.approx((0.0, math.sqrt(0.5), 0.0, math.sqrt(0.5)))
    assert down.orientation == pytest.approx((1.0, 0.0, 0.0, 0.0))
    label = next(s for s in shapes if s.ns == 'labels')
    assert label.text.endswith('1.96 m')   # 2 m to the 'out' axis less its 0.04 m radius
