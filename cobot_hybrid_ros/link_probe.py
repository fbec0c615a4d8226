"""Measure the link to an MQTT broker: round trip and uplink bandwidth (QoS 1 PUBACKs).

``probe(host, port)`` connects one paho client, publishes small QoS 1 messages one at a time
(the time to each PUBACK is a round trip through the broker) and then a few large ones (bytes
over the time to their PUBACKs is the uplink bandwidth). It publishes to
:data:`PROBE_TOPIC` only, outside the robots' topics, and retains nothing. A broker's PUBACK is
not delivery to a subscriber: these are the link's numbers, not the planner's.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from cobot_hybrid_ros.errors import RosHelperError

__all__ = ['PROBE_TOPIC', 'LinkProbeError', 'probe']

PROBE_TOPIC = 'cobot_hybrid/profile/probe'


class LinkProbeError(RosHelperError, ConnectionError):
    """The broker could not be reached or did not acknowledge in time."""


def probe(host: str, port: int, pings: int = 20, bulk_bytes: int = 256 * 1024,
          bulk_count: int = 4, timeout_s: float = 10.0, client: Any = None) -> dict[str, Any]:
    """Return ``{'rtt_s', 'uplink_bytes_per_s', 'source'}`` measured now.

    ``client``: a connected-on-demand paho-like client (tests); default a paho MQTT 3.1.1 one.
    """
    if client is None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id='',
                             protocol=mqtt.MQTTv311)
    acked: dict[int, float] = {}
    done = threading.Condition()

    def on_publish(_c: Any, _u: Any, mid: int, *_rest: Any) -> None:
        with done:
            acked[mid] = time.perf_counter()
            done.notify_all()
    client.on_publish = on_publish
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ValueError) as exc:   # ValueError: paho refuses the port or host
        raise LinkProbeError(f'cannot reach the broker at {host}:{port}: {exc}') from None
    client.loop_start()
    try:
        def send(payload: bytes) -> float:
            start = time.perf_counter()
            info = client.publish(PROBE_TOPIC, payload, qos=1)
            with done:
                if not done.wait_for(lambda: info.mid in acked, timeout=timeout_s):
                    raise LinkProbeError(f'no PUBACK from {host}:{port} within {timeout_s} s')
                return acked[info.mid] - start
        rtts = [send(b'x' * 64) for _ in range(pings)]
        bulk = sum(send(b'\0' * bulk_bytes) for _ in range(bulk_count))
    finally:
        client.disconnect()   # first: loop_stop alone waits for paho's keepalive
        client.loop_stop()
    rtt = statistics.median(rtts)
    # The time of a large publish is one round trip plus its bytes on the uplink.
    transfer = max(bulk - bulk_count * rtt, 1e-6)
    return {'rtt_s': rtt, 'rtt_max_s': max(rtts),
            'uplink_bytes_per_s': bulk_count * bulk_bytes / transfer,
            'source': f'QoS 1 probe of {host}:{port} ({pings} pings, {bulk_count} x '
                      f'{bulk_bytes // 1024} KiB)'}
