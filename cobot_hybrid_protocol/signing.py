"""Signed commands: the envelope the cloud signs and the robot opens.

Wire format on ``cobot/v1/<robot_id>/cmd/<kind>``: a JSON envelope with exactly three fields::

    {"key_id": "planner-2026", "payload": "<base64 of the command JSON bytes>",
     "signature": "<base64 Ed25519 signature of: payload bytes, newline, robot_id>"}

Binding the robot id into the signed bytes means a command signed for robot A is worthless
on robot B. :func:`open_signed` checks, cheapest first, and stops at the first failure: size,
envelope shape (read with the bounded parser), known key, base64, signature; it returns the
payload bytes, which the caller then parses as its command (:mod:`cobot_hybrid_protocol.mission`)
and checks for time and replay (the robot's replay store is the bridge's, not the contract's).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)

from cobot_hybrid_protocol.errors import KeyFileError, PayloadError, SignatureError
from cobot_hybrid_protocol.limits import Limits, parse_json

__all__ = ['MAX_COMMAND_BYTES', 'SIGNATURE_REASONS', 'load_private_key', 'load_public_keys',
           'open_signed', 'sign_command']

SIGNATURE_REASONS = ('too_large', 'malformed', 'unknown_key', 'bad_signature')
MAX_COMMAND_BYTES = 256 * 1024
_FIELDS = frozenset({'key_id', 'payload', 'signature'})


def _signed_bytes(payload: bytes, robot_id: str) -> bytes:
    return payload + b'\n' + robot_id.encode()


def sign_command(private_key: Ed25519PrivateKey, key_id: str, command: Mapping[str, Any],
                 robot_id: str) -> bytes:
    """Envelope bytes of ``command`` for ``robot_id`` (the cloud's side)."""
    payload = json.dumps(command, separators=(',', ':'), sort_keys=True,
                         allow_nan=False).encode()
    signature = private_key.sign(_signed_bytes(payload, robot_id))
    return json.dumps({'key_id': key_id, 'payload': base64.b64encode(payload).decode(),
                       'signature': base64.b64encode(signature).decode()}).encode()


def open_signed(raw: bytes, keys: Mapping[str, Ed25519PublicKey], robot_id: str,
                max_bytes: int = MAX_COMMAND_BYTES) -> bytes:
    """Return the signed payload of an envelope for ``robot_id``; raise SignatureError."""
    if len(raw) > max_bytes:
        raise SignatureError('too_large', f'{len(raw)} bytes > {max_bytes}')
    limits = Limits(max_bytes=max_bytes, max_depth=1, max_string=max_bytes, max_items=3,
                    max_values=4, unique_keys=True)
    try:
        envelope = parse_json(raw, limits, 'the envelope')
    except PayloadError as exc:
        raise SignatureError('malformed', str(exc)) from None
    if not isinstance(envelope, dict) or set(envelope) != _FIELDS:
        raise SignatureError('malformed', 'envelope must have exactly key_id, payload, '
                             'signature')
    key_id = envelope['key_id']
    key = keys.get(key_id) if isinstance(key_id, str) else None
    if key is None:
        shown = repr(key_id)[:80] if isinstance(key_id, str) else type(key_id).__name__
        raise SignatureError('unknown_key', f'key_id {shown} is not a configured cloud key')
    try:
        payload = base64.b64decode(envelope['payload'], validate=True)
        signature = base64.b64decode(envelope['signature'], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise SignatureError('malformed', 'payload/signature are not base64') from None
    try:
        key.verify(signature, _signed_bytes(payload, robot_id))
    except InvalidSignature:
        raise SignatureError('bad_signature', 'Ed25519 signature does not match the payload '
                             f'for robot {robot_id!r}') from None
    return payload


def load_public_keys(paths: Mapping[str, Path | str]) -> dict[str, Ed25519PublicKey]:
    """Read PEM Ed25519 public keys by key id (raises KeyFileError naming the file)."""
    keys = {}
    for key_id, path in paths.items():
        try:
            key = load_pem_public_key(Path(path).expanduser().read_bytes())
        except (OSError, ValueError) as exc:
            raise KeyFileError(f'cloud key {key_id!r} at {path} cannot be read: {exc}') \
                from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f'cloud key {key_id!r} at {path} is not an Ed25519 public key')
        keys[key_id] = key
    return keys


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key (raises KeyFileError naming the file)."""
    try:
        key = load_pem_private_key(Path(path).expanduser().read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f'private key {path} cannot be read: {exc}') from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f'private key {path} is not an Ed25519 key')
    return key
