"""The offload worker's core: taking uploads, the ledger's guarantees, retries, dead letters.

In memory (MemoryBroker) with small jobs written here; the real broker, the real snapshot
job and killed replicas are in test_offload_e2e.py.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from cobot_hybrid_planner.offload.job_ledger import JobLedger
from cobot_hybrid_planner.offload.worker import Worker, WorkerConfig, WorkerError
from cobot_hybrid_protocol.envelope import build_envelope
from cobot_hybrid_protocol.offload import JobInputError, Upload
from cobot_hybrid_protocol.schemas import schema
from cobot_hybrid_protocol.snapshot import SNAPSHOT_TYPE, build_snapshot
from cobot_hybrid_protocol.topics import worker_status_topic
from cobot_hybrid_protocol.transport import MemoryBroker, Message

T0 = 1_795_790_000.0
TOPIC = 'cobot/v1/{}/events/stop_snapshot'


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def snapshot(robot: str, seq: int, jpeg: bytes = b'\xff\xd8\xff\xe0fake') -> bytes:
    data = {'image': {'width': 4, 'height': 4, 'frame_id': 'cam', 'stamp': T0 - 1,
                      'bytes': len(jpeg)},
            'trigger': {'topic': 'protective_stop', 'field': 'data', 'value': True,
                        'stamp': T0 - 1}, 'context': {}}
    return build_snapshot(build_envelope(robot, seq, T0 - 1, 'image', SNAPSHOT_TYPE, data),
                          jpeg)


def make(tmp_path: Path, job: Any, clock: Clock | None = None, **cfg: Any
         ) -> tuple[Worker, MemoryBroker, Clock]:
    broker = MemoryBroker()
    clock = clock or Clock()
    options = {'data_dir': str(tmp_path / 'group'), 'worker_id': cfg.pop('worker_id', 'w-a'),
               'retry_base_s': 1.0, **cfg}
    worker = Worker(WorkerConfig(**options), broker.transport(options['worker_id']),
                    {'snapshot': job}, clock, dim=4)
    worker.start()
    return worker, broker, clock


def send(broker: MemoryBroker, robot: str, seq: int, payload: bytes | None = None,
         retained: bool = False, props: dict[str, str] | None = None) -> None:
    robot_side = broker.transport(f'robot-{robot}-{seq}')
    robot_side.connect([], lambda m: None)
    robot_side.publish(TOPIC.format(robot), snapshot(robot, seq) if payload is None
                       else payload, retain=retained)
    del props


def drain(worker: Worker, clock: Clock, steps: int = 50, dt: float = 0.0) -> None:
    for _ in range(steps):
        worker.step()
        worker._pool.shutdown(wait=True)   # the jobs of this step are done
        worker._pool = type(worker._pool)(worker.cfg.concurrency)
        clock.now += dt


def test_each_upload_gives_one_result_however_often_it_comes(tmp_path: Path) -> None:
    runs: list[tuple[str, int]] = []

    def job(upload: Upload) -> dict[str, Any]:
        runs.append((upload.robot_id, upload.seq))
        return {'verdict': 'agree', 'bytes': len(upload.payload)}

    worker, broker, clock = make(tmp_path, job)
    for seq in (1, 2, 2, 3, 1):                 # the robot sent some twice
        send(broker, 'cobot-1', seq)
    drain(worker, clock)
    assert sorted(runs) == [('cobot-1', 1), ('cobot-1', 2), ('cobot-1', 3)]
    assert worker.taken == 3 and worker.duplicates == 2
    results = worker.ledger.results()
    assert [(r['robot_id'], r['seq']) for r in results] == [('cobot-1', 1), ('cobot-1', 2),
                                                            ('cobot-1', 3)]
    assert results[0]['result']['bytes'] == len(snapshot('cobot-1', 1))
    status = worker.status()
    assert status['backlog'] == 0 and status['done'] == 3 and status['dead'] == 0
    worker.close()


@pytest.mark.parametrize(('topic', 'payload', 'retained', 'reason'), [
    (TOPIC.format('cobot-1'), None, True, 'retained'),
    (TOPIC.format('cobot-1'), snapshot('cobot-2', 1), False, 'wrong_robot'),
    (TOPIC.format('cobot-1'), b'{"robot_id": "cobot-1", "seq": 1}\n\xff\xd8', False,
     'bad_header'),
    (TOPIC.format('cobot-1'), b'\xff\xd8\xff no envelope, no properties', False, 'no_seq'),
    (TOPIC.format('cobot-1'), b'x' * 5000, False, 'too_large'),
    ('cobot/v1/cobot-1/events/other', None, False, 'not_an_upload'),
    ('cobot/v1/orders/events/stop_snapshot', None, False, 'bad_topic'),
    (TOPIC.format('cobot-1'), b'{"a":' + b'[' * 3000 + b'\n', False, 'bad_header'),
])
def test_a_hostile_upload_is_refused_with_its_reason_and_the_next_one_is_taken(
        tmp_path: Path, topic: str, payload: bytes | None, retained: bool, reason: str) -> None:
    worker, broker, clock = make(tmp_path, lambda u: {'ok': True}, max_upload_bytes=4096)
    worker.on_message(Message(topic, snapshot('cobot-1', 9) if payload is None else payload,
                              retained=retained))
    assert worker.refused == {reason: 1}, worker.refused
    send(broker, 'cobot-1', 10)
    drain(worker, clock, 3)
    assert [r['seq'] for r in worker.ledger.results()] == [10]
    worker.close()


def test_the_seq_of_the_properties_must_be_the_envelopes(tmp_path: Path) -> None:
    worker, _, _ = make(tmp_path, lambda u: {})
    for props, reason in (({'seq': '8'}, 'bad_seq'), ({'seq': 'x'}, 'bad_seq'),
                          ({'robot_id': 'cobot-9'}, 'wrong_robot')):
        worker.on_message(Message(TOPIC.format('cobot-1'), snapshot('cobot-1', 7),
                                  properties=props))
        assert worker.refused[reason] >= 1
    worker.on_message(Message(TOPIC.format('cobot-1'), b'\xff\xd8 a bare JPEG',
                              properties={'seq': '12'}))   # a seq in the properties is enough
    assert worker.taken == 1
    worker.close()


def test_a_bad_input_is_dead_at_once_and_a_failing_job_is_retried_with_backoff(
        tmp_path: Path) -> None:
    attempts: dict[int, int] = {}

    def job(upload: Upload) -> dict[str, Any]:
        attempts[upload.seq] = attempts.get(upload.seq, 0) + 1
        if upload.seq == 1:
            raise JobInputError('not a JPEG')
        if upload.seq == 2:
            raise RuntimeError('the model server is down')
        if upload.seq == 3 and attempts[3] < 3:
            raise OSError('flaky')
        return {'ok': True}

    worker, broker, clock = make(tmp_path, job, max_attempts=4, concurrency=3)
    for seq in (1, 2, 3):
        send(broker, 'cobot-1', seq)
    drain(worker, clock, 1)
    assert attempts == {1: 1, 2: 1, 3: 1}
    drain(worker, clock, 5)                      # the backoff holds them: no time passed
    assert attempts == {1: 1, 2: 1, 3: 1}
    clock.now += 1.0                             # 1 s after the first failure
    drain(worker, clock, 1)
    assert attempts == {1: 1, 2: 2, 3: 2}
    clock.now += 1.5                             # the second wait is 2 s: not yet
    drain(worker, clock, 1)
    assert attempts[2] == 2
    clock.now += 0.6
    drain(worker, clock, 1)
    assert attempts == {1: 1, 2: 3, 3: 3}
    clock.now += 4.1
    drain(worker, clock, 1)
    assert attempts[2] == 4
    dead = {d['seq']: d for d in worker.ledger.dead()}
    assert set(dead) == {1, 2}
    assert dead[1]['attempts'] == 1 and 'not a JPEG' in dead[1]['error']
    assert dead[2]['attempts'] == 4 and 'model server is down' in dead[2]['error']
    assert [r['seq'] for r in worker.ledger.results()] == [3]
    assert worker.ledger.retry_dead(clock.now) == 2  # after a fix: requeued
    drain(worker, clock, 1)
    assert attempts[1] == 2
    worker.close()


def test_a_job_whose_worker_died_is_taken_by_another_after_its_lease(tmp_path: Path) -> None:
    clock = Clock()
    done: list[str] = []
    worker_b, broker, _ = make(tmp_path, lambda u: done.append('b') or {'by': 'b'}, clock,
                               worker_id='w-b', lease_s=10.0)
    send(broker, 'cobot-1', 5)
    ledger_a = JobLedger(tmp_path / 'group' / 'ledger.db')
    held = ledger_a.claim('w-a', clock.now, 10.0)    # replica A took it, then was killed
    assert held is not None and held.attempts == 1
    drain(worker_b, clock, 2)
    assert done == []                                # A's lease still holds
    clock.now += 10.5
    drain(worker_b, clock, 1)
    assert done == ['b']
    result = worker_b.ledger.results()[0]
    assert result['worker'] == 'w-b' and result['attempts'] == 2
    assert not ledger_a.complete(held, 'w-a', {'by': 'a'}, clock.now)  # A back late: ignored
    assert [r['result'] for r in worker_b.ledger.results()] == [{'by': 'b'}]
    ledger_a.close()
    worker_b.close()


def test_an_upload_that_kills_every_worker_ends_dead(tmp_path: Path) -> None:
    clock = Clock()
    ledger = JobLedger(tmp_path / 'ledger.db', max_attempts=3)
    assert ledger.put('cobot-1', 1, 'snapshot', 'events/stop_snapshot', b'x', clock.now)
    for n in range(3):                                # three workers die on it in turn
        assert ledger.claim(f'w-{n}', clock.now, 5.0) is not None
        clock.now += 6.0
    assert ledger.claim('w-3', clock.now, 5.0) is None
    (dead,) = ledger.dead()
    assert dead['seq'] == 1 and 'ended with its worker' in dead['error']
    ledger.close()


def test_a_lease_is_renewed_while_the_job_runs(tmp_path: Path) -> None:
    clock = Clock()
    release = threading.Event()
    started = threading.Event()

    def job(upload: Upload) -> dict[str, Any]:
        started.set()
        release.wait(10)
        return {}

    worker, broker, _ = make(tmp_path, job, clock, lease_s=3.0)
    send(broker, 'cobot-1', 1)
    worker.step()
    assert started.wait(5)
    other = JobLedger(tmp_path / 'group' / 'ledger.db')
    for _ in range(4):                               # 4 s of work on a 3 s lease
        clock.now += 1.0
        worker.step()
        assert other.claim('w-other', clock.now, 3.0) is None
    release.set()
    worker.close()
    other.close()


def test_a_full_backlog_refuses_new_uploads_and_says_so(tmp_path: Path) -> None:
    worker, broker, clock = make(tmp_path, lambda u: {}, max_backlog_bytes=600)
    for seq in range(1, 6):
        send(broker, 'cobot-1', seq)
    assert worker.taken == 2 and worker.refused['backlog_full'] == 3
    assert worker.status()['counters']['refused_backlog_full'] == 3
    worker.close()


def test_similar_past_uploads_come_with_a_result(tmp_path: Path) -> None:
    vectors = {1: [1, 0, 0, 0], 2: [0, 1, 0, 0], 3: [0.9, 0.1, 0, 0], 4: [float('nan')] * 4}

    def job(upload: Upload) -> dict[str, Any]:
        return {'verdict': 'agree', 'embedding': vectors[upload.seq]}

    worker, broker, clock = make(tmp_path, job, index_kind='Flat')
    for seq in (1, 2, 3, 4):
        send(broker, 'cobot-1', seq)
    drain(worker, clock, 6)
    results = {r['seq']: r['result'] for r in worker.ledger.results()}
    assert results[1]['similar'] == []
    assert results[3]['similar'][0]['seq'] == 1 and results[3]['similar'][0]['similarity'] > 0.99
    assert 'embedding' not in results[3]
    assert [d['seq'] for d in worker.ledger.dead()] == [4]   # a NaN embedding: never stored
    assert worker.status()['vectors'] == 3
    worker.close()


def test_the_status_is_published_retained_and_follows_its_schema(tmp_path: Path) -> None:
    worker, broker, clock = make(tmp_path, lambda u: {}, group='cell-a')
    send(broker, 'cobot-1', 1)
    drain(worker, clock, 2, dt=6.0)
    observer = broker.transport('observer')
    got: list[Message] = []
    observer.connect([(worker_status_topic('cell-a'), 1)], got.append)
    assert got and got[-1].retained
    status = json.loads(got[-1].payload)
    jsonschema.validate(status, schema('WorkerStatus'))
    assert status['group'] == 'cell-a' and status['done'] == 1
    assert status['latency_p50_s'] is not None and status['end_to_end_p50_s'] >= 1.0
    assert 'cobot_worker_backlog{group="cell-a"} 0' in worker.metrics_text()
    worker.close()


@pytest.mark.parametrize(('options', 'text'), [
    ({'uploads': ('events/stop_snapshot',)}, 'kind=job'),
    ({'uploads': ('cmd/mission=snapshot',)}, 'events/<name>'),
    ({'uploads': ('events/a/b=snapshot',)}, 'events/<name>'),
    ({'uploads': ()}, 'empty'),
    ({'group': 'a/b'}, 'group'),
    ({'concurrency': 0}, 'concurrency'),
])
def test_a_bad_worker_config_says_what_is_wrong(options: dict[str, Any], text: str) -> None:
    with pytest.raises(WorkerError, match=text):
        WorkerConfig(**options)


def test_a_hung_job_loses_its_lease_and_a_replica_whose_threads_all_hang_stops(
        tmp_path: Path) -> None:
    clock = Clock()
    release = threading.Event()
    worker, broker, _ = make(tmp_path, lambda u: release.wait(30) and {}, clock, lease_s=3.0,
                             job_timeout_s=5.0)
    send(broker, 'cobot-1', 1)
    worker.step()
    other = JobLedger(tmp_path / 'group' / 'ledger.db')
    for _ in range(4):                   # renewed while under the timeout
        clock.now += 1.0
        worker.step()
    assert other.claim('w-other', clock.now, 3.0) is None
    clock.now += 2.0                     # 6 s: hung; its lease is no longer renewed
    with pytest.raises(WorkerError, match='every job thread hangs'):
        worker.step()
    clock.now += 3.5
    retry = other.claim('w-other', clock.now, 3.0)
    assert retry is not None and retry.attempts == 2
    release.set()
    worker.close()
    other.close()
