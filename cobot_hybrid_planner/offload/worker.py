"""``cobot-hybrid worker``: cloud jobs on what robots upload, split between replicas. No ROS.

Each replica subscribes ``$share/workers-<group>/cobot/v1/+/<kind>`` for every upload kind it
handles (MQTT 5 shared subscription: the broker gives each upload to one replica, as a
serverless platform gives each event to one function instance), writes the upload into the
group's :mod:`job ledger <cobot_hybrid_planner.offload.job_ledger>` before its PUBACK, and
runs jobs claimed from the ledger under a lease on ``concurrency`` threads:

* a job that raises :class:`~cobot_hybrid_protocol.offload.JobInputError` is dead at once;
  any other exception is retried with backoff, then dead;
* a result with an ``embedding`` gets its ``similar`` past uploads from the
  :mod:`incident index <cobot_hybrid_planner.offload.similarity>`, and is added to it;
* a result whose ``verdict`` says the edge was wrong (missed people, a false alarm) goes
  back to the robot as a signed advisory (:mod:`cobot_hybrid_protocol.advisory`) when
  ``advisory_key`` is set: the robot logs it; it is never a safety input;
* the group's backlog, oldest wait, latency (p50/p99, from the upload being taken and from
  the robot's stamp), done and dead go out retained on ``cobot/v1/workers/<group>/status``
  every ``status_period_s``, and on ``GET /metrics`` (Prometheus text) and ``GET /status``
  (the same JSON) when ``metrics_port`` is set, which is what the Kubernetes autoscaler
  reads (KEDA's metrics-api trigger, ``valueLocation: backlog``).

What an upload must be: a topic of the tree from a robot (``cobot/v1/<robot_id>/<kind>``),
not retained, at most ``max_upload_bytes``, with its seq in the MQTT 5 user properties or in
its envelope (first line), and the same robot id in the topic, the properties and the
envelope. Anything else is refused and counted by reason (``refused`` in the status), and
never ends the loop.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_planner.offload.job_ledger import Claim, JobLedger, LedgerError, LedgerFull
from cobot_hybrid_planner.offload.similarity import IncidentIndex, SimilarityError
from cobot_hybrid_protocol.advisory import (
    MAX_BOXES,
    MAX_SIMILAR,
    VERDICTS,
    Advisory,
    advisory_to_json,
    validate_advisory,
)
from cobot_hybrid_protocol.envelope import parse_envelope, parse_seq
from cobot_hybrid_protocol.errors import KeyFileError, PayloadError, SchemaError, TopicError
from cobot_hybrid_protocol.offload import JOB_GROUP, Job, JobInputError, Upload
from cobot_hybrid_protocol.settings import check_settings, setting
from cobot_hybrid_protocol.signing import load_private_key, sign_command
from cobot_hybrid_protocol.topics import (
    check_fleet_id,
    command_topic,
    parse_topic,
    shared_uploads_filter,
    worker_status_topic,
)
from cobot_hybrid_protocol.transport import Message, Transport

__all__ = ['Worker', 'WorkerConfig', 'WorkerError', 'load_jobs', 'parse_uploads']

_LOG = logging.getLogger('cobot_hybrid.worker')
_HEADER_BYTES = 64 * 1024


class WorkerError(PlannerError):
    """The worker cannot start as configured (an unknown job, a bad upload map)."""


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker replica does (``cobot-hybrid worker --help``)."""

    group: str = setting('default', 'worker group: its replicas split the uploads and share '
                         'one ledger')
    worker_id: str = setting('', 'MQTT client id (empty: worker-<host>-<pid>); a stable id '
                             '(a StatefulSet pod name) lets a restarted replica resume its '
                             'broker session')
    uploads: tuple[str, ...] = setting(('events/stop_snapshot=snapshot',),
                                       'upload kind = job name pairs', array_type='string')
    data_dir: str = setting('', "the group's ledger and vector store (shared by its "
                            'replicas; empty: ~/.local/state/cobot_hybrid/workers/<group>)')
    concurrency: int = setting(1, 'jobs run at once by this replica (each holds one upload '
                               'in memory)', low=1, high=64)
    lease_s: float = setting(60.0, 'a claimed job not finished or renewed by then is taken '
                             'by another replica', unit='s', low=1.0, high=86400.0)
    job_timeout_s: float = setting(600.0, 'a job running longer is hung: its lease is no '
                                   'longer renewed (another replica retries it) and, once '
                                   'every thread hangs, the replica exits to be restarted',
                                   unit='s', low=1.0, high=86400.0)
    max_attempts: int = setting(3, 'attempts before a job is dead', low=1, high=100)
    retry_base_s: float = setting(2.0, 'wait after the first failed attempt (doubling)',
                                  unit='s', low=0.0, high=3600.0)
    retry_max_s: float = setting(300.0, 'longest wait between attempts', unit='s', low=0.0,
                                 high=86400.0)
    max_upload_bytes: int = setting(8 * 1024 * 1024, 'larger uploads are refused',
                                    unit='bytes', low=1)
    max_backlog_bytes: int = setting(1 << 30, 'pending uploads at most; more are refused '
                                     '(counted)', unit='bytes', low=1)
    neighbours: int = setting(5, 'similar past uploads stored with a result', low=0,
                              high=100)
    index_kind: str = setting('HNSW32', 'FAISS index of the incident embeddings',
                              choices=('HNSW32', 'Flat'))
    status_period_s: float = setting(5.0, 'status and metrics period', unit='s', low=0.1,
                                     high=3600.0)
    metrics_port: int = setting(0, 'serve GET /metrics (Prometheus text) on this port (0: '
                                'off)', low=0, high=65535)
    metrics_host: str = setting('127.0.0.1', 'address of the metrics server (0.0.0.0 in a '
                                'pod)')
    advisory_key: str = setting('', 'Ed25519 private key (PEM) that signs advisories to '
                                'robots (empty: none are sent)')
    advisory_key_id: str = setting('planner', 'the key id robots know that key by '
                                   '(cloud_public_keys)')
    advisory_validity_s: float = setting(3600.0, 'an advisory not received by then is '
                                         'dropped', unit='s', low=10.0, high=86400.0)
    broker_host: str = setting('127.0.0.1', 'MQTT broker')
    broker_port: int = setting(1883, 'MQTT broker port (8883 with TLS)', low=1, high=65535)
    session_expiry_s: int = setting(0, 'MQTT 5 session kept by the broker while the replica '
                                    'is away. 0 (the default): mosquitto keeps handing a '
                                    'departed member of a shared subscription its share of '
                                    'the uploads while its session lives, and a replaced pod '
                                    'never comes back for them', unit='s', low=0,
                                    high=2**32 - 1)

    def __post_init__(self) -> None:
        check_settings(self, WorkerError)
        try:
            check_fleet_id(self.group)
        except ValueError as exc:
            raise WorkerError(f'group: {exc}') from None
        parse_uploads(self.uploads)

    @property
    def data_path(self) -> Path:
        """Where the ledger and the vector store are."""
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        return Path.home() / '.local' / 'state' / 'cobot_hybrid' / 'workers' / self.group

    @property
    def client_id(self) -> str:
        """The MQTT client id of this replica."""
        return self.worker_id or f'worker-{socket.gethostname()[:40]}-{os.getpid()}'


def parse_uploads(pairs: tuple[str, ...]) -> dict[str, str]:
    """``('events/stop_snapshot=snapshot', ...)`` -> {kind: job}; WorkerError saying why not."""
    uploads: dict[str, str] = {}
    for pair in pairs:
        kind, sep, job = str(pair).partition('=')
        if not sep or not job:
            raise WorkerError(f'uploads entry {str(pair)[:80]!r} is not kind=job')
        try:
            shared_uploads_filter('check', kind)
        except TopicError as exc:
            raise WorkerError(f'uploads entry {pair!r}: {exc}') from None
        if kind in uploads:
            raise WorkerError(f'uploads names {kind!r} twice')
        uploads[kind] = job
    if not uploads:
        raise WorkerError('uploads is empty: name at least one kind=job')
    return uploads


def load_jobs(names: set[str], options: Mapping[str, Mapping[str, str]]) -> dict[str, Job]:
    """Build the named jobs from their entry points (group ``cobot_hybrid.jobs``)."""
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group=JOB_GROUP)}
    jobs = {}
    for name in sorted(names):
        if name not in found:
            raise WorkerError(f'no job {name!r} is installed (entry point group {JOB_GROUP}: '
                              f'{", ".join(sorted(found)) or "none"}); pip install the '
                              'package that provides it')
        jobs[name] = found[name].load()(options.get(name, {}))
    return jobs


class Worker:
    """One replica: takes uploads into the ledger, runs jobs from it, reports the group."""

    def __init__(self, cfg: WorkerConfig, transport: Transport, jobs: Mapping[str, Job],
                 clock: Callable[[], float] = time.time, dim: int = 256,
                 mono: Callable[[], float] | None = None) -> None:
        self.cfg, self.transport, self.clock = cfg, transport, clock
        # schedules and hang detection; the wall clock (a step) only stamps the ledger
        self.mono = mono or (time.monotonic if clock is time.time else clock)
        self.uploads = parse_uploads(cfg.uploads)
        missing = set(self.uploads.values()) - set(jobs)
        if missing:
            raise WorkerError(f'no job for {sorted(missing)}')
        self.jobs = dict(jobs)
        data = cfg.data_path
        self.ledger = JobLedger(data / 'ledger.db', cfg.max_backlog_bytes, cfg.max_attempts,
                                cfg.retry_base_s, cfg.retry_max_s)
        self.index = IncidentIndex(data / 'vectors.db', dim, cfg.index_kind)
        self.refused: Counter[str] = Counter()
        self.taken = self.duplicates = self.ran = self.failed = self.dead = 0
        self._pool = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix='job')
        self._running: dict[tuple[str, int, str], tuple[Future[None], float]] = {}
        self.hung = 0
        self._lock = threading.Lock()
        self._next_status = -float('inf')
        self._next_renew = -float('inf')
        self.last_status: dict[str, Any] = {}
        self.advisories_sent = 0
        self._signing_key = None
        if cfg.advisory_key:
            try:
                self._signing_key = load_private_key(cfg.advisory_key)
            except KeyFileError as exc:
                raise WorkerError(f'advisory_key: {exc}') from None

    # --- taking uploads (paho's network thread: PUBACK goes when this returns) ------------

    def start(self) -> None:
        """Subscribe (in the background; the transport reconnects)."""
        subscriptions = [(shared_uploads_filter(self.cfg.group, kind), 1)
                         for kind in self.uploads]
        self.transport.connect(subscriptions, self.on_message)

    def _refuse(self, reason: str, detail: str) -> None:
        self.refused[reason] += 1
        _LOG.warning('upload refused (%s): %s', reason, detail)

    def on_message(self, message: Message) -> None:
        """Take one upload into the ledger, or refuse it with a counted reason."""
        try:
            self._take(message)
        except LedgerFull as exc:
            self._refuse('backlog_full', str(exc))
        except LedgerError as exc:
            self._refuse('ledger_error', str(exc))
        except Exception as exc:   # noqa: BLE001 - paho's thread: one upload never ends it
            _LOG.exception('upload on %s not taken', message.topic[:120])
            self._refuse('internal_error', f'{type(exc).__name__}: {exc}')

    def _take(self, message: Message) -> None:
        try:
            where = parse_topic(message.topic)
        except TopicError as exc:
            return self._refuse('bad_topic', str(exc))
        if where.scope != 'robot' or where.kind not in self.uploads:
            return self._refuse('not_an_upload', message.topic[:120])
        if message.retained:
            return self._refuse('retained', f'{message.topic[:120]} (an upload is never '
                                'retained: a stale one would be analysed again)')
        if len(message.payload) > self.cfg.max_upload_bytes:
            return self._refuse('too_large', f'{len(message.payload)} bytes on '
                                f'{message.topic[:120]} (max_upload_bytes '
                                f'{self.cfg.max_upload_bytes})')
        robot_id = where.robot_id
        props = message.properties
        if props.get('robot_id', robot_id) != robot_id:
            return self._refuse('wrong_robot', f'user property robot_id '
                                f'{str(props["robot_id"])[:64]!r} on {robot_id!r}\'s topic')
        seq = parse_seq(props['seq']) if 'seq' in props else None
        if 'seq' in props and seq is None:
            return self._refuse('bad_seq', f'seq {str(props["seq"])[:30]!r} on {robot_id}')
        stamp: float | None = None
        header = message.payload[:_HEADER_BYTES].split(b'\n', 1)[0]
        if header.startswith(b'{'):
            try:
                envelope = parse_envelope(header, what=f'the header of {message.topic[:120]}')
            except (PayloadError, SchemaError) as exc:
                return self._refuse('bad_header', str(exc))
            if envelope.robot_id != robot_id:
                return self._refuse('wrong_robot', f'envelope robot_id '
                                    f"{envelope.robot_id[:64]!r} on {robot_id!r}'s topic")
            if seq is not None and seq != envelope.seq:
                return self._refuse('bad_seq', f'seq {seq} in the properties, {envelope.seq} '
                                    'in the envelope')
            seq, stamp = envelope.seq, envelope.stamp
        if seq is None:
            return self._refuse('no_seq', f'{message.topic[:120]}: no seq in the user '
                                'properties or an envelope')
        job = self.uploads[where.kind]
        if self.ledger.put(robot_id, seq, job, where.kind, message.payload, self.clock(),
                           stamp, self.cfg.client_id):
            self.taken += 1
        else:
            self.duplicates += 1

    # --- running jobs (the caller's loop) --------------------------------------------------

    def step(self) -> None:
        """Claim what the free threads can run, renew leases, publish the status when due."""
        now, mono = self.clock(), self.mono()   # wall: the shared ledger; mono: our timing
        with self._lock:
            for key in [k for k, (f, _) in self._running.items() if f.done()]:
                del self._running[key]
            hung = [k for k, (_, since) in self._running.items()
                    if mono - since > self.cfg.job_timeout_s]
            free = self.cfg.concurrency - len(self._running)
        if len(hung) > self.hung:
            _LOG.error('%d job(s) ran longer than job_timeout_s %.0f s: %s; their leases are '
                       'no longer renewed (another replica retries them)', len(hung),
                       self.cfg.job_timeout_s, hung)
        self.hung = len(hung)
        if hung and len(hung) >= self.cfg.concurrency:
            raise WorkerError(f'every job thread hangs ({len(hung)} longer than '
                              f'job_timeout_s): this replica stops, to be restarted')
        for _ in range(free):
            claim = self.ledger.claim(self.cfg.client_id, now, self.cfg.lease_s)
            if claim is None:
                break
            future = self._pool.submit(self._run, claim)
            future.add_done_callback(self._after)
            with self._lock:
                self._running[(claim.robot_id, claim.seq, claim.job)] = (future, mono)
        if mono >= self._next_renew:
            self._next_renew = mono + self.cfg.lease_s / 3
            with self._lock:
                keys = [k for k in self._running if k not in hung]
            if keys:
                self.ledger.renew(self.cfg.client_id, keys, now, self.cfg.lease_s)
        if mono >= self._next_status:
            self._next_status = mono + self.cfg.status_period_s
            self.publish_status(now)

    def _after(self, future: Future[None]) -> None:
        """Count a job thread's own failure (the ledger could not store its result)."""
        exc = future.exception() if not future.cancelled() else None
        if exc is not None:
            self.refused['result_not_stored'] += 1
            _LOG.error('a job ended without its result stored (%s: %s): it is done again '
                       'after its lease', type(exc).__name__, exc)

    @property
    def busy(self) -> int:
        """Jobs this replica runs now."""
        with self._lock:
            return sum(1 for f, _ in self._running.values() if not f.done())

    def _run(self, claim: Claim) -> None:
        owner = self.cfg.client_id
        upload = Upload(claim.robot_id, claim.seq, claim.kind, claim.payload, claim.received_s)
        try:
            result = dict(self.jobs[claim.job](upload))
            embedding = result.pop('embedding', None)
            if embedding is not None and self.cfg.neighbours:
                key = (claim.robot_id, claim.seq)
                result['similar'] = [n.to_json() for n in self.index.search(
                    embedding, self.cfg.neighbours, exclude=key)]
                self.index.add(claim.robot_id, claim.seq, str(result.get('verdict', '')),
                               embedding)
        except (JobInputError, SimilarityError) as exc:   # the same input fails the same way
            self._failed(claim, f'{type(exc).__name__}: {exc}', retry=False)
            return
        except Exception as exc:   # the job's own fault: retried with backoff, then dead
            _LOG.exception('job %s of %s seq %d failed', claim.job, claim.robot_id, claim.seq)
            self._failed(claim, f'{type(exc).__name__}: {exc}', retry=True)
            return
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            self._failed(claim, f'the result is not JSON ({exc})', retry=False)
            return
        if self.ledger.complete(claim, owner, result, self.clock()):
            self._advise(claim, result)   # only the replica whose result was stored
        self.ran += 1

    def _advise(self, claim: Claim, result: Mapping[str, Any]) -> None:
        """Send the robot a signed advisory when the result says the edge was wrong."""
        verdict = result.get('verdict')
        if self._signing_key is None or verdict not in VERDICTS:
            return
        now = self.clock()
        missed = [b for b in result.get('missed', [])][:MAX_BOXES]
        false_alarms = [b for b in result.get('false_alarms', [])][:MAX_BOXES]
        similar = [n for n in result.get('similar', [])][:MAX_SIMILAR]
        words = {'edge_missed_people': f'{len(result.get("missed", []))} missed',
                 'edge_false_alarm': f'{len(result.get("false_alarms", []))} false alarm(s)',
                 'both': f'{len(result.get("missed", []))} missed and '
                         f'{len(result.get("false_alarms", []))} false alarm(s)'}[verdict]
        like = f'; like {similar[0]["robot_id"]} seq {similar[0]["seq"]} ' \
            f'({similar[0]["similarity"]:.2f})' if similar else ''
        advisory = Advisory(
            f'adv-{claim.robot_id}-{claim.seq}-{claim.job}'[:128], claim.robot_id, now,
            now + self.cfg.advisory_validity_s, claim.kind, claim.seq, str(verdict),
            f'the cloud ({claim.job}) found {result.get("cloud_people", 0)} people, the robot '
            f'reported {result.get("edge_people", 0)}: {words}{like}'[:500],
            int(result.get('cloud_people', 0)), int(result.get('edge_people', 0)),
            tuple(tuple(b) for b in missed), tuple(tuple(b) for b in false_alarms),
            tuple(similar))
        try:
            body = advisory_to_json(advisory)
            validate_advisory(body)          # what the robot will check, checked here first
        except (SchemaError, TypeError, ValueError) as exc:
            _LOG.error('advisory for %s seq %d not sent: %s', claim.robot_id, claim.seq, exc)
            return
        signed = sign_command(self._signing_key, self.cfg.advisory_key_id, body,
                              claim.robot_id)
        self.transport.publish(command_topic(claim.robot_id, 'advisory'), signed, qos=1,
                               expiry_s=int(self.cfg.advisory_validity_s))
        self.advisories_sent += 1

    def _failed(self, claim: Claim, reason: str, retry: bool) -> None:
        state = self.ledger.fail(claim, self.cfg.client_id, reason, self.clock(), retry)
        self.failed += 1
        if state == 'lost_lease':
            _LOG.warning('job %s of %s seq %d failed after its lease ran out (%s): the replica '
                         'that holds it now decides', claim.job, claim.robot_id, claim.seq,
                         reason)
        if state == 'dead':
            self.dead += 1
            _LOG.error('job %s of %s seq %d is dead after %d attempt(s): %s', claim.job,
                       claim.robot_id, claim.seq, claim.attempts, reason)

    # --- status ----------------------------------------------------------------------------

    def status(self, now: float | None = None) -> dict[str, Any]:
        """Return the group's ledger figures and this replica's own counts."""
        now = self.clock() if now is None else now
        group = self.ledger.stats(now)
        return {'group': self.cfg.group, 'worker': self.cfg.client_id, 'stamp': round(now, 3),
                **group, 'vectors': len(self.index),
                'replica': {'taken': self.taken, 'duplicates': self.duplicates,
                            'ran': self.ran, 'failed': self.failed, 'dead': self.dead,
                            'advisories_sent': self.advisories_sent,
                            'busy': self.busy, 'hung': self.hung,
                            'concurrency': self.cfg.concurrency,
                            'refused': dict(self.refused)}}

    def publish_status(self, now: float) -> None:
        """Publish the status, retained, on ``cobot/v1/workers/<group>/status``."""
        self.last_status = self.status(now)
        self.transport.publish(worker_status_topic(self.cfg.group),
                               json.dumps(self.last_status, separators=(',', ':')).encode(),
                               qos=1, retain=True)

    def metrics_text(self) -> str:
        """Return the last status as Prometheus text (what the autoscaler reads)."""
        status = self.last_status or self.status()
        group = self.cfg.group.replace('\\', '\\\\').replace('"', '\\"')   # a label value
        lines = []
        for name, key, help_text in (
                ('cobot_worker_backlog', 'backlog', 'uploads taken and not yet done'),
                ('cobot_worker_backlog_bytes', 'backlog_bytes', 'bytes of those uploads'),
                ('cobot_worker_oldest_wait_seconds', 'oldest_wait_s',
                 'how long the oldest waits'),
                ('cobot_worker_done', 'done', 'jobs done'),
                ('cobot_worker_dead', 'dead', 'jobs given up on'),
                ('cobot_worker_latency_p99_seconds', 'latency_p99_s',
                 'taken to result, p99 of the last 1000')):
            value = status.get(key)
            lines += [f'# HELP {name} {help_text}', f'# TYPE {name} gauge',
                      f'{name}{{group="{group}"}} {0 if value is None else value}']
        return '\n'.join(lines) + '\n'

    def close(self) -> None:
        """Finish the running jobs, disconnect, close the files."""
        self._pool.shutdown(wait=self.hung == 0, cancel_futures=True)   # hung: never joins
        self.transport.disconnect()
        self.ledger.close()
        self.index.close()
