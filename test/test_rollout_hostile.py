"""Model rollouts against what goes wrong: hostile or chatty robots, duplicates, clocks, files.

Found by a review as attacker and as a new user; each case failed before its fix. The fleet
is the real bridge and planner cores on the in-memory broker (``test_model_rollout.Fleet``)
or the rollout controller alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_model_rollout import ROUTES, Fleet, _model_file, _ref

from cobot_hybrid_bridge.bridge import EdgeBridge
from cobot_hybrid_bridge.bridge_config import BridgeConfig
from cobot_hybrid_bridge.memory_link import memory_link_factory
from cobot_hybrid_bridge.model_fetch import FetchConfig, ModelFetcher
from cobot_hybrid_planner.rollout import RolloutController, RolloutError, RolloutSpec
from cobot_hybrid_planner.rollout_gates import GateConfig, GateError
from cobot_hybrid_planner.rollout_waves import waves
from cobot_hybrid_planner.service import PlannerConfig, PlannerService
from cobot_hybrid_planner.site import parse_site
from cobot_hybrid_protocol.model_update import (
    Acceptance,
    BlobRequest,
    ModelCommand,
    ModelMetrics,
    ModelRef,
    ModelStatus,
    Source,
)
from cobot_hybrid_protocol.topics import command_topic
from cobot_hybrid_protocol.transport import MemoryBroker

T0 = 1_800_000_000.0


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {'champion': _model_file(tmp_path / 'champion.onnx', 96 * 1024, 1),
            'candidate': _model_file(tmp_path / 'candidate.onnx', 200 * 1024 + 100, 2),
            'other': _model_file(tmp_path / 'other.onnx', 64 * 1024, 3)}


def _controller(tmp_path: Path, robots: int = 8, steps: tuple[float, ...] = (0.5, 1.0),
                size: int = 6000) -> tuple[RolloutController, ModelRef, ModelRef, dict[str, str],
                                           list[str], list[int]]:
    sent: list[int] = []
    ctl = RolloutController(tmp_path / 'r', lambda robot, cmd: b'x',
                            lambda topic, payload, exp: sent.append(len(payload)))
    cand = tmp_path / 'n.onnx'
    cand.write_bytes(b'n' * size)
    new = ModelRef('m', 2, hashlib.sha256(cand.read_bytes()).hexdigest(), size, 320)
    old = ModelRef('m', 1, 'a' * 64, 5000, 320)
    fleet = {f'r{i}': 's' for i in range(robots)}
    spec = RolloutSpec('r-1', new, old, fleet, steps=steps,
                       gates=GateConfig(min_frames=100, min_windows=2), observe_s=60.0,
                       acceptance=Acceptance(watch_s=1.0))
    ctl.create(spec, cand, T0)
    for r in fleet:
        ctl.on_status(r, ModelStatus('active', active=old, stamp=T0), T0)
    return ctl, new, old, fleet, waves('r-1', fleet, spec.steps)[0], sent


def _m(ref: ModelRef, p99: float, now: float, frames: int = 60) -> ModelMetrics:
    return ModelMetrics(ref, 10.0, frames, 0, p99 * 0.7, p99, 1.0, now)


def _step_ready(ctl: RolloutController, new: ModelRef, fleet: dict[str, str],
                canaries: list[str]) -> float:
    t = T0 + 1
    ctl.step(t, frozenset(fleet))
    for r in canaries:
        ctl.on_status(r, ModelStatus('active', active=new, stamp=t), t)
    ctl.step(t + 1, frozenset(fleet))
    return t + 2


# --- the gates count robots, not windows ------------------------------------------------------

def test_one_chatty_champion_robot_does_not_set_the_baseline(tmp_path: Path) -> None:
    ctl, new, old, fleet, canaries, _ = _controller(tmp_path)
    t = _step_ready(ctl, new, fleet, canaries)
    champions = [r for r in fleet if r not in canaries]
    for _ in range(6):
        t += 10
        for r in canaries:
            ctl.on_metrics(r, _m(new, 900.0, t), t)        # 30x slower than the champion
        for r in champions[1:]:
            ctl.on_metrics(r, _m(old, 30.0, t), t)
        for _ in range(10):                                # one robot reporting 10x as often
            ctl.on_metrics(champions[0], _m(old, 1000.0, t, frames=6), t)
    ctl.step(t + 1, frozenset(fleet))
    verdict = ctl.status('r-1')['verdict']
    assert verdict['outcome'] == 'fail' and 'latency_p99' in verdict['reason'], verdict


def test_one_canary_of_four_cannot_pass_a_step_alone(tmp_path: Path) -> None:
    ctl, new, old, fleet, canaries, _ = _controller(tmp_path)
    t = _step_ready(ctl, new, fleet, canaries)
    for _ in range(7):
        t += 10
        ctl.on_metrics(canaries[0], _m(new, 30.0, t), t)    # three canaries never report
        for r in fleet:
            if r not in canaries:
                ctl.on_metrics(r, _m(old, 30.0, t), t)
    ctl.step(t + 1, frozenset(fleet))
    verdict = ctl.status('r-1')['verdict']
    assert verdict['outcome'] == 'inconclusive' and 'fewer than 2' in verdict['reason']


# --- what robots may ask of the cloud ---------------------------------------------------------

def test_chunk_requests_are_rate_limited_per_robot(tmp_path: Path) -> None:
    size = 16 * 1024 * 1024
    ctl, new, _, fleet, canaries, sent = _controller(tmp_path, robots=1, steps=(1.0,),
                                                     size=size)
    ctl.step(T0 + 1, frozenset(fleet))
    robot = canaries[0]
    for _ in range(50):                     # 50 requests of ~200 bytes for 1 MiB each
        ctl.on_blob_request(robot, BlobRequest(new.sha256, 0, 8 * 128 * 1024, 128 * 1024))
    assert ctl.bytes_sent <= 2 * size and ctl.requests_refused > 0
    # A chunk size other than the command's is refused too.
    assert ctl.on_blob_request(robot, BlobRequest(new.sha256, 0, 256 * 1024, 256 * 1024)) == 0


def test_a_corrupt_rollout_store_is_moved_aside_and_the_planner_runs(tmp_path: Path) -> None:
    (tmp_path / 'cloud' / 'rollouts').mkdir(parents=True)
    (tmp_path / 'cloud' / 'rollouts' / 'rollouts.db').write_bytes(b'\x00garbage' * 1000)
    site = parse_site({'frame_id': 'map', 'stations': {'a': {'x': 0, 'y': 0, 'yaw': 0}},
                       'robots': {'cobot-1': {'capabilities': ['pick'], 'start': 'a'}}})
    service = PlannerService(PlannerConfig(data_dir=tmp_path / 'cloud'), site,
                             Ed25519PrivateKey.generate(),
                             transport=MemoryBroker().transport('p'))
    try:
        assert service.rollouts.rollouts() == []
        assert list((tmp_path / 'cloud' / 'rollouts').glob('rollouts.db.corrupt-*'))
    finally:
        service.stop()


def test_an_unreadable_rollout_fails_alone(tmp_path: Path) -> None:
    ctl, *_ = _controller(tmp_path)
    ctl._db.execute("UPDATE rollouts SET spec = '{\"broken\": 1}'")
    ctl.step(T0 + 5, frozenset())
    assert ctl.state('r-1') == 'failed' and 'unreadable' in ctl.status_reason('r-1')


# --- robots and their links -------------------------------------------------------------------

def test_a_duplicate_delivery_of_the_current_command_does_not_fail_the_rollout(
        tmp_path: Path, files: dict[str, Path]) -> None:
    fleet = Fleet(tmp_path, 3, files['champion'])
    try:
        v2 = _ref(files['candidate'], 2)
        fleet.planner.rollouts.create(fleet.spec('r-dup', v2, steps=(1.0,)),
                                      files['candidate'], fleet.clock.wall())
        fleet.run(0.2)
        robot = fleet.ids[0]
        sent = [m for _, m in fleet.broker.log if m.topic == command_topic(robot, 'model')]
        again = fleet.broker.transport('broker-redelivery')
        again.connect([], lambda message: None)
        again.publish(sent[-1].topic, sent[-1].payload, qos=1)     # QoS 1 allows it
        fleet.run(8.0, metrics_every_s=0.5, all={'frames': 60})
        state = fleet.planner.rollouts.status('r-dup')
        assert state['state'] == 'succeeded', state['reason']
        assert fleet.bridges[robot].stats()['commands_rejected'].get('replayed') == 1
    finally:
        fleet.close()


def test_a_forged_crash_loop_without_the_rollout_and_revision_is_ignored(
        tmp_path: Path, files: dict[str, Path]) -> None:
    fleet = Fleet(tmp_path, 8, files['champion'])
    try:
        v2 = _ref(files['candidate'], 2)
        spec = fleet.spec('r-1', v2, steps=(0.25, 1.0))
        fleet.planner.rollouts.create(spec, files['candidate'], fleet.clock.wall())
        fleet.run(2.0)
        canary = waves('r-1', spec.robots, spec.steps)[0][0]
        forged = {'schema': 'cobot_hybrid/model_status/v1', 'state': 'rolled_back',
                  'rollout_id': '', 'revision': 0, 'model': None, 'active': None,
                  'reason': 'crash_loop: forged', 'metrics': {}, 'stamp': fleet.clock.wall()}
        assert fleet.bridges[canary].report_model_status(json.dumps(forged))
        fleet.run(2.0)
        assert fleet.planner.rollouts.state('r-1') == 'running'
    finally:
        fleet.close()


def test_the_next_rollout_is_not_fought_by_the_last(tmp_path: Path,
                                                    files: dict[str, Path]) -> None:
    fleet = Fleet(tmp_path, 3, files['champion'])
    try:
        v2, v3 = _ref(files['candidate'], 2), _ref(files['other'], 3)
        fleet.planner.rollouts.create(fleet.spec('r-1', v2, steps=(1.0,)),
                                      files['candidate'], fleet.clock.wall())
        fleet.run(8.0, metrics_every_s=0.5, all={'frames': 60})
        assert fleet.planner.rollouts.state('r-1') == 'succeeded'
        fleet.champion = v2
        fleet.planner.rollouts.create(
            RolloutSpec('r-2', v3, v2, dict(fleet.spec('x', v3).robots), steps=(1.0,),
                        gates=GateConfig(min_frames=100, min_windows=2), observe_s=3.0,
                        step_timeout_s=30.0, resend_s=5.0, chunk_bytes=16 * 1024,
                        acceptance=Acceptance(watch_s=2.0)),
            files['other'], fleet.clock.wall())
        fleet.run(8.0, metrics_every_s=0.5, all={'frames': 60})
        assert fleet.planner.rollouts.state('r-2') == 'succeeded'
        sent = fleet.planner.rollouts.commands_sent
        fleet.run(20.0, metrics_every_s=0.5, all={'frames': 60})
        assert all(e.active == v3 for e in fleet.edges.values())
        assert fleet.planner.rollouts.commands_sent == sent         # nobody fights
    finally:
        fleet.close()


@pytest.mark.parametrize('robots', [1, 2])
def test_small_fleets_succeed_with_the_default_steps(tmp_path: Path, files: dict[str, Path],
                                                     robots: int) -> None:
    fleet = Fleet(tmp_path, robots, files['champion'])
    try:
        v2 = _ref(files['candidate'], 2)
        fleet.planner.rollouts.create(fleet.spec('r-s', v2), files['candidate'],
                                      fleet.clock.wall())
        fleet.run(25.0, metrics_every_s=0.5, all={'frames': 60})
        assert fleet.planner.rollouts.state('r-s') == 'succeeded', \
            fleet.planner.rollouts.status('r-s')
    finally:
        fleet.close()


def test_a_last_step_without_data_never_promotes(tmp_path: Path,
                                                 files: dict[str, Path]) -> None:
    fleet = Fleet(tmp_path, 3, files['champion'])
    try:
        v2 = _ref(files['candidate'], 2)
        fleet.planner.rollouts.create(fleet.spec('r-q', v2, steps=(1.0,), step_timeout_s=8.0),
                                      files['candidate'], fleet.clock.wall())
        fleet.run(12.0)                      # every robot swaps; none sends metrics
        status = fleet.planner.rollouts.status('r-q')
        assert status['state'] == 'paused' and 'not enough data' in status['reason']
    finally:
        fleet.close()


# --- the operator -----------------------------------------------------------------------------

def test_a_finished_rollout_cannot_be_paused(tmp_path: Path) -> None:
    ctl, *_ = _controller(tmp_path)
    ctl.abort('r-1', T0 + 1)
    with pytest.raises(RolloutError, match='not running'):
        ctl.pause('r-1', T0 + 2)
    with pytest.raises(RolloutError, match='no rollout'):
        ctl.pause('nope', T0 + 2)


@pytest.mark.parametrize(('change', 'error'), [
    ({'rollout_id': 'r' * 120}, 'refuse'),
    ({'acceptance': Acceptance(min_agreement=7.0)}, 'refuse'),
    ({'step_timeout_s': math.nan}, 'step_timeout_s'),
    ({'validity_s': 3 * 86_400.0}, 'validity_s'),
    ({'champion': None}, 'no champion'),
])
def test_a_rollout_robots_would_refuse_is_refused_up_front(
        tmp_path: Path, files: dict[str, Path], change: dict[str, Any], error: str) -> None:
    v2, v1 = _ref(files['candidate'], 2), _ref(files['champion'], 1)
    base: dict[str, Any] = {'rollout_id': 'r', 'candidate': v2, 'champion': v1,
                            'robots': {'a': 's'}}
    with pytest.raises(RolloutError, match=error):
        RolloutSpec(**(base | change))


@pytest.mark.parametrize('change', [{'min_windows': 0}, {'min_frames': -1},
                                    {'max_latency_ratio': math.nan}])
def test_gate_settings_that_judge_nothing_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(GateError):
        GateConfig(**change)


# --- clocks -----------------------------------------------------------------------------------

def test_a_wall_clock_step_on_the_robot_neither_fails_nor_freezes_a_download(
        tmp_path: Path) -> None:
    wall, mono = [T0], [100.0]
    fetcher = ModelFetcher(tmp_path, FetchConfig(), lambda raw: None,  # type: ignore[arg-type]
                           lambda: wall[0], lambda: mono[0])
    data = b'x' * (1024 * 1024)
    ref = ModelRef('m', 2, hashlib.sha256(data).hexdigest(), len(data), 320)
    fetcher.start(ModelCommand('c', 'r', 'ro', 5, T0, T0 + 3600, 'install', ref,
                               Source('mqtt', 131072)), b'{}')
    fetcher.tick()
    mono[0] += 1.0
    first = fetcher.tick().requests
    assert first
    wall[0] += 900.0                       # NTP steps the wall clock 15 min ahead
    mono[0] += 0.1
    assert not [s for s in fetcher.tick().statuses if s.state == 'failed']
    wall[0] -= 7200.0                      # and 2 h back
    asked = []
    for _ in range(150):                   # 15 s: the window is asked again after 10 s
        mono[0] += 0.1
        asked += fetcher.tick().requests
    assert asked


def test_a_wall_clock_step_in_the_cloud_is_rebased(tmp_path: Path) -> None:
    ctl, new, old, fleet, canaries, _ = _controller(tmp_path, steps=(1.0,))
    ctl.step(T0 + 1, frozenset(fleet))
    ctl.rebase(3600.0)                     # the service saw the wall clock jump 1 h ahead
    ctl.step(T0 + 3602, frozenset(fleet))
    assert ctl.state('r-1') == 'running'   # not a 1 h "timeout"


def test_store_rows_survive_a_reopen(tmp_path: Path) -> None:
    ctl, *_ = _controller(tmp_path)
    ctl.close()
    again = RolloutController(tmp_path / 'r', lambda robot, cmd: b'x', lambda *a: None)
    assert again.state('r-1') == 'running'
    assert sqlite3.connect(tmp_path / 'r' / 'rollouts.db').execute(
        'PRAGMA quick_check').fetchone()[0] == 'ok'


class Behind:
    """A robot's clock ``offset`` seconds off the fleet's."""

    def __init__(self, clock: Any, offset: float) -> None:
        self.c, self.off = clock, offset

    def wall(self) -> float:
        return float(self.c.wall() + self.off)

    def monotonic(self) -> float:
        return float(self.c.monotonic())


def test_a_robot_whose_clock_is_behind_shows_why_in_the_rollout(
        tmp_path: Path, files: dict[str, Path]) -> None:
    fleet = Fleet(tmp_path, 2, files['champion'])
    try:
        bad = fleet.ids[0]
        fleet.stop_robot(bad)
        b = EdgeBridge(BridgeConfig(robot_id=bad, data_dir=str(fleet.tmp / 'edge'),
                                    cloud_public_keys=(f'planner={fleet.pub}',),
                                    state_period_s=1.0, delivery='cloud',
                                    model_fetch_max_bytes_per_s=8e6),
                       ROUTES, clock=Behind(fleet.clock, -600.0),
                       link_factory=memory_link_factory(fleet.broker))
        b.start()
        fleet.bridges[bad] = b
        v2 = _ref(files['candidate'], 2)
        fleet.planner.rollouts.create(fleet.spec('r-c', v2, steps=(1.0,), step_timeout_s=20.0),
                                      files['candidate'], fleet.clock.wall())
        fleet.run(40.0, metrics_every_s=0.5, all={'frames': 60})
        st = fleet.planner.rollouts.status('r-c')
        assert 'not_yet_valid' in (st['reason'] + str(st['targets'].get(bad))), \
            'the refusal reason is nowhere in the rollout status'
    finally:
        fleet.close()


def test_a_champion_robot_that_goes_away_does_not_hold_the_step(tmp_path: Path) -> None:
    ctl, new, old, fleet, canaries, _ = _controller(tmp_path)
    t = _step_ready(ctl, new, fleet, canaries)
    champions = [r for r in fleet if r not in canaries]
    away = champions[0]
    t += 10
    ctl.on_metrics(away, _m(old, 30.0, t), t)                # one window, then gone
    for _ in range(7):
        t += 10
        for r in canaries:
            ctl.on_metrics(r, _m(new, 30.0, t), t)
        for r in champions[1:]:
            ctl.on_metrics(r, _m(old, 30.0, t), t)
    ctl.step(t + 1, frozenset(fleet) - {away})
    verdict = ctl.status('r-1')['verdict']
    assert verdict['outcome'] == 'pass', verdict


def test_no_settled_champion_robot_is_still_inconclusive(tmp_path: Path) -> None:
    ctl, new, old, fleet, canaries, _ = _controller(tmp_path)
    t = _step_ready(ctl, new, fleet, canaries)
    champions = [r for r in fleet if r not in canaries]
    t += 10
    for r in champions:
        ctl.on_metrics(r, _m(old, 30.0, t, frames=600), t)   # one big window each
    for _ in range(7):
        t += 10
        for r in canaries:
            ctl.on_metrics(r, _m(new, 30.0, t), t)
    ctl.step(t + 1, frozenset(fleet))
    verdict = ctl.status('r-1')['verdict']
    assert verdict['outcome'] == 'inconclusive', verdict
    assert 'no champion robot sent 2' in verdict['reason'], verdict
