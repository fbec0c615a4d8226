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
released so deletes and checkpoints can still run.

Corruption is never a silent loss. Opening checks, before SQLite reads anything, the file
header and the ``-wal`` file: SQLite itself stops reading a WAL at the first frame whose
checksum fails and silently drops the committed transactions after it, so a committed frame
that follows a bad one (and is chained to it by its own checksum) means corruption. After
opening, ``PRAGMA integrity_check``, a check that every row is one the queue could have
written (types, qos, size, UTF-8 topics), and the books themselves (the invariant above must
hold in the file) are checked. A corrupt database is moved aside (``<name>.corrupt-<unix
time>`` with its ``-wal``/``-shm``) and what can be read of it is recovered into a fresh file:
the queued messages (validated; invalid ones skipped) and the counters. The ``sqlite3``
shell's ``.recover`` is used where the installed shell can run it (Debian's cannot: it is
built without ``sqlite_dbpage``); otherwise the rows are salvaged by seq ranges, skipping the
ranges that cannot be read. Which way was taken is logged.

To count what was lost even when the counters are gone, every commit and removal also writes
the counters to a small sidecar, ``<name>.books`` (one ``pwrite`` of fixed-size fields: the
counters by reason and the next seq, with a CRC-32; no fsync: it survives a process crash,
and a torn or foreign one is ignored). What the recovered counters or the sidecar say was
committed, less what was delivered, dropped and recovered, is counted as dropped ``corrupt``,
so the invariant holds right after recovery. A sidecar that says more was committed than the
database holds is itself taken as corruption (the last commits were lost). ``seq`` continues
above the recovered counters, the sidecar and the recovered rows; only where neither the
counters nor the sidecar tell the next seq does it jump to the wall clock in microseconds.

Wall-clock steps (robots boot with a wrong clock and NTP steps it): creation times come from
the queue's :class:`~cobot_hybrid_protocol.clock.Clock`, and a step (the offset wall -
monotonic jumps) found by :meth:`DurableQueue.check_clock`, or by :meth:`DurableQueue.put`
before it stamps a message, re-bases the creation time of everything queued before it
(:meth:`DurableQueue.rebase`), so ages, TTLs and oldest-age statistics do not jump. Across a
restart, the boot id and the last offset are kept in the counters table: the monotonic clock
runs on across process restarts within one boot, so on open a changed offset under the same
boot id is a step taken while the queue was closed and is re-based. After a reboot (another
boot id) or where the boot id cannot be read, nothing is re-based: the monotonic clock started
again, and a step cannot be told from time that passed while the robot was off. (A suspend
also moves the offset, as ``CLOCK_MONOTONIC`` stops meanwhile: ages then leave out the time
suspended.)
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import logging
import math
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_protocol.clock import SYSTEM_CLOCK, Clock, WallStepDetector
from cobot_hybrid_protocol.settings import check_settings, setting

__all__ = ['DROP_REASONS', 'DiskFullError', 'DurableQueue', 'QueueConfig', 'QueueError',
           'QueueStats', 'QueuedMessage', 'read_boot_id']

_LOG = logging.getLogger(__name__)
DROP_REASONS = ('ttl', 'max_bytes', 'rejected', 'corrupt')
_SYNC_MODES = ('FULL', 'NORMAL')
# What a damaged file raises: SQLite's errors, and text that is no longer UTF-8 (a flipped byte
# in the schema makes SQLite quote it in its error message).
_CORRUPT = (sqlite3.DatabaseError, UnicodeDecodeError)
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
# A row the queue could have written; NULLs (impossible but for corruption) make it false.
_VALID_ROW = ("coalesce(typeof(seq) = 'integer' AND seq > 0 AND typeof(topic) = 'text' "
              "AND typeof(payload) = 'blob' AND typeof(qos) = 'integer' AND qos IN (0, 1, 2) "
              "AND typeof(priority) = 'integer' AND typeof(retain) = 'integer' "
              "AND retain IN (0, 1) AND typeof(created_s) IN ('real', 'integer') "
              "AND created_s BETWEEN -1e300 AND 1e300 AND typeof(size) = 'integer' "
              "AND size = length(payload) AND typeof(attempts) = 'integer' AND attempts >= 0, 0)")
# What is read back from a corrupt file, checked by _valid_row (text read as bytes).
_SALVAGE_COLUMNS = ('seq, topic, payload, qos, priority, retain, created_s, size, attempts, '
                    "typeof(topic) = 'text', typeof(payload) = 'blob'")
# The counters kept in the books sidecar, in its order.
_BOOK_FIELDS = ('committed', 'delivered', *(f'dropped_{r}' for r in DROP_REASONS), 'next_seq')
_BOOKS_MAGIC = b'CHQBOOK1'
_BOOKS_BODY = struct.Struct(f'<8s{len(_BOOK_FIELDS)}q')   # then a CRC-32 of it (4 bytes)
_SQLITE_MAGIC = b'SQLite format 3\x00'
_WAL_MAGICS = (0x377F0682, 0x377F0683)   # the low bit: checksums in big-endian words
_WAL_VERSION = 3007000
_U32 = 'I' if array('I').itemsize == 4 else 'L'
_OFFSET_REFRESH_US = 500_000   # a stored wall - monotonic offset this stale is rewritten
_RECOVER_TIMEOUT_S = 600.0     # for the sqlite3 shell's .recover
_SALVAGE_RANGE = 256           # known seqs per range read by the row-by-row salvage
_MAX_COUNT = 2**56             # a recovered counter above it is garbage (sums stay in int64)


class QueueError(BridgeError):
    """The queue cannot do what was asked (bad configuration, closed queue)."""


class DiskFullError(QueueError):
    """A commit failed because the disk is full; held messages stay in memory."""


@dataclass(frozen=True)
class QueueConfig:
    """Bounds and durability of the queue."""

    max_bytes: int = setting(256 * 2**20, 'payload bytes kept while offline (then the oldest '
                             'of the lowest priority go)', low=1, high=2**40)
    ttl_s: float = setting(24 * 3600.0, 'queued messages older than this are dropped', unit='s',
                           low=1.0, high=3.2e7)
    synchronous: str = setting('FULL', 'FULL: survives power loss | NORMAL: a process crash',
                               choices=_SYNC_MODES)
    max_pending: int = 100_000            # messages held in memory between commits
    ballast_bytes: int = 8 * 2**20        # released when the disk fills up
    wal_limit_bytes: int = 64 * 2**20     # journal_size_limit

    def __post_init__(self) -> None:
        check_settings(self, QueueError)
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


def read_boot_id() -> str | None:
    """Return this boot's id (Linux ``/proc/sys/kernel/random/boot_id``), None if unreadable."""
    try:
        return Path('/proc/sys/kernel/random/boot_id').read_text().strip() or None
    except OSError:
        return None


class DurableQueue:
    """The outbox of one robot, in one SQLite file."""

    path: Path
    cfg: QueueConfig
    clock: Clock
    boot_id_reader: Callable[[], str | None]   # same boot: same monotonic clock
    _db: sqlite3.Connection
    _reader: sqlite3.Connection
    _pending: deque[QueuedMessage]   # put, not committed
    _next_seq: int
    _bytes: int
    _dropped_uncommitted: int
    disk_full: bool
    # Delivered (acknowledged), not yet deleted: in the ack log on disk and here.
    _delivered: list[int]
    _ack_lock: threading.Lock
    _ack_fd: int
    _ack_gen: int
    _priorities: frozenset[int]   # of anything ever queued here
    # The counters as last committed, mirrored into the books sidecar after each write.
    _books: dict[str, int]
    _books_fd: int
    _books_failed: bool
    _detector: WallStepDetector
    # Wall-clock steps already applied to held messages, not yet to the rows: (step, seqs
    # below which it applies), written with the next transaction.
    _row_steps: list[tuple[float, int]]
    _unreported_step: float   # found by put(), returned by check_clock()
    _stored_clock: tuple[int, int | None]   # boot key, offset [us] in the file
    _stored_offset_us: int | None

    def __init__(self, path: Path | str, cfg: QueueConfig | None = None,
                 clock: Clock = SYSTEM_CLOCK,
                 boot_id_reader: Callable[[], str | None] = read_boot_id) -> None:
        self.cfg = QueueConfig() if cfg is None else cfg
        self.clock = clock
        self.boot_id_reader = boot_id_reader
        self._pending = deque()
        self._next_seq = 1
        self._bytes = 0
        self._dropped_uncommitted = 0
        self.disk_full = False
        self._delivered = []
        self._ack_lock = threading.Lock()
        self._ack_fd = -1
        self._ack_gen = 0
        self._priorities = frozenset()
        self._books = {}
        self._books_fd = -1
        self._books_failed = False
        self._row_steps = []
        self._unreported_step = 0.0
        self._stored_clock = (0, None)
        self._stored_offset_us = None
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._detector = WallStepDetector(self.clock)
        self._detector.check()   # the reference offset
        self._db = self._open()
        self._books_fd = os.open(self._books_path, os.O_RDWR | os.O_CREAT, 0o644)
        self._write_books()
        with contextlib.suppress(OSError):   # a longer file (garbage) would never read back
            os.ftruncate(self._books_fd, _BOOKS_BODY.size + 4)
        # Reads for the link go through a second connection: WAL lets it read what is
        # committed while the first one writes, so the sender never waits for a commit.
        self._reader = self._connect()
        self._replay_ack_logs()
        self._follow_clock_across_restart()
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
        existed = self.path.is_file() and self.path.stat().st_size > 0
        sidecar = _read_books(self._books_path)
        if not existed and sidecar and sidecar['committed']:
            _LOG.warning('queue database %s is missing but its books file says %d messages were '
                         'committed: starting a new one, seq continues from %d', self.path,
                         sidecar['committed'], sidecar['next_seq'])
        problem = _header_problem(self.path) or _wal_problem(Path(f'{self.path}-wal'))
        db: sqlite3.Connection | None = None
        if problem is None:
            try:
                db = self._connect()
                problem = self._check(db, sidecar if existed else None)
            except _CORRUPT as exc:
                problem = str(exc)
        if problem is not None:
            if db is not None:
                with contextlib.suppress(Exception):
                    db.close()
            db = self._recover(problem, sidecar)
        assert db is not None
        self._load(db, sidecar)
        return db

    def _check(self, db: sqlite3.Connection, sidecar: Mapping[str, int] | None) -> str | None:
        """Say what is wrong with an open database (None: nothing found)."""
        # integrity_check, not quick_check: it also finds an index that disagrees with its
        # table (a flipped seq or priority), for ~1.7x the time (0.14 s for 100 MB here).
        check = db.execute('PRAGMA integrity_check').fetchone()[0]
        if check != 'ok':
            return f'integrity_check: {check}'
        db.executescript(_SCHEMA)
        invalid = db.execute(f'SELECT COUNT(*) FROM messages WHERE NOT {_VALID_ROW}').fetchone()[0]
        if invalid:
            return f'{invalid} rows of its messages table are not messages the queue wrote'
        for (topic,) in db.execute('SELECT DISTINCT CAST(topic AS BLOB) FROM messages'):
            try:   # SQLite stores text unchecked; reading a bad one would raise every time
                topic.decode()
            except UnicodeDecodeError:
                return f'a topic of its messages table is not UTF-8: {topic[:80]!r}'
        counters = _counters(db)
        queued = db.execute('SELECT COUNT(*) FROM messages').fetchone()[0]
        committed = counters.get('committed', 0)
        accounted = counters.get('delivered', 0) + queued + sum(
            counters.get(f'dropped_{reason}', 0) for reason in DROP_REASONS)
        if committed != accounted:
            return (f'its books do not balance: {committed} committed, but {accounted} '
                    'delivered, queued or dropped')
        if sidecar is not None and sidecar['committed'] > committed:
            return (f'its books file says {sidecar["committed"]} messages were committed, the '
                    f'database holds only {committed}: the last commits were lost')
        return None

    def _load(self, db: sqlite3.Connection, sidecar: Mapping[str, int] | None) -> None:
        """Take the state of an open (checked or recovered) database."""
        counters = _counters(db)
        max_seq = db.execute('SELECT MAX(seq) FROM messages').fetchone()[0] or 0
        self._next_seq = max(counters.get('next_seq', 0), max_seq + 1,
                             sidecar['next_seq'] if sidecar else 0, 1)
        self._bytes = db.execute('SELECT COALESCE(SUM(size), 0) FROM messages').fetchone()[0]
        self._priorities = frozenset(
            p for (p,) in db.execute('SELECT DISTINCT priority FROM messages'))
        self._books = {name: counters.get(name, 0) for name in _BOOK_FIELDS}
        self._books['next_seq'] = self._next_seq
        self._stored_clock = (counters.get('boot_id', 0), counters.get('clock_offset_us'))
        self._stored_offset_us = self._stored_clock[1]

    def _aside(self) -> Path:
        """Where a corrupt database goes: ``<name>.corrupt-<unix time>`` (never over another)."""
        stamp = int(self.clock.wall())
        aside = self.path.with_name(f'{self.path.name}.corrupt-{stamp}')
        number = 0
        while any(Path(f'{aside}{suffix}').exists() for suffix in ('', '-wal', '-shm')):
            number += 1
            aside = self.path.with_name(f'{self.path.name}.corrupt-{stamp}-{number}')
        return aside

    def _recover(self, problem: str, sidecar: Mapping[str, int] | None) -> sqlite3.Connection:
        """Move a corrupt database aside; start a new one with what can be read of it."""
        aside = self._aside()
        moved = []
        for suffix in ('', '-wal', '-shm'):
            source = Path(f'{self.path}{suffix}')
            if source.exists():
                source.replace(Path(f'{aside}{suffix}'))
                moved.append(source.name)
        db = self._connect()
        db.executescript(_SCHEMA)
        db.execute('BEGIN IMMEDIATE')
        try:
            salvage = _salvage(aside, db) if aside.is_file() else _Salvage('nothing to read')
            old = salvage.counters

            def carried(name: str) -> int:   # the recovered counter, else the sidecar's
                return old[name] if name in old else (sidecar[name] if sidecar else 0)

            books = {name: carried(name) for name in _BOOK_FIELDS if name != 'committed'}
            accounted = salvage.recovered + sum(
                value for name, value in books.items() if name != 'next_seq')
            known = [value for value in (old.get('committed'),
                                         sidecar['committed'] if sidecar else None)
                     if value is not None]
            lost = max(0, max(known) - accounted) if known else 0
            books['dropped_corrupt'] += lost
            books['committed'] = accounted + lost
            told = [value for value in (old.get('next_seq'),
                                        sidecar['next_seq'] if sidecar else None)
                    if value is not None]
            books['next_seq'] = max(*told, salvage.max_seq + 1, 1) if told else max(
                salvage.max_seq + 1, int(self.clock.wall() * 1e6))
            for name, value in books.items():
                self._set_counter(db, name, value)
            for name in ('boot_id', 'clock_offset_us'):
                if name in old:
                    self._set_counter(db, name, old[name])
            db.execute('COMMIT')
        except BaseException:
            if db.in_transaction:
                db.execute('ROLLBACK')
            raise
        if known:
            loss = f'{lost} committed messages were lost (counted as dropped "corrupt")'
        else:
            loss = ('the loss could not be counted: neither its counters nor the books file '
                    f'{self._books_path.name} survived')
        _LOG.error('queue database %s is corrupt (%s): moved %s aside to %s; recovered %d '
                   'queued messages (%s; %d unreadable ranges or invalid rows skipped); %s; '
                   'seq continues from %d%s', self.path, problem, ', '.join(moved) or 'nothing',
                   aside.name, salvage.recovered, salvage.method, salvage.skipped, loss,
                   books['next_seq'], '' if told else ' (the wall clock in microseconds)')
        return db

    @property
    def _books_path(self) -> Path:
        return self.path.with_name(self.path.name + '.books')

    def _write_books(self) -> None:
        """Mirror the counters into the books sidecar: one pwrite, no fsync (a hint)."""
        if self._books_fd < 0:
            return
        try:
            os.pwrite(self._books_fd, _pack_books(self._books), 0)
        except OSError as exc:
            if not self._books_failed:
                self._books_failed = True
                _LOG.warning('cannot write the queue books file %s (%s): a corruption of the '
                             'database may then lose messages uncounted', self._books_path, exc)

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
        Without ``now_s`` it is stamped by the queue's clock, after looking for a wall-clock
        step (0.3 us here), so a step between two :meth:`check_clock` calls never re-bases
        messages stamped after it.
        """
        if qos not in (0, 1, 2):
            raise QueueError(f'qos {qos} must be 0, 1 or 2')
        if now_s is None:   # a step found here re-bases what came before, not this message
            step = self._detector.check()
            if step:
                self._note_step(step)
            now_s = self.clock.wall()
        if len(self._pending) >= self.cfg.max_pending:
            self._pending.popleft()  # never committed: outside the invariant, but counted
            self._dropped_uncommitted += 1
        seq = self._next_seq
        if priority not in self._priorities:   # replaced, not changed: the link reads it
            self._priorities = self._priorities | {priority}
        data = payload(seq) if callable(payload) else payload
        self._next_seq += 1
        self._pending.append(QueuedMessage(seq, topic, bytes(data), qos, priority, retain,
                                           now_s, 0))
        return seq

    def commit(self) -> int:
        """Write every held message in one transaction; return how many were committed."""
        if not self._pending:
            return 0
        rows = [(p.seq, p.topic, p.payload, p.qos, p.priority, int(p.retain), p.created_s,
                 len(p.payload)) for p in self._pending]
        try:
            with self._transaction() as db:
                # First the rows of a wall-clock step (the held ones are re-based already),
                # and the clock offset, for the next open.
                self._apply_row_steps(db)
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
        self._row_steps.clear()
        self._books['committed'] += len(rows)
        self._books['next_seq'] = self._next_seq
        self._write_books()
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
        self._books[counter] += removed
        self._write_books()
        return removed

    def expire(self, now_s: float | None = None) -> int:
        """Drop messages older than ``ttl_s``; return how many."""
        cutoff = (self.clock.wall() if now_s is None else now_s) - self.cfg.ttl_s
        self.flush_delivered()  # a delivered message is not also dropped
        with self._transaction() as db:
            if self._row_steps:   # ages as they were before a wall-clock step
                self._apply_row_steps(db)
            size, count = db.execute('SELECT COALESCE(SUM(size), 0), COUNT(*) FROM messages '
                                     'WHERE created_s < ?', (cutoff,)).fetchone()
            db.execute('DELETE FROM messages WHERE created_s < ?', (cutoff,))
            self._add_counter(db, 'dropped_ttl', int(count))
        self._row_steps.clear()
        self._bytes -= int(size)
        self._books['dropped_ttl'] += int(count)
        self._write_books()
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

    # --- wall-clock steps --------------------------------------------------------------------

    def _offset_us(self) -> int:
        return round((self.clock.wall() - self.clock.monotonic()) * 1e6)

    def _note_step(self, step_s: float) -> None:
        """Re-base the held messages now, the rows with the next transaction."""
        _LOG.warning('wall clock stepped by %+.3f s: re-basing the creation time of what is '
                     'queued (ages stay as they were)', step_s)
        self._shift_held(step_s)
        self._row_steps.append((step_s, self._next_seq))
        self._unreported_step += step_s

    def _shift_held(self, step_s: float) -> None:
        self._pending = deque(m._replace(created_s=m.created_s + step_s) for m in self._pending)

    def _apply_row_steps(self, db: sqlite3.Connection) -> int:
        """Re-base the rows of noted steps and store the offset (inside a transaction)."""
        shifted = 0
        for step, below in self._row_steps:
            shifted += db.execute('UPDATE messages SET created_s = created_s + ? WHERE seq < ?',
                                  (step, below)).rowcount
        offset = self._offset_us()
        self._set_counter(db, 'clock_offset_us', offset)
        # Rolled back, the file keeps an older offset: only slew goes unrecorded, as the
        # noted steps stay noted and are written with the next transaction.
        self._stored_offset_us = offset
        return shifted

    def rebase(self, step_s: float) -> int:
        """Shift every queued message's creation time by ``step_s``, as the wall clock jumped.

        Committed rows (in one transaction) and held messages alike, so ages stay what they
        were. Returns how many messages were shifted.
        """
        held = len(self._pending)
        self._shift_held(step_s)
        self._row_steps.append((step_s, self._next_seq))
        with self._transaction() as db:
            rows = self._apply_row_steps(db)
        self._row_steps.clear()
        return rows + held

    def check_clock(self) -> float:
        """Re-base the queue if the wall clock stepped; return the step [s] (0.0: none).

        Call it periodically, before :meth:`expire`. Steps that :meth:`put` noticed first are
        returned here too.
        """
        found = self._detector.check()
        if found:
            self._note_step(found)
        step, self._unreported_step = self._unreported_step, 0.0
        stale = (self._stored_offset_us is None
                 or abs(self._offset_us() - self._stored_offset_us) >= _OFFSET_REFRESH_US)
        if self._row_steps or stale:
            durable = bool(self._row_steps)   # only keeping the offset fresh: no fsync
            with self._transaction(durable=durable) as db:
                self._apply_row_steps(db)
            self._row_steps.clear()
        return step

    def _follow_clock_across_restart(self) -> None:
        """Re-base a step taken while the queue was closed (same boot only); store this boot."""
        boot = _boot_key(self.boot_id_reader())
        stored_boot, stored_offset = self._stored_clock
        offset = self._offset_us()
        try:   # a full disk: the rows stay noted, the next commit writes them and the offset
            if boot and boot == stored_boot and stored_offset is not None:
                step = (offset - stored_offset) / 1e6
                if abs(step) >= self._detector.threshold_s:
                    _LOG.warning('wall clock stepped by %+.3f s while the queue %s was closed '
                                 '(same boot): re-basing what is queued', step, self.path)
                    self.rebase(step)
            with self._transaction(durable=False) as db:
                self._set_counter(db, 'boot_id', boot)
                self._set_counter(db, 'clock_offset_us', offset)
            self._stored_offset_us = offset
        except sqlite3.OperationalError as exc:
            _LOG.warning('cannot store the boot id and clock offset in %s: %s', self.path, exc)

    # --- statistics --------------------------------------------------------------------------

    def stats(self, now_s: float | None = None) -> QueueStats:
        """Counters, queue depth and the age of the oldest queued message."""
        db = self._db
        with self._ack_lock:
            logged = sorted(set(self._delivered))
        queued = db.execute('SELECT COUNT(*), MIN(created_s) FROM messages').fetchone()
        delivered_here = _count_present(db, logged)   # in the ack log, not deleted yet
        now = self.clock.wall() if now_s is None else now_s
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
        if self._books_fd >= 0:
            os.close(self._books_fd)
            self._books_fd = -1
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
    """Seqs in ack log files (a torn last record is ignored).

    A log that vanished since it was listed was folded into the database by the queue's
    owner meanwhile (a read-only reader runs beside it): it is skipped, not an error.
    """
    seqs: list[int] = []
    for log in logs:
        try:
            data = log.read_bytes()
        except FileNotFoundError:
            continue
        seqs += [int.from_bytes(data[i:i + 8], 'big')
                 for i in range(0, len(data) - len(data) % 8, 8)]
    return seqs


def _counters(db: sqlite3.Connection) -> dict[str, int]:
    """Read the counters table (with the boot id and clock offset)."""
    return {name: int(value) for name, value in db.execute('SELECT name, value FROM counters')}


def _boot_key(boot_id: str | None) -> int:
    """Make a boot id a positive 63-bit integer for the counters table (0: unknown)."""
    if not boot_id:
        return 0
    digest = hashlib.blake2b(boot_id.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, 'big') >> 1) or 1


# --- the books sidecar -----------------------------------------------------------------------

def _pack_books(books: Mapping[str, int]) -> bytes:
    """Make the books sidecar's content: magic, the counters, a CRC-32 of both."""
    body = _BOOKS_BODY.pack(_BOOKS_MAGIC, *(books.get(name, 0) for name in _BOOK_FIELDS))
    return body + zlib.crc32(body).to_bytes(4, 'little')


def _read_books(path: Path) -> dict[str, int] | None:
    """Read the counters of a books sidecar; None if there is none, or a torn or foreign one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        _LOG.warning('queue books file %s is unreadable (%s): ignored', path, exc)
        return None
    body = data[:_BOOKS_BODY.size]
    if (len(data) != _BOOKS_BODY.size + 4 or not body.startswith(_BOOKS_MAGIC)
            or zlib.crc32(body) != int.from_bytes(data[-4:], 'little')):
        _LOG.warning('queue books file %s is torn or not a books file (%d bytes, checksum '
                     'wrong): ignored and rewritten', path, len(data))
        return None
    books = dict(zip(_BOOK_FIELDS, _BOOKS_BODY.unpack(body)[1:], strict=True))
    if min(books.values()) < 0:
        _LOG.warning('queue books file %s holds negative counters: ignored', path)
        return None
    return books


# --- corruption checks -----------------------------------------------------------------------

def _header_problem(path: Path) -> str | None:
    """Say what is wrong with the header of a queue database file (None: nothing seen)."""
    try:
        with path.open('rb') as handle:
            header = handle.read(100)
    except FileNotFoundError:
        return None
    if not header:
        return None   # an empty file: SQLite starts a database in it
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        return 'not an SQLite database: its header is wrong'
    if header[18] not in (1, 2) or header[19] not in (1, 2):
        return f'file format versions {header[18]}/{header[19]} in its header (1 or 2 expected)'
    encoding = int.from_bytes(header[56:60], 'big')
    if encoding not in (0, 1):   # 0: no table yet
        return f'text encoding {encoding} in its header (1, UTF-8, expected)'
    return None


def _wal_checksum(data: bytes, big_endian: bool, s0: int, s1: int) -> tuple[int, int]:
    """SQLite's cumulative WAL checksum of ``data`` (whole 8-byte pairs), from ``(s0, s1)``."""
    words = array(_U32, data)
    if big_endian != (sys.byteorder == 'big'):
        words.byteswap()
    pairs = iter(words)
    for first, second in zip(pairs, pairs, strict=False):
        s0 = (s0 + first + s1) & 0xFFFFFFFF
        s1 = (s1 + second + s0) & 0xFFFFFFFF
    return s0, s1


def _wal_problem(wal: Path) -> str | None:
    """Whether SQLite would silently drop committed transactions of a WAL file (why, or None).

    SQLite reads a WAL up to the first frame that has other salts than the header or fails
    its cumulative checksum, and ignores the rest. A torn last frame or uncommitted frames
    there are normal, and so are frames of an earlier generation (other salts). A commit frame
    of this generation further on, whose checksum chains from the frame before it, is not: it
    is a transaction SQLite once said was committed. (SQLite's WAL format, "Checksum
    Algorithm", sqlite.org/fileformat.html.)
    """
    try:
        handle = wal.open('rb')
    except FileNotFoundError:
        return None
    with handle:
        header = handle.read(32)
        if len(header) < 32:
            return None   # no frame was ever written after it
        magic, version, page_size, _, salt1, salt2, check1, check2 = struct.unpack('>8I', header)
        big_endian = magic & 1 == 1
        if (magic not in _WAL_MAGICS or version != _WAL_VERSION or not 512 <= page_size <= 65536
                or page_size & (page_size - 1)
                or _wal_checksum(header[:24], big_endian, 0, 0) != (check1, check2)):
            rest = len(handle.read(24 + 512))
            return None if rest < 24 + 512 else (
                f'the header of {wal.name} is invalid: SQLite would ignore all of its frames')
        frame_size = 24 + page_size
        running = previous = (check1, check2)   # the valid prefix's; the frame before's
        first_bad = index = 0
        while len(frame := handle.read(frame_size)) == frame_size:
            index += 1
            page, commit, salt_a, salt_b, sum_a, sum_b = struct.unpack('>6I', frame[:24])
            ours = (salt_a, salt_b) == (salt1, salt2) and page > 0
            if not first_bad:
                if ours:
                    running = _wal_checksum(frame[24:], big_endian,
                                            *_wal_checksum(frame[:8], big_endian, *running))
                if ours and running == (sum_a, sum_b):
                    previous = running
                    continue
                first_bad = index
            elif ours and commit and _wal_checksum(
                    frame[24:], big_endian,
                    *_wal_checksum(frame[:8], big_endian, *previous)) == (sum_a, sum_b):
                return (f'frame {first_bad} of {wal.name} fails its checksum, yet a committed '
                        f'frame ({index}) follows: SQLite would silently drop the '
                        f'transactions from frame {first_bad} on')
            previous = (sum_a, sum_b)
    return None


# --- recovery --------------------------------------------------------------------------------

class _Salvage(NamedTuple):
    """What was read back from a corrupt database."""

    method: str
    recovered: int = 0          # valid messages written into the new database
    skipped: int = 0            # invalid rows, and seq ranges that could not be read
    max_seq: int = 0
    counters: dict[str, int] = {}   # the readable, plausible counters (never mutated)


def _valid_row(row: Sequence[Any]) -> tuple[Any, ...] | None:
    """Make a row read as ``_SALVAGE_COLUMNS`` (text as bytes) a message row; None if invalid."""
    seq, topic, payload, qos, priority, retain, created_s, size, attempts, text, blob = row
    if (text != 1 or blob != 1 or not isinstance(topic, bytes)
            or not isinstance(payload, bytes) or type(seq) is not int or seq <= 0
            or type(qos) is not int or qos not in (0, 1, 2) or type(priority) is not int
            or type(retain) is not int or retain not in (0, 1) or type(attempts) is not int
            or attempts < 0 or type(size) is not int or size != len(payload)
            or type(created_s) not in (int, float) or not math.isfinite(created_s)):
        return None
    try:
        name = topic.decode()
    except UnicodeDecodeError:
        return None
    return seq, name, payload, qos, priority, retain, float(created_s), size, attempts


def _valid_counters(rows: Iterable[Sequence[Any]]) -> dict[str, int]:
    """Keep the plausible ones of counters rows read back (names may come as bytes)."""
    counters: dict[str, int] = {}
    for name, value in rows:
        with contextlib.suppress(UnicodeDecodeError, AttributeError):
            name = name.decode() if isinstance(name, bytes) else name
            if isinstance(name, str) and type(value) is int and (
                    0 <= value < _MAX_COUNT or name not in _BOOK_FIELDS):
                counters[name] = value
    return counters


@dataclass
class _Restore:
    """Writes the valid ones of the rows it is offered into the new database."""

    db: sqlite3.Connection
    recovered: int = 0
    invalid: int = 0
    max_seq: int = 0
    _rows: list[tuple[Any, ...]] = field(default_factory=list)

    def offer(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            valid = _valid_row(row)
            if valid is None:
                self.invalid += 1
                continue
            self._rows.append(valid)
            self.max_seq = max(self.max_seq, valid[0])
            if len(self._rows) >= _ROWS_PER_INSERT:
                self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        before = self.db.total_changes
        self.db.execute('INSERT OR IGNORE INTO messages (seq, topic, payload, qos, priority, '
                        'retain, created_s, size, attempts) VALUES '
                        + ', '.join(['(?, ?, ?, ?, ?, ?, ?, ?, ?)'] * len(self._rows)),
                        [value for row in self._rows for value in row])
        self.recovered += self.db.total_changes - before   # a seq seen twice counts once
        self._rows.clear()


def _find_recover_shell() -> tuple[str | None, str]:
    """Find an ``sqlite3`` shell that can run ``.recover``; or None and why there is none."""
    shell = shutil.which('sqlite3')
    if shell is None:
        return None, 'no sqlite3 command-line shell is installed'
    try:
        probe = subprocess.run([shell, ':memory:', 'SELECT COUNT(*) FROM sqlite_dbpage'],
                               capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f'{shell} does not run ({exc})'
    if probe.returncode != 0:
        return None, (f'{shell} was built without the sqlite_dbpage table that .recover needs '
                      "(as Debian's and Ubuntu's are)")
    return shell, ''


def _salvage(aside: Path, into: sqlite3.Connection) -> _Salvage:
    """Recover the messages and counters of a corrupt database into ``into`` (in a transaction).

    With the sqlite3 shell's ``.recover`` where it can run, else row by row; which one was
    used, and why, is logged.
    """
    shell, why_not = _find_recover_shell()
    if shell is not None:
        into.execute('SAVEPOINT shell_recover')
        try:
            salvage = _recover_with_shell(shell, aside, into)
            into.execute('RELEASE shell_recover')
            return salvage
        except (OSError, sqlite3.Error, subprocess.SubprocessError) as exc:
            into.execute('ROLLBACK TO shell_recover')
            into.execute('RELEASE shell_recover')
            why_not = f'{shell} .recover failed: {exc}'
    _LOG.warning('recovering %s row by row, not with the sqlite3 shell: %s', aside.name, why_not)
    return _salvage_rows(aside, into)


def _recover_with_shell(shell: str, aside: Path, into: sqlite3.Connection) -> _Salvage:
    """``sqlite3 COPY .recover | sqlite3 OUT``, then read OUT's messages and counters.

    It runs on a copy, so the file moved aside stays as it was found (its WAL included).
    """
    work = aside.with_name(aside.name + '.recovering')
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        copy, out = work / 'copy.db', work / 'out.db'
        shutil.copyfile(aside, copy)
        if Path(f'{aside}-wal').is_file():
            shutil.copyfile(f'{aside}-wal', f'{copy}-wal')
        with (work / 'recover.err').open('w+b') as dump_err, \
                (work / 'load.err').open('w+b') as load_err:
            dump = subprocess.Popen([shell, str(copy), '.recover'], stdout=subprocess.PIPE,
                                    stderr=dump_err)
            load = subprocess.Popen([shell, str(out)], stdin=dump.stdout,
                                    stdout=subprocess.DEVNULL, stderr=load_err)
            assert dump.stdout is not None
            dump.stdout.close()   # the loader holds it now
            try:
                load.wait(timeout=_RECOVER_TIMEOUT_S)
                dump.wait(timeout=_RECOVER_TIMEOUT_S)
            finally:
                for process in (dump, load):
                    if process.poll() is None:
                        process.kill()
                        process.wait()
            if dump.returncode != 0:   # partial output is not a recovery
                dump_err.seek(0)
                raise OSError(f'exit status {dump.returncode}: '
                              f'{dump_err.read()[-300:].decode(errors="replace").strip()}')
        restore = _Restore(into)
        source = sqlite3.connect(out)
        try:
            source.text_factory = bytes
            tables = {name.decode() for (name,) in source.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table'")}
            counters: dict[str, int] = {}
            if 'messages' in tables:
                restore.offer(source.execute(f'SELECT {_SALVAGE_COLUMNS} FROM messages'))
            if 'lost_and_found' in tables:   # rows of pages no table claims any more
                columns = {row[1].decode() for row in source.execute(
                    'PRAGMA table_info(lost_and_found)')}
                if {'nfield', 'id', *(f'c{i}' for i in range(9))} <= columns:
                    restore.offer(source.execute(
                        "SELECT id, c1, c2, c3, c4, c5, c6, c7, c8, typeof(c1) = 'text', "
                        "typeof(c2) = 'blob' "
                        'FROM lost_and_found WHERE nfield = 9 AND c0 IS NULL'))
            if 'counters' in tables:
                counters = _valid_counters(source.execute('SELECT name, value FROM counters'))
        finally:
            source.close()
        restore.flush()
        return _Salvage(f'sqlite3 shell .recover ({shell})', restore.recovered, restore.invalid,
                        restore.max_seq, counters)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _salvage_rows(aside: Path, into: sqlite3.Connection) -> _Salvage:
    """Read a corrupt database read-only, by seq ranges, skipping the ranges that raise."""
    restore = _Restore(into)
    counters: dict[str, int] = {}
    unreadable = 0
    uri = 'file:' + urllib.parse.quote(os.fspath(aside.resolve())) + '?mode=ro'
    try:
        source = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        _LOG.warning('cannot open %s to salvage it: %s', aside, exc)
        return _Salvage('row by row: nothing readable', skipped=1)
    try:
        source.text_factory = bytes
        # Lenient where a file is shorter than its header says (cut short): SQLite would
        # refuse it whole. Nothing is written through this read-only connection.
        source.execute('PRAGMA writable_schema = ON')
        with contextlib.suppress(*_CORRUPT):
            counters = _valid_counters(source.execute('SELECT name, value FROM counters'))
        unreadable = _read_ranges(source, _known_seqs(source), restore)
    finally:
        source.close()
    restore.flush()
    return _Salvage('row by row, by seq ranges', restore.recovered,
                    restore.invalid + unreadable, restore.max_seq, counters)


def _known_seqs(source: sqlite3.Connection) -> list[int]:
    """List the seqs a corrupt database still shows: in its index, from both ends of its table.

    Each scan goes as far as it can read.
    """
    seqs: set[int] = set()
    for sql in ('SELECT seq FROM messages INDEXED BY messages_by_rank',
                'SELECT seq FROM messages NOT INDEXED ORDER BY seq',
                'SELECT seq FROM messages NOT INDEXED ORDER BY seq DESC'):
        with contextlib.suppress(*_CORRUPT):
            for (seq,) in source.execute(sql):
                if type(seq) is int:
                    seqs.add(seq)
    return sorted(seqs)


def _read_ranges(source: sqlite3.Connection, known: Sequence[int], restore: _Restore) -> int:
    """Read every seq, in ranges that start at known seqs; split those that raise.

    Returns how many ranges could not be read at all.
    """
    starts = [known[i] for i in range(0, len(known), _SALVAGE_RANGE)]
    edges = [-2**63, *starts[1:], 2**63]
    stack = [(lo, hi - 1, False) for lo, hi in zip(edges, edges[1:], strict=False)][::-1]
    unreadable = 0
    while stack:
        lo, hi, blind = stack.pop()
        try:   # one seq: by equality, as a range would also step onto the next page
            rows = source.execute(
                f'SELECT {_SALVAGE_COLUMNS} FROM messages WHERE seq = ?', (lo,)
            ).fetchall() if lo == hi else source.execute(
                f'SELECT {_SALVAGE_COLUMNS} FROM messages WHERE seq BETWEEN ? AND ? ORDER BY seq',
                (lo, hi)).fetchall()
        except _CORRUPT:
            inner = known[bisect.bisect_right(known, lo):bisect.bisect_right(known, hi)]
            if inner:   # halve by the known seqs in it
                middle = inner[len(inner) // 2]
                stack += [(middle, hi, False), (lo, middle - 1, False)]
            elif not blind and lo < hi and _holds(known, lo):
                # the known seq alone, then what may follow it
                stack += [(lo + 1, hi, True), (lo, lo, True)]
            else:
                unreadable += 1
            continue
        restore.offer(rows)
    return unreadable


def _holds(known: Sequence[int], seq: int) -> bool:
    """Whether the sorted ``known`` holds ``seq``."""
    at = bisect.bisect_left(known, seq)
    return at < len(known) and known[at] == seq


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
    except _CORRUPT as exc:
        raise QueueError(f'{path} is not a readable queue database: {exc}') from None
    return QueueStats(
        committed=counters.get('committed', 0),
        delivered=counters.get('delivered', 0) + logged, queued=count - logged,
        queued_bytes=size,
        dropped={r: counters.get(f'dropped_{r}', 0) for r in DROP_REASONS},
        oldest_age_s=0.0 if oldest is None else max(0.0, time.time() - oldest), pending=0,
        dropped_uncommitted=0, next_seq=counters.get('next_seq', 0))
