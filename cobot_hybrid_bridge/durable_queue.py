"""A durable, bounded outbox for the uplink: SQLite in WAL mode. Pure Python, no ROS, no MQTT.

Life of a message:

1. :meth:`DurableQueue.put` gives it the next ``seq`` of this robot (strictly increasing, also
   across restarts) and holds it in memory;
2. :meth:`DurableQueue.commit` writes every held message in one transaction (group commit;
   ``synchronous=FULL`` by default, so a committed message survives a power cut). Only
   committed messages are handed to the link: *written before publishing*;
3. once the broker really accepted it (the link decides what "really" means: PUBACK/PUBCOMP
   < 0x80 and not 0x10 "no matching subscribers"), :meth:`DurableQueue.mark_delivered`
   appends its seq to an ack log beside the database (``<name>.acks-<n>``: 8 bytes per
   message, one ``write``, callable from the MQTT thread without the queue's lock), and
   :meth:`DurableQueue.flush_delivered` deletes the logged messages in one transaction and
   drops that log; on open, leftover logs are applied first. :meth:`DurableQueue.ack` does
   both at once. Neither is fsynced (WAL with ``synchronous=NORMAL`` for deletions): a process
   crash loses no acknowledgement, a power cut may forget the last few, which are then sent
   again (duplicates, never losses).

Bounds: messages older than ``ttl_s`` are dropped, and above ``max_bytes`` the lowest priority,
oldest first, goes. Every drop is counted by reason in the same database, so at any time::

    committed == delivered + queued + dropped          (sum over reasons)

Faults: a disk that fills up makes :meth:`commit` raise :class:`DiskFullError` after rolling
back; the held messages stay in memory (bounded by ``max_pending``, beyond which they are
counted as ``dropped_uncommitted`` and never entered the invariant), and a ballast file is
released so deletes and checkpoints can still run. A corrupt database file is moved aside
(``<name>.corrupt-<unix time>``) and a fresh one started, with ``seq`` continuing from the
wall clock in microseconds so it stays above anything issued before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from cobot_hybrid_bridge.errors import BridgeError

__all__ = ['DROP_REASONS', 'DiskFullError', 'DurableQueue', 'QueueConfig', 'QueueError',
           'QueueStats', 'QueuedMessage']

_LOG = logging.getLogger(__name__)
DROP_REASONS = ('ttl', 'max_bytes', 'rejected')
_SYNC_MODES = ('FULL', 'NORMAL')
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_s REAL NOT NULL,
    size INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
DROP INDEX IF EXISTS messages_by_priority;
-- The order peek() reads in: without it every peek sorts the whole backlog.
CREATE INDEX IF NOT EXISTS messages_by_rank ON messages (priority DESC, seq ASC);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_ROWS_PER_INSERT = 100   # x 8 values: below SQLite's oldest variable limit (999)
_COLUMNS = 'seq, topic, payload, qos, priority, retain, created_s, attempts'


class QueueError(BridgeError):
    """The queue cannot do what was asked (bad configuration, closed queue)."""


class DiskFullError(QueueError):
    """A commit failed because the disk is full; held messages stay in memory."""


@dataclass(frozen=True)
class QueueConfig:
    """Bounds and durability of the queue."""

    max_bytes: int = 256 * 2**20          # payload bytes kept at most
    ttl_s: float = 24 * 3600.0            # older messages are dropped
    synchronous: str = 'FULL'             # FULL (survives power loss) | NORMAL (process crash)
    max_pending: int = 100_000            # messages held in memory between commits
    ballast_bytes: int = 8 * 2**20        # released when the disk fills up
    wal_limit_bytes: int = 64 * 2**20     # journal_size_limit

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_pending <= 0:
            raise QueueError('max_bytes and max_pending must be > 0')
        if not self.ttl_s > 0:
            raise QueueError(f'ttl_s {self.ttl_s} must be > 0')
        if self.synchronous not in _SYNC_MODES:
            raise QueueError(f'synchronous {self.synchronous!r}: use FULL or NORMAL')


class QueuedMessage(NamedTuple):
    """A committed message waiting for its acknowledgement (a tuple: cheap to make)."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    priority: int
    retain: bool
    created_s: float
    attempts: int


@dataclass(frozen=True)
class QueueStats:
    """Counters of the queue; ``committed == delivered + queued + sum(dropped)``."""

    committed: int
    delivered: int
    queued: int
    queued_bytes: int
    dropped: dict[str, int]
    oldest_age_s: float
    pending: int
    dropped_uncommitted: int
    next_seq: int

    @property
    def balanced(self) -> bool:
        """Whether the invariant holds."""
        return self.committed == self.delivered + self.queued + sum(self.dropped.values())


@dataclass
class DurableQueue:
    """The outbox of one robot, in one SQLite file."""

    path: Path
    cfg: QueueConfig = field(default_factory=QueueConfig)
    _db: sqlite3.Connection = field(init=False)
    _reader: sqlite3.Connection = field(init=False)
    _pending: deque[QueuedMessage] = field(default_factory=deque)  # put, not committed
    _next_seq: int = 1
    _bytes: int = 0
    _dropped_uncommitted: int = 0
    disk_full: bool = False
    # Delivered (acknowledged), not yet deleted: in the ack log on disk and here.
    _delivered: list[int] = field(default_factory=list)
    _ack_lock: threading.Lock = field(default_factory=threading.Lock)
    _ack_fd: int = -1
    _ack_gen: int = 0
    _priorities: frozenset[int] = frozenset()   # of anything ever queued here

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()
        # Reads for the link go through a second connection: WAL lets it read what is
        # committed while the first one writes, so the sender never waits for a commit.
        self._reader = self._connect()
        self._replay_ack_logs()
        self._ensure_ballast()

    # --- the ack log -------------------------------------------------------------------------

    def _ack_log(self, generation: int) -> Path:
        return self.path.with_name(f'{self.path.name}.acks-{generation}')

    def _replay_ack_logs(self) -> None:
        """Apply acknowledgements logged before a crash, then start a new log."""
        logs = _ack_logs(self.path)
        seqs = _logged_seqs(logs)
        if seqs:
            self._remove(seqs, 'delivered')
        for log in logs:
            log.unlink()
        generations = [int(p.name.rsplit('-', 1)[1]) for p in logs
                       if p.name.rsplit('-', 1)[1].isdigit()]
        self._ack_gen = max(generations, default=-1) + 1
        self._ack_fd = os.open(self._ack_log(self._ack_gen),
                               os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def mark_delivered(self, seqs: Sequence[int]) -> None:
        """Record acknowledged messages (thread-safe, no queue lock needed, no fsync).

        They are no longer handed out by :meth:`peek` and count as delivered; the next
        :meth:`flush_delivered` deletes them.
        """
        record = b''.join([seq.to_bytes(8, 'big') for seq in seqs])
        with self._ack_lock:
            os.write(self._ack_fd, record)
            self._delivered.extend(seqs)

    def flush_delivered(self) -> int:
        """Delete what :meth:`mark_delivered` recorded, in one transaction; drop its log."""
        with self._ack_lock:
            if not self._delivered:
                return 0
            seqs = self._delivered
            self._delivered = []
            old_fd, old_gen = self._ack_fd, self._ack_gen
            self._ack_gen += 1
            self._ack_fd = os.open(self._ack_log(self._ack_gen),
                                   os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            removed = self._remove(seqs, 'delivered')
        except BaseException:
            with self._ack_lock:  # still delivered, still logged: deleted next time
                self._delivered[:0] = seqs
            raise
        os.close(old_fd)
        self._ack_log(old_gen).unlink()  # only once the deletions are committed
        return removed

    # --- opening, corruption -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute('PRAGMA journal_mode=WAL')
        db.execute(f'PRAGMA synchronous={self.cfg.synchronous}')
        db.execute(f'PRAGMA journal_size_limit={self.cfg.wal_limit_bytes}')
        db.execute('PRAGMA wal_autocheckpoint=1000')
        return db

    def _open(self) -> sqlite3.Connection:
        try:
            db = self._connect()
            check = db.execute('PRAGMA quick_check').fetchone()[0]
            if check != 'ok':
                raise sqlite3.DatabaseError(f'quick_check: {check}')
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(Exception):
                db.close()
            aside = self.path.with_name(f'{self.path.name}.corrupt-{int(time.time())}')
            _LOG.error('queue database %s is corrupt (%s): moved aside to %s, starting a fresh '
                       'one; seq continues from the clock', self.path, exc, aside)
            for suffix in ('', '-wal', '-shm'):
                source = Path(f'{self.path}{suffix}')
                if source.exists():
                    source.replace(Path(f'{aside}{suffix}'))
            db = self._connect()
            db.executescript(_SCHEMA)
            self._set_counter(db, 'next_seq', int(time.time() * 1e6))
        next_seq = self._counter(db, 'next_seq')
        max_seq = db.execute('SELECT MAX(seq) FROM messages').fetchone()[0] or 0
        self._next_seq = max(next_seq, max_seq + 1, 1)
        self._bytes = db.execute('SELECT COALESCE(SUM(size), 0) FROM messages').fetchone()[0]
        self._priorities = frozenset(
            p for (p,) in db.execute('SELECT DISTINCT priority FROM messages'))
        return db

    @staticmethod
    def _counter(db: sqlite3.Connection, name: str) -> int:
        row = db.execute('SELECT value FROM counters WHERE name = ?', (name,)).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _set_counter(db: sqlite3.Connection, name: str, value: int) -> None:
        db.execute('INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO '
                   'UPDATE SET value = excluded.value', (name, value))

    @staticmethod
    def _add_counter(db: sqlite3.Connection, name: str, delta: int) -> None:
        if delta:
            db.execute('INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO '
                       'UPDATE SET value = value + excluded.value', (name, delta))

    @contextlib.contextmanager
    def _transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        db = self._db
        if not durable:  # a pragma outside the transaction, restored afterwards
            db.execute('PRAGMA synchronous=NORMAL')
        try:
            db.execute('BEGIN IMMEDIATE')
            try:
                yield db
            except BaseException:
                if db.in_transaction:  # SQLite already rolled back after SQLITE_FULL
                    db.execute('ROLLBACK')
                raise
            db.execute('COMMIT')
        finally:
            if not durable:
                db.execute(f'PRAGMA synchronous={self.cfg.synchronous}')

    # --- disk full ---------------------------------------------------------------------------

    @property
    def _ballast(self) -> Path:
        return self.path.with_name(self.path.name + '.ballast')

    def _ensure_ballast(self) -> None:
        if self.cfg.ballast_bytes <= 0 or self._ballast.exists():
            return
        try:
            with self._ballast.open('wb') as handle:
                handle.truncate(0)
                handle.write(b'\0' * self.cfg.ballast_bytes)
        except OSError:
            with contextlib.suppress(OSError):
                self._ballast.unlink()

    def _release_ballast(self) -> None:
        with contextlib.suppress(OSError):
            self._ballast.unlink()

    # --- public API --------------------------------------------------------------------------

    def put(self, topic: str, payload: bytes | Callable[[int], bytes], qos: int = 1,
            priority: int = 0, retain: bool = False, now_s: float | None = None) -> int:
        """Hold a message for the next commit; return its ``seq``.

        ``payload`` may be a function of the seq, for payloads that carry their own seq.
        """
        if qos not in (0, 1, 2):
            raise QueueError(f'qos {qos} must be 0, 1 or 2')
        if len(self._pending) >= self.cfg.max_pending:
            self._pending.popleft()  # never committed: outside the invariant, but counted
            self._dropped_uncommitted += 1
        seq = self._next_seq
        if priority not in self._priorities:   # replaced, not changed: the link reads it
            self._priorities = self._priorities | {priority}
        data = payload(seq) if callable(payload) else payload
        self._next_seq += 1
        self._pending.append(QueuedMessage(seq, topic, bytes(data), qos, priority, retain,
                                           time.time() if now_s is None else now_s, 0))
        return seq

    def commit(self) -> int:
        """Write every held message in one transaction; return how many were committed."""
        if not self._pending:
            return 0
        rows = [(p.seq, p.topic, p.payload, p.qos, p.priority, int(p.retain), p.created_s,
                 len(p.payload)) for p in self._pending]
        try:
            with self._transaction() as db:
                # Many rows per statement: one step into SQLite (one release of the GIL)
                # per chunk, not per row, which threads sending meanwhile feel.
                for start in range(0, len(rows), _ROWS_PER_INSERT):
                    chunk = rows[start:start + _ROWS_PER_INSERT]
                    db.execute('INSERT INTO messages (seq, topic, payload, qos, priority, '
                               'retain, created_s, size) VALUES '
                               + ', '.join(['(?, ?, ?, ?, ?, ?, ?, ?)'] * len(chunk)),
                               [value for row in chunk for value in row])
                self._add_counter(db, 'committed', len(rows))
                self._set_counter(db, 'next_seq', self._next_seq)
        except sqlite3.OperationalError as exc:
            if 'full' in str(exc).lower():
                self.disk_full = True
                self._release_ballast()
                raise DiskFullError(f'disk full while committing {len(rows)} messages to '
                                    f'{self.path}; holding them in memory and retrying') from None
            raise
        self._bytes += sum(r[7] for r in rows)
        self._pending.clear()
        if self.disk_full:
            self.disk_full = False
            self._ensure_ballast()
        self._enforce_bytes()
        return len(rows)

    def peek(self, limit: int, exclude: Sequence[int] = ()) -> list[QueuedMessage]:
        """Return the committed messages to send next, skipping ``exclude`` (in flight).

        Highest priority first, then oldest: a topic that keeps its priority keeps its order.
        """
        excluded = set(exclude)
        with self._ack_lock:
            excluded.update(self._delivered)
        # Choose from the index alone (no payloads), then read only the chosen rows.
        order = self._reader.execute('SELECT seq FROM messages ORDER BY priority DESC, seq ASC '
                                 'LIMIT ?', (limit + len(excluded),)).fetchall()
        return self.get([seq for (seq,) in order if seq not in excluded][:limit])

    def peek_after(self, limit: int, after: Mapping[int, int],
                   above: int | None = None) -> list[QueuedMessage]:
        """Return up to ``limit`` committed messages past a reader's position, in send order.

        ``after`` maps a priority to the highest seq of that priority the reader has taken
        already (none if missing); with ``above``, only priorities higher than it are read.
        Highest priority first, oldest first within one. Each priority is one range of the
        index, so unlike :meth:`peek` the cost does not grow with what the reader holds.
        """
        found: list[QueuedMessage] = []
        for priority in sorted(self._priorities, reverse=True):
            if len(found) >= limit or (above is not None and priority <= above):
                break
            rows = self._reader.execute(
                f'SELECT {_COLUMNS} FROM messages WHERE priority = ? AND seq > ? ORDER BY seq '
                'LIMIT ?', (priority, after.get(priority, 0), limit - len(found)))
            found += [_message(row) for row in rows]
        return found

    def get(self, seqs: Sequence[int]) -> list[QueuedMessage]:
        """Return the queued messages among ``seqs``, in that order (gone ones left out)."""
        if not seqs:
            return []
        with self._ack_lock:
            delivered = set(self._delivered)
        by_seq: dict[int, QueuedMessage] = {}
        for start in range(0, len(seqs), 500):  # below SQLite's variable limit
            chunk = list(seqs[start:start + 500])
            rows = self._reader.execute(f'SELECT {_COLUMNS} FROM messages WHERE seq IN '
                                        f'({",".join("?" * len(chunk))})', chunk)
            by_seq.update((row[0], _message(row)) for row in rows)
        return [by_seq[seq] for seq in seqs if seq in by_seq and seq not in delivered]

    def mark_attempt(self, seq: int) -> int:
        """Count one more refused attempt of ``seq``; return its attempts (0 if unknown)."""
        row = self._db.execute('UPDATE messages SET attempts = attempts + 1 WHERE seq = ? '
                               'RETURNING attempts', (seq,)).fetchone()
        return int(row[0]) if row else 0

    def ack(self, seqs: Sequence[int]) -> int:
        """Delete delivered messages now (unknown seqs are ignored: a duplicate ack)."""
        self.flush_delivered()
        return self._remove(seqs, 'delivered')

    def reject(self, seqs: Sequence[int]) -> int:
        """Drop messages the broker refused for good, counted as ``rejected``."""
        return self._remove(seqs, 'dropped_rejected')

    def _remove(self, seqs: Sequence[int], counter: str) -> int:
        if not seqs:
            return 0
        freed = removed = 0
        # Removing is not fsynced on its own (WAL + NORMAL: safe against a process crash):
        # losing a removal to a power cut only means a message is sent once more.
        with self._transaction(durable=False) as db:
            for start in range(0, len(seqs), 500):  # below SQLite's variable limit
                chunk = list(seqs[start:start + 500])
                where = f'WHERE seq IN ({",".join("?" * len(chunk))})'
                # Two single-step statements rather than DELETE ... RETURNING (a step, and
                # a hand-over of the GIL, per row).
                count, size = db.execute('SELECT COUNT(*), COALESCE(SUM(size), 0) FROM '
                                         f'messages {where}', chunk).fetchone()
                db.execute(f'DELETE FROM messages {where}', chunk)
                freed += int(size)
                removed += int(count)
            self._add_counter(db, counter, removed)
        self._bytes -= freed
        return removed

    def expire(self, now_s: float | None = None) -> int:
        """Drop messages older than ``ttl_s``; return how many."""
        cutoff = (time.time() if now_s is None else now_s) - self.cfg.ttl_s
        self.flush_delivered()  # a delivered message is not also dropped
        with self._transaction() as db:
            size, count = db.execute('SELECT COALESCE(SUM(size), 0), COUNT(*) FROM messages '
                                     'WHERE created_s < ?', (cutoff,)).fetchone()
            db.execute('DELETE FROM messages WHERE created_s < ?', (cutoff,))
            self._add_counter(db, 'dropped_ttl', int(count))
        self._bytes -= int(size)
        return int(count)

    def _enforce_bytes(self) -> None:
        if self._bytes <= self.cfg.max_bytes:
            return
        self.flush_delivered()
        excess = self._bytes - self.cfg.max_bytes
        if excess <= 0:
            return
        victims, freed = [], 0
        for seq, size in self._db.execute('SELECT seq, size FROM messages ORDER BY priority '
                                          'ASC, seq ASC'):
            victims.append(seq)
            freed += size
            if freed >= excess:
                break
        self._remove(victims, 'dropped_max_bytes')

    def stats(self, now_s: float | None = None) -> QueueStats:
        """Counters, queue depth and the age of the oldest queued message."""
        db = self._db
        with self._ack_lock:
            logged = sorted(set(self._delivered))
        queued = db.execute('SELECT COUNT(*), MIN(created_s) FROM messages').fetchone()
        delivered_here = _count_present(db, logged)   # in the ack log, not deleted yet
        now = time.time() if now_s is None else now_s
        return QueueStats(
            committed=self._counter(db, 'committed'),
            delivered=self._counter(db, 'delivered') + delivered_here,
            queued=int(queued[0]) - delivered_here, queued_bytes=self._bytes,
            dropped={reason: self._counter(db, f'dropped_{reason}') for reason in DROP_REASONS},
            oldest_age_s=0.0 if queued[1] is None else max(0.0, now - queued[1]),
            pending=len(self._pending), dropped_uncommitted=self._dropped_uncommitted,
            next_seq=self._next_seq)

    def close(self) -> None:
        """Commit what is held (if the disk allows), checkpoint and close."""
        with contextlib.suppress(DiskFullError):
            self.commit()
        self._reader.close()
        with contextlib.suppress(sqlite3.Error):
            self.flush_delivered()
            self._db.execute('PRAGMA wal_checkpoint(TRUNCATE)')
        self._db.close()
        if self._ack_fd >= 0:
            os.close(self._ack_fd)
            self._ack_fd = -1
            if not self._delivered:
                self._ack_log(self._ack_gen).unlink(missing_ok=True)


def _message(row: Sequence[Any]) -> QueuedMessage:
    """Make a message of a row read as ``_COLUMNS``."""
    return QueuedMessage(row[0], row[1], bytes(row[2]), row[3], row[4], bool(row[5]), row[6],
                         row[7])


def _count_present(db: sqlite3.Connection, seqs: Sequence[int]) -> int:
    """How many of ``seqs`` are still rows of the messages table."""
    present = 0
    for start in range(0, len(seqs), 500):
        chunk = list(seqs[start:start + 500])
        present += db.execute(f'SELECT COUNT(*) FROM messages WHERE seq IN '
                              f'({",".join("?" * len(chunk))})', chunk).fetchone()[0]
    return int(present)


def _ack_logs(path: Path) -> list[Path]:
    """Return the ack log files of a queue file, oldest first."""
    return sorted(path.parent.glob(f'{path.name}.acks-*'))


def _logged_seqs(logs: Sequence[Path]) -> list[int]:
    """Seqs in ack log files (a torn last record is ignored)."""
    seqs: list[int] = []
    for log in logs:
        data = log.read_bytes()
        seqs += [int.from_bytes(data[i:i + 8], 'big')
                 for i in range(0, len(data) - len(data) % 8, 8)]
    return seqs


def open_readonly_stats(path: Path) -> QueueStats:
    """Stats of a queue file without changing it (``cobot-hybrid queue stats``)."""
    if not Path(path).is_file():
        raise QueueError(f'queue file {path} does not exist')
    uri = f'file:{os.fspath(path)}?mode=ro'
    try:
        db = sqlite3.connect(uri, uri=True)
        try:
            counters = dict(db.execute('SELECT name, value FROM counters').fetchall())
            count, size, oldest = db.execute(
                'SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created_s) FROM messages'
            ).fetchone()
            logged = _count_present(db, sorted(set(_logged_seqs(_ack_logs(Path(path))))))
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise QueueError(f'{path} is not a readable queue database: {exc}') from None
    return QueueStats(
        committed=counters.get('committed', 0),
        delivered=counters.get('delivered', 0) + logged, queued=count - logged,
        queued_bytes=size,
        dropped={r: counters.get(f'dropped_{r}', 0) for r in DROP_REASONS},
        oldest_age_s=0.0 if oldest is None else max(0.0, time.time() - oldest), pending=0,
        dropped_uncommitted=0, next_seq=counters.get('next_seq', 0))
