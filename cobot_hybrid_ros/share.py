"""Where the package's installed files are (config/, launch/), with or without a ROS environment.

In a colcon workspace (or a ROS distribution) ``ament_index`` knows ``share/cobot_hybrid``;
in the venv without a sourced ROS environment (``AMENT_PREFIX_PATH`` unset) ament_index raises
and the files are found beside the source (an editable install) or under the venv's
``share/cobot_hybrid``; if neither holds them, the error says what to do.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cobot_hybrid_ros.errors import RosHelperError

__all__ = ['PACKAGE', 'share_dir']

PACKAGE = 'cobot_hybrid'


def share_dir() -> Path:
    """Return ``share/cobot_hybrid`` (or the source tree holding the same config/ and launch/)."""
    try:
        from ament_index_python.packages import (
            PackageNotFoundError,
            get_package_share_directory,
        )

        return Path(get_package_share_directory(PACKAGE))
    except (ImportError, LookupError, OSError, ValueError) as exc:   # no ROS environment
        reason = f'{type(exc).__name__}: {exc}'
        if isinstance(exc, PackageNotFoundError):   # (a LookupError: the message is enough)
            reason = str(exc)
    candidates = [Path(__file__).resolve().parents[1], Path(sys.prefix) / 'share' / PACKAGE]
    for candidate in candidates:
        if (candidate / 'config' / 'bridge_routes.yaml').is_file():
            return candidate
    raise RosHelperError(f'the {PACKAGE} share folder (config/, launch/) was not found '
                         f'({reason}); in a colcon workspace source install/setup.bash, in the '
                         'venv run `make setup` (it installs the package editable)')
