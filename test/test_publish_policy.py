"""The link's reason-code policy and its hand-packed user properties, without a broker."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cobot_hybrid_bridge.mqtt_properties import UserProperties, pack_pair, unpack_pairs
from cobot_hybrid_bridge.publish_policy import (
    MAX_CLOUD_TIMEOUT_S,
    NO_MATCHING_SUBSCRIBERS,
    Settle,
    cloud_timeout,
    settle,
)


@pytest.mark.parametrize(('code', 'qos', 'retain', 'retry', 'cloud', 'expected'), [
    (0x00, 1, False, True, False, Settle.DELIVERED),
    (0x00, 1, False, True, True, Settle.AWAIT_CLOUD),
    (0x00, 0, False, True, True, Settle.DELIVERED),       # QoS 0 is never acknowledged
    (NO_MATCHING_SUBSCRIBERS, 1, False, True, False, Settle.RETRY),
    (NO_MATCHING_SUBSCRIBERS, 1, True, True, False, Settle.DELIVERED),   # broker keeps it
    (NO_MATCHING_SUBSCRIBERS, 1, False, False, False, Settle.DELIVERED),
    (NO_MATCHING_SUBSCRIBERS, 1, False, False, True, Settle.AWAIT_CLOUD),
    (0x80, 1, False, True, True, Settle.REFUSED),         # unspecified error
    (0x87, 1, False, True, False, Settle.REFUSED),        # not authorised
    (0x97, 1, False, True, True, Settle.REFUSED),         # quota exceeded
    (0x99, 1, True, True, False, Settle.REFUSED),         # payload format invalid
])
def test_every_reason_code_has_one_meaning(code: int, qos: int, retain: bool, retry: bool,
                                           cloud: bool, expected: Settle) -> None:
    assert settle(code, qos=qos, retain=retain, retry_no_subscribers=retry,
                  cloud=cloud) is expected


def test_the_cloud_timeout_doubles_and_is_capped() -> None:
    assert [cloud_timeout(30.0, n) for n in range(4)] == [30.0, 60.0, 120.0, 240.0]
    assert cloud_timeout(30.0, 10) == MAX_CLOUD_TIMEOUT_S


@pytest.mark.parametrize('pairs', [
    (('robot_id', 'cobot-1'), ('seq', '42'), ('stamp', '1795790000.123456')),
    (('k', 'v' * 200),),                        # a length beyond one variable-length byte
    (('robot_id', 'ünïcode-robot'),),
    (),
])
def test_hand_packed_properties_are_what_paho_packs(pairs: tuple[tuple[str, str], ...]
                                                    ) -> None:
    ours = UserProperties(pairs).pack()
    theirs = Properties(PacketTypes.PUBLISH)
    if pairs:
        theirs.UserProperty = list(pairs)
    assert ours == theirs.pack()
    assert unpack_pairs(ours) == list(pairs)


def test_a_message_carries_its_robot_seq_and_stamp() -> None:
    packed = UserProperties.for_message(pack_pair('robot_id', 'cobot-7'), 9).pack()
    pairs = dict(unpack_pairs(packed))
    assert pairs['robot_id'] == 'cobot-7' and pairs['seq'] == '9'
    assert float(pairs['stamp']) > 1.7e9
