"""The vision_msgs kept in tools/interfaces builds into the messages that stacks expect."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# RIHS01 hashes computed by rosidl from our definitions. They depend only on field names and
# types, so equal definitions give equal hashes; a change here means the wire type changed.
EXPECTED_HASHES = {
    'Detection2DArray': 'RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968',
    'Detection2D': 'RIHS01_0d12b69df5c593b3455b7346fac8205437a7d4bcb09b9e0e0b2dde787ded38ea',
    'BoundingBox2D': 'RIHS01_008eacbb0cf8f26e83795547bed013eec3675485ef386ec056d80eaaf1c1ce2f',
    'ObjectHypothesisWithPose':
        'RIHS01_41c12344c0396c48b81df12467c192d99b2a0eb1463c5c37194e4223251c80bc',
}


def _share_json(name: str) -> dict:
    for prefix in [sys.prefix, *__import__('os').environ.get('AMENT_PREFIX_PATH', '').split(':')]:
        path = Path(prefix) / 'share' / 'vision_msgs' / 'msg' / f'{name}.json'
        if path.is_file():
            return json.loads(path.read_text())
    pytest.fail(f'vision_msgs/msg/{name}.json not installed: run `make setup`')


@pytest.mark.parametrize(('name', 'expected'), sorted(EXPECTED_HASHES.items()))
def test_type_hashes_are_stable(name: str, expected: str) -> None:
    hashes = {h['type_name']: h['hash_string'] for h in _share_json(name)['type_hashes']}
    assert hashes[f'vision_msgs/msg/{name}'] == expected


def test_vision_msgs_4x_field_layout() -> None:
    from vision_msgs.msg import BoundingBox2D, Detection2D, ObjectHypothesis, Pose2D

    assert BoundingBox2D.get_fields_and_field_types() == {
        'center': 'vision_msgs/Pose2D', 'size_x': 'double', 'size_y': 'double'}
    assert Pose2D.get_fields_and_field_types() == {
        'position': 'vision_msgs/Point2D', 'theta': 'double'}
    assert ObjectHypothesis.get_fields_and_field_types() == {
        'class_id': 'string', 'score': 'double'}
    assert Detection2D.get_fields_and_field_types() == {
        'header': 'std_msgs/Header',
        'results': 'sequence<vision_msgs/ObjectHypothesisWithPose>',
        'bbox': 'vision_msgs/BoundingBox2D', 'id': 'string'}
