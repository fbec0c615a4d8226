"""The workers' shared job ledger: every upload taken, who works on it, its one result. SQLite.

Why a ledger beside the broker: mosquitto (2.0, measured) hands each message of a shared
subscription to one member and, when that member's session ends, the messages it held are
gone; it never gives them to another member. So a worker writes each upload here *before*
its PUBACK (paho acknowledges a QoS 1 message when the callback returns), and the work is
then claimed from the ledger under a lease: a worker killed mid-job leaves a lease that
expires, and another replica claims the job again.

* **idempotent**: a job is keyed by ``(robot_id, seq, job)``; the same upload taken twice
  (the robot sent it again, two replicas got it) is one job, and it has at most one result
  (``INSERT OR IGNORE``): at-least-once work, exactly-once results;
* **retries with backoff**: a failed attempt waits ``retry_base_s * 2**(attempts-1)`` (at
  most ``retry_max_s``); after ``max_attempts`` the job is **dead**: kept with its payload
  and the reason, for ``cobot-hybrid worker dead`` to show and ``retry`` to requeue;
* a job whose worker died counts the attempt too, so an upload that kills every worker that
  takes it ends dead instead of killing the group in turn;
* **bounded**: an upload over ``max_upload_bytes`` is refused; when the payloads held
  (pending, running and dead jobs) reach ``max_backlog_bytes`` new uploads are refused
  (counted, logged, never silently); a done job keeps its key and result, not its payload
  (keys and results are not pruned yet);
* every SQLite failure (locked, disk full, I/O) is a :class:`LedgerError`: an upload that
  could not be written is counted ``ledger_error``; a result that could not be stored is
  done again after its lease.

The replicas of a group share one file (WAL: readers never wait for the writer), so they
must share a disk: one node, or a volume that gives SQLite its locks (never NFS).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cobot_hybrid_planner.errors import PlannerError

__all__ = ['Claim', 'JobLedger', 'LedgerError', 'LedgerFull']

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    robot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    job TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    received_s REAL NOT NULL,
    robot_stamp_s REAL NOT NULL,      -- when the robot made it (its clock) [unix s]
    taken_by TEXT NOT NULL,           -- the replica the broker gave it to
    state TEXT NOT NULL,              -- pending | running | done | dead
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_s REAL NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    lease_until_s REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    done_s REAL,
    PRIMARY KEY (robot_id, seq, job)
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (state, next_try_s);
CREATE TABLE IF NOT EXISTS results (
    robot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    job TEXT NOT NULL,
    result TEXT NOT NULL,
    worker TEXT NOT NULL,
    received_s REAL NOT NULL,
    robot_stamp_s REAL NOT NULL,
    done_s REAL NOT NULL,
    attempts INTEGER NOT NULL,
    PRIMARY KEY (robot_id, seq, job)
);
CREATE INDEX IF NOT EXISTS results_by_time ON results (done_s);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class LedgerError(PlannerError):
    """The ledger file cannot be used (unreadable, locked too long)."""


class LedgerFull(LedgerError):
    """The pending uploads reached max_backlog_bytes: the upload was not taken."""


@dataclass(frozen=True)
class Claim:
    """A job a worker holds under a lease."""

    robot_id: str
    seq: int
    job: str
    kind: str
    payload: bytes
    received_s: float
    robot_stamp_s: float
    attempts: int


class JobLedger:
    """One process's handle on the group's ledger file (thread-safe)."""

    def __init__(self, path: Path, max_backlog_bytes: int = 1 << 30,
                 max_attempts: int = 3, retry_base_s: float = 2.0,
                 retry_max_s: float = 300.0) -> None:
        self.path = Path(path)
        self.max_backlog_bytes, self.max_attempts = max_backlog_bytes, max_attempts
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False, timeout=30.0)
            self._db.execute('PRAGMA journal_mode=WAL')
            self._db.execute('PRAGMA synchronous=FULL')
            check = self._db.execute('PRAGMA quick_check').fetchone()[0]
            if check != 'ok':
                raise sqlite3.DatabaseError(f'quick_check: {check}')
            self._db.executescript(_SCHEMA)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise LedgerError(f'the job ledger {self.path} is unusable ({exc}): move it aside '
                              '(its dead letters are in it) and start again') from None

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction; every SQLite failure (locked, disk full, I/O) is a LedgerError."""
        with self._lock:
            try:
                self._db.execute('BEGIN IMMEDIATE')
            except sqlite3.Error as exc:
                raise LedgerError(f'the job ledger {self.path} cannot be written ({exc})') \
                    from None
            try:
                yield self._db
                self._db.execute('COMMIT')
            except BaseException as exc:
                if self._db.in_transaction:   # SQLite may have rolled back already
                    self._db.execute('ROLLBACK')
                if isinstance(exc, sqlite3.Error):
                    raise LedgerError(f'the job ledger {self.path} cannot be written ({exc}): '
                                      'a full or failing disk?') from None
                raise

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a counter shared by the group (refusals, duplicates)."""
        with self._write() as db:
            db.execute('INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET '
                       'value = value + excluded.value', (name, amount))

    def put(self, robot_id: str, seq: int, job: str, kind: str, payload: bytes,
            now: float, robot_stamp_s: float | None = None, taken_by: str = '') -> bool:
        """Take an upload; False if the job is known already. LedgerFull when over budget."""
        with self._write() as db:
            if db.execute('SELECT 1 FROM jobs WHERE robot_id = ? AND seq = ? AND job = ?',
                          (robot_id, seq, job)).fetchone():
                db.execute("INSERT INTO counters VALUES ('duplicates', 1) ON CONFLICT(name) "
                           'DO UPDATE SET value = value + 1')
                return False
            # dead jobs keep their payloads for inspection: they count against the budget
            held = db.execute("SELECT COALESCE(SUM(size), 0) FROM jobs WHERE state IN "
                              "('pending', 'running', 'dead')").fetchone()[0]
            full = held + len(payload) > self.max_backlog_bytes
            if full:   # counted in this transaction; raised once it is committed
                db.execute("INSERT INTO counters VALUES ('refused_backlog_full', 1) ON "
                           'CONFLICT(name) DO UPDATE SET value = value + 1')
            else:
                db.execute("INSERT INTO jobs (robot_id, seq, job, kind, payload, size, "
                           "received_s, robot_stamp_s, taken_by, state, next_try_s) VALUES "
                           "(?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                           (robot_id, seq, job, kind, payload, len(payload), now,
                            now if robot_stamp_s is None else robot_stamp_s, taken_by, now))
        if full:
            raise LedgerFull(f'{held} bytes of uploads wait (max_backlog_bytes '
                             f'{self.max_backlog_bytes}): {robot_id} seq {seq} not taken; add '
                             'workers or raise the budget')
        return True

    def claim(self, owner: str, now: float, lease_s: float) -> Claim | None:
        """Take the oldest job that is ready, or whose worker's lease ran out."""
        with self._write() as db:
            row = db.execute(
                "SELECT robot_id, seq, job, kind, payload, received_s, attempts, robot_stamp_s "
                "FROM jobs "
                "WHERE (state = 'pending' AND next_try_s <= ?) OR (state = 'running' AND "
                'lease_until_s < ?) ORDER BY received_s LIMIT 1', (now, now)).fetchone()
            if row is None:
                return None
            if row[6] >= self.max_attempts:   # its workers died every time: a poison upload
                db.execute("UPDATE jobs SET state = 'dead', owner = '', error = ? WHERE "
                           'robot_id = ? AND seq = ? AND job = ?',
                           (f'{row[6]} attempts, the last ended with its worker',
                            row[0], row[1], row[2]))
                return None
            db.execute("UPDATE jobs SET state = 'running', owner = ?, lease_until_s = ?, "
                       'attempts = attempts + 1 WHERE robot_id = ? AND seq = ? AND job = ?',
                       (owner, now + lease_s, row[0], row[1], row[2]))
            return Claim(row[0], row[1], row[2], row[3], bytes(row[4]), row[5], row[7],
                         row[6] + 1)

    def renew(self, owner: str, keys: list[tuple[str, int, str]], now: float,
              lease_s: float) -> int:
        """Extend the leases ``owner`` still holds; return how many it still holds."""
        held = 0
        with self._write() as db:
            for key in keys:
                held += db.execute("UPDATE jobs SET lease_until_s = ? WHERE robot_id = ? AND "
                                   "seq = ? AND job = ? AND owner = ? AND state = 'running'",
                                   (now + lease_s, *key, owner)).rowcount
        return held

    def complete(self, claim: Claim, owner: str, result: dict[str, Any], now: float) -> bool:
        """Store the one result of a job; False if another worker stored it first."""
        text = json.dumps(result, separators=(',', ':'), allow_nan=False)
        with self._write() as db:
            stored = db.execute('INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
                                (claim.robot_id, claim.seq, claim.job, text, owner,
                                 claim.received_s, claim.robot_stamp_s, now,
                                 claim.attempts)).rowcount
            db.execute("UPDATE jobs SET state = 'done', payload = x'', owner = ?, done_s = ?, "
                       "error = '' WHERE robot_id = ? AND seq = ? AND job = ?",
                       (owner, now, claim.robot_id, claim.seq, claim.job))
            return bool(stored)

    def fail(self, claim: Claim, owner: str, reason: str, now: float,
             retry: bool = True) -> str:
        """Record a failed attempt: pending again after the backoff, or dead; the new state."""
        dead = not retry or claim.attempts >= self.max_attempts
        delay = min(self.retry_max_s, self.retry_base_s * 2 ** max(0, claim.attempts - 1))
        state = 'dead' if dead else 'pending'
        with self._write() as db:
            # only while it is still ours: a replica whose lease ran out must not take the
            # job back from the one that claimed it since
            changed = db.execute(
                "UPDATE jobs SET state = ?, owner = '', next_try_s = ?, error = ? WHERE "
                "robot_id = ? AND seq = ? AND job = ? AND state = 'running' AND owner = ?",
                (state, now + delay, reason[:2000], claim.robot_id, claim.seq, claim.job,
                 owner)).rowcount
        return state if changed else 'lost_lease'

    def retry_dead(self, now: float) -> int:
        """Requeue every dead job (after a fix): attempts start again."""
        with self._write() as db:
            return int(db.execute("UPDATE jobs SET state = 'pending', attempts = 0, "
                                  "next_try_s = ?, error = '' WHERE state = 'dead'",
                                  (now,)).rowcount)

    def dead(self, limit: int = 100) -> list[dict[str, Any]]:
        """Return the dead-letter record: the jobs given up on, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT robot_id, seq, job, kind, size, received_s, attempts, error FROM jobs "
                "WHERE state = 'dead' ORDER BY received_s DESC LIMIT ?", (limit,)).fetchall()
        return [dict(zip(('robot_id', 'seq', 'job', 'kind', 'size', 'received_s', 'attempts',
                          'error'), row, strict=True)) for row in rows]

    def result(self, robot_id: str, seq: int, job: str) -> dict[str, Any] | None:
        """Return the stored result of one job, if any."""
        with self._lock:
            row = self._db.execute('SELECT result FROM results WHERE robot_id = ? AND seq = ? '
                                   'AND job = ?', (robot_id, seq, job)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def results(self, since_s: float = 0.0, limit: int = 1000) -> list[dict[str, Any]]:
        """Return stored results (oldest first), each with its key, worker and times."""
        with self._lock:
            rows = self._db.execute(
                'SELECT robot_id, seq, job, result, worker, received_s, robot_stamp_s, done_s, '
                'attempts FROM results WHERE done_s >= ? ORDER BY done_s LIMIT ?',
                (since_s, limit)).fetchall()
        return [{'robot_id': r[0], 'seq': r[1], 'job': r[2], 'result': json.loads(r[3]),
                 'worker': r[4], 'received_s': r[5], 'robot_stamp_s': r[6], 'done_s': r[7],
                 'attempts': r[8]} for r in rows]

    def stats(self, now: float, window: int = 1000) -> dict[str, Any]:
        """Return the backlog (jobs, bytes), oldest wait, done, dead, and latencies.

        Over the last ``window`` results: from taking an upload to its result, and from the
        robot's stamp (its clock: skew included) to the result.
        """
        with self._lock:
            db = self._db
            states = dict(db.execute('SELECT state, COUNT(*) FROM jobs GROUP BY state')
                          .fetchall())
            held, oldest = db.execute(
                "SELECT COALESCE(SUM(size), 0), MIN(received_s) FROM jobs WHERE state IN "
                "('pending', 'running')").fetchone()
            recent = db.execute('SELECT done_s - received_s, done_s - robot_stamp_s FROM results '
                                'ORDER BY done_s DESC LIMIT ?', (window,)).fetchall()
            counters = dict(db.execute('SELECT name, value FROM counters').fetchall())

        waits, ends = sorted(r[0] for r in recent), sorted(r[1] for r in recent)

        def quantile(values: list[float], q: float) -> float | None:
            return round(values[min(len(values) - 1, int(q * len(values)))], 4) if values \
                else None

        return {'backlog': states.get('pending', 0) + states.get('running', 0),
                'running': states.get('running', 0), 'backlog_bytes': int(held),
                'oldest_wait_s': round(now - oldest, 3) if oldest is not None else 0.0,
                'done': states.get('done', 0), 'dead': states.get('dead', 0),
                'latency_p50_s': quantile(waits, 0.5), 'latency_p99_s': quantile(waits, 0.99),
                'end_to_end_p50_s': quantile(ends, 0.5), 'end_to_end_p99_s': quantile(ends, 0.99),
                'counters': counters}
