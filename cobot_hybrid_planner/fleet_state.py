"""The cloud's view of the fleet, from MQTT telemetry, kept in SQLite so a restart resumes.

:meth:`FleetStore.ingest` takes one MQTT message (topic, payload, MQTT 5 user properties):

* ``cobot/v1/<robot>/status`` (retained; the last will says offline): liveness;
* anything with a ``(robot_id, seq)`` (user properties, or the JSON envelope): de-duplicated
  by that pair, then ``state`` snapshots are merged as CRDTs (any order, any duplicates, same
  result), ``events/mission_ack`` records which mission versions a robot took, and
  ``events/task_progress`` (task progress v1: started, done, failed) what it did with them;
* every message refreshes the robot's ``last_seen``; a robot silent for ``offline_after_s``
  counts as offline even if its retained status still says online (a broker that lost the
  will, a half-open connection).

Every payload is hostile until parsed: topics are checked, JSON goes through the bounded
parser (:mod:`cobot_hybrid_protocol.limits`), only robots of the site (``robots_allowed``)
are stored, retained events are ignored (an event is for its moment; retained, it would come
back after every restart), and CRDT snapshots are bounded: LWW entries stamped more than
``max_skew_s`` ahead of the cloud's clock are dropped (counted, ``future_stamps``; such a stamp
would freeze a key such as ``protective_stop``), and a merged state larger than
``max_state_bytes`` is refused. Each message is handled inside a boundary: whatever one
does, it is answered with ``rejected: <reason>`` and counted, and the rest of its batch is
stored.

End-to-end delivery: every message with a ``(robot_id, seq)`` that was stored, or was already
stored (a duplicate), or was refused for good, is recorded in :attr:`FleetStore.delivered`
once its batch is committed (``synchronous=FULL``: on disk, power cut included); the planner
sends those acknowledgements to the robots (``cobot/v1/<robot_id>/delivered``), which keep
each message until then (:mod:`cobot_hybrid_protocol.delivery`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cobot_hybrid_protocol.crdt import CrdtError, LWWMap, TelemetryState
from cobot_hybrid_protocol.delivery import DeliveredSeqs
from cobot_hybrid_protocol.envelope import is_opaque, parse_envelope, parse_seq
from cobot_hybrid_protocol.errors import PayloadError, SchemaError, TopicError
from cobot_hybrid_protocol.mission import (
    MissionAck,
    TaskProgress,
    validate_ack,
    validate_progress,
)
from cobot_hybrid_protocol.status import parse_status
from cobot_hybrid_protocol.topics import (
    BLOB_REQUEST,
    DELIVERED,
    MISSION_ACK,
    MODEL_METRICS,
    MODEL_STATUS,
    STATE,
    STATUS,
    TASK_PROGRESS,
    parse_topic,
)

__all__ = ['FleetStore', 'Outcome', 'RobotView']


_LOG = logging.getLogger(__name__)

_SCHEMA = """
-- digest: of the payload, so a message re-sent (the same bytes) is a duplicate and another
-- one under a seq seen before (an outbox wiped, seqs started again) is not.
CREATE TABLE IF NOT EXISTS seen (robot_id TEXT NOT NULL, seq INTEGER NOT NULL, digest BLOB,
                                 PRIMARY KEY (robot_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS robots (robot_id TEXT PRIMARY KEY, status TEXT NOT NULL,
                                   status_stamp REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS state (robot_id TEXT PRIMARY KEY, snapshot TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS acks (robot_id TEXT NOT NULL, mission_id TEXT NOT NULL,
                                 version INTEGER NOT NULL, status TEXT NOT NULL,
                                 reason TEXT NOT NULL, stamp REAL NOT NULL,
                                 PRIMARY KEY (robot_id, mission_id, version));
CREATE TABLE IF NOT EXISTS progress (robot_id TEXT NOT NULL, task_id TEXT NOT NULL,
                                     status TEXT NOT NULL, mission_id TEXT NOT NULL,
                                     version INTEGER NOT NULL, reason TEXT NOT NULL,
                                     stamp REAL NOT NULL, received REAL NOT NULL);
-- Every replan reads each robot's reports of its current mission; without it, a full scan.
CREATE INDEX IF NOT EXISTS progress_by_mission ON progress (robot_id, mission_id, version);
CREATE INDEX IF NOT EXISTS progress_by_task ON progress (task_id);
"""


#: Events stored like any other and handed to the service's rollout controller with their data.
FORWARDED_EVENTS = frozenset({MODEL_STATUS, MODEL_METRICS, BLOB_REQUEST,
                              'events/protective_stop'})


class Outcome(str):
    """What happened to one message, with what the planner acts on attached.

    The text (``accepted``, ``duplicate``, ``ack: accepted``, ``rejected: <why>``...) is
    counted by the part before the colon; acks and task progress carry their parsed report.
    """

    robot_id: str | None
    ack: MissionAck | None
    progress: TaskProgress | None
    event: tuple[str, Any] | None    # (kind, envelope data) of the events others act on

    def __new__(cls, text: str, robot_id: str | None = None, ack: MissionAck | None = None,
                progress: TaskProgress | None = None,
                event: tuple[str, Any] | None = None) -> Outcome:
        """Make an outcome (``robot_id`` once the topic named a robot of the site)."""
        outcome = super().__new__(cls, text)
        outcome.robot_id, outcome.ack, outcome.progress = robot_id, ack, progress
        outcome.event = event
        return outcome


@dataclass(frozen=True)
class RobotView:
    """What the planner knows about one robot."""

    robot_id: str
    online: bool
    last_seen: float
    state: TelemetryState


@dataclass
class FleetStore:
    """Fleet state in one SQLite file (WAL)."""

    path: Path
    offline_after_s: float = 10.0
    robots_allowed: frozenset[str] | None = None     # None: any robot (tools, tests)
    max_skew_s: float = 60.0                         # robot clocks ahead of ours at most
    max_state_bytes: int = 256 * 1024
    counts: Counter[str] = field(default_factory=Counter)
    future_stamps: int = 0
    seq_reused: int = 0
    delivered: DeliveredSeqs = field(default_factory=DeliveredSeqs)   # committed, to ack

    def __post_init__(self) -> None:
        self._db = sqlite3.connect(Path(self.path), isolation_level=None,
                                   check_same_thread=False)
        self._db.execute('PRAGMA journal_mode=WAL')
        self._db.execute('PRAGMA synchronous=FULL')   # acknowledged means on disk
        self._db.executescript(_SCHEMA)
        if 'digest' not in {row[1] for row in self._db.execute('PRAGMA table_info(seen)')}:
            self._db.execute('ALTER TABLE seen ADD COLUMN digest BLOB')   # older stores

    def ingest(self, topic: str, payload: bytes, properties: Mapping[str, str] | None = None,
               now_s: float | None = None, retained: bool = False) -> Outcome:
        """Take one MQTT message; return what happened to it."""
        return self.ingest_many([(topic, payload, properties or {}, retained)], now_s)[0]

    def ingest_many(self, messages: Sequence[tuple[Any, ...]], now_s: float | None = None
                    ) -> list[Outcome]:
        """Take a batch of ``(topic, payload, properties[, retained])`` in one transaction.

        Returns each outcome. One message that fails in any way is rolled back alone and
        answered ``rejected: ...``; the others are kept. (The batch runs without savepoints
        first; only when a message raised is it run again with one savepoint per message.)
        """
        now = time.time() if now_s is None else now_s
        try:
            outcomes, handled = self._batch(messages, now, guarded=False)
        except Exception:  # noqa: BLE001 - rolled back; again, message by message
            outcomes, handled = self._batch(messages, now, guarded=True)
        for outcome in outcomes:
            self.counts[outcome.split(':')[0]] += 1
        for robot_id, seq in handled:   # committed: only now is it stored
            self.delivered.add(robot_id, seq)
        return outcomes

    def _batch(self, messages: Sequence[tuple[Any, ...]], now: float, guarded: bool
               ) -> tuple[list[Outcome], list[tuple[str, int]]]:
        outcomes: list[Outcome] = []
        handled: list[tuple[str, int]] = []
        db = self._db
        db.execute('BEGIN IMMEDIATE')
        try:
            for item in messages:
                topic, payload, props = item[0], item[1], item[2]
                retained = len(item) > 3 and bool(item[3])
                key: list[tuple[str, int]] = []   # the (robot_id, seq) once it is settled
                if guarded:
                    db.execute('SAVEPOINT message')
                    try:
                        outcome = self._ingest(topic, payload, props, retained, now, key)
                    except Exception as exc:  # noqa: BLE001 - the per-message boundary
                        db.execute('ROLLBACK TO message')
                        _LOG.exception('fleet store: message on %r could not be stored',
                                       str(topic)[:256])
                        outcome = Outcome(f'rejected: internal error {type(exc).__name__}')
                        key.clear()   # not stored: the robot sends it again
                    db.execute('RELEASE message')
                else:
                    outcome = self._ingest(topic, payload, props, retained, now, key)
                handled.extend(key)
                outcomes.append(outcome)
        except BaseException:
            db.execute('ROLLBACK')
            raise
        db.execute('COMMIT')
        return outcomes, handled

    def _ingest(self, topic: str, payload: bytes, props: Mapping[str, str], retained: bool,
                now: float, key: list[tuple[str, int]]) -> Outcome:
        try:
            where = parse_topic(topic)
        except TopicError as exc:
            return Outcome(f'rejected: {exc}')
        if where.scope != 'robot':
            return Outcome('ignored: not a robot topic')
        robot_id, kind = where.robot_id, where.kind
        if where.is_command or kind == DELIVERED:
            return Outcome('ignored: cloud to robot, not telemetry')
        if self.robots_allowed is not None and robot_id not in self.robots_allowed:
            return Outcome(f'rejected: robot {robot_id!r} is not in the site')
        if retained and kind.startswith('events/'):
            return Outcome('ignored: a retained event (events are not kept by the broker)')
        if props.get('robot_id', robot_id) != robot_id:
            return Outcome(f'rejected: robot_id {str(props["robot_id"])[:64]!r} in the user '
                           f"properties is not the topic's {robot_id!r}")
        if not where.is_uplink:
            return Outcome(f'rejected: {kind[:80]!r} is not a topic a robot publishes (status, '
                           'state, telemetry/..., events/...)')
        if kind == STATUS:
            return self._status(robot_id, payload, now)
        given = parse_seq(props['seq']) if 'seq' in props else None
        if 'seq' in props and given is None:
            return Outcome('rejected: seq in the user properties is not an integer in '
                           '1..2^63-1')

        def refused(text: str) -> Outcome:
            # Refused for good: with its seq known, say so, or the robot sends it again until
            # its TTL, and such messages fill its cloud window and stall everything behind.
            if given is not None:
                key.append((robot_id, given))
            return Outcome(f'rejected: {text}')

        seq: int | None = None
        data: Any = None
        if given is not None and (kind.startswith('telemetry/') or not _is_json(payload)):
            # (telemetry is only de-duplicated here: with its seq in the user properties its
            # payload is not needed, so a robot sending huge ones costs no parsing; opaque
            # payloads (JPEG, CDR) carry only a seq)
            seq = given
        elif payload:
            try:
                envelope = parse_envelope(payload, what=f'{kind} of {robot_id}')
            except PayloadError as exc:
                if not is_opaque(exc):
                    return refused(str(exc))
                seq = given   # opaque (JPEG, CDR): only its seq, from the user properties
            except SchemaError as exc:
                return refused(str(exc))
            else:
                if envelope.robot_id != robot_id:
                    return Outcome(f"rejected: robot_id in the envelope is not the topic's "
                                   f'{robot_id!r}')
                if 'seq' in props and given != envelope.seq:
                    return Outcome('rejected: seq in the user properties is not the '
                                   "envelope's")
                seq, data = envelope.seq, envelope.data
        if seq is None:
            return Outcome('rejected: no (robot_id, seq) in user properties or payload, or '
                           'seq not an integer in 1..2^63-1')
        key.append((robot_id, seq))   # stored, or refused for good, from here on
        digest = hashlib.blake2b(payload, digest_size=8).digest()
        try:
            self._db.execute('INSERT INTO seen (robot_id, seq, digest) VALUES (?, ?, ?)',
                             (robot_id, seq, digest))
        except sqlite3.IntegrityError:
            self._touch(robot_id, now)
            stored = self._db.execute('SELECT digest FROM seen WHERE robot_id = ? AND seq = ?',
                                      (robot_id, seq)).fetchone()[0]
            if stored is None or bytes(stored) == digest:
                return Outcome('duplicate', robot_id)
            # Another message under a seq already seen: the robot's outbox was wiped or
            # replaced and its seqs started again. Dropping it as a duplicate (and
            # acknowledging it) would lose it without a trace.
            self.seq_reused += 1
            _LOG.warning('%s sent a different message under seq %d, seen before: its seqs '
                         'started again (outbox wiped?); taken as new', robot_id, seq)
            self._db.execute('UPDATE seen SET digest = ? WHERE robot_id = ? AND seq = ?',
                             (digest, robot_id, seq))
        self._touch(robot_id, now)
        if kind == STATE:
            return self._merge_state(robot_id, data, now)
        if kind == MISSION_ACK:
            return self._ack(robot_id, data, now)
        if kind == TASK_PROGRESS:
            return self._progress(robot_id, data, now)
        if kind in FORWARDED_EVENTS and data is not None:
            return Outcome('accepted', robot_id, event=(kind, data))   # stored, and acted on
        return Outcome('accepted', robot_id)

    def _status(self, robot_id: str, payload: bytes, now: float) -> Outcome:
        try:
            state = parse_status(payload, f'status of {robot_id}')
        except (PayloadError, SchemaError) as exc:
            return Outcome(f'rejected: {exc}')
        self._touch(robot_id, now, status=state)
        return Outcome(f'status: {state}', robot_id)

    def _touch(self, robot_id: str, now: float, status: str | None = None) -> None:
        self._db.execute(
            'INSERT INTO robots (robot_id, status, status_stamp, last_seen) VALUES '
            '(?, ?, ?, ?) ON CONFLICT(robot_id) DO UPDATE SET last_seen = excluded.last_seen'
            + (', status = excluded.status, status_stamp = excluded.status_stamp'
               if status else ''),
            (robot_id, status or 'online', now, now))

    def _merge_state(self, robot_id: str, data: Any, now: float) -> Outcome:
        try:
            incoming = TelemetryState.from_json(data)
        except CrdtError as exc:
            return Outcome(f'rejected: state snapshot: {exc}')
        limit_ms = (now + self.max_skew_s) * 1000.0
        future = []
        for part in ('values', 'alarms'):
            entries = getattr(incoming, part).entries
            ahead = [k for k, (stamp, _) in entries.items() if stamp.wall_ms > limit_ms]
            if ahead:   # a clock far ahead would win every later write: drop those entries
                future += ahead
                setattr(incoming, part, LWWMap({k: v for k, v in entries.items()
                                                if k not in ahead}))
        if future:
            self.future_stamps += len(future)
            _LOG.warning('state of %s: %d value(s) stamped more than %.0f s ahead of the '
                         'cloud clock dropped (%s)', robot_id, len(future), self.max_skew_s,
                         ', '.join(sorted(future)[:5]))
        merged = self.state(robot_id).merge(incoming)
        text = json.dumps(merged.to_json())
        if len(text) > self.max_state_bytes:
            return Outcome(f'rejected: merged state of {len(text)} bytes exceeds '
                           f'{self.max_state_bytes}')
        self._db.execute('INSERT INTO state (robot_id, snapshot) VALUES (?, ?) ON CONFLICT'
                         '(robot_id) DO UPDATE SET snapshot = excluded.snapshot',
                         (robot_id, text))
        return Outcome('state merged' + (f' ({len(future)} future-stamped values dropped)'
                                         if future else ''), robot_id)

    def _ack(self, robot_id: str, data: Any, now: float) -> Outcome:
        try:
            ack = validate_ack(data)
        except SchemaError as exc:
            return Outcome(f'rejected: mission ack: {exc}')
        if ack.mission_id is not None:
            self._db.execute('INSERT OR REPLACE INTO acks VALUES (?, ?, ?, ?, ?, ?)',
                             (robot_id, ack.mission_id, ack.version, ack.status, ack.reason,
                              now))
        return Outcome(f'ack: {ack.status}', robot_id, ack=ack)

    def _progress(self, robot_id: str, data: Any, now: float) -> Outcome:
        try:
            report = validate_progress(data)
        except SchemaError as exc:
            return Outcome(f'rejected: task progress: {exc}')
        self._db.execute('INSERT INTO progress VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                         (robot_id, report.task_id, report.status, report.mission_id,
                          report.version, report.reason, report.stamp, now))
        return Outcome(f'progress: {report.status}', robot_id, progress=report)

    def rebase(self, step_s: float) -> None:
        """Shift the liveness times by a wall-clock step of ``step_s``.

        So a step ahead does not make every robot look silent for the step's length, and a
        step back does not keep a silent robot online for as long.
        """
        with self._db:
            self._db.execute('UPDATE robots SET last_seen = last_seen + ?, status_stamp = '
                             'status_stamp + ?', (step_s, step_s))

    def reports(self, robot_id: str, mission_id: str, version: int) -> dict[str, str]:
        """Task id -> last status a robot reported under one version of a mission."""
        return {t: s for t, s in self._db.execute(
            'SELECT task_id, status FROM progress WHERE robot_id = ? AND mission_id = ? AND '
            'version = ? ORDER BY rowid', (robot_id, mission_id, version))}

    def progress_of(self, task_id: str) -> list[tuple[str, str, float]]:
        """``(robot_id, status, stamp)`` reports of a task, oldest first."""
        return [(r, s, t) for r, s, t in self._db.execute(
            'SELECT robot_id, status, stamp FROM progress WHERE task_id = ? ORDER BY rowid',
            (task_id,))]

    def state(self, robot_id: str) -> TelemetryState:
        """Return the merged telemetry state of a robot (empty if none arrived)."""
        row = self._db.execute('SELECT snapshot FROM state WHERE robot_id = ?',
                               (robot_id,)).fetchone()
        return TelemetryState() if row is None else TelemetryState.from_json(json.loads(row[0]))

    def robots(self, now_s: float | None = None) -> dict[str, RobotView]:
        """Every robot seen, online only if its status says so and it spoke recently."""
        now = time.time() if now_s is None else now_s
        rows = self._db.execute('SELECT robot_id, status, last_seen FROM robots').fetchall()
        return {r: RobotView(r, status == 'online' and now - seen <= self.offline_after_s,
                             seen, self.state(r)) for r, status, seen in rows}

    def ack_of(self, robot_id: str, mission_id: str, version: int) -> str | None:
        """Return ``accepted``/``rejected`` once the robot acknowledged that mission version."""
        row = self._db.execute('SELECT status FROM acks WHERE robot_id = ? AND mission_id = ? '
                               'AND version = ?', (robot_id, mission_id, version)).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        """Close the database."""
        self._db.close()



def _is_json(payload: bytes) -> bool:
    """Whether a payload looks like a JSON object (the envelope), by its first byte."""
    return payload[:1] == b'{'
