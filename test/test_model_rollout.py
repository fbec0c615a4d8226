"""Model rollouts through the real bridge and planner cores on the in-memory broker.

The robots here are real ``EdgeBridge`` cores (outbox, command verifier, chunk fetcher) and
the cloud a real ``PlannerService`` (fleet store, rollout controller, blob store); the
detector's side is played by :class:`EdgeModel`, which does what the detector's model
manager does with a ``model_update`` at its simplest: open the signed command with the cloud
key, check the file's sha256, report ``active`` (or what a test asks it to report). The real
detector, ONNX Runtime and mosquitto are in ``test_model_fleet.py``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cobot_hybrid_bridge.bridge import EdgeBridge
from cobot_hybrid_bridge.bridge_config import BridgeConfig
from cobot_hybrid_bridge.memory_link import memory_link_factory
from cobot_hybrid_bridge.routes import parse_routes
from cobot_hybrid_planner.rollout import RolloutError, RolloutSpec, rollout_health
from cobot_hybrid_planner.rollout_gates import GateConfig, Window, judge
from cobot_hybrid_planner.rollout_waves import fleet_order, waves
from cobot_hybrid_planner.service import PlannerConfig, PlannerService
from cobot_hybrid_planner.site import parse_site
from cobot_hybrid_protocol import signing
from cobot_hybrid_protocol.clock import SteppableClock
from cobot_hybrid_protocol.limits import COMMAND_LIMITS, parse_json
from cobot_hybrid_protocol.model_update import (
    Acceptance,
    ModelCommand,
    ModelMetrics,
    ModelRef,
    ModelStatus,
    Source,
    command_to_json,
    metrics_to_json,
    status_to_json,
    validate_local_update,
    validate_model_command,
)
from cobot_hybrid_protocol.topics import blob_topic, command_topic
from cobot_hybrid_protocol.transport import MemoryBroker

ROUTES = parse_routes({'routes': [
    {'ros_topic': 'protective_stop', 'type': 'std_msgs/msg/Bool',
     'mqtt_topic': 'events/protective_stop', 'priority': 9}]})
CHUNK = 16 * 1024


def _ref(path: Path, version: int, name: str = 'detector') -> ModelRef:
    data = path.read_bytes()
    return ModelRef(name, version, hashlib.sha256(data).hexdigest(), len(data), 320)


def _model_file(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(hashlib.sha256(str(seed).encode()).digest() * (size // 32))
    return path


class EdgeModel:
    """The detector's side of one robot, at its simplest (see the module docstring)."""

    def __init__(self, robot_id: str, keys: dict[str, Any], active: ModelRef) -> None:
        self.robot_id, self.keys, self.active = robot_id, keys, active
        self.fail_with = ''          # a reason: report failed instead of swapping
        self.updates = 0             # installs handed over

    def take(self, bridge: EdgeBridge, now: float) -> None:
        for update in bridge.take_model_updates():
            local = validate_local_update(json.loads(json.dumps(
                {'schema': 'cobot_hybrid/model_update/v1', 'command': update.command,
                 'path': update.path})))
            payload = signing.open_signed(local.command.encode(), self.keys, self.robot_id)
            command = validate_model_command(parse_json(payload, COMMAND_LIMITS))
            if command.action == 'install':
                self.updates += 1
                assert hashlib.sha256(Path(local.path).read_bytes()).hexdigest() \
                    == command.model.sha256
            if self.fail_with:
                status = ModelStatus('failed', command.rollout_id, command.revision,
                                     command.model, self.active, self.fail_with, {}, now)
            else:
                self.active = command.model
                status = ModelStatus('active', command.rollout_id, command.revision,
                                     command.model, self.active, '', {'swap_ms': 1.0}, now)
            assert bridge.report_model_status(json.dumps(status_to_json(status)))

    def metrics(self, bridge: EdgeBridge, now: float, frames: int = 50, p99: float = 30.0,
                detections: float = 1.0, errors: int = 0) -> None:
        body = metrics_to_json(ModelMetrics(self.active, 10.0, frames, errors, p99 * 0.7, p99,
                                            detections, now))
        assert bridge.report_model_metrics(json.dumps(body))


class Fleet:
    """A planner and ``n`` robots on one in-memory broker, on one steppable clock."""

    def __init__(self, tmp_path: Path, n: int, champion_file: Path) -> None:
        self.key = Ed25519PrivateKey.generate()
        pub = tmp_path / 'planner.pub'
        pub.write_bytes(self.key.public_key().public_bytes(Encoding.PEM,
                                                           PublicFormat.SubjectPublicKeyInfo))
        self.keys = signing.load_public_keys({'planner': pub})
        self.pub = pub
        self.tmp = tmp_path
        self.broker = MemoryBroker()
        self.clock = SteppableClock(wall_s=1_800_000_000.0)
        self.ids = [f'cobot-{i:02d}' for i in range(n)]
        site = parse_site({'frame_id': 'map', 'stations': {'a': {'x': 0, 'y': 0, 'yaw': 0}},
                           'robots': {r: {'capabilities': ['pick'], 'start': 'a'}
                                      for r in self.ids}})
        self.planner = PlannerService(
            PlannerConfig(data_dir=tmp_path / 'cloud', delivery_ack_period_s=0.01,
                          offline_after_s=3.0),
            site, self.key, clock=self.clock, transport=self.broker.transport('planner'))
        self.planner.start()
        self.champion = _ref(champion_file, 1)
        self.bridges: dict[str, EdgeBridge] = {}
        self.edges = {r: EdgeModel(r, self.keys, self.champion) for r in self.ids}
        for robot_id in self.ids:
            self.start_robot(robot_id)
        self.offline: set[str] = set()

    def start_robot(self, robot_id: str) -> EdgeBridge:
        bridge = EdgeBridge(BridgeConfig(robot_id=robot_id,
                                         data_dir=str(self.tmp / 'edge'),
                                         cloud_public_keys=(f'planner={self.pub}',),
                                         state_period_s=1.0, delivery='cloud',
                                         model_fetch_max_bytes_per_s=8e6),
                            ROUTES, clock=self.clock,
                            link_factory=memory_link_factory(self.broker))
        bridge.start()
        self.bridges[robot_id] = bridge
        return bridge

    def stop_robot(self, robot_id: str) -> None:
        bridge = self.bridges.pop(robot_id)
        bridge.stop()
        bridge.queue.close()

    def run(self, seconds: float, metrics_every_s: float = 0.0, **metrics: Any) -> None:
        next_metrics = self.clock.wall()
        for _ in range(int(seconds / 0.1)):
            self.clock.advance(0.1)
            now = self.clock.wall()
            send_metrics = metrics_every_s and now >= next_metrics
            for robot_id, bridge in list(self.bridges.items()):
                bridge.tick()
                bridge.take_commands()
                self.edges[robot_id].take(bridge, now)
                if send_metrics:
                    per = metrics.get(robot_id) or metrics.get('all') or {}
                    if self.edges[robot_id].active.sha256 != self.champion.sha256:
                        per = metrics.get('candidate', per)
                    self.edges[robot_id].metrics(bridge, now, **per)
            if send_metrics:
                next_metrics = now + metrics_every_s
            self.planner.step()

    def spec(self, rollout_id: str, candidate: ModelRef, **kwargs: Any) -> RolloutSpec:
        base: dict[str, Any] = {
            'gates': GateConfig(min_frames=100, min_windows=2), 'observe_s': 3.0,
            'step_timeout_s': 30.0, 'resend_s': 5.0, 'chunk_bytes': CHUNK,
            'acceptance': Acceptance(watch_s=2.0)}
        base.update(kwargs)
        return RolloutSpec(rollout_id, candidate, self.champion,
                           {r: f'site-{i % 3}' for i, r in enumerate(self.ids)}, **base)

    def close(self) -> None:
        for robot_id in list(self.bridges):
            self.stop_robot(robot_id)
        self.planner.stop()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {'champion': _model_file(tmp_path / 'champion.onnx', 96 * 1024, 1),
            'candidate': _model_file(tmp_path / 'candidate.onnx', 200 * 1024 + 100, 2),
            'other': _model_file(tmp_path / 'other.onnx', 64 * 1024, 3)}


@pytest.fixture
def fleet(tmp_path: Path, files: dict[str, Path]) -> Any:
    fleet = Fleet(tmp_path, 20, files['champion'])
    yield fleet
    fleet.close()


# --- pure pieces -------------------------------------------------------------------------------

def test_waves_are_deterministic_spread_across_sites_and_cumulative() -> None:
    robots = {f'r{i}': f'site-{i % 4}' for i in range(100)}
    steps = waves('rollout-1', robots, (0.05, 0.25, 1.0))
    assert [len(s) for s in steps] == [5, 25, 100]
    assert len({robots[r] for r in steps[0][:4]}) == 4        # one per site first
    assert steps[0] == steps[1][:5] and steps[1] == steps[2][:25]
    assert waves('rollout-1', robots, (0.05, 0.25, 1.0)) == steps   # stable
    assert fleet_order('rollout-2', robots)[:5] != steps[0]         # not always the same
    assert [len(s) for s in waves('r', {f'r{i}': 's' for i in range(20)},
                                  (0.05, 0.25, 1.0))] == [1, 5, 20]
    assert [len(s) for s in waves('r', {'a': 's', 'b': 's'}, (0.05, 0.1, 1.0))] == [1, 2, 2]


def _w(robot: str, sha: str, frames: int = 100, p99: float = 30.0, det: float = 1.0,
       errors: int = 0, stops: int = 0) -> Window:
    return Window(robot, sha, frames, errors, p99, det, stops)


@pytest.mark.parametrize(('canary', 'champion', 'outcome', 'gate'), [
    ([], [_w('b', 'x')] * 3, 'inconclusive', 'not enough data'),
    ([_w('a', 'y')] * 3, [], 'inconclusive', 'not enough data'),
    ([_w('a', 'y', frames=10)] * 3, [_w('b', 'x')] * 3, 'inconclusive', 'not enough data'),
    ([_w('a', 'y')] * 3, [_w('b', 'x')] * 3, 'pass', 'every gate'),
    ([_w('a', 'y', p99=80)] * 3, [_w('b', 'x')] * 3, 'fail', 'latency_p99'),
    ([_w('a', 'y', errors=10)] * 3, [_w('b', 'x')] * 3, 'fail', 'error_rate'),
    ([_w('a', 'y', det=0.0)] * 3, [_w('b', 'x')] * 3, 'fail', 'detection_rate'),
    ([_w('a', 'y', stops=2)] * 3, [_w('b', 'x')] * 3, 'fail', 'safety_stops'),
])
def test_gates(canary: list[Window], champion: list[Window], outcome: str, gate: str) -> None:
    verdict = judge(canary, champion, GateConfig(min_frames=100, min_windows=2))
    assert verdict.outcome == outcome and gate in verdict.reason, verdict


def test_a_spec_that_cannot_work_is_refused(files: dict[str, Path]) -> None:
    ref = _ref(files['champion'], 1)
    with pytest.raises(RolloutError, match='champion already'):
        RolloutSpec('r', ref, ref, {'a': 's'})
    with pytest.raises(RolloutError, match='steps'):
        RolloutSpec('r', _ref(files['candidate'], 2), ref, {'a': 's'}, steps=(0.5, 0.2))
    with pytest.raises(RolloutError, match='at least one robot'):
        RolloutSpec('r', _ref(files['candidate'], 2), ref, {})


# --- through the bridge and the planner --------------------------------------------------------

def test_a_rollout_goes_canary_first_then_to_everyone_and_promotes(
        fleet: Fleet, files: dict[str, Path]) -> None:
    candidate = _ref(files['candidate'], 2)
    fleet.planner.rollouts.create(fleet.spec('r-1', candidate), files['candidate'],
                                  fleet.clock.wall())
    fleet.run(2.0, metrics_every_s=0.5, all={'frames': 60})
    status = fleet.planner.rollouts.status('r-1')
    assert status['on_candidate'] == 1 and status['step'] == 1, status   # 5 % of 20
    canary = [r for r, e in fleet.edges.items() if e.active == candidate]
    assert len(canary) == 1
    fleet.run(40.0, metrics_every_s=1.0, all={'frames': 60})
    status = fleet.planner.rollouts.status('r-1')
    assert status['state'] == 'succeeded', status
    assert all(e.active == candidate for e in fleet.edges.values())
    level, message, _ = rollout_health([status])
    assert level == 'OK' and message.startswith(
        f'r-1 succeeded: step 3/3, 20/20 robots on detector v2 (detector v2 '
        f'({candidate.sha256[:12]}) runs on all 20 robots'), message
    assert rollout_health([]) == ('OK', 'no model rollouts', {})
    passed = [h['text'] for h in status['history']
              if h['text'].startswith('step') and 'passed' in h['text']]
    assert len(passed) == 2, status['history']          # the 5 % and the 25 % gates
    # Each robot fetched the file once: bytes sent = robots x size.
    assert fleet.planner.rollouts.bytes_sent == 20 * candidate.size_bytes
    for bridge in fleet.bridges.values():
        assert bridge.stats()['model_fetch'].get('chunks_dropped_not_asked', 0) == 0
    _every_model_message_follows_the_api(fleet.broker)


def _every_model_message_follows_the_api(broker: MemoryBroker) -> None:
    import base64

    import jsonschema

    from cobot_hybrid_protocol import schemas

    seen = set()
    for _, message in broker.log:
        kind = message.topic.split('/', 3)[-1]
        name = {'events/model_status': 'ModelStatusEnvelope',
                'events/model_metrics': 'ModelMetricsEnvelope',
                'events/blob_request': 'BlobRequestEnvelope',
                'cmd/model': 'SignedCommand'}.get(kind)
        if kind.startswith('blob/'):
            seen.add('BlobChunk')
            assert len(message.payload) <= CHUNK and message.qos == 1
            continue
        if name is None:
            continue
        seen.add(name)
        body = json.loads(message.payload)
        jsonschema.Draft7Validator(schemas.SCHEMAS[name]).validate(body)
        if name == 'SignedCommand':
            jsonschema.Draft7Validator(schemas.MODEL_COMMAND).validate(
                json.loads(base64.b64decode(body['payload'])))
        assert not message.retained
    assert seen == {'ModelStatusEnvelope', 'ModelMetricsEnvelope', 'BlobRequestEnvelope',
                    'SignedCommand', 'BlobChunk'}, seen


def test_robots_that_reach_the_artifact_store_fetch_over_http(
        fleet: Fleet, files: dict[str, Path]) -> None:
    import functools
    import http.server
    import threading

    blobs = fleet.planner.rollouts.blobs.folder
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(blobs))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    httpd.RequestHandlerClass.log_message = lambda *a: None   # type: ignore[method-assign]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        candidate = _ref(files['candidate'], 2)
        url = f'http://127.0.0.1:{httpd.server_address[1]}/{{sha256}}.onnx'
        fleet.planner.rollouts.create(fleet.spec('r-http', candidate, steps=(1.0,),
                                                 http_url=url), files['candidate'],
                                      fleet.clock.wall())
        for _ in range(100):
            fleet.run(0.5, metrics_every_s=0.2, all={'frames': 60})
            if fleet.planner.rollouts.state('r-http') != 'running':
                break
        assert fleet.planner.rollouts.state('r-http') == 'succeeded'
        assert all(e.active == candidate for e in fleet.edges.values())
        assert fleet.planner.rollouts.bytes_sent == 0           # nothing through the broker
    finally:
        httpd.shutdown()
    candidate = _ref(files['candidate'], 2)
    with pytest.raises(RolloutError, match='http_url'):
        fleet.spec('r-bad', candidate, http_url='ftp://x/{sha256}')
    with pytest.raises(RolloutError, match='http_url'):
        fleet.spec('r-bad', candidate, http_url='http://x/{digest}')


def test_no_data_never_passes_it_pauses(fleet: Fleet, files: dict[str, Path]) -> None:
    candidate = _ref(files['candidate'], 2)
    fleet.planner.rollouts.create(fleet.spec('r-quiet', candidate, step_timeout_s=10.0),
                                  files['candidate'], fleet.clock.wall())
    fleet.run(20.0)          # the canary swaps, but no robot sends metrics
    status = fleet.planner.rollouts.status('r-quiet')
    assert status['state'] == 'paused' and status['reason'].startswith('inconclusive'), status
    assert status['on_candidate'] == 1
    level, message, values = rollout_health([status])
    assert level == 'WARN' and 'not enough data' in message and values['state'] == 'paused'
    fleet.run(10.0)
    assert fleet.planner.rollouts.status('r-quiet')['on_candidate'] == 1   # no further step


def test_a_canary_that_fails_its_gate_is_rolled_back(fleet: Fleet,
                                                     files: dict[str, Path]) -> None:
    candidate = _ref(files['candidate'], 2)
    fleet.planner.rollouts.create(fleet.spec('r-slow', candidate), files['candidate'],
                                  fleet.clock.wall())
    fleet.run(12.0, metrics_every_s=1.0, all={'frames': 60},
              candidate={'frames': 60, 'p99': 200.0})
    status = fleet.planner.rollouts.status('r-slow')
    assert status['state'] == 'failed' and 'latency_p99' in status['reason'], status
    assert rollout_health([status])[0] == 'ERROR'
    fleet.run(8.0, metrics_every_s=1.0, all={'frames': 60})
    assert all(e.active == fleet.champion for e in fleet.edges.values())
    assert fleet.planner.rollouts.status('r-slow')['on_candidate'] == 0


def test_a_wrong_sha_fails_on_the_robot_and_rolls_back(fleet: Fleet,
                                                       files: dict[str, Path]) -> None:
    good = _ref(files['candidate'], 2)
    lying = ModelRef('detector', 3, hashlib.sha256(b'another file').hexdigest(),
                     good.size_bytes, 320)
    fleet.planner.rollouts.create(fleet.spec('r-sha', lying), files['candidate'],
                                  fleet.clock.wall(), check_file=False)
    fleet.run(3.0)
    status = fleet.planner.rollouts.status('r-sha')
    assert status['state'] == 'failed' and 'hash_mismatch' in status['reason'], status
    assert all(e.active == fleet.champion for e in fleet.edges.values())
    assert all(e.updates == 0 for e in fleet.edges.values())   # no install reached one


def test_a_robot_failure_reason_reaches_the_rollout(fleet: Fleet,
                                                    files: dict[str, Path]) -> None:
    candidate = _ref(files['candidate'], 2)
    for edge in fleet.edges.values():
        edge.fail_with = 'disagrees: agreement 0.41 < 0.90 on 8 stored frames'
    fleet.planner.rollouts.create(fleet.spec('r-dis', candidate), files['candidate'],
                                  fleet.clock.wall())
    fleet.run(3.0)
    status = fleet.planner.rollouts.status('r-dis')
    assert status['state'] == 'failed' and 'disagrees: agreement 0.41' in status['reason']


def test_a_download_resumes_after_the_robot_restarts(fleet: Fleet,
                                                     files: dict[str, Path]) -> None:
    candidate = _ref(files['candidate'], 2)
    spec = fleet.spec('r-resume', candidate, steps=(1.0,))
    order = waves('r-resume', spec.robots, spec.steps)[0]
    fleet.planner.rollouts.create(spec, files['candidate'], fleet.clock.wall())
    robot = order[0]
    fleet.clock.advance(0.1)
    fleet.planner.step()
    bridge = fleet.bridges[robot]
    bridge.take_commands()                    # the command: accepted, fetch started
    bridge.take_model_updates()               # asks for the first window
    bridge.tick()
    fleet.planner.step()                      # answers it
    bridge.take_model_updates()               # writes it
    part = next((fleet.tmp / 'edge' / robot / 'models').glob('*.part'))
    assert 0 < part.stat().st_size < candidate.size_bytes
    fleet.stop_robot(robot)
    sent_before = fleet.planner.rollouts.bytes_sent
    fleet.start_robot(robot)
    fleet.run(10.0)
    assert fleet.edges[robot].active == candidate
    # The whole fleet fetched the file once each, the restarted robot included: nothing that
    # had arrived before the restart was asked for again.
    assert fleet.planner.rollouts.bytes_sent <= 20 * candidate.size_bytes + CHUNK * 8
    assert sent_before > 0


def test_a_robot_offline_during_the_rollback_converges_when_it_returns(
        fleet: Fleet, files: dict[str, Path]) -> None:
    candidate = _ref(files['candidate'], 2)
    spec = fleet.spec('r-away', candidate, steps=(0.25, 1.0))
    fleet.planner.rollouts.create(spec, files['candidate'], fleet.clock.wall())
    fleet.run(3.0)
    on_candidate = [r for r, e in fleet.edges.items() if e.active == candidate]
    assert len(on_candidate) == 5
    away = on_candidate[0]
    fleet.stop_robot(away)
    fleet.run(5.0)                             # the planner sees it offline
    fleet.planner.rollouts.abort('r-away', fleet.clock.wall(), 'operator: bad labels')
    fleet.run(3.0)
    assert [r for r, e in fleet.edges.items() if e.active == candidate] == [away]
    fleet.start_robot(away)
    fleet.run(8.0)
    assert fleet.edges[away].active == fleet.champion
    assert fleet.planner.rollouts.state('r-away') == 'aborted'


def test_hostile_chunks_and_commands_are_counted_and_dropped(
        fleet: Fleet, files: dict[str, Path]) -> None:
    robot = fleet.ids[0]
    bridge = fleet.bridges[robot]
    attacker = fleet.broker.transport('attacker')
    attacker.connect([], lambda message: None)
    sha = _ref(files['candidate'], 2).sha256
    attacker.publish(blob_topic(robot, sha, 0), b'x' * CHUNK)          # nothing asked
    attacker.publish(f'cobot/v1/{robot}/blob/not-a-sha/0', b'x')
    forged = command_to_json(ModelCommand('c-1', robot, 'r-x', 5, fleet.clock.wall(),
                                          fleet.clock.wall() + 60, 'install',
                                          _ref(files['other'], 9), Source('mqtt', CHUNK)))
    other_key = Ed25519PrivateKey.generate()
    attacker.publish(command_topic(robot, 'model'),
                     signing.sign_command(other_key, 'planner', forged, robot))
    attacker.publish(command_topic(robot, 'model'),
                     signing.sign_command(fleet.key, 'planner', forged, fleet.ids[1]))
    fleet.run(1.0)
    stats = bridge.stats()
    assert stats['model_fetch'].get('chunks_dropped_other_file') == 1
    assert stats['commands_rejected'].get('bad_signature') == 2
    assert stats['commands_rejected'].get('bad_chunk_topic') == 1
    assert fleet.edges[robot].updates == 0
    # A robot asking for a file no rollout sent it gets nothing.
    requested = fleet.planner.rollouts.requests_refused
    fleet.planner.rollouts.on_blob_request(robot, __import__(
        'cobot_hybrid_protocol.model_update', fromlist=['BlobRequest']).BlobRequest(
            sha, 0, CHUNK, CHUNK))
    assert fleet.planner.rollouts.requests_refused == requested + 1


def test_a_replayed_model_command_is_refused(fleet: Fleet, files: dict[str, Path]) -> None:
    robot = fleet.ids[0]
    now = fleet.clock.wall()
    command = command_to_json(ModelCommand('c-9', robot, 'r-9', 7, now, now + 600,
                                           'install', _ref(files['other'], 4),
                                           Source('mqtt', CHUNK)))
    envelope = signing.sign_command(fleet.key, 'planner', command, robot)
    operator = fleet.broker.transport('operator')
    operator.connect([], lambda message: None)
    operator.publish(command_topic(robot, 'model'), envelope)
    fleet.run(0.5)
    operator.publish(command_topic(robot, 'model'), envelope)
    fleet.run(0.5)
    assert fleet.bridges[robot].stats()['commands_rejected'].get('replayed') == 1


def test_the_fetcher_refuses_a_download_it_has_no_room_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk is faked (this machine has tens of GB free): disk_usage says 10 MB."""
    import collections
    import shutil

    from cobot_hybrid_bridge import model_fetch

    usage = collections.namedtuple('usage', 'total used free')
    monkeypatch.setattr(model_fetch.shutil, 'disk_usage',
                        lambda path: usage(10**8, 9 * 10**7, 10**7))
    assert shutil.disk_usage is model_fetch.shutil.disk_usage
    fetcher = model_fetch.ModelFetcher(tmp_path, model_fetch.FetchConfig(),
                                       lambda raw: None,  # type: ignore[arg-type,return-value]
                                       lambda: 1_800_000_000.0)
    big = ModelRef('big', 1, 'a' * 64, 50 * 10**6, 320)
    fetcher.start(ModelCommand('c', 'r', 'x', 1, 1_800_000_000.0, 1_800_000_100.0, 'install',
                               big), b'{}')
    step = fetcher.tick()
    assert [s.code for s in step.statuses if s.state == 'failed'] == ['no_space']
    assert not list(tmp_path.glob('*.part'))
