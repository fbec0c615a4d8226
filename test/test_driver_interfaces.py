"""The driver interfaces the adapter speaks have the published types (RIHS01 hashes pinned).

control_msgs (SpeedScalingFactor only) and ur_msgs (SetSpeedSliderFraction only) have no PyPI
wheel; `make setup` builds them from their published field definitions in tools/interfaces.
std_srvs (Trigger, SetBool, Empty) comes from the `ros-std-srvs` wheel. RIHS01 hashes are
computed from field names and types, so equal hashes mean the driver adapter talks to the real
ros2_control, UR and std_srvs peers.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

# type name -> (fields of each part, the RIHS01 hash rosidl computes from our definition).
# A changed hash means the wire type changed: the real driver would no longer match it.
EXPECTED = {
    'control_msgs/msg/SpeedScalingFactor': (
        {'': {'factor': 'double'}},
        'RIHS01_0c240f349f2b74e33e8741f83e0f196ddeb6585923663876ed3c1f51f0566037'),
    'ur_msgs/srv/SetSpeedSliderFraction': (
        {'Request': {'speed_slider_fraction': 'double'}, 'Response': {'success': 'boolean'}},
        'RIHS01_04ad37ccb229fa4bce24db36230f09f416a1a637d3b29602907f5675125d402a'),
    'std_srvs/srv/Trigger': (
        {'Request': {}, 'Response': {'success': 'boolean', 'message': 'string'}},
        'RIHS01_eeff2cd6fa5ad9d27cdf4dec64818317839b62f212a91e6b5304b634b2062c5f'),
    'std_srvs/srv/SetBool': (
        {'Request': {'data': 'boolean'}, 'Response': {'success': 'boolean', 'message': 'string'}},
        'RIHS01_abe9e4bb6b41b40e6789712c00ec8871923e089af3f667a79992a428cff2da0a'),
    'std_srvs/srv/Empty': (
        {'Request': {}, 'Response': {}},
        'RIHS01_5888399dedec5ccc85ea6451949fd2c9f97bfdf963f9a588821639fcd31b5d19'),
}


def _share_json(type_name: str) -> dict:
    package, kind, name = type_name.split('/')
    for prefix in [sys.prefix, *os.environ.get('AMENT_PREFIX_PATH', '').split(':')]:
        path = Path(prefix) / 'share' / package / kind / f'{name}.json'
        if path.is_file():
            return json.loads(path.read_text())
    pytest.fail(f'{type_name}.json not installed: run `make setup`')


@pytest.mark.parametrize('type_name', sorted(EXPECTED))
def test_interface_has_the_published_fields_and_a_stable_hash(type_name: str) -> None:
    import importlib

    package, kind, name = type_name.split('/')
    interface = getattr(importlib.import_module(f'{package}.{kind}'), name)
    fields, expected_hash = EXPECTED[type_name]
    for part, part_fields in fields.items():
        typ = getattr(interface, part) if part else interface
        assert typ.get_fields_and_field_types() == part_fields, (type_name, part)
    hashes = {h['type_name']: h['hash_string'] for h in _share_json(type_name)['type_hashes']}
    assert hashes[type_name] == expected_hash
