"""A robot's liveness: the retained ``cobot/v1/<robot_id>/status`` and its last will.

::

    {"state": "online", "stamp": 1795790000.1}     # state: online | offline; robot's clock

The bridge publishes ``online`` (retained) on every connect and leaves ``offline`` as its last
will (and publishes it itself on a clean stop). The cloud still counts a robot silent for its
``offline_after_s`` as offline: a broker can lose a will, a connection can be half-open.
"""

from __future__ import annotations

import json

from cobot_hybrid_protocol.errors import SchemaError
from cobot_hybrid_protocol.limits import Limits, is_number_in, parse_json

__all__ = ['MAX_STAMP_S', 'STATES', 'parse_status', 'status_payload']

STATES = ('online', 'offline')
MAX_STAMP_S = 4_102_444_800.0    # 2100-01-01, as every unix time of the contract
_LIMITS = Limits(max_bytes=1024, max_depth=2, max_string=64, max_items=8, max_values=16)


def status_payload(state: str, stamp: float) -> bytes:
    """Return the status payload of ``state`` at ``stamp`` [unix s]."""
    if state not in STATES:
        raise SchemaError(f'status state {state!r} is not one of {STATES}')
    return json.dumps({'state': state, 'stamp': round(stamp, 3)}).encode()


def parse_status(payload: bytes, what: str = 'status') -> str:
    """Return ``online``/``offline``; PayloadError (limits) or SchemaError otherwise."""
    body = parse_json(payload, _LIMITS, what)
    if not isinstance(body, dict) or body.get('state') not in STATES \
            or not set(body) <= {'state', 'stamp'} \
            or ('stamp' in body and not is_number_in(body['stamp'], 0.0, MAX_STAMP_S)):
        raise SchemaError(f'{what}: status must be {{"state": "online"|"offline", "stamp": '
                          '<unix s>}')
    return str(body['state'])
