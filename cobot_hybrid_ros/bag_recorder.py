"""``cobot-hybrid record``: a node that writes topics, serialized as they come, into a bag.

Each topic is subscribed ``raw`` (the CDR bytes go to the bag untouched):

* ``NAME:pkg/msg/Type[:QOS]`` at once, before any publisher exists, so a recorder started
  first misses nothing. ``QOS`` is ``sensor`` (best effort, volatile: matches every
  publisher; the default), ``reliable`` or ``latched`` (reliable, transient local: the
  publisher's history too, e.g. ``safety_status``);
* ``NAME`` (no type) once it has a publisher, with the graph's type and the publishers' QoS
  (reliable only if every publisher is, transient local only if every publisher is: the
  strictest that still matches them all, as ``ros2 bag record`` does). What was published
  before that is not in the bag.
 The bag (:class:`cobot_hybrid_ros.bag.BagWriter`) is closed cleanly on SIGINT,
SIGTERM or after ``--duration``; every line the recorder prints starts with ``record:``.
"""

from __future__ import annotations

import importlib
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from cobot_hybrid_ros.bag import BagError, BagWriter, check_type, make_typestore

__all__ = ['TopicSpec', 'parse_topic', 'record']

#: Messages kept per topic while the recorder is busy (a 30 Hz stream for 30 s).
QUEUE_DEPTH = 1000


#: QoS a typed topic can be subscribed with at once (before its publishers are known).
QOS = {'sensor': QoSProfile(depth=QUEUE_DEPTH, reliability=ReliabilityPolicy.BEST_EFFORT,
                            durability=DurabilityPolicy.VOLATILE),
       'reliable': QoSProfile(depth=QUEUE_DEPTH, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.VOLATILE),
       'latched': QoSProfile(depth=QUEUE_DEPTH, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)}


@dataclass(frozen=True)
class TopicSpec:
    """A topic to record and, when given, its type (``pkg/msg/Name``) and QoS name."""

    name: str
    msgtype: str = ''
    qos: str = 'sensor'


def parse_topic(text: str) -> TopicSpec:
    """``NAME``, ``NAME:pkg/msg/Name`` or ``NAME:pkg/msg/Name:QOS`` -> TopicSpec."""
    name, _, rest = text.partition(':')
    msgtype, _, qos = rest.partition(':')
    if not name or len(text) > 300 or not all(c.isalnum() or c in '_/~' for c in name):
        raise BagError(f'--topics {text[:80]!r}: use NAME, NAME:pkg/msg/Type or '
                       'NAME:pkg/msg/Type:QOS (a ROS topic name: letters, digits, _ and /)')
    if qos and qos not in QOS:
        raise BagError(f'--topics {text[:80]!r}: QoS {qos[:20]!r}: use one of '
                       f'{", ".join(QOS)}')
    if qos and not msgtype:
        raise BagError(f'--topics {text[:80]!r}: a QoS needs the type before it')
    return TopicSpec(name, msgtype, qos or 'sensor')


def _message_class(msgtype: str) -> Any:
    package, _, name = msgtype.split('/')
    try:
        return getattr(importlib.import_module(f'{package}.msg'), name)
    except (ImportError, AttributeError):
        raise BagError(f'type {msgtype}: no Python message module here; install '
                       f'{package}') from None


def _qos(infos: list[Any]) -> QoSProfile:
    reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
    latched = all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=QUEUE_DEPTH,
                      reliability=ReliabilityPolicy.RELIABLE if reliable
                      else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched
                      else DurabilityPolicy.VOLATILE)


class _Recorder:
    def __init__(self, node: Node, writer: BagWriter, typestore: Any,
                 topics: list[TopicSpec]) -> None:
        self.node, self.writer, self.store = node, writer, typestore
        self.pending: dict[str, str] = {}
        self.subscriptions: list[Any] = []
        for spec in topics:
            topic = node.resolve_topic_name(spec.name)
            if topic in self.pending or topic in writer.counts:
                raise BagError(f'--topics names {topic} twice')
            if not spec.msgtype:
                self.pending[topic] = ''
                continue
            self._subscribe(topic, spec.msgtype, QOS[spec.qos])

    def _subscribe(self, topic: str, msgtype: str, qos: QoSProfile) -> None:
        check_type(self.store, msgtype, topic)
        cls = _message_class(msgtype)
        self.writer.add_topic(topic, msgtype)
        self.subscriptions.append(self.node.create_subscription(
            cls, topic, self._writer_for(topic), qos, raw=True))
        print(f'record: subscribed {topic} {msgtype} ({qos.reliability.name.lower()}, '
              f'{qos.durability.name.lower()})', flush=True)

    def subscribe_ready(self) -> None:
        """Subscribe each pending topic that has publishers now."""
        for topic in list(self.pending):
            infos = self.node.get_publishers_info_by_topic(topic)
            if not infos:
                continue
            types = sorted({i.topic_type for i in infos})
            del self.pending[topic]
            if len(types) != 1:
                print(f'record: {topic} is published as {", ".join(types)}; name the type to '
                      f'record with {topic}:pkg/msg/Type; not recorded', flush=True)
                continue
            self._subscribe(topic, types[0], _qos(infos))

    def _writer_for(self, topic: str) -> Any:
        def write(data: bytes) -> None:
            if not self.writer.counts[topic]:
                print(f'record: first message on {topic}', flush=True)
            if not self.writer.write(topic, self.node.get_clock().now().nanoseconds, data):
                print(f'record: {topic}: a {len(data)}-byte message over the size limit was '
                      'not recorded', flush=True)
        return write


def record(bag: Path, topics: list[TopicSpec], duration_s: float | None = None) -> dict[str,
                                                                                        int]:
    """Record ``topics`` into the new bag ``bag`` until SIGINT/SIGTERM or ``duration_s``.

    Returns the messages written per topic.
    """
    if not topics:
        raise BagError('no topics to record: give --topics NAME[:pkg/msg/Type] ...')
    if duration_s is not None and not 0 < duration_s <= 86400:
        raise BagError(f'--duration {duration_s}: use 0 < seconds <= 86400')
    store = make_typestore()
    stop = {'signal': ''}

    def on_signal(number: int, _frame: Any) -> None:
        stop['signal'] = signal.Signals(number).name

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = rclpy.create_node('cobot_hybrid_recorder')
        try:
            with BagWriter(bag, store) as writer:
                recorder = _Recorder(node, writer, store, topics)
                print(f'record: writing {bag} (mcap)', flush=True)
                end = None if duration_s is None else time.monotonic() + duration_s
                next_look = 0.0
                while not stop['signal'] and (end is None or time.monotonic() < end):
                    if recorder.pending and time.monotonic() >= next_look:
                        recorder.subscribe_ready()
                        next_look = time.monotonic() + 0.05
                    rclpy.spin_once(node, timeout_sec=0.02)
                for topic in recorder.pending:
                    print(f'record: {topic} had no publisher; not in the bag', flush=True)
                for sub in recorder.subscriptions:
                    node.destroy_subscription(sub)
                counts = dict(writer.counts)
            why = stop['signal'] or f'{duration_s} s'
            print(f'record: closed {bag} after {why}: ' + ', '.join(
                f'{t} {n}' for t, n in counts.items()), flush=True)
            return counts
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown()
        for number, handler in previous.items():
            signal.signal(number, handler)
        sys.stdout.flush()
