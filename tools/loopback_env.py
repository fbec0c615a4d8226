"""The DDS environment every ROS process of the test suite, demo and benchmarks runs with.

``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` plus the loopback Fast DDS profile in ``config/``;
set before anything in the process creates a participant. Children inherit it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FASTDDS_PROFILE = ROOT / 'config' / 'fastdds_loopback.xml'


def configure_ros_environment(domain_id: int | None = None, log_prefix: str = 'cobot_hybrid_'
                              ) -> None:
    """Loopback-only DDS for this process and its children (and an optional domain id)."""
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = str(FASTDDS_PROFILE)
    os.environ['RMW_IMPLEMENTATION'] = 'rmw_fastrtps_cpp'
    os.environ.pop('ROS_LOCALHOST_ONLY', None)  # ignored by Kilted; never rely on it
    os.environ.pop('ROS_STATIC_PEERS', None)
    os.environ['PYTHONUNBUFFERED'] = '1'
    if domain_id is not None:
        os.environ['ROS_DOMAIN_ID'] = str(domain_id)
    if 'ROS_LOG_DIR' not in os.environ:
        os.environ['ROS_LOG_DIR'] = tempfile.mkdtemp(prefix=f'{log_prefix}roslog_')
    prefixes = [p for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    if sys.prefix not in prefixes:
        os.environ['AMENT_PREFIX_PATH'] = os.pathsep.join([sys.prefix, *prefixes])
