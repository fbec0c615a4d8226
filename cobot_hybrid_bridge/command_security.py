"""Commands from the cloud: signed, checked and never replayed before they reach ROS.

Wire format on ``cobot/v1/<robot_id>/cmd/<kind>``: a JSON envelope with exactly three fields::

    {"key_id": "planner-2026", "payload": "<base64 of the command JSON bytes>",
     "signature": "<base64 Ed25519 signature of: payload bytes, newline, robot_id>"}

Binding the robot id into the signed bytes means a command signed for robot A is worthless
on robot B. :class:`CommandVerifier` checks, cheapest first, and stops at the first failure:
size, envelope shape, known key, signature, command JSON, schema (no unknown fields), robot
id, ``issued_at`` not in the future (beyond ``max_clock_skew_s``), ``valid_until`` not past,
validity no longer than ``max_validity_s``, and the replay window: every accepted
``command_id`` is kept in SQLite until it could no longer be valid, so a replay is refused
after restarts too. Rejections are counted by reason.
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Mapping
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

__all__ = ['CommandRejected', 'CommandVerifier', 'REJECT_REASONS', 'load_public_keys',
           'sign_command']

REJECT_REASONS = ('too_large', 'malformed', 'unknown_key', 'bad_signature', 'schema',
                  'wrong_robot', 'not_yet_valid', 'expired', 'validity_too_long', 'replayed')


class CommandRejected(BridgeError):
    """A command failed a check; ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f'{reason}: {detail}')
        self.reason = reason


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
    rejected: Counter[str] = field(default_factory=Counter)
    accepted: int = 0

    def __post_init__(self) -> None:
        if not self.keys:
            raise BridgeError('no cloud public key configured: commands could never be '
                              'verified; set cloud_public_keys')
        self._db = sqlite3.connect(self.replay_db, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute('PRAGMA journal_mode=WAL')
        self._db.execute('PRAGMA synchronous=FULL')
        self._db.execute('CREATE TABLE IF NOT EXISTS seen (command_id TEXT PRIMARY KEY, '
                         'forget_after REAL NOT NULL)')

    def verify(self, raw: bytes, now_s: float | None = None) -> Mission:
        """Return the mission if every check passes; else count and raise CommandRejected."""
        try:
            mission = self._check(raw, time.time() if now_s is None else now_s)
        except CommandRejected as exc:
            self.rejected[exc.reason] += 1
            raise
        self.accepted += 1
        return mission

    def _check(self, raw: bytes, now: float) -> Mission:
        if len(raw) > self.max_bytes:
            raise CommandRejected('too_large', f'{len(raw)} bytes > {self.max_bytes}')
        try:
            envelope = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CommandRejected('malformed', f'envelope is not JSON: {exc}') from None
        if not isinstance(envelope, dict) or set(envelope) != {'key_id', 'payload',
                                                                 'signature'}:
            raise CommandRejected('malformed', 'envelope must have exactly key_id, payload, '
                                  'signature')
        key = self.keys.get(envelope['key_id']) if isinstance(envelope['key_id'], str) else None
        if key is None:
            raise CommandRejected('unknown_key', f'key_id {envelope["key_id"]!r} is not a '
                                  'configured cloud key')
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
            mission = validate_mission(json.loads(payload))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CommandRejected('malformed', f'payload is not JSON: {exc}') from None
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
        self._remember(mission, now)
        return mission

    def _remember(self, mission: Mission, now: float) -> None:
        self._db.execute('DELETE FROM seen WHERE forget_after < ?', (now,))
        try:
            self._db.execute('INSERT INTO seen (command_id, forget_after) VALUES (?, ?)',
                             (mission.command_id, mission.valid_until + self.max_clock_skew_s))
        except sqlite3.IntegrityError:
            raise CommandRejected('replayed', f'command {mission.command_id!r} was already '
                                  'accepted') from None

    def close(self) -> None:
        """Close the replay database."""
        self._db.close()
