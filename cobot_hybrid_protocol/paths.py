"""Where cobot_hybrid keeps its state on disk, on the robot and in the cloud.

``$COBOT_HYBRID_DATA_DIR`` if set, else ``$XDG_STATE_HOME/cobot_hybrid`` (by default
``~/.local/state/cobot_hybrid``). Under it: ``<robot_id>/`` for a bridge (outbox, replay store,
telemetry state) and ``planner/`` for a planner (fleet store, mission ledger).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ['default_data_dir', 'planner_data_dir', 'robot_data_dir']


def default_data_dir() -> Path:
    """Return ``$COBOT_HYBRID_DATA_DIR``, else ``<XDG state home>/cobot_hybrid``."""
    explicit = os.environ.get('COBOT_HYBRID_DATA_DIR')
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get('XDG_STATE_HOME') or str(Path.home() / '.local' / 'state')
    return Path(base) / 'cobot_hybrid'


def robot_data_dir(configured: str, robot_id: str) -> Path:
    """Return the bridge's folder: ``configured`` (or the default), then ``<robot_id>``."""
    return (Path(configured).expanduser() if configured else default_data_dir()) / robot_id


def planner_data_dir(configured: str) -> Path:
    """Return the planner's folder: ``configured`` if set, else ``<default>/planner``."""
    return Path(configured).expanduser() if configured else default_data_dir() / 'planner'
