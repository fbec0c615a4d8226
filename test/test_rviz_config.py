"""rviz/cobot_hybrid.rviz shows what the nodes really publish (rviz itself cannot run here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RVIZ = ROOT / 'rviz' / 'cobot_hybrid.rviz'
#: rviz display class -> the message class name a node must publish on its topic
DISPLAY_TYPES = {'rviz_default_plugins/Image': 'Image',
                 'rviz_default_plugins/MarkerArray': 'MarkerArray',
                 'rviz_default_plugins/Path': 'PathMsg'}
_PUBLISHER = re.compile(r"create_(?:lifecycle_)?publisher\(\s*(\w+),\s*'(\w+)'")


def _published() -> dict[str, set[str]]:
    """Topic -> message classes published on it by any node shell."""
    found: dict[str, set[str]] = {}
    for path in ROOT.glob('cobot_hybrid_*/nodes/*.py'):
        for message, topic in _PUBLISHER.findall(path.read_text()):
            found.setdefault(topic, set()).add(message)
    return found


def test_every_display_shows_a_topic_a_node_publishes_with_its_type() -> None:
    config = yaml.safe_load(RVIZ.read_text())
    displays = config['Visualization Manager']['Displays']
    published = _published()
    shown = {}
    for display in displays:
        if display['Class'] not in DISPLAY_TYPES:
            continue
        topic = display['Topic']['Value'].lstrip('/')
        assert topic in published, f'{display["Name"]}: nobody publishes {topic!r}'
        assert DISPLAY_TYPES[display['Class']] in published[topic], (display, published[topic])
        shown[topic] = display['Name']
    assert {'annotated_image', 'detection_markers', 'safety_markers', 'mission_path',
            'mission_markers', 'fleet_missions'} <= set(shown), shown
    assert config['Visualization Manager']['Global Options']['Fixed Frame'] == 'base_link'


def test_the_config_is_installed_to_share() -> None:
    setup_py = (ROOT / 'setup.py').read_text()
    assert "(f'share/{PACKAGE}/rviz', glob('rviz/*.rviz'))" in setup_py
