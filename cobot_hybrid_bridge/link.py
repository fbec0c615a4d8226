"""The bridge's link seam: what the edge bridge needs of the thing that talks to the broker.

A link drains the outbox of :class:`~cobot_hybrid_bridge.bridge.EdgeBridge` to the broker and
hands it the commands that come down.

:class:`~cobot_hybrid_bridge.mqtt_link.MqttLink` (paho, our own socket loop and flow control)
is the production link; :class:`~cobot_hybrid_bridge.memory_link.MemoryLink` drains the
same queue into a :class:`~cobot_hybrid_protocol.transport.MemoryBroker` so core tests see
what was published, with the same acknowledgement rules (``broker``: the broker took it;
``cloud``: the cloud's ``delivered`` message) and no sockets.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from cobot_hybrid_bridge.durable_queue import DurableQueue
    from cobot_hybrid_bridge.mqtt_link import LinkConfig, LinkStats

__all__ = ['CommandHandler', 'Link', 'LinkFactory']

#: ``on_command(topic, payload, retained)``: called for every message on the command topics.
CommandHandler = Callable[[str, bytes, bool], None]


class Link(Protocol):
    """Drains a :class:`DurableQueue` to the broker; brings commands down."""

    stats: LinkStats

    def start(self) -> None:
        """Connect in the background and start sending."""

    def stop(self, timeout_s: float = 5.0) -> None:
        """Say offline and stop (what is not acknowledged stays queued)."""

    def wake(self) -> None:
        """Say that new messages were committed (any thread)."""


#: How :class:`EdgeBridge` makes its link: ``(config, queue, queue lock, on_command)``.
LinkFactory = Callable[['LinkConfig', 'DurableQueue', threading.Lock, CommandHandler], Link]
