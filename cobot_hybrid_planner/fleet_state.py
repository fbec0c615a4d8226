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

Malformed input is answered with ``rejected: <reason>`` and counted; nothing raises.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cobot_hybrid_bridge.crdt import CrdtError, TelemetryState
from cobot_hybrid_bridge.mission_schema import SchemaError, validate_progress

__all__ = ['FleetStore', 'RobotView']

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (robot_id TEXT NOT NULL, seq INTEGER NOT NULL,
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
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._db = sqlite3.connect(Path(self.path), isolation_level=None,
                                   check_same_thread=False)
        self._db.execute('PRAGMA journal_mode=WAL')
        self._db.execute('PRAGMA synchronous=NORMAL')
        self._db.executescript(_SCHEMA)

    def ingest(self, topic: str, payload: bytes, properties: Mapping[str, str] | None = None,
               now_s: float | None = None) -> str:
        """Take one MQTT message; return what happened to it."""
        return self.ingest_many([(topic, payload, properties or {})], now_s)[0]

    def ingest_many(self, messages: Sequence[tuple[str, bytes, Mapping[str, str]]],
                    now_s: float | None = None) -> list[str]:
        """Take a batch of MQTT messages in one transaction; return each outcome."""
        now = time.time() if now_s is None else now_s
        outcomes = []
        self._db.execute('BEGIN IMMEDIATE')
        try:
            for topic, payload, props in messages:
                outcome = self._ingest(topic, payload, props, now)
                self.counts[outcome.split(':')[0]] += 1
                outcomes.append(outcome)
        except BaseException:
            self._db.execute('ROLLBACK')
            raise
        self._db.execute('COMMIT')
        return outcomes

    def _ingest(self, topic: str, payload: bytes, props: Mapping[str, str], now: float) -> str:
        parts = topic.split('/')
        if len(parts) < 4 or parts[:2] != ['cobot', 'v1'] or not parts[2]:
            return f'rejected: topic {topic!r} is not cobot/v1/<robot_id>/...'
        robot_id, kind = parts[2], '/'.join(parts[3:])
        if kind.startswith('cmd/'):
            return 'ignored: a command, not telemetry'
        try:
            body = json.loads(payload) if payload else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        if kind == 'status':
            if not isinstance(body, dict) or body.get('state') not in ('online', 'offline'):
                return 'rejected: status must be {"state": "online"|"offline"}'
            self._touch(robot_id, now, status=body['state'])
            return f'status: {body["state"]}'
        seq_text = props.get('seq', body.get('seq') if isinstance(body, dict) else None)
        try:
            seq = int(seq_text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return 'rejected: no (robot_id, seq) in user properties or payload'
        if not 0 < seq < 2**63:
            return f'rejected: seq {seq} outside 1..2^63-1'
        try:
            self._db.execute('INSERT INTO seen (robot_id, seq) VALUES (?, ?)',
                             (robot_id, seq))
        except sqlite3.IntegrityError:
            self._touch(robot_id, now)
            return 'duplicate'
        self._touch(robot_id, now)
        data = body.get('data') if isinstance(body, dict) else None
        if kind == 'state':
            return self._merge_state(robot_id, data)
        if kind == 'events/mission_ack':
            return self._ack(robot_id, data, now)
        if kind == 'events/task_progress':
            return self._progress(robot_id, data, now)
        return 'accepted'

    def _touch(self, robot_id: str, now: float, status: str | None = None) -> None:
        self._db.execute(
            'INSERT INTO robots (robot_id, status, status_stamp, last_seen) VALUES '
            '(?, ?, ?, ?) ON CONFLICT(robot_id) DO UPDATE SET last_seen = excluded.last_seen'
            + (', status = excluded.status, status_stamp = excluded.status_stamp'
               if status else ''),
            (robot_id, status or 'online', now, now))

    def _merge_state(self, robot_id: str, data: Any) -> str:
        try:
            incoming = TelemetryState.from_json(data)
        except CrdtError as exc:
            return f'rejected: state snapshot: {exc}'
        merged = self.state(robot_id).merge(incoming)
        self._db.execute('INSERT INTO state (robot_id, snapshot) VALUES (?, ?) ON CONFLICT'
                         '(robot_id) DO UPDATE SET snapshot = excluded.snapshot',
                         (robot_id, json.dumps(merged.to_json())))
        return 'state merged'

    def _ack(self, robot_id: str, data: Any, now: float) -> str:
        if not isinstance(data, dict) or not isinstance(data.get('mission_id'), str) \
                or not isinstance(data.get('version'), int) \
                or not 0 < data['version'] < 2**63 \
                or data.get('status') not in ('accepted', 'rejected'):
            return 'rejected: mission ack needs mission_id, version, status'
        self._db.execute('INSERT OR REPLACE INTO acks VALUES (?, ?, ?, ?, ?, ?)',
                         (robot_id, data['mission_id'], data['version'], data['status'],
                          str(data.get('reason', '')), now))
        return f'ack: {data["status"]}'

    def _progress(self, robot_id: str, data: Any, now: float) -> str:
        try:
            report = validate_progress(data)
        except SchemaError as exc:
            return f'rejected: task progress: {exc}'
        self._db.execute('INSERT INTO progress VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                         (robot_id, report.task_id, report.status, report.mission_id,
                          report.version, report.reason, report.stamp, now))
        return f'progress: {report.status}'

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
