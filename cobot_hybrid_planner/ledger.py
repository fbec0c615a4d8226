"""The planner's mission ledger: tasks and issued missions in one SQLite file. No MQTT.

Tables: ``tasks`` (every task of every order: its body, status ``open`` | ``in_progress`` |
``done`` | ``failed``, the robot, times, failures and the last reason), ``missions`` (per
robot: the last mission sent, its signed envelope, the tasks it still lists, its validity,
when it was sent and how the robot answered) and ``meta`` (the lease epoch). A restart
resumes from it; a replica hands it to the next owner as a snapshot (:mod:`handover`).

Every change runs in :meth:`Ledger.tx`, a real transaction (the connection is in autocommit
mode, where ``with connection:`` does not begin one), re-entrant so that a cascade inside a
hand-over commits or rolls back as one.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_planner.orders import PlanTask

__all__ = ['MISSION_COLUMNS', 'TASK_COLUMNS', 'TASK_STATUSES', 'Ledger']

TASK_COLUMNS = ('task_id', 'body', 'status', 'received_at', 'robot_id', 'started_at',
                'ended_at', 'failures', 'reason')
MISSION_COLUMNS = ('robot_id', 'mission_id', 'version', 'envelope', 'tasks', 'valid_until',
                   'sent_at', 'acked')
TASK_STATUSES = ('open', 'in_progress', 'done', 'failed')
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (task_id TEXT PRIMARY KEY, body TEXT NOT NULL,
                                  status TEXT NOT NULL DEFAULT 'open',
                                  received_at REAL NOT NULL DEFAULT 0,
                                  robot_id TEXT, started_at REAL, ended_at REAL,
                                  failures INTEGER NOT NULL DEFAULT 0,
                                  reason TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS missions (robot_id TEXT PRIMARY KEY, mission_id TEXT NOT NULL,
                                     version INTEGER NOT NULL, envelope BLOB NOT NULL,
                                     tasks TEXT NOT NULL, valid_until REAL NOT NULL,
                                     sent_at REAL NOT NULL, acked TEXT);
"""
_ADDED_COLUMNS = (('received_at', 'REAL NOT NULL DEFAULT 0'), ('robot_id', 'TEXT'),
                  ('started_at', 'REAL'), ('ended_at', 'REAL'),
                  ('failures', 'INTEGER NOT NULL DEFAULT 0'),
                  ('reason', "TEXT NOT NULL DEFAULT ''"))


class Ledger:
    """Tasks and missions of one planner (or one fleet), kept in ``path``."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute('PRAGMA journal_mode=WAL')
        self.db.executescript(_SCHEMA)
        columns = {row[1] for row in self.db.execute('PRAGMA table_info(tasks)')}
        for column, kind in _ADDED_COLUMNS:
            if column not in columns:  # a ledger from before task progress
                self.db.execute(f'ALTER TABLE tasks ADD COLUMN {column} {kind}')

    @contextlib.contextmanager
    def tx(self) -> Iterator[None]:
        """One ledger transaction (re-entrant: inside another it joins that one)."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute('BEGIN IMMEDIATE')
        try:
            yield
        except BaseException:
            if self.db.in_transaction:
                self.db.execute('ROLLBACK')
            raise
        self.db.execute('COMMIT')

    @property
    def changes(self) -> int:
        """Rows changed since the ledger was opened (what a snapshot covers)."""
        return self.db.total_changes

    @property
    def epoch(self) -> int:
        """The lease epoch this ledger is planned under (0 for a single planner)."""
        row = self.db.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()
        return int(row[0]) if row else 0

    def set_epoch(self, epoch: int) -> None:
        """Record the lease epoch this replica now owns."""
        with self.tx():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (epoch,))

    # --- tasks -------------------------------------------------------------------------------

    def known_tasks(self) -> tuple[frozenset[str], frozenset[str]]:
        """Ids of every task, and of those given up."""
        rows = self.db.execute('SELECT task_id, status FROM tasks').fetchall()
        return (frozenset(t for t, _ in rows), frozenset(t for t, s in rows if s == 'failed'))

    def add_tasks(self, tasks: list[PlanTask], now: float) -> None:
        """Store accepted tasks (open), received at ``now``."""
        with self.tx():
            for task in tasks:
                self.db.execute('INSERT INTO tasks (task_id, body, received_at) VALUES '
                                '(?, ?, ?)', (task.task_id, json.dumps(task.__dict__), now))

    def open_tasks(self, now: float) -> tuple[list[PlanTask], frozenset[str]]:
        """Tasks to plan, on the time axis of ``now``; and those no longer to plan.

        A successor of a task in progress is released when that task is expected to end.
        """
        expected_end: dict[str, float] = {}
        closed = set()
        open_rows = []
        for task_id, body, status, received, started in self.db.execute(
                'SELECT task_id, body, status, received_at, started_at FROM tasks'):
            if status == 'open':
                open_rows.append((body, received))
                continue
            closed.add(task_id)
            if status == 'in_progress':
                expected_end[task_id] = started + json.loads(body)['duration_s'] - now
        tasks = []
        for body, received in open_rows:
            data = json.loads(body)
            data['after'] = tuple(data['after'])
            shift = received - now          # order time -> now
            release = max([0.0, data['release_s'] + shift]
                          + [expected_end[p] for p in data['after'] if p in expected_end])
            data['release_s'] = release
            if data['deadline_s'] is not None:
                data['deadline_s'] += shift
            tasks.append(PlanTask(**data))
        return tasks, frozenset(closed)

    def last_task(self, robot_id: str) -> tuple[dict[str, Any], str, float | None] | None:
        """Return the robot's task in progress, else its last one done (body, status, start)."""
        row = self.db.execute(
            "SELECT body, status, started_at FROM tasks WHERE robot_id = ? AND status IN "
            "('in_progress', 'done') ORDER BY status = 'in_progress' DESC, "
            'COALESCE(ended_at, started_at) DESC LIMIT 1', (robot_id,)).fetchone()
        return None if row is None else (json.loads(row[0]), str(row[1]), row[2])

    def tasks_of(self, robot_id: str) -> set[str]:
        """Tasks a robot has started or done."""
        return {t for (t,) in self.db.execute(
            "SELECT task_id FROM tasks WHERE robot_id = ? AND status IN ('in_progress', "
            "'done')", (robot_id,))}

    def task(self, task_id: str) -> tuple[str, int, str | None] | None:
        """(status, failures, robot) of a task, or None."""
        row = self.db.execute('SELECT status, failures, robot_id FROM tasks WHERE task_id = ?',
                              (task_id,)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), row[2])

    def start_task(self, task_id: str, robot_id: str, started_at: float) -> None:
        """Record that a robot started a task: in progress, on that robot."""
        with self.tx():
            self.db.execute("UPDATE tasks SET status = 'in_progress', robot_id = ?, "
                            'started_at = ? WHERE task_id = ?', (robot_id, started_at, task_id))

    def finish_task(self, task_id: str, robot_id: str, ended_at: float) -> None:
        """Record that a robot finished a task."""
        with self.tx():
            self.db.execute("UPDATE tasks SET status = 'done', robot_id = ?, ended_at = ? "
                            'WHERE task_id = ?', (robot_id, ended_at, task_id))

    def reopen_task(self, task_id: str, failures: int, reason: str) -> None:
        """Record a failure: the task is open again, with its failure count and reason."""
        with self.tx():
            self.db.execute("UPDATE tasks SET status = 'open', robot_id = NULL, started_at = "
                            'NULL, failures = ?, reason = ? WHERE task_id = ?',
                            (failures, reason, task_id))

    def give_up(self, task_id: str, reason: str) -> int:
        """Fail a task for good and everything depending on it (no recursion).

        Returns how many depending tasks went with it.
        """
        successors: dict[str, list[str]] = {}
        for other, body in self.db.execute(
                "SELECT task_id, body FROM tasks WHERE status = 'open'").fetchall():
            for before in json.loads(body)['after']:
                successors.setdefault(before, []).append(other)
        with self.tx():
            pending, given_up = [(task_id, reason)], set()
            while pending:
                current, why = pending.pop()
                if current in given_up:
                    continue
                given_up.add(current)
                self.db.execute("UPDATE tasks SET status = 'failed', reason = ? WHERE "
                                'task_id = ?', (why, current))
                pending.extend((after, f'predecessor {current} failed')
                               for after in successors.get(current, ()))
        return len(given_up) - 1

    def release_tasks_of(self, robot_id: str) -> int:
        """Put a robot's tasks in progress back to plan; return how many."""
        with self.tx():
            return int(self.db.execute(
                "UPDATE tasks SET status = 'open', robot_id = NULL, started_at = NULL "
                "WHERE status = 'in_progress' AND robot_id = ?", (robot_id,)).rowcount)

    def task_status(self) -> dict[str, dict[str, Any]]:
        """Every task: status, robot, failures, reason."""
        return {t: {'status': s, 'robot_id': r, 'failures': f, 'reason': why}
                for t, s, r, f, why in self.db.execute(
                    'SELECT task_id, status, robot_id, failures, reason FROM tasks')}

    def task_station(self, task_id: str) -> str:
        """Return the station of a stored task."""
        row = self.db.execute('SELECT body FROM tasks WHERE task_id = ?', (task_id,)).fetchone()
        if row is None:
            raise PlannerError(f'unknown task {task_id!r}')
        return str(json.loads(row[0])['station'])

    # --- missions ----------------------------------------------------------------------------

    def mission_lists(self, robot_id: str, task_id: str) -> bool:
        """Whether the robot's current mission lists a task."""
        row = self.db.execute('SELECT tasks FROM missions WHERE robot_id = ?',
                              (robot_id,)).fetchone()
        return row is not None and task_id in json.loads(row[0])

    def sent_missions(self) -> list[tuple[str, list[str], str, int]]:
        """(robot, tasks still listed, mission id, version) of every robot's last mission."""
        return [(r, json.loads(order), m, v) for r, order, m, v in self.db.execute(
            'SELECT robot_id, tasks, mission_id, version FROM missions').fetchall()]

    def last_version(self, robot_id: str) -> int:
        """Return the version of the robot's last mission (0 if none)."""
        row = self.db.execute('SELECT version FROM missions WHERE robot_id = ?',
                              (robot_id,)).fetchone()
        return int(row[0]) if row else 0

    def store_mission(self, robot_id: str, mission_id: str, version: int, envelope: bytes,
                      order: list[str], valid_until: float, now: float) -> None:
        """Record a mission sent; no other robot's mission lists its tasks any more."""
        with self.tx():
            self.db.execute('INSERT OR REPLACE INTO missions VALUES (?, ?, ?, ?, ?, ?, ?, '
                            'NULL)', (robot_id, mission_id, version, envelope,
                                      json.dumps(order), valid_until, now))
            mine = set(order)
            for other, listed in self.db.execute(
                    'SELECT robot_id, tasks FROM missions WHERE robot_id != ?',
                    (robot_id,)).fetchall():
                was = json.loads(listed)
                kept = [t for t in was if t not in mine]
                if len(kept) != len(was):
                    self.db.execute('UPDATE missions SET tasks = ? WHERE robot_id = ?',
                                    (json.dumps(kept), other))

    def mark_acked(self, robot_id: str, mission_id: str, version: int, status: str) -> None:
        """Record how the robot answered one mission version."""
        with self.tx():
            self.db.execute('UPDATE missions SET acked = ? WHERE robot_id = ? AND '
                            'mission_id = ? AND version = ?',
                            (status, robot_id, mission_id, version))

    def forget_mission_tasks(self, robot_id: str) -> None:
        """Drop the tasks of a mission the robot refuses for good (rebuilt replay store)."""
        with self.tx():
            self.db.execute("UPDATE missions SET tasks = '[]', acked = 'rejected' WHERE "
                            'robot_id = ?', (robot_id,))

    def unacknowledged(self) -> list[tuple[str, bytes, float, float]]:
        """(robot, envelope, valid until, sent at) of missions no robot answered yet."""
        return [(r, bytes(e), v, s) for r, e, v, s in self.db.execute(
            'SELECT robot_id, envelope, valid_until, sent_at FROM missions '
            'WHERE acked IS NULL').fetchall()]

    def mark_sent(self, robot_id: str, now: float) -> None:
        """Record that a mission was sent again now."""
        with self.tx():
            self.db.execute('UPDATE missions SET sent_at = ? WHERE robot_id = ?',
                            (now, robot_id))

    def missions(self) -> dict[str, dict[str, Any]]:
        """Robot -> mission id, version, tasks still listed, acknowledgement."""
        return {r: {'mission_id': m, 'version': v, 'tasks': json.loads(t), 'acked': a}
                for r, m, v, t, a in self.db.execute(
                    'SELECT robot_id, mission_id, version, tasks, acked FROM missions')}

    # --- whole ledger ------------------------------------------------------------------------

    def rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every task row and every mission row, as dicts (envelopes as bytes)."""
        tasks = [dict(zip(TASK_COLUMNS, row, strict=True)) for row in self.db.execute(
            f'SELECT {", ".join(TASK_COLUMNS)} FROM tasks')]
        missions = [dict(zip(MISSION_COLUMNS, row, strict=True)) for row in self.db.execute(
            f'SELECT {", ".join(MISSION_COLUMNS)} FROM missions')]
        return tasks, missions

    def replace(self, tasks: list[tuple[Any, ...]], missions: list[tuple[Any, ...]]) -> None:
        """Take another ledger whole; the open tasks only this one has are kept."""
        local = self.db.execute(f'SELECT {", ".join(TASK_COLUMNS)} FROM tasks').fetchall()
        places = ','.join('?' * len(TASK_COLUMNS))
        with self.tx():   # all of it or nothing: a bad row keeps the local ledger whole
            self.db.execute('DELETE FROM tasks')
            self.db.execute('DELETE FROM missions')
            self.db.executemany(f'INSERT INTO tasks VALUES ({places})', tasks)
            self.db.executemany(f'INSERT OR IGNORE INTO tasks VALUES ({places})',
                                [row for row in local if row[2] == 'open'])
            self.db.executemany(
                f'INSERT INTO missions VALUES ({",".join("?" * len(MISSION_COLUMNS))})',
                missions)

    def rebase(self, step_s: float) -> None:
        """Shift every stored time by a wall-clock step."""
        with self.tx():
            self.db.execute('UPDATE tasks SET received_at = received_at + ?, started_at = '
                            'started_at + ?, ended_at = ended_at + ?', (step_s,) * 3)
            self.db.execute('UPDATE missions SET sent_at = sent_at + ?', (step_s,))

    def close(self) -> None:
        """Close the file."""
        self.db.close()
