"""What a PUBACK means for a queued message: the link's reason-code policy, without a broker.

MQTT 5 PUBACK reason codes: below 0x80 the broker took the message; 0x10 (no matching
subscribers) means it took it and gave it to nobody, which the link treats as "try again
later" (``retry_no_subscribers``, not for retained messages: the broker keeps those for the
next subscriber); 0x80 and above are refusals (not authorised, payload format, quota, topic
invalid...), for good. With ``delivery: cloud`` a QoS 1+ message the broker took still waits
for the cloud's acknowledgement, re-sent after ``cloud_ack_timeout_s``, doubling each time,
at most :data:`MAX_CLOUD_TIMEOUT_S`.
"""

from __future__ import annotations

from enum import Enum

__all__ = ['MAX_CLOUD_TIMEOUT_S', 'NO_MATCHING_SUBSCRIBERS', 'Settle', 'cloud_timeout',
           'settle']

NO_MATCHING_SUBSCRIBERS = 0x10
MAX_CLOUD_TIMEOUT_S = 600.0


class Settle(Enum):
    """What to do with a message once the broker answered."""

    DELIVERED = 'delivered'        # done: remove it from the queue
    RETRY = 'retry'                # publish it again after the retry delay
    REFUSED = 'refused'            # the broker will never take it: drop it, counted
    AWAIT_CLOUD = 'await_cloud'    # the broker has it; keep it until the cloud stored it


def settle(code: int, *, qos: int, retain: bool, retry_no_subscribers: bool,
           cloud: bool) -> Settle:
    """Return what a PUBACK (or QoS 0 write) with reason ``code`` means for one message."""
    if code == NO_MATCHING_SUBSCRIBERS and retry_no_subscribers and not retain:
        return Settle.RETRY
    if code >= 0x80:
        return Settle.REFUSED
    if cloud and qos > 0:
        return Settle.AWAIT_CLOUD
    return Settle.DELIVERED


def cloud_timeout(base_s: float, resends: int) -> float:
    """Return how long to wait for the cloud after ``resends`` re-sends (doubling, capped)."""
    return min(MAX_CLOUD_TIMEOUT_S, base_s * 2.0 ** resends)
