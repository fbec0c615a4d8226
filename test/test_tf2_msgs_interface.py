"""The TFMessage kept in tools/interfaces/tf2_msgs builds into what /tf_static carries."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

# The RIHS01 hash rosidl computes from our definition (the published one, one line); a
# change here means the wire type changed and rviz/tf2 listeners would not match it.
EXPECTED = 'RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087'


def _share_json() -> dict:
    for prefix in [sys.prefix, *os.environ.get('AMENT_PREFIX_PATH', '').split(':')]:
        path = Path(prefix) / 'share' / 'tf2_msgs' / 'msg' / 'TFMessage.json'
        if path.is_file():
            return json.loads(path.read_text())
    pytest.fail('tf2_msgs/msg/TFMessage.json not installed: run `make setup`')


def test_tfmessage_has_the_published_layout_and_a_stable_hash() -> None:
    from tf2_msgs.msg import TFMessage

    assert TFMessage.get_fields_and_field_types() == {
        'transforms': 'sequence<geometry_msgs/TransformStamped>'}
    hashes = {h['type_name']: h['hash_string'] for h in _share_json()['type_hashes']}
    assert hashes['tf2_msgs/msg/TFMessage'] == EXPECTED
