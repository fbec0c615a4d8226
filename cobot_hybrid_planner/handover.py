"""Replica hand-over: the owner's ledger as a retained snapshot, taken whole by the next owner.

The owner publishes ``{"fleet", "epoch", "tasks", "missions"}`` (envelopes base64) after each
change (:func:`snapshot`); a replica that becomes the owner takes the newest snapshot of its
fleet if its epoch is not older than its own (:func:`adopt`): all of it or nothing (a bad row
keeps the local ledger whole), keeping the open tasks only it has (an orders file it loaded).
Delivery acknowledgements of a replica wait for the PUBACK of a snapshot holding their
effect, so the next owner never lacks what a robot was told is stored (see the service).
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
from enum import Enum

from cobot_hybrid_planner.ledger import MISSION_COLUMNS, TASK_COLUMNS, Ledger
from cobot_hybrid_protocol.errors import PayloadError
from cobot_hybrid_protocol.limits import FILE_LIMITS, parse_json

__all__ = ['Adoption', 'adopt', 'snapshot']

_LOG = logging.getLogger(__name__)


def snapshot(ledger: Ledger, fleet_id: str) -> bytes:
    """Return the ledger (tasks, missions) as JSON, for the next owner."""
    tasks, missions = ledger.rows()
    for item in missions:
        item['envelope'] = base64.b64encode(bytes(item['envelope'])).decode()
    return json.dumps({'fleet': fleet_id, 'epoch': ledger.epoch, 'tasks': tasks,
                       'missions': missions}).encode()


class Adoption(Enum):
    """What became of a snapshot offered to :func:`adopt`."""

    ADOPTED = 'adopted'
    OLDER = 'older'               # another fleet's, or not newer than ours: ours is kept
    UNREADABLE = 'unreadable'     # not a snapshot: the local ledger is kept (logged)
    NOT_STORED = 'not stored'     # read, but a row was refused: the local ledger is kept


def adopt(ledger: Ledger, payload: bytes, fleet_id: str) -> Adoption:
    """Take a snapshot if it is this fleet's and not older; return what happened."""
    try:
        data = parse_json(payload, FILE_LIMITS, 'the ledger snapshot')
        if data['fleet'] != fleet_id or int(data['epoch']) < ledger.epoch:
            return Adoption.OLDER
        tasks = [tuple(t[c] for c in TASK_COLUMNS) for t in data['tasks']]
        missions = [tuple(base64.b64decode(m[c]) if c == 'envelope' else m[c]
                          for c in MISSION_COLUMNS) for m in data['missions']]
    except (PayloadError, ValueError, KeyError, TypeError, AttributeError) as exc:
        _LOG.error('ledger snapshot of fleet %s unreadable (%s): keeping the local one',
                   fleet_id, exc)
        return Adoption.UNREADABLE
    try:
        ledger.replace(tasks, missions)
    except (sqlite3.Error, ValueError, TypeError) as exc:
        _LOG.error('ledger snapshot of fleet %s cannot be stored (%s): keeping the local one',
                   fleet_id, exc)
        return Adoption.NOT_STORED
    _LOG.warning('took over the ledger of epoch %s: %d tasks, %d missions', data['epoch'],
                 len(tasks), len(missions))
    return Adoption.ADOPTED
