"""ROS 2 bags written and read with ``rosbags``: no rclpy, no ROS message module, no DDS.

Messages travel as serialized CDR, so the recorder never converts what it hears and the
replay reads a bag offline. Bags are written in **MCAP** storage: the default of ``ros2 bag``
since Iron (a Kilted ``ros2 bag info/play`` and Foxglove open them as they are), one file that
carries every message definition it needs, and written in chunks as it goes (rosbags' sqlite3
writer holds every message in one transaction until close).

The typestore is the Kilted store plus the definitions installed under
``<prefix>/share/<package>/msg/*.msg`` for the packages it lacks (:data:`EXTRA_PACKAGES`:
ours and vision_msgs). Reading is hostile: a missing, truncated or corrupt bag, a topic of a
type the store does not know, a definition that differs from ours, a message over
``max_message_bytes`` or one that does not deserialize is a :class:`BagError` naming it.

Hierarchy::

    RosHelperError (cobot_hybrid_ros.errors)
      BagError     a bag cannot be written or read as asked (the message says which and why)
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cobot_hybrid_ros.errors import RosHelperError

__all__ = ['EXTRA_PACKAGES', 'MAX_MESSAGE_BYTES', 'MAX_TOPICS', 'BagError', 'BagMessage',
           'BagWriter', 'bag_topics', 'make_typestore', 'msg_dirs', 'read_messages']

#: Interface packages the Kilted store of rosbags lacks; their .msg files are registered.
EXTRA_PACKAGES = ('vision_msgs', 'cobot_hybrid_msgs')
#: Largest serialized message written or read (a 1080p 32FC1 depth image is 8.3 MB).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Most topics in one bag.
MAX_TOPICS = 64
#: Most messages read from one bag (a 10 min run at ~2 kHz over every topic).
MAX_MESSAGES = 2_000_000
#: Bytes of the messages asked for, all together: a replay holds them all in memory.
MAX_TOTAL_BYTES = 4 * 1024**3
_MSG_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_]*/msg/[A-Z][A-Za-z0-9]*$')
_MAX_MSG_FILE = 64 * 1024


class BagError(RosHelperError, ValueError):
    """A bag cannot be written or read as asked (the message says which and why)."""


def msg_dirs(packages: Iterable[str] = EXTRA_PACKAGES) -> dict[str, Path]:
    """Where each package's installed ``msg/`` folder is (the venv, then AMENT_PREFIX_PATH)."""
    prefixes = [Path(sys.prefix)] + [Path(p) for p in
                                     os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep)
                                     if p]
    found: dict[str, Path] = {}
    for package in packages:
        for prefix in prefixes:
            folder = prefix / 'share' / package / 'msg'
            if folder.is_dir():
                found[package] = folder
                break
        else:
            raise BagError(f'no installed definitions of {package} (looked for share/{package}'
                           f'/msg under {", ".join(str(p) for p in prefixes)}); run `make '
                           'setup`, or source the workspace that builds it')
    return found


def make_typestore(packages: Iterable[str] = EXTRA_PACKAGES) -> Any:
    """Return the Kilted typestore plus the installed .msg definitions of ``packages``."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    from rosbags.typesys.base import TypesysError

    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for package, folder in msg_dirs(packages).items():
        for path in sorted(folder.glob('*.msg')):
            if path.stat().st_size > _MAX_MSG_FILE:
                raise BagError(f'{path}: a message definition over {_MAX_MSG_FILE} bytes; '
                               'is this file really a .msg?')
            try:
                types.update(get_types_from_msg(path.read_text(), f'{package}/msg/{path.stem}'))
            except (TypesysError, UnicodeDecodeError) as exc:
                raise BagError(f'{path}: not a readable message definition ({exc}); '
                               'reinstall the package (make setup)') from None
    try:
        store.register(types)
    except TypesysError as exc:
        raise BagError(f'the definitions of {", ".join(packages)} do not fit the Kilted '
                       f'store: {exc}') from None
    return store


@dataclass(frozen=True)
class BagMessage:
    """One message read back: topic, type, when the recorder got it [ns], the message."""

    topic: str
    msgtype: str
    log_time_ns: int
    msg: Any   # a rosbags dataclass with the message's fields (header.stamp.sec, ...)


class BagWriter:
    """Write serialized messages into a new MCAP bag; use as a context manager.

    The bag is closed (metadata.yaml written) on leaving the context, also after an error.
    """

    def __init__(self, path: Path, typestore: Any,
                 max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.path = Path(path)
        if self.path.exists():
            raise BagError(f'{self.path} exists already; name a new bag (it is a folder)')
        self._store = typestore
        self._max = max_message_bytes
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST,
                              storage_plugin=StoragePlugin.MCAP)
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.refused: dict[str, int] = {}   # messages over max_message_bytes, per topic
        self._open = False

    def __enter__(self) -> BagWriter:
        from rosbags.rosbag2 import WriterError

        try:
            self._writer.open()
        except (WriterError, OSError) as exc:
            raise BagError(f'cannot create the bag {self.path}: {exc}') from None
        self._open = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Add a topic of ``msgtype`` (``pkg/msg/Name``) the store knows."""
        if topic in self._connections:
            raise BagError(f'topic {topic} added twice')
        if len(self._connections) >= MAX_TOPICS:
            raise BagError(f'more than {MAX_TOPICS} topics in one bag')
        check_type(self._store, msgtype, topic)
        self._connections[topic] = self._writer.add_connection(topic, msgtype,
                                                               typestore=self._store)
        self.counts[topic] = 0

    def write(self, topic: str, log_time_ns: int, data: bytes) -> bool:
        """Write one serialized message; False (and counted) when it is over the size limit."""
        if len(data) > self._max:
            self.refused[topic] = self.refused.get(topic, 0) + 1
            return False
        self._writer.write(self._connections[topic], int(log_time_ns), data)
        self.counts[topic] += 1
        return True

    def close(self) -> None:
        """Finish the bag (idempotent)."""
        if self._open:
            self._open = False
            self._writer.close()


def check_type(typestore: Any, msgtype: str, topic: str) -> None:
    """BagError unless ``msgtype`` is a message type name the store holds."""
    if not _MSG_NAME.match(msgtype):
        raise BagError(f'topic {topic}: {msgtype[:80]!r} is not a message type name '
                       '(pkg/msg/Name)')
    if msgtype not in typestore.fielddefs:
        raise BagError(f'topic {topic}: type {msgtype} is unknown here (not in the Kilted store '
                       f'nor in {", ".join(EXTRA_PACKAGES)}); install its package')


def _open_reader(path: Path) -> Any:
    from rosbags.rosbag2 import Reader, ReaderError

    if not path.exists():
        raise BagError(f'no bag at {path}')
    try:
        reader = Reader(path)
        reader.open()
    except (ReaderError, OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise BagError(f'{path} is not a readable ROS 2 bag ({type(exc).__name__}: '
                       f'{str(exc)[:200]}); it may be truncated (a recorder killed before '
                       'closing it) or not a bag') from None
    except Exception as exc:  # noqa: BLE001 - rosbags' storage readers raise anything on junk
        raise BagError(f'{path} is not a readable ROS 2 bag ({type(exc).__name__}: '
                       f'{str(exc)[:200]})') from None
    return reader


def bag_topics(path: Path) -> dict[str, tuple[str, int]]:
    """Topic -> (type, message count) of a bag."""
    reader = _open_reader(Path(path))
    try:
        return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
    finally:
        reader.close()


def read_messages(path: Path, typestore: Any, topics: Mapping[str, Sequence[str]],
                  max_message_bytes: int = MAX_MESSAGE_BYTES,
                  max_messages: int = MAX_MESSAGES,
                  max_total_bytes: int = MAX_TOTAL_BYTES) -> Iterator[BagMessage]:
    """Deserialized messages of ``topics`` (topic -> accepted types), in the bag's order.

    Topics of the bag not asked for are skipped unread; one asked for with another type, a
    definition unlike ours, an oversized or undeserializable message is a BagError.
    """
    path = Path(path)
    reader = _open_reader(path)
    try:
        wanted = []
        for conn in reader.connections:
            if conn.topic not in topics:
                continue
            if conn.msgtype not in topics[conn.topic]:
                raise BagError(f'{path}: topic {conn.topic} holds {conn.msgtype}; expected '
                               f'{" or ".join(topics[conn.topic])}')
            check_type(typestore, conn.msgtype, conn.topic)
            ours = typestore.hash_rihs01(conn.msgtype)
            if conn.digest and conn.digest != ours:
                raise BagError(f'{path}: topic {conn.topic} was recorded with another '
                               f'definition of {conn.msgtype} ({conn.digest[:20]}... here '
                               f'{ours[:20]}...); replay with the interfaces it was recorded '
                               'with')
            wanted.append(conn)
        if not wanted:
            return
        count = total = 0
        messages = reader.messages(connections=wanted)
        while True:
            try:
                item = next(messages)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - a storage reader on a corrupt file
                raise BagError(f'{path}: reading stopped after {count} messages '
                               f'({type(exc).__name__}: {str(exc)[:200]}); the bag is '
                               'truncated or corrupt') from None
            conn, log_time_ns, data = item
            count += 1
            if count > max_messages:
                raise BagError(f'{path}: more than {max_messages} messages of the topics '
                               'asked for; split the bag')
            if len(data) > max_message_bytes:
                raise BagError(f'{path}: message {count} on {conn.topic} is {len(data)} bytes '
                               f'(more than {max_message_bytes}); not read')
            total += len(data)
            if total > max_total_bytes:
                raise BagError(f'{path}: the topics asked for hold more than '
                               f'{max_total_bytes} bytes (at message {count}); split the bag '
                               'or record fewer topics (depth images are the large ones)')
            try:
                msg = typestore.deserialize_cdr(data, conn.msgtype)
            except Exception as exc:  # noqa: BLE001 - any junk in CDR
                raise BagError(f'{path}: message {count} on {conn.topic} ({conn.msgtype}) does '
                               f'not deserialize ({type(exc).__name__}: {str(exc)[:120]}); '
                               'the bag is corrupt') from None
            yield BagMessage(conn.topic, conn.msgtype, int(log_time_ns), msg)
    finally:
        reader.close()
