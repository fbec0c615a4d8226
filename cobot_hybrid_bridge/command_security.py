"""Commands from the cloud: signed, checked and never replayed before they reach ROS.

Wire format on ``cobot/v1/<robot_id>/cmd/<kind>``: a JSON envelope with exactly three fields::

    {"key_id": "planner-2026", "payload": "<base64 of the command JSON bytes>",
     "signature": "<base64 Ed25519 signature of: payload bytes, newline, robot_id>"}

Binding the robot id into the signed bytes means a command signed for robot A is worthless
on robot B. :class:`CommandVerifier` checks, cheapest first, and stops at the first failure:
size, envelope shape, known key, signature, command JSON, schema (no unknown fields), robot
id, ``issued_at`` not in the future (beyond ``max_clock_skew_s``), ``valid_until`` not past,
validity no longer than ``max_validity_s``, the replay window and the mission version. Both
JSON layers are read with the bounded parser (:mod:`cobot_hybrid_protocol.limits`): a huge
integer, deep nesting or a non-finite number is a ``malformed`` rejection, never an exception.

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

import base64
import binascii
import contextlib
import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_bridge.mission_schema import Mission, SchemaError, validate_mission
from cobot_hybrid_protocol.clock import SYSTEM_CLOCK, Clock
from cobot_hybrid_protocol.errors import PayloadError
from cobot_hybrid_protocol.limits import COMMAND_LIMITS, Limits, parse_json

__all__ = ['CommandRejected', 'CommandVerifier', 'REJECT_REASONS', 'load_public_keys',
           'sign_command']

REJECT_REASONS = ('too_large', 'malformed', 'unknown_key', 'bad_signature', 'schema',
                  'wrong_robot', 'not_yet_valid', 'expired', 'validity_too_long', 'replayed',
                  'superseded', 'store_rebuilt')
MAX_MISSIONS = 10_000     # mission ids whose last version is remembered (oldest forgotten)
MAX_SEEN = 100_000        # command ids remembered at most (soonest to expire forgotten)
_LOG = logging.getLogger(__name__)
_STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (command_id TEXT PRIMARY KEY, forget_after REAL NOT NULL);
CREATE TABLE IF NOT EXISTS versions (mission_id TEXT PRIMARY KEY, version INTEGER NOT NULL,
                                     accepted_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value REAL NOT NULL);
"""


class CommandRejected(BridgeError):
    """A command failed a check; ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str, mission: Mission | None = None) -> None:
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail
        self.mission = mission      # when the command itself was valid (superseded, replayed)


def _signed_bytes(payload: bytes, robot_id: str) -> bytes:
    return payload + b'\n' + robot_id.encode()


def sign_command(private_key: Ed25519PrivateKey, key_id: str, command: Mapping[str, Any],
                 robot_id: str) -> bytes:
    """Envelope bytes of ``command`` for ``robot_id`` (the planner's side)."""
    payload = json.dumps(command, separators=(',', ':'), sort_keys=True).encode()
    signature = private_key.sign(_signed_bytes(payload, robot_id))
    return json.dumps({'key_id': key_id, 'payload': base64.b64encode(payload).decode(),
                       'signature': base64.b64encode(signature).decode()}).encode()


def load_public_keys(paths: Mapping[str, Path]) -> dict[str, Ed25519PublicKey]:
    """Read PEM Ed25519 public keys by key id (raises BridgeError naming the file)."""
    keys = {}
    for key_id, path in paths.items():
        try:
            key = load_pem_public_key(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise BridgeError(f'cloud key {key_id!r} at {path} cannot be read: {exc}') from None
        if not isinstance(key, Ed25519PublicKey):
            raise BridgeError(f'cloud key {key_id!r} at {path} is not an Ed25519 public key')
        keys[key_id] = key
    return keys


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

    def __post_init__(self) -> None:
        if not self.keys:
            raise BridgeError('no cloud public key configured: commands could never be '
                              'verified; set cloud_public_keys')
        self._envelope_limits = Limits(max_bytes=self.max_bytes, max_depth=1,
                                       max_string=self.max_bytes, max_items=3, max_values=4,
                                       unique_keys=True)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
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
        except sqlite3.DatabaseError:
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
        try:
            mission = self._check(raw, self.clock.wall() if now_s is None else now_s)
        except CommandRejected as exc:
            self.rejected[exc.reason] += 1
            raise
        self.accepted += 1
        return mission

    def _check(self, raw: bytes, now: float) -> Mission:
        if len(raw) > self.max_bytes:
            raise CommandRejected('too_large', f'{len(raw)} bytes > {self.max_bytes}')
        try:
            envelope = parse_json(raw, self._envelope_limits, 'the envelope')
        except PayloadError as exc:
            raise CommandRejected('malformed', str(exc)) from None
        if not isinstance(envelope, dict) or set(envelope) != {'key_id', 'payload',
                                                                 'signature'}:
            raise CommandRejected('malformed', 'envelope must have exactly key_id, payload, '
                                  'signature')
        key_id = envelope['key_id']
        key = self.keys.get(key_id) if isinstance(key_id, str) else None
        if key is None:
            shown = repr(key_id)[:80] if isinstance(key_id, str) else type(key_id).__name__
            raise CommandRejected('unknown_key', f'key_id {shown} is not a configured cloud '
                                  'key')
        try:
            payload = base64.b64decode(envelope['payload'], validate=True)
            signature = base64.b64decode(envelope['signature'], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise CommandRejected('malformed', 'payload/signature are not base64') from None
        try:
            key.verify(signature, _signed_bytes(payload, self.robot_id))
        except InvalidSignature:
            raise CommandRejected('bad_signature', 'Ed25519 signature does not match the '
                                  f'payload for robot {self.robot_id!r}') from None
        try:
            mission = validate_mission(parse_json(payload, COMMAND_LIMITS, 'the command'))
        except PayloadError as exc:
            raise CommandRejected('malformed', str(exc)) from None
        except SchemaError as exc:
            raise CommandRejected('schema', str(exc)) from None
        if mission.robot_id != self.robot_id:
            raise CommandRejected('wrong_robot', f'command is for {mission.robot_id!r}')
        if mission.issued_at > now + self.max_clock_skew_s:
            raise CommandRejected('not_yet_valid', f'issued {mission.issued_at - now:.0f} s '
                                  'in the future (clock skew?)')
        if mission.valid_until <= now:
            raise CommandRejected('expired', f'expired {now - mission.valid_until:.0f} s ago')
        if mission.valid_until - mission.issued_at > self.max_validity_s:
            raise CommandRejected('validity_too_long', f'valid for more than '
                                  f'{self.max_validity_s:.0f} s')
        if self.rebuilt_at is not None and mission.issued_at < self.rebuilt_at:
            raise CommandRejected('store_rebuilt', 'issued before the replay store was '
                                  f'rebuilt at {self.rebuilt_at:.0f}: send a new version',
                                  mission)
        self._remember(mission, now)
        return mission

    def _remember(self, mission: Mission, now: float) -> None:
        """Refuse a replay or an old version; else record both, in one transaction."""
        db = self._db
        with _transaction(db):
            if db.execute('SELECT 1 FROM seen WHERE command_id = ?',
                          (mission.command_id,)).fetchone():
                raise CommandRejected('replayed', f'command {mission.command_id!r} was '
                                      'already accepted', mission)
            row = db.execute('SELECT version FROM versions WHERE mission_id = ?',
                             (mission.mission_id,)).fetchone()
            if row is not None and row[0] >= mission.version:
                raise CommandRejected('superseded', f'mission {mission.mission_id} version '
                                      f'{mission.version} <= the accepted {row[0]}', mission)
            # Expired command ids go (a wall clock that jumped ahead purges early: the
            # versions below still refuse those commands); the table stays bounded.
            db.execute('DELETE FROM seen WHERE forget_after < ?', (now,))
            db.execute('DELETE FROM seen WHERE command_id IN (SELECT command_id FROM seen '
                       'ORDER BY forget_after DESC LIMIT -1 OFFSET ?)', (MAX_SEEN - 1,))
            db.execute('INSERT INTO seen (command_id, forget_after) VALUES (?, ?)',
                       (mission.command_id, mission.valid_until + self.max_clock_skew_s))
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
