"""Which frames a stack publishes, and whether TF connects them all (what rviz needs).

:func:`frame_ids` walks any ROS message (nested messages and arrays of them, e.g. every marker
of a ``MarkerArray``) and returns each ``header.frame_id`` and ``child_frame_id`` in it;
:class:`FrameTree` collects the parent -> child edges of ``/tf`` and ``/tf_static`` and answers
which frames cannot be reached from a fixed frame (rviz shows those as "No transform").

The frame convention of the suite (docs/architecture.md): images, detections and their
markers are in the camera's optical frame; safety zones, people and the arm's links in the
robot base frame (``base_link``); missions and fleet markers in the site frame (``map``).
TF must connect ``map -> base_link -> camera_optical_frame``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ['FrameTree', 'FrameWatcher', 'frame_ids', 'message_type']

_MAX_DEPTH = 8


def frame_ids(msg: Any, _depth: int = 0) -> set[str]:
    """Return every non-empty frame id a message carries (headers and child frames)."""
    found: set[str] = set()
    if _depth > _MAX_DEPTH or not hasattr(msg, 'get_fields_and_field_types'):
        return found
    for name in msg.get_fields_and_field_types():
        value = getattr(msg, name)
        if name in ('frame_id', 'child_frame_id') and isinstance(value, str):
            if value:
                found.add(value.lstrip('/'))
        elif hasattr(value, 'get_fields_and_field_types'):
            found |= frame_ids(value, _depth + 1)
        elif isinstance(value, (list, tuple)) and value \
                and hasattr(value[0], 'get_fields_and_field_types'):
            for item in value:
                found |= frame_ids(item, _depth + 1)
    return found


@dataclass
class FrameTree:
    """The edges of a TF tree as heard, and the frames it reaches from a root."""

    edges: set[tuple[str, str]] = field(default_factory=set)

    def add(self, tf_message: Any) -> None:
        """Take a ``tf2_msgs/TFMessage``."""
        for transform in tf_message.transforms:
            self.edges.add((transform.header.frame_id.lstrip('/'),
                            transform.child_frame_id.lstrip('/')))

    def reachable(self, root: str) -> set[str]:
        """Return the frames connected to ``root`` (TF lookups work in both directions)."""
        neighbours: dict[str, set[str]] = {}
        for parent, child in self.edges:
            neighbours.setdefault(parent, set()).add(child)
            neighbours.setdefault(child, set()).add(parent)
        seen, todo = {root}, [root]
        while todo:
            for other in neighbours.get(todo.pop(), ()):
                if other not in seen:
                    seen.add(other)
                    todo.append(other)
        return seen

    def unconnected(self, frames: Iterable[str], root: str) -> set[str]:
        """Return the frames in ``frames`` that TF does not connect to ``root``."""
        return set(frames) - self.reachable(root)

    def conflicts(self) -> list[str]:
        """Return what tf2 itself would reject: a frame with two parents, a loop."""
        parents: dict[str, set[str]] = {}
        for parent, child in self.edges:
            parents.setdefault(child, set()).add(parent)
        found = [f'{child} has {len(ps)} parents ({", ".join(sorted(ps))})'
                 for child, ps in sorted(parents.items()) if len(ps) > 1]
        for start in sorted(parents):
            seen, frame = {start}, start
            while len(parents.get(frame, ())) == 1:
                frame = next(iter(parents[frame]))
                if frame == start:
                    found.append(f'{start} is its own ancestor (a loop)')
                    break
                if frame in seen:
                    break
                seen.add(frame)
        return found


def message_type(name: str) -> Any:
    """Return the message class of a type name ``pkg/msg/Name`` (rosidl_runtime_py's job)."""
    package, kind, cls = name.split('/')
    module = importlib.import_module(f'{package}.{kind}')
    return getattr(module, cls)


@dataclass
class FrameWatcher:
    """Subscribes to every topic a node discovers and records the frames each one carries.

    Each subscription takes the reliability and durability of the topic's first publisher, so
    latched topics (``/tf_static``, a mission's path) arrive even when published before.
    """

    node: Any
    ignore: tuple[str, ...] = ('/rosout', '/parameter_events')
    tree: FrameTree = field(default_factory=FrameTree)
    frames: dict[str, set[str]] = field(default_factory=dict)    # frame -> topics
    _subs: dict[str, Any] = field(default_factory=dict)

    def discover(self) -> None:
        """Subscribe to topics that appeared since the last call."""
        from rclpy.qos import QoSProfile

        for topic, types in self.node.get_topic_names_and_types():
            if topic in self._subs or topic in self.ignore or not types:
                continue
            publishers = self.node.get_publishers_info_by_topic(topic)
            if not publishers:
                continue
            offered = publishers[0].qos_profile
            qos = QoSProfile(depth=10, reliability=offered.reliability,
                             durability=offered.durability)
            try:
                msg_type = message_type(types[0])
            except (ImportError, AttributeError, ValueError):
                continue   # a type this process cannot import carries no frame we can read
            callback = (self.tree.add if types[0] == 'tf2_msgs/msg/TFMessage'
                        else self._recorder(topic))
            self._subs[topic] = self.node.create_subscription(msg_type, topic, callback, qos)

    def _recorder(self, topic: str) -> Callable[[Any], None]:
        def record(msg: Any) -> None:
            for frame in frame_ids(msg):
                self.frames.setdefault(frame, set()).add(topic)
        return record

    def unconnected(self, root: str) -> dict[str, set[str]]:
        """Return each published frame TF does not connect to ``root``, with its topics."""
        missing = self.tree.unconnected(self.frames, root)
        return {frame: self.frames[frame] for frame in sorted(missing)}
