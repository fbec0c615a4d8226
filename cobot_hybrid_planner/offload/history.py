"""The fleet's history: every summary, event, stop, status and progress report robots send.

The fleet store (:mod:`cobot_hybrid_planner.fleet_state`) keeps each robot's latest state;
this keeps the time series, for the batch analytics (:mod:`.batch_report`) and for a person
asking what happened on Tuesday.

Where it lives, and why two formats:

* **today in SQLite** (``hot.db``, WAL): the recorder inserts one row per message as it
  comes (de-duplicated by ``(robot_id, kind, seq)``: a robot that sends a message again
  after an outage adds nothing), which is what SQLite is good at and DuckDB is not (a DuckDB
  file takes one writing process and no readers beside it);
* **every finished UTC day in Parquet** (``day=YYYY-MM-DD/history.parquet``, zstd): written
  once by :meth:`HistoryStore.seal`, atomically (a temporary file, then a rename), never
  changed again; the batch job queries those partitions with DuckDB in place, without a
  server and without ever locking the recorder out;
* **retention** is deleting whole partitions older than ``retention_days`` (and hot rows
  older than that);
* a row goes to the UTC day of the robot's stamp, or of the cloud's receive time when the
  stamp is more than a day ahead of it or older than the retention (a robot clock in 2096 or
  1970: counted ``clock_off``); a backlog sent days late keeps its own days.

A row: ``robot_id``, ``kind`` (what follows ``cobot/v1/<robot_id>/``), ``seq`` (the robot's,
or 0 for status), ``stamp`` (the robot's clock), ``received_s`` (the cloud's), ``bytes``
(the payload as it crossed the link: the cost view), ``data`` (the envelope's data as JSON;
a snapshot's header only, never its JPEG). Robot ids, kinds and sizes are checked as every
uplink is; what the contract refuses is counted (``refused``), never stored.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_protocol.envelope import is_opaque, parse_envelope
from cobot_hybrid_protocol.errors import PayloadError, SchemaError, TopicError
from cobot_hybrid_protocol.snapshot import parse_snapshot
from cobot_hybrid_protocol.status import parse_status
from cobot_hybrid_protocol.topics import DELIVERED, STATUS, parse_topic, uplink_filters

_LOG = logging.getLogger('cobot_hybrid.history')
__all__ = ['HISTORY_FILTERS', 'HistoryError', 'HistoryRecorder', 'HistoryRow', 'HistoryStore',
           'day_of']

MAX_DATA_CHARS = 64 * 1024       # the stored JSON of one message; longer is cut to a marker
MAX_CLOCK_OFF_S = 86400.0        # a robot stamp this far ahead of the cloud's: the cloud's day
#: What the recorder subscribes: liveness, routed telemetry, events (the CRDT state is the
#: fleet store's: its latest value is what matters).
HISTORY_FILTERS = uplink_filters()
_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    day TEXT NOT NULL,
    robot_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stamp REAL NOT NULL,
    received_s REAL NOT NULL,
    bytes INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (robot_id, kind, seq, stamp)
);
CREATE INDEX IF NOT EXISTS rows_by_day ON rows (day);
"""
_COLUMNS = ('robot_id', 'kind', 'seq', 'stamp', 'received_s', 'bytes', 'data')


class HistoryError(PlannerError):
    """The history cannot be read or written (an unusable file, a day that does not parse)."""


def day_of(stamp: float) -> str:
    """Return the UTC day of a unix time, as ``YYYY-MM-DD``."""
    return datetime.fromtimestamp(stamp, timezone.utc).strftime('%Y-%m-%d')


@dataclass(frozen=True)
class HistoryRow:
    """One stored message."""

    robot_id: str
    kind: str
    seq: int
    stamp: float
    received_s: float
    bytes: int
    data: dict[str, Any]


class HistoryStore:
    """Today's rows in SQLite, every finished day in a Parquet partition."""

    def __init__(self, root: Path, retention_days: int = 90) -> None:
        self.root = Path(root)
        self.retention_days = retention_days
        self.root.mkdir(parents=True, exist_ok=True)
        self.refused: Counter[str] = Counter()
        self.stored = self.duplicates = 0
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.root / 'hot.db', isolation_level=None,
                                       check_same_thread=False, timeout=30.0)
            self._db.execute('PRAGMA journal_mode=WAL')
            # a row is in the WAL when the recorder's callback returns (and paho PUBACKs):
            # safe from a process crash; power loss may take the last commits
            self._db.execute('PRAGMA synchronous=NORMAL')
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f'the history buffer {self.root / "hot.db"} is unusable '
                               f"({exc}): move it aside (its rows are today's only)") from None

    def close(self) -> None:
        """Close the buffer."""
        with self._lock:
            self._db.close()

    # --- recording ---------------------------------------------------------------------------

    def record(self, topic: str, payload: bytes, retained: bool, received_s: float) -> str:
        """Store one uplink message; return ``stored``, ``duplicate`` or ``refused: why``."""
        try:
            row = self._row(topic, bytes(payload), retained, received_s)
        except (TopicError, PayloadError, SchemaError) as exc:
            reason = getattr(exc, 'reason', type(exc).__name__)
            self.refused[str(reason)] += 1
            return f'refused: {exc}'
        if row is None:
            return 'ignored'
        return 'stored' if self.add([row]) else 'duplicate'

    def _row(self, topic: str, payload: bytes, retained: bool,
             received_s: float) -> HistoryRow | None:
        where = parse_topic(topic)
        if where.scope != 'robot' or not where.is_uplink or where.kind == DELIVERED:
            return None
        if where.kind == STATUS:
            state = parse_status(payload)
            body = json.loads(payload)
            stamp = float(body.get('stamp', received_s))
            # the last will's stamp is its connect's: the cloud's clock says when it came
            return HistoryRow(where.robot_id, STATUS, 0, received_s if state == 'offline'
                              else stamp, received_s, len(payload),
                              {'state': state, 'retained': retained})
        if retained:
            raise SchemaError(f'{topic[:120]}: a retained {where.kind} (only status is kept '
                              'by the broker)')
        if payload[:1] == b'{' and b'\n' in payload[:70000]:
            try:
                snap = parse_snapshot(payload)
            except (PayloadError, SchemaError):
                pass
            else:
                env = snap.envelope
                self._same(env.robot_id, where.robot_id)
                data = {'image': {'width': snap.width, 'height': snap.height,
                                  'bytes': len(snap.jpeg)}, 'trigger': snap.trigger,
                        'context_topics': sorted(snap.context)}
                return HistoryRow(where.robot_id, where.kind, env.seq, env.stamp, received_s,
                                  len(payload), data)
        try:
            env = parse_envelope(payload, what=f'{where.kind} of {where.robot_id}')
        except PayloadError as exc:
            if is_opaque(exc):
                raise PayloadError('opaque', f'{where.kind} of {where.robot_id} is not an '
                                   'envelope (CDR?): not kept') from None
            raise
        self._same(env.robot_id, where.robot_id)
        return HistoryRow(where.robot_id, where.kind, env.seq, env.stamp, received_s,
                          len(payload), env.data)

    @staticmethod
    def _same(said: str, topic_robot: str) -> None:
        if said != topic_robot:
            raise SchemaError(f"the envelope says robot {said[:64]!r} on {topic_robot!r}'s "
                              'topic')

    def add(self, rows: Iterable[HistoryRow]) -> int:
        """Insert rows (de-duplicated); return how many were new."""
        values = []
        for row in rows:
            text = json.dumps(row.data, separators=(',', ':'), allow_nan=False)
            if len(text) > MAX_DATA_CHARS:
                text = json.dumps({'cut': len(text)})
            day = day_of(row.stamp)
            if row.stamp > row.received_s + MAX_CLOCK_OFF_S \
                    or row.stamp < row.received_s - self.retention_days * 86400.0:
                # a robot clock far off (2096, 1970) would file the row where nothing ever
                # seals it, or where expiry deletes it at once: the cloud's day instead (a
                # backlog sent days late keeps its own day)
                self.refused['clock_off'] += 1
                day = day_of(row.received_s)
            values.append((day, row.robot_id, row.kind, int(row.seq),
                           float(row.stamp), float(row.received_s), int(row.bytes), text))
        with self._lock:
            before = self._db.total_changes
            self._db.execute('BEGIN IMMEDIATE')
            self._db.executemany('INSERT OR IGNORE INTO rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                                 values)
            self._db.execute('COMMIT')
            new = self._db.total_changes - before
        self.stored += new
        self.duplicates += len(values) - new
        return new

    # --- partitions ----------------------------------------------------------------------------

    def partition(self, day: str) -> Path:
        """Return the Parquet file of a day."""
        return self.root / f'day={day}' / 'history.parquet'

    def days(self) -> list[str]:
        """Return the sealed days, oldest first."""
        return sorted(p.parent.name[4:] for p in self.root.glob('day=*/history.parquet'))

    def seal(self, now: float | None = None) -> list[str]:
        """Write every day before today (UTC) to its partition; return the days written.

        A day that has a partition already (rows that came late, after an outage) gets a
        new partition with the old rows and the new ones, de-duplicated, swapped in whole.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        today = day_of(time.time() if now is None else now)
        with self._lock:
            days = [d for (d,) in self._db.execute(
                'SELECT DISTINCT day FROM rows WHERE day < ? ORDER BY day', (today,))]
        written = []
        for day in days:
            with self._lock:
                read = self._db.execute(
                    'SELECT rowid, robot_id, kind, seq, stamp, received_s, bytes, data FROM '
                    'rows WHERE day = ?', (day,)).fetchall()
            fresh = [r[1:] for r in read]
            target = self.partition(day)
            table = pa.table({name: [r[i] for r in fresh] for i, name in enumerate(_COLUMNS)},
                             schema=_arrow_schema())
            if target.is_file():
                try:
                    old = pq.read_table(target, schema=_arrow_schema())
                except (pa.ArrowException, OSError) as exc:
                    aside = target.with_name(f'history.parquet.unreadable-{int(time.time())}')
                    target.replace(aside)
                    self.refused['unreadable_partition'] += 1
                    _LOG.error('history: the partition of %s is unreadable (%s): moved to %s; '
                               'the day now holds only the rows that came since', day, exc,
                               aside)
                else:
                    table = _dedupe(pa.concat_tables([old, table]))
            table = table.sort_by([('robot_id', 'ascending'), ('stamp', 'ascending'),
                                   ('kind', 'ascending'), ('seq', 'ascending')])
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name('history.parquet.part')
            pq.write_table(table, partial, compression='zstd')
            partial.replace(target)
            with self._lock:   # only the rows written: one that came meanwhile stays
                self._db.execute('BEGIN IMMEDIATE')
                self._db.executemany('DELETE FROM rows WHERE rowid = ?',
                                     [(r[0],) for r in read])
                self._db.execute('COMMIT')
            written.append(day)
        return written

    def expire(self, now: float | None = None) -> list[str]:
        """Delete partitions (and buffered rows) older than ``retention_days``."""
        cutoff = day_of((time.time() if now is None else now)
                        - self.retention_days * 86400.0)
        gone = [d for d in self.days() if d < cutoff]
        for day in gone:
            shutil.rmtree(self.root / f'day={day}')
        with self._lock:
            self._db.execute('DELETE FROM rows WHERE day < ?', (cutoff,))
        return gone

    def glob(self, first: str, last: str) -> list[Path]:
        """Return the partitions of the days ``first`` .. ``last`` (inclusive) that exist."""
        out = []
        day = datetime.strptime(first, '%Y-%m-%d').replace(tzinfo=timezone.utc)
        end = datetime.strptime(last, '%Y-%m-%d').replace(tzinfo=timezone.utc)
        while day <= end:
            path = self.partition(day.strftime('%Y-%m-%d'))
            if path.is_file():
                out.append(path)
            day += timedelta(days=1)
        return out

    def stats(self) -> Mapping[str, Any]:
        """Return what the store holds and refused."""
        with self._lock:
            hot = self._db.execute('SELECT COUNT(*) FROM rows').fetchone()[0]
        return {'hot_rows': hot, 'days': self.days(), 'stored': self.stored,
                'duplicates': self.duplicates, 'refused': dict(self.refused)}


def _arrow_schema() -> Any:
    import pyarrow as pa

    return pa.schema([('robot_id', pa.string()), ('kind', pa.string()), ('seq', pa.int64()),
                      ('stamp', pa.float64()), ('received_s', pa.float64()),
                      ('bytes', pa.int64()), ('data', pa.string())])


def _dedupe(table: Any) -> Any:
    keys = set()
    keep = []
    columns = [table.column(n).to_pylist() for n in ('robot_id', 'kind', 'seq', 'stamp')]
    for i, key in enumerate(zip(*columns, strict=True)):
        if key not in keys:
            keys.add(key)
            keep.append(i)
    return table.take(keep)


class HistoryRecorder:
    """Subscribes the fleet's uplink and stores it; seals finished days and expires old ones.

    ``cobot-hybrid history record`` runs it on paho (a persistent session: what robots send
    while it restarts waits in the broker); tests give it a memory transport.
    """

    def __init__(self, store: HistoryStore, transport: Any,
                 clock: Any = time.time, seal_period_s: float = 600.0) -> None:
        self.store, self.transport, self.clock = store, transport, clock
        self.seal_period_s = seal_period_s
        self._next_seal = 0.0
        self.sealed: list[str] = []
        self.expired: list[str] = []

    def start(self) -> None:
        """Subscribe (the transport reconnects and subscribes again)."""
        self.transport.connect([(f, 1) for f in HISTORY_FILTERS], self.on_message)

    def on_message(self, message: Any) -> None:
        """Store one message (a refusal is counted; nothing ends the loop)."""
        try:
            self.store.record(message.topic, message.payload, message.retained, self.clock())
        except Exception as exc:   # noqa: BLE001 - paho's thread: one message never ends it
            self.store.refused['store_error'] += 1
            _LOG.error('history: %s not stored (%s: %s)', message.topic[:120],
                       type(exc).__name__, exc)

    def tick(self) -> None:
        """Seal the finished days and expire old ones every ``seal_period_s``."""
        now = self.clock()
        if now < self._next_seal:
            return
        self._next_seal = now + self.seal_period_s
        self.sealed += self.store.seal(now)
        self.expired += self.store.expire(now)
