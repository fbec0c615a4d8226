"""``cobot-hybrid``: one command line; the sub-commands belong to the packages.

Each package named in :data:`PACKAGES` has a ``cli`` module with ``register(subparsers)``
(its sub-commands) and ``ERRORS`` (the expected errors of those commands: one line on stderr
and exit status 2 instead of a traceback). This dispatcher collects them by name, so no
package imports another to build the command line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ['PACKAGES', 'main']

PACKAGES = ('cobot_hybrid_perception', 'cobot_hybrid_bridge', 'cobot_hybrid_planner',
            'cobot_hybrid_ros')


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the sub-command; its expected errors print one line and exit 2."""
    parser = argparse.ArgumentParser(prog='cobot-hybrid', description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest='command', required=True)
    errors: list[type[Exception]] = []
    for package in PACKAGES:
        module = importlib.import_module(f'{package}.cli')
        module.register(subparsers)
        errors.extend(module.ERRORS)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except tuple(errors) as exc:
        print(f'cobot-hybrid {args.command}: {exc}', file=sys.stderr)
        return 2
