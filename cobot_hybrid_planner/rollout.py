"""Model rollouts across a fleet: canary first, gated steps, automatic rollback. No MQTT.

A rollout (:class:`RolloutSpec`) takes a candidate model version to a fleet in steps
(``[0.05, 0.25, 1.0]`` of the robots, picked by :mod:`rollout_waves`). The
:class:`RolloutController` keeps everything in SQLite (``rollouts.db``: a restarted cloud
resumes), and on every :meth:`RolloutController.step`:

1. **reconciles**: each robot of the rollout has a desired model; a robot online whose
   reported model differs and that was not sent a command within ``resend_s`` gets a signed
   ``cmd/model`` with a new revision (higher than any before for that robot, so a re-send
   supersedes, and a robot that was offline gets it when it returns: the command also waits
   in its persistent MQTT session until it expires);
2. **gates** a step once all its robots run the candidate and ``observe_s`` passed: the
   canaries' metric windows against the champion robots' (:mod:`rollout_gates`). ``pass``
   moves to the next step; ``fail`` rolls back; ``inconclusive`` (no data) waits and, after
   ``step_timeout_s``, **pauses** the rollout with the reason: it never passes. A step whose
   robots do not all report the candidate within ``step_timeout_s`` pauses too (robots that
   never answer do not hold a rollout forever in silence).
3. **rolls back** at once when any robot of the rollout reports ``failed`` or
   ``rolled_back`` for it (download, hash, load, smoke check, crash loop): every robot that
   was sent the candidate gets a ``rollback`` to the champion, and the rollout is ``failed``
   with that robot's reason. Rollback commands keep being reconciled like any other, so a
   robot offline during the rollback converges when it returns.
4. **promotes** after the last step: the rollout is ``succeeded`` and ``on_promote`` moves the
   registry's aliases (``champion`` to the candidate, ``previous`` to the old champion).

Robots report with ``events/model_status`` (every step of a command) and
``events/model_metrics`` (a summary per period, tagged with the running model's sha256);
protective stops (``events/protective_stop``) are counted against the model a robot runs.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cobot_hybrid_planner.blob_store import BlobStore
from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_planner.rollout_gates import GateConfig, Verdict, Window, judge, judge_alone
from cobot_hybrid_planner.rollout_waves import waves
from cobot_hybrid_protocol.errors import SchemaError
from cobot_hybrid_protocol.model_update import (
    MAX_FETCH_BYTES_PER_S,
    Acceptance,
    BlobRequest,
    ModelCommand,
    ModelMetrics,
    ModelRef,
    ModelStatus,
    Source,
    command_to_json,
    model_ref_to_json,
    validate_model_command,
    validate_model_ref,
    validate_source,
)
from cobot_hybrid_protocol.topics import blob_topic, command_topic

__all__ = ['ROLLOUT_STATES', 'RolloutController', 'RolloutError', 'RolloutSpec',
           'rollout_health']

_LOG = logging.getLogger(__name__)
MIN_ISSUE_S = 1_700_000_000.0      # a stand-in issue time for checking a spec's commands
_REVISION_DIGITS = 99_999_999_999_999    # revisions are wall-clock ms: 14 digits until 5138
#: A refusal of the current command that is not the model's fault: sent again, not failed.
_TRANSIENT_REFUSALS = ('replayed', 'store_rebuilt', 'expired', 'not_yet_valid', 'superseded')
#: Bytes of chunks one robot is sent per second at most (the highest cap a robot may set),
#: and in one burst; beyond it a request is served in part and the rest asked again later.
BLOB_RATE_BYTES_PER_S = MAX_FETCH_BYTES_PER_S
BLOB_BURST_BYTES = 16 * 1024 * 1024
ROLLOUT_STATES = ('running', 'paused', 'failed', 'succeeded', 'aborted')
_ACTIVE_STATES = ('running', 'paused')
_MAX_WINDOWS_AGE_S = 7 * 86_400.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
  rollout_id TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL, step INTEGER NOT NULL,
  reason TEXT NOT NULL, created REAL NOT NULL, step_started REAL NOT NULL, step_ready REAL,
  verdict TEXT NOT NULL DEFAULT '{}', updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS targets (
  rollout_id TEXT NOT NULL, robot_id TEXT NOT NULL, desired TEXT NOT NULL,
  action TEXT NOT NULL, revision INTEGER NOT NULL DEFAULT 0, sent_at REAL,
  state TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (rollout_id, robot_id));
CREATE TABLE IF NOT EXISTS robots (
  robot_id TEXT PRIMARY KEY, active TEXT, revision INTEGER NOT NULL DEFAULT 0,
  since REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS windows (
  robot_id TEXT NOT NULL, sha256 TEXT NOT NULL, frames INTEGER NOT NULL,
  errors INTEGER NOT NULL, p99 REAL NOT NULL, detections REAL NOT NULL,
  stops INTEGER NOT NULL, stamp REAL NOT NULL);
CREATE INDEX IF NOT EXISTS windows_by_time ON windows (stamp);
CREATE TABLE IF NOT EXISTS stops (robot_id TEXT PRIMARY KEY, pending INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS history (
  rollout_id TEXT NOT NULL, stamp REAL NOT NULL, text TEXT NOT NULL);
"""


class RolloutError(PlannerError, ValueError):
    """A rollout cannot be created or changed as asked; the message says why."""


@dataclass(frozen=True)
class RolloutSpec:
    """What to roll out, to whom, in which steps, judged how."""

    rollout_id: str
    candidate: ModelRef
    champion: ModelRef | None
    robots: Mapping[str, str]                   # robot id -> site
    steps: tuple[float, ...] = (0.05, 0.25, 1.0)
    gates: GateConfig = field(default_factory=GateConfig)
    observe_s: float = 60.0
    step_timeout_s: float = 1800.0
    resend_s: float = 30.0
    validity_s: float = 24 * 3600.0
    chunk_bytes: int = 128 * 1024
    acceptance: Acceptance = field(default_factory=Acceptance)
    #: robots fetch over HTTP from here instead of chunks over MQTT ('' = MQTT); ``{sha256}``
    #: is replaced by the file's digest (an artifact store, a CDN)
    http_url: str = ''

    def __post_init__(self) -> None:
        if not self.robots:
            raise RolloutError('a rollout needs at least one robot')
        steps = list(self.steps)
        if not steps or steps != sorted(steps) or not all(
                isinstance(x, (int, float)) and math.isfinite(x) for x in steps) \
                or not 0.0 < steps[0] or steps[-1] != 1.0:
            raise RolloutError(f'steps {steps} must grow from above 0 to 1.0 (the whole fleet)')
        if self.champion is None:
            raise RolloutError(f'no champion to roll back to or to compare {self.candidate.label} '
                               'with: promote the version the robots run now first (cobot-'
                               'hybrid model register + promote; the factory model is fine)')
        if self.champion.sha256 == self.candidate.sha256:
            raise RolloutError(f'{self.candidate.label} is the champion already')
        for name, low, high in (('observe_s', 0.0, 86_400.0),
                                ('step_timeout_s', 1.0, 7 * 86_400.0),
                                ('resend_s', 0.1, 86_400.0), ('validity_s', 60.0, 86_400.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or not low <= value <= high:
                raise RolloutError(f'{name} = {value!r} must be in [{low:g}, {high:g}] s '
                                   '(validity: robots refuse commands valid longer than a day)')
        if not isinstance(self.gates, GateConfig):
            raise RolloutError('gates must be a GateConfig')
        # What every robot will be sent must be what every robot accepts (ids, acceptance).
        longest = max(self.robots, key=len)
        try:
            validate_model_command(command_to_json(ModelCommand(
                f'{self.rollout_id}-{longest}-{_REVISION_DIGITS}', longest, self.rollout_id,
                _REVISION_DIGITS,
                MIN_ISSUE_S, MIN_ISSUE_S + self.validity_s, 'install', self.candidate,
                self.source(self.candidate) if not self.http_url else Source(
                    'http', url='http://placeholder'), self.acceptance)))
        except (SchemaError, ValueError) as exc:
            raise RolloutError(f"robots would refuse this rollout's commands: {exc} (a "
                               'shorter rollout id, acceptance within its bounds)') from None
        if self.http_url:
            try:
                self.source(self.candidate)
            except (SchemaError, KeyError, ValueError, IndexError) as exc:
                raise RolloutError(f'http_url {self.http_url[:200]!r} is not an http(s) URL '
                                   f'template with {{sha256}}: {exc}') from None

    def source(self, ref: ModelRef) -> Source:
        """Where robots fetch ``ref``: chunks over MQTT, or the HTTP URL."""
        if not self.http_url:
            return Source('mqtt', self.chunk_bytes)
        url = self.http_url.format(sha256=ref.sha256)
        validate_source({'kind': 'http', 'url': url})
        return Source('http', url=url)

    def to_json(self) -> dict[str, Any]:
        """Return the spec as stored."""
        a = self.acceptance
        return {'rollout_id': self.rollout_id, 'candidate': model_ref_to_json(self.candidate),
                'champion': None if self.champion is None else
                model_ref_to_json(self.champion),
                'robots': dict(self.robots), 'steps': list(self.steps),
                'gates': self.gates.to_json(), 'observe_s': self.observe_s,
                'step_timeout_s': self.step_timeout_s, 'resend_s': self.resend_s,
                'validity_s': self.validity_s, 'chunk_bytes': self.chunk_bytes,
                'acceptance': dict(a.__dict__), 'http_url': self.http_url}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutSpec:
        """Read a stored spec back."""
        champion = data['champion']
        return cls(data['rollout_id'], validate_model_ref(data['candidate']),
                   None if champion is None else validate_model_ref(champion),
                   dict(data['robots']), tuple(data['steps']), GateConfig(**data['gates']),
                   data['observe_s'], data['step_timeout_s'], data['resend_s'],
                   data['validity_s'], data['chunk_bytes'], Acceptance(**data['acceptance']),
                   data.get('http_url', ''))


#: ``sign(robot_id, command JSON) -> signed envelope bytes``.
Signer = Callable[[str, dict[str, Any]], bytes]
#: ``send(topic, payload, expiry_s)``: QoS 1, never retained.
Sender = Callable[[str, bytes, float], None]


class RolloutController:
    """Every rollout of one fleet, in ``<folder>/rollouts.db``; files in ``<folder>/blobs``."""

    def __init__(self, folder: Path, sign: Signer, send: Sender,
                 on_promote: Callable[[ModelRef, ModelRef | None], None] | None = None,
                 on_fail: Callable[[ModelRef], None] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(folder / 'blobs')
        self._sign, self._send, self._on_promote = sign, send, on_promote
        self._on_fail = on_fail
        path = folder / 'rollouts.db'
        try:
            self._db = self._open(path)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            aside = path.with_name(f'rollouts.db.corrupt-{int(time.time())}')
            for suffix in ('', '-wal', '-shm'):
                source = Path(f'{path}{suffix}')
                if source.exists():
                    source.replace(Path(f'{aside}{suffix}'))
            _LOG.error('the rollout store %s is unreadable (%s): moved aside to %s and '
                       'started empty; the robots keep what they run (start the rollout '
                       'again)', path, exc, aside)
            self._db = self._open(path)
        self._blob_budget: dict[str, tuple[float, float]] = {}   # robot -> (bytes, at)
        self._specs: dict[str, tuple[str, RolloutSpec]] = {}     # id -> (stored text, spec)
        self.commands_sent = 0
        self.chunks_sent = 0
        self.bytes_sent = 0
        self.requests_refused = 0
        self.requests_trimmed = 0

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            db.execute('PRAGMA journal_mode=WAL')
            check = db.execute('PRAGMA quick_check').fetchone()[0]
            if check != 'ok':
                raise sqlite3.DatabaseError(f'quick_check: {check}')
            db.executescript(_SCHEMA)
        except (sqlite3.DatabaseError, UnicodeDecodeError):
            db.close()
            raise
        return db

    # --- operator ------------------------------------------------------------------------

    def create(self, spec: RolloutSpec, model_file: Path, now: float,
               check_file: bool = True) -> None:
        """Store a rollout and its file; it starts on the next step."""
        if self._db.execute('SELECT 1 FROM rollouts WHERE rollout_id = ?',
                            (spec.rollout_id,)).fetchone():
            raise RolloutError(f'rollout {spec.rollout_id!r} exists already')
        running = self._db.execute("SELECT rollout_id FROM rollouts WHERE state IN "
                                   "('running', 'paused')").fetchall()
        if running:
            raise RolloutError(f'rollout {running[0][0]!r} is still {self.state(running[0][0])}'
                               ': abort it or let it finish first')
        self.blobs.add(model_file, spec.candidate, check=check_file)
        # The newest rollout decides what robots run: older installs stop now; a rollback of an
        # older rollout still goes on until its robot is back, or the new rollout reaches it.
        self._db.execute("UPDATE targets SET desired = 'null' WHERE action = 'install'")
        self._db.execute('INSERT INTO rollouts VALUES (?, ?, ?, 0, ?, ?, ?, NULL, ?, ?)',
                         (spec.rollout_id, json.dumps(spec.to_json()), 'running', '', now,
                          now, '{}', now))
        self._log(spec.rollout_id, now, f'created: {spec.candidate.label} to '
                  f'{len(spec.robots)} robots in steps {list(spec.steps)}')

    def add_champion_file(self, model_file: Path, ref: ModelRef) -> None:
        """Keep the champion's file too (robots that lost it can be sent it again)."""
        self.blobs.add(model_file, ref)

    def pause(self, rollout_id: str, now: float, reason: str = 'paused by the operator'
              ) -> None:
        """Stop taking steps (robots keep what they run)."""
        if self.state(rollout_id) != 'running':
            raise RolloutError(f'rollout {rollout_id!r} is {self.state(rollout_id)}, not '
                               'running: nothing to pause')
        self._set_state(rollout_id, 'paused', reason, now)

    def resume(self, rollout_id: str, now: float) -> None:
        """Continue a paused rollout; the step's timeout starts again."""
        if self.state(rollout_id) != 'paused':
            raise RolloutError(f'rollout {rollout_id!r} is {self.state(rollout_id)}, not '
                               'paused')
        self._db.execute("UPDATE rollouts SET state = 'running', reason = '', step_started = ?,"
                         ' step_ready = NULL, updated = ? WHERE rollout_id = ?',
                         (now, now, rollout_id))
        self._log(rollout_id, now, 'resumed')

    def abort(self, rollout_id: str, now: float, reason: str = 'aborted by the operator'
              ) -> None:
        """Roll every robot of the rollout back to the champion and end it."""
        if self.state(rollout_id) not in _ACTIVE_STATES:
            raise RolloutError(f'rollout {rollout_id!r} is {self.state(rollout_id)}: nothing '
                               'to abort')
        self._roll_back(rollout_id, now, reason, 'aborted')

    # --- what robots say -----------------------------------------------------------------

    def on_status(self, robot_id: str, status: ModelStatus, now: float) -> None:
        """Take a robot's model status."""
        if status.active is not None:
            self._set_active(robot_id, status.active, now)
        for rollout_id, revision, action, state in self._db.execute(
                'SELECT t.rollout_id, t.revision, t.action, r.state FROM targets t JOIN '
                "rollouts r USING (rollout_id) WHERE t.robot_id = ? AND t.desired != 'null'",
                (robot_id,)).fetchall():
            if status.rollout_id != rollout_id or status.revision != revision:
                continue     # a crash loop names the rollout and revision of its trial too
            self._db.execute('UPDATE targets SET state = ?, reason = ? WHERE rollout_id = ? '
                             'AND robot_id = ?', (status.state, status.reason, rollout_id,
                                                  robot_id))
            if status.state not in ('failed', 'rolled_back') or status.code == 'superseded':
                continue
            found = re.match(r'rejected:\s*(\w+)', status.reason)
            if found and found.group(1) in _TRANSIENT_REFUSALS:
                # Not the model's fault (a duplicate delivery, a robot whose replay store was
                # rebuilt, clocks): sent again after resend_s (the reason stays in the target
                # for the operator), nothing fails.
                continue
            if action == 'rollback' and status.code == 'not_cached':
                # It lost the champion's file: send it the file (an install of the champion,
                # a "restore").
                self._db.execute("UPDATE targets SET action = 'restore', sent_at = NULL "
                                 'WHERE rollout_id = ? AND robot_id = ?',
                                 (rollout_id, robot_id))
            elif state in _ACTIVE_STATES and action == 'install':
                self._roll_back(rollout_id, now, f'{robot_id}: {status.reason}', 'failed')

    def on_metrics(self, robot_id: str, metrics: ModelMetrics, now: float) -> None:
        """Store one metrics window (with the protective stops seen since the last)."""
        self._set_active(robot_id, metrics.model, now)
        row = self._db.execute('SELECT pending FROM stops WHERE robot_id = ?',
                               (robot_id,)).fetchone()
        stops = row[0] if row else 0
        self._db.execute('DELETE FROM stops WHERE robot_id = ?', (robot_id,))
        self._db.execute('INSERT INTO windows VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                         (robot_id, metrics.model.sha256, metrics.frames, metrics.errors,
                          metrics.latency_p99_ms, metrics.detections_mean, stops, now))

    def on_stop(self, robot_id: str) -> None:
        """Count a protective stop against the robot's next metrics window."""
        self._db.execute('INSERT INTO stops VALUES (?, 1) ON CONFLICT (robot_id) DO UPDATE '
                         'SET pending = pending + 1', (robot_id,))

    def on_blob_request(self, robot_id: str, request: BlobRequest) -> int:
        """Send the chunks a robot asked for, if a rollout of ours sent it that file."""
        wanted = self._db.execute(
            "SELECT rollout_id FROM targets WHERE robot_id = ? AND json_extract(desired, "
            "'$.sha256') = ? AND revision > 0", (robot_id, request.sha256)).fetchone()
        if wanted is None or not self.blobs.has(request.sha256) \
                or request.chunk_bytes != self.spec(wanted[0]).chunk_bytes:
            self.requests_refused += 1
            return 0
        # At most BLOB_RATE_BYTES_PER_S per robot: a request is small, its answer is not.
        mono = time.monotonic()
        budget, at = self._blob_budget.get(robot_id, (float(BLOB_BURST_BYTES), mono))
        budget = min(float(BLOB_BURST_BYTES), budget + (mono - at) * BLOB_RATE_BYTES_PER_S)
        allowed = int(budget // request.chunk_bytes) * request.chunk_bytes
        if allowed <= 0:
            self._blob_budget[robot_id] = (budget, mono)
            self.requests_refused += 1
            return 0
        if allowed < request.length:     # the part the budget allows; the rest is asked again
            request = BlobRequest(request.sha256, request.offset, allowed, request.chunk_bytes)
            self.requests_trimmed += 1
        self._blob_budget[robot_id] = (budget - request.length, mono)
        sent = 0
        for offset, data in self.blobs.chunks(request):
            self._send(blob_topic(robot_id, request.sha256, offset), data, 120.0)
            sent += 1
            self.bytes_sent += len(data)
        self.chunks_sent += sent
        return sent

    # --- the loop ------------------------------------------------------------------------

    def step(self, now: float, online: frozenset[str]) -> None:
        """Advance every rollout: send what is due, judge steps, roll back, promote."""
        for (rollout_id,) in self._db.execute(
                "SELECT rollout_id FROM rollouts WHERE state = 'running'").fetchall():
            try:
                self._advance(rollout_id, now)
            except RolloutError as exc:      # an unreadable spec: that rollout stops
                self._set_state(rollout_id, 'failed', str(exc), now)
        self._reconcile(now, online)
        self._db.execute('DELETE FROM windows WHERE stamp < ?', (now - _MAX_WINDOWS_AGE_S,))

    def waves(self, spec: RolloutSpec) -> list[list[str]]:
        """Return the steps as robots (a step that adds nobody is merged into the next)."""
        out: list[list[str]] = []
        for wave in waves(spec.rollout_id, spec.robots, spec.steps):
            if out and len(wave) == len(out[-1]):
                continue
            out.append(wave)
        return out

    def _advance(self, rollout_id: str, now: float) -> None:
        spec = self.spec(rollout_id)
        step, started, ready = self._db.execute(
            'SELECT step, step_started, step_ready FROM rollouts WHERE rollout_id = ?',
            (rollout_id,)).fetchone()
        steps = self.waves(spec)
        robots = steps[step]
        for robot_id in robots:
            added = self._db.execute(
                'INSERT OR IGNORE INTO targets (rollout_id, robot_id, desired, action) VALUES '
                "(?, ?, ?, 'install')", (rollout_id, robot_id,
                                         json.dumps(model_ref_to_json(spec.candidate))))
            if added.rowcount:     # this rollout takes the robot over from any older one
                self._db.execute("UPDATE targets SET desired = 'null' WHERE robot_id = ? AND "
                                 'rollout_id != ?', (robot_id, rollout_id))
        behind = [r for r in robots if self._active_sha(r) != spec.candidate.sha256]
        if behind:
            if now - started > spec.step_timeout_s:
                self._set_state(rollout_id, 'paused', f'timeout: {len(behind)} robot(s) of '
                                f'step {step + 1} did not report {spec.candidate.label} within '
                                f'{spec.step_timeout_s:.0f} s: {", ".join(behind[:10])}', now)
            return
        if ready is None:
            ready = now
            self._db.execute('UPDATE rollouts SET step_ready = ? WHERE rollout_id = ?',
                             (now, rollout_id))
            self._log(rollout_id, now, f'step {step + 1}: {len(robots)} robot(s) run '
                      f'{spec.candidate.label}')
        last = step == len(steps) - 1
        # The last step is watched too: at least observe_s with data from every robot, and
        # the robots' own crash-loop watch, before anything is promoted.
        hold = max(spec.observe_s, spec.acceptance.watch_s) if last else spec.observe_s
        if now - ready < hold:
            return
        verdict = judge_alone(self._windows_since(ready, spec, robots), robots, spec.gates,
                              self._baseline(spec, started)) \
            if last else self.verdict(rollout_id, robots, ready, spec)
        self._db.execute('UPDATE rollouts SET verdict = ? WHERE rollout_id = ?',
                         (json.dumps({'step': step + 1, 'outcome': verdict.outcome,
                                      'reason': verdict.reason, 'values': verdict.values}),
                          rollout_id))
        if verdict.outcome == 'fail':
            self._roll_back(rollout_id, now, f'gate {verdict.reason}', 'failed')
            return
        if verdict.outcome == 'inconclusive':
            if now - ready > spec.step_timeout_s:
                self._set_state(rollout_id, 'paused', f'inconclusive: {verdict.reason}', now)
            return
        if last:
            self._set_state(rollout_id, 'succeeded', f'{spec.candidate.label} runs on all '
                            f'{len(robots)} robots ({verdict.reason})', now)
            # Done: nothing more is sent for it (a later crash loop is the robot's own
            # rollback, and the next rollout decides what robots run).
            self._db.execute("UPDATE targets SET desired = 'null' WHERE rollout_id = ?",
                             (rollout_id,))
            if self._on_promote is not None:
                self._hook(rollout_id, now, 'the promotion (run cobot-hybrid model promote)',
                           self._on_promote, spec.candidate, spec.champion)
            return
        self._db.execute('UPDATE rollouts SET step = ?, step_started = ?, step_ready = NULL'
                         ', updated = ? WHERE rollout_id = ?',
                         (step + 1, now, now, rollout_id))
        self._log(rollout_id, now, f'step {step + 1} passed: {verdict.reason}')

    def _baseline(self, spec: RolloutSpec, before: float) -> list[Window]:
        """Return the champion robots' windows of the observation time before ``before``."""
        since = before - max(spec.observe_s, 60.0)
        champion = spec.champion.sha256 if spec.champion else None
        return [w for w in self.windows(since) if w.stamp < before and w.sha256 == champion
                and w.robot_id in spec.robots]

    def _windows_since(self, since: float, spec: RolloutSpec, robots: list[str]
                       ) -> list[Window]:
        members = set(robots)
        return [w for w in self.windows(since) if w.robot_id in members
                and w.sha256 == spec.candidate.sha256]

    def _hook(self, rollout_id: str, now: float, what: str, call: Callable[..., None],
              *args: Any) -> None:
        """Tell the registry; a registry that is down is logged in the history, not fatal."""
        try:
            call(*args)
        except Exception as exc:  # noqa: BLE001 - the registry is another service
            self._log(rollout_id, now, f'the registry did not take {what}: '
                      f'{type(exc).__name__}: {exc}')
            _LOG.exception('the registry did not take %s', what)

    def verdict(self, rollout_id: str, robots: list[str], since: float, spec: RolloutSpec
                ) -> Verdict:
        """Judge the canaries of a step against the champion robots since ``since``."""
        canaries = set(robots)
        rows = self._db.execute('SELECT robot_id, sha256, frames, errors, p99, detections, '
                                'stops, stamp FROM windows WHERE stamp >= ?',
                                (since,)).fetchall()
        windows = [Window(*row) for row in rows]
        canary = [w for w in windows if w.robot_id in canaries
                  and w.sha256 == spec.candidate.sha256]
        champion_sha = spec.champion.sha256 if spec.champion else None
        champion = [w for w in windows if w.robot_id not in canaries
                    and w.robot_id in spec.robots and w.sha256 == champion_sha]
        return judge(canary, champion, spec.gates, robots)

    def _reconcile(self, now: float, online: frozenset[str]) -> None:
        for rollout_id, robot_id, desired, action, sent_at, state in self._db.execute(
                'SELECT t.rollout_id, t.robot_id, t.desired, t.action, t.sent_at, r.state '
                "FROM targets t JOIN rollouts r USING (rollout_id) WHERE t.desired != 'null' "
                "AND (r.state IN ('running', 'paused') OR t.action IN ('rollback', 'restore'))"
                ).fetchall():
            ref = validate_model_ref(json.loads(desired))
            if self._active_sha(robot_id) == ref.sha256:
                if state not in _ACTIVE_STATES:     # a rollback that arrived: done
                    self._db.execute("UPDATE targets SET desired = 'null' WHERE rollout_id = ? "
                                     'AND robot_id = ?', (rollout_id, robot_id))
                continue
            if robot_id not in online:
                continue
            spec = self.spec(rollout_id)
            if sent_at is not None and now - sent_at < spec.resend_s:
                continue
            self._command(spec, robot_id, ref, action, now)

    def _command(self, spec: RolloutSpec, robot_id: str, ref: ModelRef, action: str,
                 now: float) -> None:
        row = self._db.execute('SELECT revision FROM robots WHERE robot_id = ?',
                               (robot_id,)).fetchone()
        revision = max((row[0] if row else 0) + 1, int(now * 1000))
        self._db.execute('INSERT INTO robots (robot_id, revision) VALUES (?, ?) ON CONFLICT '
                         '(robot_id) DO UPDATE SET revision = excluded.revision',
                         (robot_id, revision))
        command = ModelCommand(f'{spec.rollout_id}-{robot_id}-{revision}', robot_id,
                               spec.rollout_id, revision, now, now + spec.validity_s,
                               'install' if action == 'restore' else action, ref,
                               spec.source(ref), self._restore_acceptance(spec, action))
        payload = self._sign(robot_id, command_to_json(command))
        self._send(command_topic(robot_id, 'model'), payload, spec.validity_s)
        self.commands_sent += 1
        self._db.execute('UPDATE targets SET revision = ?, sent_at = ?, state = ?, reason = '
                         "'' WHERE rollout_id = ? AND robot_id = ?",
                         (revision, now, f'sent {action}', spec.rollout_id, robot_id))

    @staticmethod
    def _restore_acceptance(spec: RolloutSpec, action: str) -> Acceptance:
        """Return the acceptance of a command (a restore is not judged against the candidate)."""
        if action != 'restore':
            return spec.acceptance
        return Acceptance(0.0, spec.acceptance.max_latency_ms, spec.acceptance.smoke_frames,
                          spec.acceptance.max_restarts, spec.acceptance.watch_s)

    def _roll_back(self, rollout_id: str, now: float, reason: str, final: str) -> None:
        spec = self.spec(rollout_id)
        was = self.state(rollout_id)
        champion = spec.champion
        for (robot_id,) in self._db.execute('SELECT robot_id FROM targets WHERE rollout_id = ?',
                                            (rollout_id,)).fetchall():
            if champion is None:
                desired = 'null'
            else:
                desired = json.dumps(model_ref_to_json(champion))
            self._db.execute("UPDATE targets SET desired = ?, action = 'rollback', sent_at = "
                             'NULL WHERE rollout_id = ? AND robot_id = ?',
                             (desired, rollout_id, robot_id))
        self._set_state(rollout_id, final, reason, now)
        if was in _ACTIVE_STATES and self._on_fail is not None:
            self._hook(rollout_id, now, 'the canary mark', self._on_fail, spec.candidate)

    def rebase(self, step_s: float) -> None:
        """Shift the stored times by a wall-clock step (re-sends, step timers, windows)."""
        for sql in ('UPDATE targets SET sent_at = sent_at + ? WHERE sent_at IS NOT NULL',
                    'UPDATE rollouts SET step_started = step_started + ?, '
                    'step_ready = step_ready + ?',
                    'UPDATE windows SET stamp = stamp + ?'):
            self._db.execute(sql, (step_s,) * sql.count('?'))

    # --- state ---------------------------------------------------------------------------

    def _set_active(self, robot_id: str, ref: ModelRef, now: float) -> None:
        self._db.execute('INSERT INTO robots (robot_id, active, since) VALUES (?, ?, ?) ON '
                         'CONFLICT (robot_id) DO UPDATE SET active = excluded.active, since = '
                         'CASE WHEN robots.active IS excluded.active THEN robots.since ELSE '
                         'excluded.since END', (robot_id, json.dumps(model_ref_to_json(ref)),
                                                now))

    def _active_sha(self, robot_id: str) -> str | None:
        row = self._db.execute("SELECT json_extract(active, '$.sha256') FROM robots WHERE "
                               'robot_id = ?', (robot_id,)).fetchone()
        return None if row is None else row[0]

    def _set_state(self, rollout_id: str, state: str, reason: str, now: float) -> None:
        self._db.execute('UPDATE rollouts SET state = ?, reason = ?, updated = ? WHERE '
                         'rollout_id = ?', (state, reason[:2000], now, rollout_id))
        self._log(rollout_id, now, f'{state}: {reason}')
        (_LOG.warning if state in ('failed', 'paused', 'aborted') else _LOG.info)(
            'rollout %s %s: %s', rollout_id, state, reason)

    def _log(self, rollout_id: str, now: float, text: str) -> None:
        self._db.execute('INSERT INTO history VALUES (?, ?, ?)', (rollout_id, now, text[:2000]))

    def spec(self, rollout_id: str) -> RolloutSpec:
        """Return the stored spec of a rollout."""
        row = self._db.execute('SELECT spec FROM rollouts WHERE rollout_id = ?',
                               (rollout_id,)).fetchone()
        if row is None:
            raise RolloutError(f'no rollout {rollout_id!r}')
        cached = self._specs.get(rollout_id)
        if cached is not None and cached[0] == row[0]:
            return cached[1]    # read (and its commands checked) once, not per robot and step
        try:
            spec = RolloutSpec.from_json(json.loads(row[0]))
            self._specs[rollout_id] = (row[0], spec)
            return spec
        except (ValueError, KeyError, TypeError) as exc:   # SchemaError is a ValueError
            raise RolloutError(f'rollout {rollout_id!r} in the store is unreadable '
                               f'({type(exc).__name__}: {exc}): abort it') from None

    def state(self, rollout_id: str) -> str:
        """Return the state: running, paused, failed, succeeded or aborted."""
        row = self._db.execute('SELECT state FROM rollouts WHERE rollout_id = ?',
                               (rollout_id,)).fetchone()
        if row is None:
            raise RolloutError(f'no rollout {rollout_id!r}')
        return str(row[0])

    def status(self, rollout_id: str) -> dict[str, Any]:
        """Everything about one rollout: state, step, reason, verdict, robots, history."""
        spec = self.spec(rollout_id)
        state, step, reason, verdict = self._db.execute(
            'SELECT state, step, reason, verdict FROM rollouts WHERE rollout_id = ?',
            (rollout_id,)).fetchone()
        targets = {robot: {'desired': json.loads(desired), 'action': action,
                           'revision': revision, 'state': tstate, 'reason': treason,
                           'active_sha256': self._active_sha(robot)}
                   for robot, desired, action, revision, tstate, treason in self._db.execute(
                       'SELECT robot_id, desired, action, revision, state, reason FROM '
                       'targets WHERE rollout_id = ? ORDER BY robot_id', (rollout_id,))}
        on_candidate = sum(1 for r in spec.robots
                           if self._active_sha(r) == spec.candidate.sha256)
        return {'rollout_id': rollout_id, 'state': state, 'step': step + 1,
                'steps': list(spec.steps), 'waves': [len(w) for w in self.waves(spec)],
                'reason': reason, 'verdict': json.loads(verdict),
                'candidate': model_ref_to_json(spec.candidate),
                'champion': None if spec.champion is None else
                model_ref_to_json(spec.champion),
                'robots': len(spec.robots), 'on_candidate': on_candidate, 'targets': targets,
                'history': [{'stamp': s, 'text': t} for s, t in self._db.execute(
                    'SELECT stamp, text FROM history WHERE rollout_id = ? ORDER BY rowid',
                    (rollout_id,))]}

    def status_reason(self, rollout_id: str) -> str:
        """Return why the rollout is in its state ('' while nothing went wrong)."""
        row = self._db.execute('SELECT reason FROM rollouts WHERE rollout_id = ?',
                               (rollout_id,)).fetchone()
        if row is None:
            raise RolloutError(f'no rollout {rollout_id!r}')
        return str(row[0])

    def rollouts(self) -> list[tuple[str, str]]:
        """``(rollout_id, state)`` of every rollout, oldest first."""
        return [(r, s) for r, s in self._db.execute(
            'SELECT rollout_id, state FROM rollouts ORDER BY created')]

    def windows(self, since: float = 0.0) -> list[Window]:
        """Return the stored metric windows (for plots)."""
        return [Window(*row) for row in self._db.execute(
            'SELECT robot_id, sha256, frames, errors, p99, detections, stops, stamp FROM '
            'windows WHERE stamp >= ? ORDER BY stamp', (since,))]

    def close(self) -> None:
        """Close the store."""
        self._db.close()


def rollout_health(statuses: list[dict[str, Any]]) -> tuple[str, str, dict[str, str]]:
    """Level, message and values of the planner's rollout diagnostics (the newest rollout).

    OK while running or after success, WARN while paused (it waits for an operator), ERROR
    after a failure (robots were rolled back: the reason says why).
    """
    if not statuses:
        return 'OK', 'no model rollouts', {}
    newest = statuses[-1]
    level = {'paused': 'WARN', 'failed': 'ERROR', 'aborted': 'WARN'}.get(newest['state'], 'OK')
    message = (f'{newest["rollout_id"]} {newest["state"]}: step {newest["step"]}/'
               f'{len(newest["waves"])}, {newest["on_candidate"]}/{newest["robots"]} robots on '
               f'{newest["candidate"]["name"]} v{newest["candidate"]["version"]}')
    if newest['reason']:
        message += f' ({newest["reason"][:200]})'
    values = {'rollout': newest['rollout_id'], 'state': newest['state'],
              'step': str(newest['step']), 'on_candidate': str(newest['on_candidate']),
              'robots': str(newest['robots']), 'reason': newest['reason'][:500],
              'last_gate': json.dumps(newest['verdict'])[:500]}
    return level, message, values
