"""The nodes find the package's files in the venv without a ROS environment (issue 14 item 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cobot_hybrid_ros.errors import RosHelperError
from cobot_hybrid_ros.share import share_dir

ROOT = Path(__file__).resolve().parent.parent


def test_without_ament_prefix_path_the_source_tree_is_the_share_folder(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv('AMENT_PREFIX_PATH', raising=False)
    assert share_dir() == ROOT and (share_dir() / 'config' / 'bridge.yaml').is_file()


def test_with_no_files_anywhere_the_error_says_what_to_do(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    import cobot_hybrid_ros.share as share

    monkeypatch.delenv('AMENT_PREFIX_PATH', raising=False)
    monkeypatch.setattr(share, '__file__', str(tmp_path / 'pkg' / 'share.py'))
    monkeypatch.setattr(share.sys, 'prefix', str(tmp_path))
    with pytest.raises(RosHelperError, match='source install/setup.bash.*make setup'):
        share_dir()


def test_bridge_node_starts_without_a_ros_environment(ros_process: Any, tmp_path: Path) -> None:
    bridge = ros_process('cobot_hybrid_bridge.nodes.bridge_node', '--ros-args', '-p',
                         f'data_dir:={tmp_path}', env={'AMENT_PREFIX_PATH': ''})
    from conftest import wait_for

    assert wait_for(lambda: 'routes to' in bridge.log() or bridge.popen.poll() is not None,
                    30.0)
    assert 'routes to' in bridge.log(), bridge.log()
