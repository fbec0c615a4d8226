"""Bridge sub-commands of ``cobot-hybrid``: ``queue stats PATH [--json]``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from cobot_hybrid_bridge.errors import BridgeError

__all__ = ['ERRORS', 'register']

#: What the bridge sub-commands raise for bad input (one line, exit status 2).
ERRORS = (BridgeError,)


def _cmd_queue_stats(args: argparse.Namespace) -> int:
    from cobot_hybrid_bridge.durable_queue import open_readonly_stats

    stats = open_readonly_stats(Path(args.path))
    data = {**dataclasses.asdict(stats), 'balanced': stats.balanced}
    if args.json:
        print(json.dumps(data))
        return 0
    print(f'{args.path}: {stats.queued} queued ({stats.queued_bytes} bytes, oldest '
          f'{stats.oldest_age_s:.1f} s), committed {stats.committed}, delivered '
          f'{stats.delivered}, dropped {stats.dropped}; next seq {stats.next_seq}; '
          f'{"balanced" if stats.balanced else "NOT BALANCED"}')
    return 0


def register(subparsers: Any) -> None:
    """Add ``queue stats``."""
    queue = subparsers.add_parser('queue', help='inspect a bridge queue file offline')
    queue_sub = queue.add_subparsers(dest='queue_command', required=True)
    stats = queue_sub.add_parser('stats', help='counters of a queue file (read-only)')
    stats.add_argument('path')
    stats.add_argument('--json', action='store_true')
    stats.set_defaults(func=_cmd_queue_stats)
