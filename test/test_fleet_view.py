"""What the planner shows: mission line colour per acknowledgement, labels, diagnostics."""

from __future__ import annotations

from typing import Any

import pytest

from cobot_hybrid_planner import fleet_view
from cobot_hybrid_planner.service import TASK_STATUSES

GREEN, ORANGE = (0.1, 0.8, 0.2, 1.0), (1.0, 0.6, 0.2, 1.0)


@pytest.mark.parametrize(('acked', 'rgba', 'label'), [
    ('accepted', GREEN, 'cobot-1 v3 accepted'),
    (None, ORANGE, 'cobot-1 v3 sent'),
    ('', ORANGE, 'cobot-1 v3 sent'),
    ('rejected', ORANGE, 'cobot-1 v3 rejected'),
    ('expired', ORANGE, 'cobot-1 v3 expired'),
])
def test_colour_and_label_per_acknowledgement(acked: str | None,
                                              rgba: tuple[float, ...], label: str) -> None:
    assert fleet_view.mission_colour(acked) == rgba
    assert fleet_view.mission_label('cobot-1', 3, acked) == label
    assert fleet_view.is_acknowledged(acked) is (acked == 'accepted')


def _mission(version: int, acked: str | None, *tasks: str) -> dict[str, Any]:
    return {'mission_id': 'm', 'version': version, 'tasks': list(tasks), 'acked': acked}


def test_one_line_per_robot_in_robot_order_from_its_start() -> None:
    missions = {'r2': _mission(1, None, 't1'), 'r1': _mission(4, 'accepted', 't2', 't3')}
    stations = {'r1': [(0.0, 0.0), (1.0, 2.0), (3, 4)], 'r2': [(5.0, 5.0), (6.0, 7.0)]}
    lines = fleet_view.mission_lines(missions, stations)
    assert [(line.index, line.robot_id) for line in lines] == [(0, 'r1'), (1, 'r2')]
    r1, r2 = lines
    assert r1.points == ((0.0, 0.0, 0.05), (1.0, 2.0, 0.05), (3.0, 4.0, 0.05))
    assert all(isinstance(v, float) for p in r1.points for v in p)
    assert (r1.rgba, r1.label, r1.label_at) == (GREEN, 'r1 v4 accepted', (0.0, 0.0, 0.5))
    assert (r2.rgba, r2.label, r2.label_at) == (ORANGE, 'r2 v1 sent', (5.0, 5.0, 0.5))


def test_no_missions_no_lines() -> None:
    assert fleet_view.mission_lines({}, {}) == []


@pytest.mark.parametrize('count', [0, 1, 3])
def test_fleet_health_is_ok_and_counts_missions(count: int) -> None:
    missions = {f'r{i}': _mission(1, None) for i in range(count)}
    assert fleet_view.fleet_health(missions) == ('OK', f'{count} missions')


def test_diagnostic_values() -> None:
    missions = {'r1': _mission(2, 'accepted'), 'r2': _mission(1, 'rejected'),
                'r3': _mission(1, None)}
    values = fleet_view.diagnostic_values(
        missions, frozenset({'r3', 'r1'}), sent=9, rejected_tasks=2, is_owner=True, epoch=4,
        task_statuses=['open', 'done', 'open', 'failed', 'in_progress', 'open'])
    assert values == {'robots_online': 'r1,r3', 'missions': '3', 'acknowledged': '1',
                      'missions_sent': '9', 'tasks_rejected': '2', 'owner': 'True',
                      'epoch': '4', 'tasks_open': '3', 'tasks_in_progress': '1',
                      'tasks_done': '1', 'tasks_failed': '1'}


def test_every_task_status_has_a_counter_even_at_zero() -> None:
    values = fleet_view.diagnostic_values({}, (), 0, 0, False, 0, [])
    assert {f'tasks_{s}' for s in TASK_STATUSES} <= set(values)
    assert values['robots_online'] == '' and values['owner'] == 'False'
    assert all(values[f'tasks_{s}'] == '0' for s in TASK_STATUSES)


def test_model_tags_show_what_each_robot_of_the_newest_rollout_runs() -> None:
    candidate = {'name': 'det', 'version': 2, 'sha256': 'b' * 64}
    champion = {'name': 'det', 'version': 1, 'sha256': 'a' * 64}
    rollout = {'state': 'running', 'candidate': candidate, 'champion': champion, 'targets': {
        'r1': {'active_sha256': 'b' * 64}, 'r2': {'active_sha256': 'a' * 64},
        'r3': {'active_sha256': None}}}
    assert fleet_view.model_tags(rollout) == {'r1': 'det v2 (candidate, running)',
                                              'r2': 'det v1 (champion)'}
    assert fleet_view.model_tags(None) == {}
