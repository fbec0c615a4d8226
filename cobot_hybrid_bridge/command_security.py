"""Commands from the cloud: signed, checked and never replayed before they reach ROS.

The signed envelope is the contract's (:mod:`cobot_hybrid_protocol.signing`: size, shape, known
key, Ed25519 signature over the payload and this robot's id). :class:`CommandVerifier` opens
it, then checks, cheapest first, and stops at the first failure: command JSON, schema (no
unknown fields), robot id, ``issued_at`` not in the future (beyond ``max_clock_skew_s``),
``valid_until`` not past, validity no longer than ``max_validity_s``, the replay window and the
mission version. Both JSON layers are read with the bounded parser
(:mod:`cobot_hybrid_protocol.limits`): a huge integer, deep nesting or a non-finite number is a
``malformed`` rejection, never an exception.

Replays, whatever the wall clock does: every accepted ``command_id`` is kept in SQLite until
it could no longer be valid, and the highest accepted version of every mission is kept for
good (bounded to :data:`MAX_MISSIONS` mission ids), so an older or equal version is refused as
``superseded`` after restarts and after the wall clock jumped forward (which purges the
command ids early) and back. A replay store that cannot be opened (corrupt) is moved aside
and a new one started that remembers when: commands issued before that moment are refused
as ``store_rebuilt`` (the planner then issues a new version), so nothing replayed from before
the loss gets through. (The rebuild happens at start, so the robot accepted nothing just
before it unless it restarted within the cloud's clock offset of that moment.) Rejections
are counted by reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_protocol.advisory import Advisory, validate_advisory
from cobot_hybrid_protocol.clock import SYSTEM_CLOCK, Clock
from cobot_hybrid_protocol.errors import PayloadError, SchemaError, SignatureError
from cobot_hybrid_protocol.limits import COMMAND_LIMITS, parse_json
from cobot_hybrid_protocol.mission import Mission, validate_mission
from cobot_hybrid_protocol.model_update import ModelCommand, validate_model_command
from cobot_hybrid_protocol.signing import SIGNATURE_REASONS, open_signed

__all__ = ['CommandRejected', 'CommandVerifier', 'REJECT_REASONS']

REJECT_REASONS = (*SIGNATURE_REASONS, 'schema', 'wrong_robot', 'not_yet_valid', 'expired',
                  'validity_too_long', 'replayed', 'superseded', 'store_rebuilt', 'wrong_key')
MAX_MISSIONS = 10_000     # mission ids whose last version is remembered (oldest forgotten)
MAX_SEEN = 100_000        # command ids remembered at most (soonest to expire forgotten)
_LOG = logging.getLogger(__name__)
_STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (command_id TEXT PRIMARY KEY, forget_after REAL NOT NULL);
CREATE TABLE IF NOT EXISTS versions (mission_id TEXT PRIMARY KEY, version INTEGER NOT NULL,
                                     accepted_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS model_revisions (slot TEXT PRIMARY KEY, revision INTEGER NOT NULL);
"""
#: What each command kind is read with (``cmd/<kind>``).
_VALIDATORS: dict[str, Callable[[Any], Mission | ModelCommand | Advisory]] = {
    'mission': validate_mission, 'model': validate_model_command,
    'advisory': validate_advisory}


class CommandRejected(BridgeError):
    """A command failed a check; ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str,
                 mission: Mission | ModelCommand | None = None) -> None:
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail
        self.mission = mission      # when the command itself was valid (superseded, replayed)


@dataclass
class CommandVerifier:
    """Checks commands for one robot; remembers accepted command ids in ``replay_db``."""

    robot_id: str
    keys: Mapping[str, Ed25519PublicKey]
    replay_db: Path
    max_bytes: int = 256 * 1024
    max_clock_skew_s: float = 30.0
    max_validity_s: float = 24 * 3600.0
    clock: Clock = SYSTEM_CLOCK
    rejected: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    rebuilt_at: float | None = None       # when a corrupt replay store was replaced
    #: Keys that sign advisories only (the cloud workers'): never a mission or a model.
    advisory_only: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.keys:
            raise BridgeError('no cloud public key configured: commands could never be '
                              'verified; set cloud_public_keys')
        try:
            self._db = self._open()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:   # damaged text too
            self._db = self._rebuild(exc)
        row = self._db.execute("SELECT value FROM meta WHERE name = 'rebuilt_at'").fetchone()
        self.rebuilt_at = None if row is None else float(row[0])

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.replay_db, isolation_level=None, check_same_thread=False)
        try:
            db.execute('PRAGMA journal_mode=WAL')
            db.execute('PRAGMA synchronous=FULL')
            check = db.execute('PRAGMA quick_check').fetchone()[0]
            if check != 'ok':
                raise sqlite3.DatabaseError(f'quick_check: {check}')
            db.executescript(_STORE_SCHEMA)
        except (sqlite3.DatabaseError, UnicodeDecodeError):
            db.close()
            raise
        return db

    def _rebuild(self, error: Exception) -> sqlite3.Connection:
        """Move a corrupt replay store aside and start one that refuses earlier commands."""
        now = self.clock.wall()
        aside = self.replay_db.with_name(f'{self.replay_db.name}.corrupt-{int(now)}')
        for suffix in ('', '-wal', '-shm'):
            source = Path(f'{self.replay_db}{suffix}')
            if source.exists():
                source.replace(Path(f'{aside}{suffix}'))
        db = self._open()
        db.execute("INSERT OR REPLACE INTO meta VALUES ('rebuilt_at', ?)", (now,))
        _LOG.error('replay store %s is unreadable (%s): moved aside to %s and started anew; '
                   'commands issued before now are refused as store_rebuilt (the planner '
                   'issues new versions)', self.replay_db, error, aside)
        return db

    def verify(self, raw: bytes, now_s: float | None = None) -> Mission:
        """Return the mission if every check passes; else count and raise CommandRejected."""
        mission = self.verify_kind('mission', raw, now_s)
        assert isinstance(mission, Mission)
        return mission

    def verify_model(self, raw: bytes, now_s: float | None = None) -> ModelCommand:
        """Return the model command if every check passes; else count and raise."""
        command = self.verify_kind('model', raw, now_s)
        assert isinstance(command, ModelCommand)
        return command

    def verify_advisory(self, raw: bytes, now_s: float | None = None) -> Advisory:
        """Return the advisory if every check passes; else count and raise."""
        advisory = self.verify_kind('advisory', raw, now_s)
        assert isinstance(advisory, Advisory)
        return advisory

    def verify_kind(self, kind: str, raw: bytes, now_s: float | None = None
                    ) -> Mission | ModelCommand | Advisory:
        """Check a command of ``kind`` (mission, model, advisory); count and raise on failure."""
        try:
            command = self._check(kind, raw, self.clock.wall() if now_s is None else now_s)
        except CommandRejected as exc:
            self.rejected[exc.reason] += 1
            raise
        self.accepted += 1
        return command

    def _check(self, kind: str, raw: bytes, now: float) -> Mission | ModelCommand | Advisory:
        try:
            payload = open_signed(raw, self.keys, self.robot_id, self.max_bytes)
        except SignatureError as exc:
            raise CommandRejected(exc.reason, exc.detail) from None
        if kind != 'advisory' and self.advisory_only:
            key_id = json.loads(raw).get('key_id')   # the envelope open_signed just checked
            if key_id in self.advisory_only:
                raise CommandRejected('wrong_key', f'key {key_id!r} signs advisories only, '
                                      f'not {kind} commands')
        try:
            mission = _VALIDATORS[kind](parse_json(payload, COMMAND_LIMITS, 'the command'))
        except PayloadError as exc:
            raise CommandRejected('malformed', str(exc)) from None
        except SchemaError as exc:
            raise CommandRejected('schema', str(exc)) from None
        if mission.robot_id != self.robot_id:
            raise CommandRejected('wrong_robot', f'command is for {mission.robot_id!r}')
        # A model command refused for time names its rollout, so the cloud sees why (signed
        # and for this robot: it is the cloud's own); a mission ack keeps its old shape.
        own = mission if isinstance(mission, ModelCommand) else None
        if mission.issued_at > now + self.max_clock_skew_s:
            raise CommandRejected('not_yet_valid', f'issued {mission.issued_at - now:.0f} s '
                                  'in the future (clock skew?)', own)
        if mission.valid_until <= now:
            raise CommandRejected('expired', f'expired {now - mission.valid_until:.0f} s ago',
                                  own)
        if mission.valid_until - mission.issued_at > self.max_validity_s:
            raise CommandRejected('validity_too_long', f'valid for more than '
                                  f'{self.max_validity_s:.0f} s', own)
        if self.rebuilt_at is not None and mission.issued_at < self.rebuilt_at:
            raise CommandRejected('store_rebuilt', 'issued before the replay store was '
                                  f'rebuilt at {self.rebuilt_at:.0f}: send a new version',
                                  None if isinstance(mission, Advisory) else mission)
        self._remember(mission, now)
        return mission

    def _remember(self, mission: Mission | ModelCommand | Advisory, now: float) -> None:
        """Refuse a replay or an old version; else record both, in one transaction."""
        db = self._db
        with _transaction(db):
            if db.execute('SELECT 1 FROM seen WHERE command_id = ?',
                          (mission.command_id,)).fetchone():
                raise CommandRejected('replayed', f'command {mission.command_id!r} was '
                                      'already accepted',
                                      None if isinstance(mission, Advisory) else mission)
            if isinstance(mission, Advisory):
                pass   # no versions: an advisory is read once, by its command id
            elif isinstance(mission, ModelCommand):
                row = db.execute('SELECT revision FROM model_revisions WHERE slot = ?',
                                 (mission.stream,)).fetchone()
                if row is not None and row[0] >= mission.revision:
                    raise CommandRejected('superseded', f'model revision {mission.revision} '
                                          f'<= the accepted {row[0]}', mission)
            else:
                row = db.execute('SELECT version FROM versions WHERE mission_id = ?',
                                 (mission.mission_id,)).fetchone()
                if row is not None and row[0] >= mission.version:
                    raise CommandRejected('superseded', f'mission {mission.mission_id} '
                                          f'version {mission.version} <= the accepted '
                                          f'{row[0]}', mission)
            # Expired command ids go (a wall clock that jumped ahead purges early: the
            # versions below still refuse those commands); the table stays bounded.
            db.execute('DELETE FROM seen WHERE forget_after < ?', (now,))
            db.execute('DELETE FROM seen WHERE command_id IN (SELECT command_id FROM seen '
                       'ORDER BY forget_after DESC LIMIT -1 OFFSET ?)', (MAX_SEEN - 1,))
            db.execute('INSERT INTO seen (command_id, forget_after) VALUES (?, ?)',
                       (mission.command_id, mission.valid_until + self.max_clock_skew_s))
            if isinstance(mission, Advisory):
                return
            if isinstance(mission, ModelCommand):
                db.execute('INSERT OR REPLACE INTO model_revisions VALUES (?, ?)',
                           (mission.stream, mission.revision))
                return
            order = db.execute('SELECT COALESCE(MAX(accepted_seq), 0) + 1 FROM versions'
                               ).fetchone()[0]
            db.execute('INSERT OR REPLACE INTO versions VALUES (?, ?, ?)',
                       (mission.mission_id, mission.version, order))
            db.execute('DELETE FROM versions WHERE mission_id IN (SELECT mission_id FROM '
                       'versions ORDER BY accepted_seq DESC LIMIT -1 OFFSET ?)',
                       (MAX_MISSIONS,))

    def versions(self) -> dict[str, int]:
        """Return the last accepted version of every remembered mission."""
        return dict(self._db.execute('SELECT mission_id, version FROM versions'))

    def close(self) -> None:
        """Close the replay database."""
        self._db.close()


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute('BEGIN IMMEDIATE')
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute('ROLLBACK')
        raise
    db.execute('COMMIT')
