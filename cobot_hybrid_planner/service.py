"""The cloud planner over MQTT: orders in, telemetry in, signed missions out. No ROS.

:class:`PlannerService` subscribes ``cobot/v1/#`` (telemetry, status, mission acks, and work
orders on ``cobot/v1/orders``), keeps the fleet in :class:`FleetStore` and the open tasks
and issued missions in a SQLite ledger beside it (a restart resumes), and on :meth:`step`:

* validates new orders task by task (rejections are logged with their reason);
* follows the robots' task progress: ``started`` makes a task in progress (it stays with its
  robot, which is busy until it ends), ``done`` closes it, ``failed`` puts it back to plan
  (``max_task_failures`` times, then it and what depends on it fail for good); the tasks in
  progress of a robot that goes offline are put back to plan too;
* replans when tasks arrived, a robot came or went, a task ended or failed, or a mission was
  rejected; the previous assignment is kept unless moving saves enough (see
  :func:`planning.plan`); a robot's new mission holds only its tasks not started yet;
* sends each robot whose task list changed one mission (a new version), Ed25519-signed,
  QoS 1, with an MQTT 5 message expiry equal to its validity;
* re-sends a mission not acknowledged within ``resend_after_s`` (the same command: a robot
  that had it answers "replayed", which counts as acknowledged);
* acknowledges to each robot what the fleet store has committed
  (``cobot/v1/<robot_id>/delivered``), so robots with ``delivery: cloud`` delete their copy
  only once it is stored here, not on the broker's PUBACK.

With a ``fleet_id`` the service is one of several replicas (:mod:`replica`): it plans and
signs only while it holds the fleet's lease, through the fleet's own MQTT session, and mission
versions carry the lease epoch (``epoch * 1,000,000 + n``) so robots follow the newest owner.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_planner.fleet_state import FleetStore
from cobot_hybrid_planner.orders import OrderError, PlanTask, validate_orders
from cobot_hybrid_planner.planning import FleetRobot, plan
from cobot_hybrid_planner.replica import FleetReplica, fleet_orders_topic
from cobot_hybrid_planner.site import Site
from cobot_hybrid_protocol import signing
from cobot_hybrid_protocol.clock import SYSTEM_CLOCK, Clock, WallStepDetector
from cobot_hybrid_protocol.errors import KeyFileError, PayloadError, TopicError
from cobot_hybrid_protocol.limits import (
    FILE_LIMITS,
    TELEMETRY_LIMITS,
    parse_json,
    parse_yaml,
)
from cobot_hybrid_protocol.mission import (
    Mission,
    MissionAck,
    Pose,
    Task,
    TaskProgress,
    mission_to_json,
)
from cobot_hybrid_protocol.paths import planner_data_dir
from cobot_hybrid_protocol.settings import check_settings, setting, specs
from cobot_hybrid_protocol.signing import sign_command
from cobot_hybrid_protocol.topics import (
    MISSION_ACK,
    ORDERS_TOPIC,
    STATE,
    STATUS,
    TASK_PROGRESS,
    check_fleet_id,
    command_topic,
    fleet_filter,
    robot_filter,
)

__all__ = ['EPOCH_STRIDE', 'TASK_STATUSES', 'PlannerConfig', 'PlannerService',
           'load_orders_file', 'load_private_key']

_LOG = logging.getLogger(__name__)
_PLAN_RETRY_S = 10.0
_URGENT = tuple(f'/{kind}' for kind in (STATUS, MISSION_ACK, TASK_PROGRESS, STATE))
EPOCH_STRIDE = 1_000_000          # mission version = lease epoch * EPOCH_STRIDE + n
_TASK_COLUMNS = ('task_id', 'body', 'status', 'received_at', 'robot_id', 'started_at',
                 'ended_at', 'failures', 'reason')
_MISSION_COLUMNS = ('robot_id', 'mission_id', 'version', 'envelope', 'tasks', 'valid_until',
                    'sent_at', 'acked')
TASK_STATUSES = ('open', 'in_progress', 'done', 'failed')
_LEDGER = """
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


@dataclass(frozen=True)
class PlannerConfig:
    """Everything the planner needs: where the broker is, what it signs with, how it plans.

    The one source of ``planner_node``'s parameters, ``planner.yaml`` and the ``serve``
    command line. The ``live`` settings are applied by :meth:`PlannerService.reconfigure`.
    """

    site_file: str = setting('', 'site YAML: stations, robots, travel (see '
                             'config/examples/site.yaml)')
    private_key_file: str = setting('', 'PEM Ed25519 key the missions are signed with')
    key_id: str = setting('planner', 'the id robots know the public key by')
    orders_file: str = setting('', 'work order loaded at start ("" = none)')
    broker_host: str = setting('127.0.0.1', 'MQTT broker host')
    broker_port: int = setting(1883, 'MQTT broker port', low=1, high=65535)
    client_id: str = setting('planner', 'MQTT client id of this replica (one per replica)')
    data_dir: str = setting('', 'fleet store and mission ledger folder ("" = '
                            '~/.local/state/cobot_hybrid/planner)')
    plan_time_limit_s: float = setting(2.0, 'planning time limit', unit='s', low=0.05,
                                       high=600.0, live=True)
    mission_validity_s: float = setting(3600.0, 'missions expire after (MQTT 5 message expiry '
                                        'too)', unit='s', low=1.0, high=86400.0, live=True)
    resend_after_s: float = setting(10.0, 're-send unacknowledged missions after', unit='s',
                                    low=0.1, high=3600.0, live=True)
    offline_after_s: float = setting(10.0, 'a robot silent this long is offline', unit='s',
                                     low=0.1, high=3600.0, live=True)
    step_period_s: float = setting(0.1, 'how often the planner takes what arrived', unit='s',
                                   low=0.01, high=10.0)
    max_task_failures: int = setting(3, 'a task failing this often is given up (and its '
                                     'successors)', low=1, high=1000, live=True)
    fleet_id: str = setting('', '"" = the only planner; set it on every replica of a fleet')
    lease_s: float = setting(6.0, 'replicas: an owner silent this long is replaced', unit='s',
                             low=1.0, high=600.0)
    delivery_ack_period_s: float = setting(0.5, 'robots (delivery: cloud) hear what was stored '
                                           'at most this often', unit='s', low=0.01,
                                           high=60.0)

    def __post_init__(self) -> None:
        if isinstance(self.data_dir, Path):   # from code and tests: a folder as a Path
            object.__setattr__(self, 'data_dir', str(self.data_dir))
        check_settings(self, PlannerError)
        if self.fleet_id:
            try:
                check_fleet_id(self.fleet_id)
            except TopicError as exc:
                raise PlannerError(str(exc)) from None

    @property
    def data_path(self) -> Path:
        """The folder of the fleet store and the ledger."""
        return planner_data_dir(self.data_dir)

    def require_files(self) -> None:
        """Check the site and key files exist (not at declaration: defaults have none)."""
        for name in ('site_file', 'private_key_file'):
            path = getattr(self, name)
            if not path or not Path(path).expanduser().is_file():
                raise PlannerError(f'{name} {path!r} does not exist; set it (see '
                                   'config/examples/site.yaml, and an Ed25519 private key)')


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read the planner's PEM Ed25519 private key (raises PlannerError naming the file)."""
    try:
        return signing.load_private_key(path)
    except KeyFileError as exc:
        raise PlannerError(str(exc)) from None


@dataclass
class PlannerService:
    """Fleet state, ledger, planning and mission dispatch."""

    cfg: PlannerConfig
    site: Site
    private_key: Ed25519PrivateKey
    clock: Clock = SYSTEM_CLOCK
    rejected_tasks: dict[str, str] = field(default_factory=dict)   # the latest, bounded
    sent: int = 0
    errors: Counter[str] = field(default_factory=Counter)   # caught at a message boundary
    _inbox: deque[tuple[str, bytes, dict[str, str], bool]] = field(default_factory=deque)
    _dirty: bool = True
    _online: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.cfg.data_path.mkdir(parents=True, exist_ok=True)
        self.fleet = FleetStore(self.cfg.data_path / 'fleet.db', self.cfg.offline_after_s,
                                robots_allowed=frozenset(self.site.robots))
        self._db = sqlite3.connect(self.cfg.data_path / 'ledger.db', isolation_level=None,
                                   check_same_thread=False)
        self._db.execute('PRAGMA journal_mode=WAL')
        self._db.executescript(_LEDGER)
        columns = {row[1] for row in self._db.execute('PRAGMA table_info(tasks)')}
        for column, kind in (('received_at', 'REAL NOT NULL DEFAULT 0'), ('robot_id', 'TEXT'),
                             ('started_at', 'REAL'), ('ended_at', 'REAL'),
                             ('failures', 'INTEGER NOT NULL DEFAULT 0'),
                             ('reason', "TEXT NOT NULL DEFAULT ''")):
            if column not in columns:  # a ledger from before task progress
                self._db.execute(f'ALTER TABLE tasks ADD COLUMN {column} {kind}')
        self.progress_ignored = 0
        self.clock_steps = 0
        self._acks_at = 0.0
        self._held_acks: list[tuple[int, list[tuple[str, bytes]]]] = []
        self._snapshot_pending: tuple[int, Any] | None = None   # changes, its publish info
        self._snapshot_covers = -1     # ledger changes in the newest snapshot the broker has
        self._ingest_after = 0.0
        self._wall_steps = WallStepDetector(self.clock)
        self.progress_unauthorized = 0
        self._plan_after = 0.0     # after a failed plan: not before this time
        self.replica: FleetReplica | None = None
        self._snapshot_changes = -1
        self._snapshot_at = 0.0
        fleet = self.cfg.fleet_id
        if fleet:
            self.replica = FleetReplica(fleet, self.cfg.client_id, self.cfg.broker_host,
                                        self.cfg.broker_port, self.cfg.lease_s)
            # The fleet's session: its robots and its forwarded orders, queued by the broker
            # while ownership changes hands.
            topics = [(robot_filter(r), 1) for r in sorted(self.site.robots)] + [
                (fleet_orders_topic(fleet), 1)]
            client_id = f'planner-{fleet}'
        else:
            topics, client_id = [(fleet_filter(), 1)], self.cfg.client_id
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topics)
        self.client.on_message = self._on_message

    def reconfigure(self, cfg: PlannerConfig) -> None:
        """Apply new values of the live settings (from the next step on); refuse any other."""
        fixed = sorted(name for name, (_, spec) in specs(PlannerConfig).items()
                       if not spec.live and getattr(cfg, name) != getattr(self.cfg, name))
        if fixed:
            raise PlannerError(f'{", ".join(fixed)} cannot change while the planner runs')
        self.cfg = cfg
        self.fleet.offline_after_s = cfg.offline_after_s
        self._dirty = True   # plan again with the new limits

    def start(self) -> None:
        """Connect (retried in the background); a replica joins the fleet's lease first."""
        if self.replica is not None:
            self.replica.start()  # the fleet session is connected once the lease is ours
        else:
            self._connect_session()

    def _connect_session(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async(self.cfg.broker_host, self.cfg.broker_port,
                                  clean_start=False, properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        """Disconnect and close the stores."""
        self.client.loop_stop()
        self.client.disconnect()
        if self.replica is not None:
            self.replica.stop()
        self.fleet.close()
        self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One ledger transaction (re-entrant: inside another it joins that one).

        The connection runs in autocommit mode, where ``with connection:`` does not begin
        a transaction: a cascade or a hand-over that failed halfway was half committed.
        """
        if self._db.in_transaction:
            yield
            return
        self._db.execute('BEGIN IMMEDIATE')
        try:
            yield
        except BaseException:
            if self._db.in_transaction:
                self._db.execute('ROLLBACK')
            raise
        self._db.execute('COMMIT')

    @property
    def epoch(self) -> int:
        """The lease epoch this replica plans under (0 for a single planner)."""
        row = self._db.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()
        return int(row[0]) if row else 0

    @property
    def is_owner(self) -> bool:
        """Whether this planner plans and signs now (always, without replicas)."""
        return self.replica is None or self.replica.lease.is_owner

    def _follow_lease(self) -> None:
        assert self.replica is not None
        became, lost = self.replica.tick(time.monotonic())
        if became:
            epoch = self.replica.lease.epoch
            self._adopt_snapshot()
            with self._tx():
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (epoch,))
            _LOG.warning('replica %s owns fleet %s (epoch %d)', self.cfg.client_id,
                         self.cfg.fleet_id, epoch)
            self._online, self._dirty = frozenset(), True
            self._connect_session()
        if lost:
            _LOG.warning('replica %s lost fleet %s', self.cfg.client_id, self.cfg.fleet_id)
            self.client.disconnect()
            self.client.loop_stop()

    def ledger_snapshot(self) -> bytes:
        """Return the ledger (tasks, missions) as JSON, for the next owner."""
        tasks = [dict(zip(_TASK_COLUMNS, row, strict=True)) for row in self._db.execute(
            f'SELECT {", ".join(_TASK_COLUMNS)} FROM tasks')]
        missions = []
        for row in self._db.execute(f'SELECT {", ".join(_MISSION_COLUMNS)} FROM missions'):
            item = dict(zip(_MISSION_COLUMNS, row, strict=True))
            item['envelope'] = base64.b64encode(bytes(item['envelope'])).decode()
            missions.append(item)
        return json.dumps({'fleet': self.cfg.fleet_id, 'epoch': self.epoch, 'tasks': tasks,
                           'missions': missions}).encode()

    def _adopt_snapshot(self) -> None:
        assert self.replica is not None
        if self.replica.snapshot is None:
            return
        try:
            data = parse_json(self.replica.snapshot, FILE_LIMITS, 'the ledger snapshot')
            if data['fleet'] != self.cfg.fleet_id or int(data['epoch']) < self.epoch:
                return  # ours is as new
            tasks = [tuple(t[c] for c in _TASK_COLUMNS) for t in data['tasks']]
            missions = [tuple(base64.b64decode(m[c]) if c == 'envelope' else m[c]
                              for c in _MISSION_COLUMNS) for m in data['missions']]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            _LOG.error('ledger snapshot of fleet %s unreadable (%s): keeping the local one',
                       self.cfg.fleet_id, exc)
            return
        # Tasks only this replica has (an orders file it loaded) are kept, still open.
        local = self._db.execute(f'SELECT {", ".join(_TASK_COLUMNS)} FROM tasks').fetchall()
        try:
            with self._tx():   # all of it or nothing: a bad row keeps the local ledger whole
                self._db.execute('DELETE FROM tasks')
                self._db.execute('DELETE FROM missions')
                self._db.executemany(f'INSERT INTO tasks VALUES ({",".join("?" * 9)})', tasks)
                self._db.executemany(
                    f'INSERT OR IGNORE INTO tasks VALUES ({",".join("?" * 9)})',
                    [row for row in local if row[2] == 'open'])
                self._db.executemany(f'INSERT INTO missions VALUES ({",".join("?" * 8)})',
                                     missions)
        except (sqlite3.Error, ValueError, TypeError) as exc:
            self.errors['snapshot'] += 1
            _LOG.error('ledger snapshot of fleet %s cannot be stored (%s): keeping the local '
                       'one', self.cfg.fleet_id, exc)
            return
        _LOG.warning('took over the ledger of epoch %s: %d tasks, %d missions', data['epoch'],
                     len(tasks), len(missions))

    def _share_ledger(self) -> None:
        assert self.replica is not None
        changes = self._db.total_changes
        if changes != self._snapshot_changes and time.monotonic() - self._snapshot_at >= 0.5:
            self._snapshot_changes, self._snapshot_at = changes, time.monotonic()
            info = self.replica.publish_snapshot(self.ledger_snapshot())
            self._snapshot_pending = (changes, info)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            pairs = getattr(message.properties, 'UserProperty', []) or []
            self.receive(message.topic, bytes(message.payload),
                         {str(k): str(v) for k, v in pairs[:16]}, bool(message.retain))
        except Exception:  # noqa: BLE001 - paho's thread must go on (undecodable topic...)
            self.errors['receive'] += 1
            _LOG.exception('planner: an MQTT message could not be taken')

    def receive(self, topic: str, payload: bytes, properties: dict[str, str],
                retained: bool = False) -> None:
        """Take one MQTT message (paho's thread, or a replay); :meth:`step` handles it."""
        self._inbox.append((topic, payload, properties, retained))

    def _reject_order(self, task_id: str, reason: str) -> None:
        """Remember why a task (or ``<order>``) was refused; the newest 1,000 are kept."""
        self.rejected_tasks.pop(task_id, None)
        self.rejected_tasks[task_id[:128]] = reason[:500]
        while len(self.rejected_tasks) > 1000:
            del self.rejected_tasks[next(iter(self.rejected_tasks))]

    # --- orders ------------------------------------------------------------------------------

    def add_orders(self, data: Any, now_s: float | None = None) -> list[str]:
        """Validate an order; store its tasks; return the accepted task ids.

        Release times and deadlines count from ``now_s`` (when the order arrived).
        """
        now = self.clock.wall() if now_s is None else now_s
        rows = self._db.execute('SELECT task_id, status FROM tasks').fetchall()
        known = frozenset(task_id for task_id, _ in rows)
        failed = frozenset(task_id for task_id, status in rows if status == 'failed')
        try:
            tasks, rejected = validate_orders(data, self.site, known, failed_ids=failed)
        except OrderError as exc:
            _LOG.warning('order rejected: %s', exc)
            self._reject_order('<order>', str(exc))
            return []
        for rejection in rejected:
            _LOG.warning('task %s rejected: %s', rejection.task_id, rejection.reason)
            self._reject_order(rejection.task_id, rejection.reason)
        with self._tx():
            for task in tasks:
                self._db.execute('INSERT INTO tasks (task_id, body, received_at) VALUES '
                                 '(?, ?, ?)', (task.task_id, json.dumps(task.__dict__), now))
        if tasks:
            self._dirty = True
        return [t.task_id for t in tasks]

    def _open_tasks(self, now: float) -> tuple[list[PlanTask], frozenset[str]]:
        """Tasks to plan, on the time axis of ``now``; and those no longer to plan.

        A successor of a task in progress is released when that task is expected to end.
        """
        expected_end: dict[str, float] = {}
        closed = set()
        open_rows = []
        for task_id, body, status, received, started in self._db.execute(
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

    def _robots(self, now: float) -> list[FleetRobot]:
        """Online robots where they are (or will be) and when they are free."""
        robots = []
        for robot_id in sorted(self._online):
            station, free = self.site.robots[robot_id].start, 0.0
            row = self._db.execute(
                "SELECT body, status, started_at FROM tasks WHERE robot_id = ? AND status IN "
                "('in_progress', 'done') ORDER BY status = 'in_progress' DESC, "
                'COALESCE(ended_at, started_at) DESC LIMIT 1', (robot_id,)).fetchone()
            if row is not None:
                body = json.loads(row[0])
                station = body['station']
                if row[1] == 'in_progress':
                    free = max(0.0, row[2] + body['duration_s'] - now)
            robots.append(FleetRobot(robot_id, self.site.robots[robot_id].capabilities,
                                     station, free))
        return robots

    def task_status(self) -> dict[str, dict[str, Any]]:
        """Every task of the ledger: status, robot, failures, reason."""
        return {t: {'status': s, 'robot_id': r, 'failures': f, 'reason': why}
                for t, s, r, f, why in self._db.execute(
                    'SELECT task_id, status, robot_id, failures, reason FROM tasks')}

    # --- the loop ----------------------------------------------------------------------------

    def step(self, now_s: float | None = None) -> None:
        """Take what arrived, replan if needed, send and re-send missions.

        ``now_s`` (tests, replays) overrides the clock; otherwise a wall-clock step is
        detected first and the stored times re-based (:meth:`rebase`).
        """
        if now_s is None:
            step = self._wall_steps.check()
            if step:
                self.rebase(step)
        now = self.clock.wall() if now_s is None else now_s
        if self.replica is not None:
            self._follow_lease()
            if not self.replica.lease.is_owner:
                return
        urgent: list[tuple[str, bytes, dict[str, str], bool]] = []
        bulk: list[tuple[str, bytes, dict[str, str], bool]] = []
        orders_topics = (ORDERS_TOPIC, fleet_orders_topic(self.cfg.fleet_id)) \
            if self.cfg.fleet_id else (ORDERS_TOPIC,)
        while self._inbox:
            item = self._inbox.popleft()
            if item[0] in orders_topics:
                self._take_order(item[1], item[3], now)
                continue
            # Acks and liveness first: under a telemetry flood they must not wait behind it.
            (urgent if item[0].endswith(_URGENT) else bulk).append(item)
        if now < self._ingest_after:
            self._inbox.extendleft(reversed(urgent + bulk))   # the store is failing: later
            urgent, bulk = [], []
        try:
            self._ingest(urgent, now)
            self._ingest(bulk, now)
        except sqlite3.Error as exc:   # disk full, I/O error: keep them, try again in 1 s
            self.errors['store'] += 1
            self._ingest_after = now + 1.0
            self._inbox.extendleft(reversed(urgent + bulk))
            _LOG.error('the fleet store cannot commit (%s): %d messages kept, retrying in 1 s',
                       exc, len(urgent) + len(bulk))
        if self.clock.monotonic() >= self._acks_at:   # stored: the robots may forget it
            self._acks_at = self.clock.monotonic() + self.cfg.delivery_ack_period_s
            # A replica's effects on the ledger must reach the next owner first: its acks wait
            # for the PUBACK of a snapshot holding them (see _release_acks).
            self._held_acks.append((self._db.total_changes, self.fleet.delivered.take()))
            if self.replica is None:
                self._release_acks(covered=self._db.total_changes)
        online = frozenset(r for r, view in self.fleet.robots(now).items()
                           if view.online and r in self.site.robots)
        if online != self._online:
            self._release_tasks_of(self._online - online)
            self._online, self._dirty = online, True
        if self._dirty and online and now >= self._plan_after:
            try:
                self._replan(now)
            except Exception:  # noqa: BLE001 - one bad plan must not end the fleet's planner
                self.errors['plan'] += 1
                self._dirty, self._plan_after = True, now + _PLAN_RETRY_S
                _LOG.exception('planning failed; trying again in %.0f s', _PLAN_RETRY_S)
        self._resend(now)
        if self.replica is not None:
            self._share_ledger()
            pending = self._snapshot_pending
            if pending is not None and pending[1].is_published():
                self._snapshot_pending, self._snapshot_covers = None, pending[0]
            self._release_acks(covered=self._snapshot_covers)

    def _release_acks(self, covered: int) -> None:
        """Send the delivery acknowledgements whose ledger effects are ``covered``."""
        while self._held_acks and self._held_acks[0][0] <= covered:
            for topic, payload in self._held_acks.pop(0)[1]:
                self.client.publish(topic, payload, qos=1)

    def rebase(self, step_s: float) -> None:
        """Shift every stored time of the ledger by a wall-clock step of ``step_s``.

        Orders keep their release times and deadlines, tasks in progress their expected
        ends, missions their re-send times, robots their liveness.
        """
        self.clock_steps += 1
        _LOG.warning('the wall clock jumped by %+.1f s: ledger and liveness times re-based',
                     step_s)
        with self._tx():
            self._db.execute('UPDATE tasks SET received_at = received_at + ?, started_at = '
                             'started_at + ?, ended_at = ended_at + ?', (step_s,) * 3)
            self._db.execute('UPDATE missions SET sent_at = sent_at + ?', (step_s,))
        self.fleet.rebase(step_s)

    def _take_order(self, payload: bytes, retained: bool, now: float) -> None:
        """One work order from MQTT: parsed within limits, never retained, never fatal."""
        if retained:   # an order is for its moment; retained, it would come back every start
            self._reject_order('<order>', 'retained order ignored: publish orders without '
                               'retain (and clear the retained message)')
            return
        try:
            self.add_orders(parse_json(payload, TELEMETRY_LIMITS, 'the order'), now)
        except PayloadError as exc:
            self._reject_order('<order>', str(exc))
        except Exception as exc:  # noqa: BLE001 - the per-message boundary
            self.errors['order'] += 1
            self._reject_order('<order>', f'internal error {type(exc).__name__}')
            _LOG.exception('a work order could not be handled')

    def _ingest(self, batch: list[tuple[str, bytes, dict[str, str], bool]], now: float
                ) -> None:
        if not batch:
            return
        outcomes = self.fleet.ingest_many(batch, now)  # one transaction for the batch
        for (topic, _, _, _), outcome in zip(batch, outcomes, strict=True):
            try:
                if outcome.ack is not None and outcome.robot_id is not None:
                    self._on_ack(outcome.robot_id, outcome.ack)
                elif outcome.progress is not None and outcome.robot_id is not None:
                    self._on_progress(outcome.robot_id, outcome.progress, now)
            except Exception:  # noqa: BLE001 - the per-message boundary
                self.errors['ingest'] += 1
                _LOG.exception('planner: %s on %s could not be handled', outcome,
                               topic[:256])

    def _assigned(self, robot_id: str, task_id: str) -> bool:
        """Whether a task is the robot's now.

        In progress: only on the robot that started it. Open: only if the robot's current
        mission lists it (a task given to another robot is taken out of the old robot's
        mission when the new one is sent, so a robot that was offline meanwhile cannot
        report it).
        """
        row = self._db.execute('SELECT status, robot_id FROM tasks WHERE task_id = ?',
                               (task_id,)).fetchone()
        if row is not None and row[0] == 'in_progress':
            return bool(row[1] == robot_id)
        mission = self._db.execute('SELECT tasks FROM missions WHERE robot_id = ?',
                                   (robot_id,)).fetchone()
        return mission is not None and task_id in json.loads(mission[0])

    def _on_progress(self, robot_id: str, report: TaskProgress, now: float) -> None:
        task_id, status = report.task_id, report.status
        row = self._db.execute('SELECT status, failures FROM tasks WHERE task_id = ?',
                               (task_id,)).fetchone()
        if row is None or row[0] in ('done', 'failed'):
            self.progress_ignored += 1   # not ours, or already closed (a late duplicate)
            _LOG.warning('progress %s of task %s from %s ignored: task is %s', status,
                         task_id, robot_id, row[0] if row else 'unknown')
            return
        if not self._assigned(robot_id, task_id):
            self.progress_unauthorized += 1
            _LOG.warning('progress %s of task %s from %s ignored: the task is not assigned '
                         'to that robot', status, task_id, robot_id)
            return
        with self._tx():
            if status == 'started':
                self._db.execute("UPDATE tasks SET status = 'in_progress', robot_id = ?, "
                                 'started_at = ? WHERE task_id = ?',
                                 (robot_id, min(now, report.stamp), task_id))
            elif status == 'done':
                self._db.execute("UPDATE tasks SET status = 'done', robot_id = ?, "
                                 'ended_at = ? WHERE task_id = ?', (robot_id, now, task_id))
            else:
                failures = row[1] + 1
                reason = f'{robot_id}: {report.reason}'
                self._db.execute("UPDATE tasks SET status = 'open', robot_id = NULL, "
                                 'started_at = NULL, failures = ?, reason = ? WHERE task_id = ?',
                                 (failures, reason, task_id))
                if failures >= self.cfg.max_task_failures:
                    self._fail_for_good(task_id, f'failed {failures} times, last {reason}')
        _LOG.info('task %s %s on %s', task_id, status, robot_id)
        if status != 'started':
            self._dirty = True  # a robot is free earlier or later than planned

    def _fail_for_good(self, task_id: str, reason: str) -> None:
        """Give a task up, and everything that depends on it, transitively (no recursion)."""
        successors: dict[str, list[str]] = {}
        for other, body in self._db.execute(
                "SELECT task_id, body FROM tasks WHERE status = 'open'").fetchall():
            for before in json.loads(body)['after']:
                successors.setdefault(before, []).append(other)
        with self._tx():
            pending, given_up = [(task_id, reason)], set()
            while pending:
                current, why = pending.pop()
                if current in given_up:
                    continue
                given_up.add(current)
                self._db.execute("UPDATE tasks SET status = 'failed', reason = ? WHERE "
                                 'task_id = ?', (why, current))
                pending.extend((after, f'predecessor {current} failed')
                               for after in successors.get(current, ()))
        _LOG.error('task %s given up: %s (%d depending task(s) with it)', task_id, reason,
                   len(given_up) - 1)

    def _release_tasks_of(self, robots: frozenset[str]) -> None:
        """Put the tasks in progress of robots that went offline back to plan."""
        for robot_id in robots:
            with self._tx():
                moved = self._db.execute(
                    "UPDATE tasks SET status = 'open', robot_id = NULL, started_at = NULL "
                    "WHERE status = 'in_progress' AND robot_id = ?", (robot_id,)).rowcount
            if moved:
                _LOG.warning('%s went offline: %d task(s) in progress put back to plan',
                             robot_id, moved)

    def _mark_acked(self, robot_id: str, ack: MissionAck, status: str) -> None:
        with self._tx():
            self._db.execute('UPDATE missions SET acked = ? WHERE robot_id = ? AND '
                             'mission_id = ? AND version = ?',
                             (status, robot_id, ack.mission_id, ack.version))

    def _on_ack(self, robot_id: str, ack: MissionAck) -> None:
        if ack.mission_id is None:   # a command the robot could not read: not one of ours
            _LOG.warning('%s rejected an unreadable command: %s', robot_id, ack.reason)
            return
        if ack.status == 'accepted':
            self._mark_acked(robot_id, ack, 'accepted')
        elif ack.code in ('replayed', 'superseded'):
            self._mark_acked(robot_id, ack, 'accepted')  # the robot already has it
        elif ack.code == 'store_rebuilt':
            # The robot lost its replay store and refuses what was issued before: issue the
            # same tasks again as a new version (a new command id, issued now).
            _LOG.warning('%s rebuilt its replay store: sending its mission again', robot_id)
            with self._tx():
                self._db.execute("UPDATE missions SET tasks = '[]', acked = 'rejected' WHERE "
                                 'robot_id = ?', (robot_id,))
            self._dirty = True
        else:
            _LOG.error('mission rejected by %s: %s', robot_id, ack.reason)
            self._mark_acked(robot_id, ack, 'rejected')
            self._dirty = True

    def _replan(self, now: float) -> None:
        self._dirty = False
        tasks, closed = self._open_tasks(now)
        pending = {r: self._robot_pending(r, json.loads(order), mission_id, version)
                   for r, order, mission_id, version in self._db.execute(
                       'SELECT robot_id, tasks, mission_id, version FROM missions').fetchall()}
        result = plan(tasks, self._robots(now), self.site,
                      time_limit_s=self.cfg.plan_time_limit_s, done=closed,
                      previous={r: [t for t in order if t not in closed]
                                for r, order in pending.items()})
        by_id = {t.task_id: t for t in tasks}
        for robot_id, order in result.orders.items():
            if pending.get(robot_id, []) == order:
                continue  # what the robot will do anyway: no new version
            self._send(robot_id, order, by_id, now)

    def _robot_pending(self, robot_id: str, sent: list[str], mission_id: str,
                       version: int) -> list[str]:
        """Tasks of its last mission a robot has still to start, as the robot sees it."""
        failed = {t for t, s in self.fleet.reports(robot_id, mission_id, version).items()
                  if s == 'failed'}
        mine = {t for (t,) in self._db.execute(
            "SELECT task_id FROM tasks WHERE robot_id = ? AND status IN ('in_progress', "
            "'done')", (robot_id,))}
        return [t for t in sent if t not in mine and t not in failed]

    def _send(self, robot_id: str, order: list[str], tasks: dict[str, PlanTask],
              now: float) -> None:
        row = self._db.execute('SELECT version FROM missions WHERE robot_id = ?',
                               (robot_id,)).fetchone()
        base = self.epoch * EPOCH_STRIDE   # a newer owner's versions are always higher
        version = max(row[0] if row else 0, base) + 1
        mission_id = f'{robot_id}-mission'
        mission = Mission(
            command_id=f'{mission_id}-v{version}-{int(now * 1000)}', robot_id=robot_id,
            mission_id=mission_id, version=version, issued_at=now,
            valid_until=now + self.cfg.mission_validity_s, frame_id=self.site.frame_id,
            tasks=tuple(Task(t, tasks[t].type, tasks[t].station,
                             Pose(self.site.stations[tasks[t].station].x,
                                  self.site.stations[tasks[t].station].y, 0.0,
                                  self.site.stations[tasks[t].station].yaw),
                             tasks[t].duration_s,
                             _absolute(tasks[t].deadline_s, now))
                        for t in order))
        envelope = sign_command(self.private_key, self.cfg.key_id, mission_to_json(mission),
                                robot_id)
        with self._tx():
            self._db.execute('INSERT OR REPLACE INTO missions VALUES (?, ?, ?, ?, ?, ?, ?, '
                             'NULL)', (robot_id, mission_id, version, envelope,
                                       json.dumps(order), mission.valid_until, now))
            mine = set(order)   # no other robot's mission lists these any more
            for other, listed in self._db.execute(
                    'SELECT robot_id, tasks FROM missions WHERE robot_id != ?',
                    (robot_id,)).fetchall():
                was = json.loads(listed)
                kept = [t for t in was if t not in mine]
                if len(kept) != len(was):
                    self._db.execute('UPDATE missions SET tasks = ? WHERE robot_id = ?',
                                     (json.dumps(kept), other))
        self._publish(robot_id, envelope, mission.valid_until - now)
        _LOG.info('mission %s v%d to %s: %d tasks', mission_id, version, robot_id, len(order))

    def _publish(self, robot_id: str, envelope: bytes, expiry_s: float) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = max(1, int(expiry_s))
        self.client.publish(command_topic(robot_id, 'mission'), envelope, qos=1,
                            properties=props)
        self.sent += 1

    def _resend(self, now: float) -> None:
        rows = self._db.execute('SELECT robot_id, envelope, valid_until, sent_at FROM missions '
                                'WHERE acked IS NULL').fetchall()
        for robot_id, envelope, valid_until, sent_at in rows:
            if now - sent_at >= self.cfg.resend_after_s and valid_until > now \
                    and robot_id in self._online:
                with self._tx():
                    self._db.execute('UPDATE missions SET sent_at = ? WHERE robot_id = ?',
                                     (now, robot_id))
                self._publish(robot_id, bytes(envelope), valid_until - now)

    def online(self) -> frozenset[str]:
        """Robots of the site that are online now."""
        return self._online

    def task_station(self, task_id: str) -> str:
        """Return the station of a stored task."""
        row = self._db.execute('SELECT body FROM tasks WHERE task_id = ?', (task_id,)).fetchone()
        if row is None:
            raise PlannerError(f'unknown task {task_id!r}')
        return str(json.loads(row[0])['station'])

    def missions(self) -> dict[str, dict[str, Any]]:
        """Return the ledger: robot -> mission id, version, tasks, acknowledgement."""
        return {r: {'mission_id': m, 'version': v, 'tasks': json.loads(t), 'acked': a}
                for r, m, v, t, a in self._db.execute(
                    'SELECT robot_id, mission_id, version, tasks, acked FROM missions')}


def _absolute(offset_s: float | None, now: float) -> float | None:
    return None if offset_s is None else now + offset_s


def load_orders_file(path: Path) -> Any:
    """Read a YAML/JSON work order file within the file limits (raises PlannerError)."""
    try:
        return parse_yaml(Path(path).read_bytes(), what=f'orders file {path}')
    except OSError as exc:
        raise PlannerError(f'orders file {path} cannot be read: {exc.strerror}') from None
    except PayloadError as exc:
        raise PlannerError(exc.detail) from None

