"""MQTT 5 user properties packed by hand: the uplink's robot id, seq and stamp. No paho.

paho only calls ``pack()`` on publish properties; its own ``Properties`` object costs ~30 us
per message to build and pack, a sixth of the uplink's per-message time. A
:class:`UserProperties` holds only user properties, packed once.
"""

from __future__ import annotations

import time

__all__ = ['UserProperties', 'pack_pair', 'unpack_pairs']

_USER_PROPERTY = 0x26


class UserProperties:
    """MQTT 5 PUBLISH properties holding only user properties, packed once, cheaply."""

    __slots__ = ('_packed',)

    def __init__(self, pairs: tuple[tuple[str, str], ...] = (), body: bytes = b'') -> None:
        body += b''.join(pack_pair(k, v) for k, v in pairs)
        length, prefix = len(body), b''
        while True:  # MQTT variable byte integer
            byte, length = length % 128, length // 128
            prefix += bytes([byte | (0x80 if length else 0)])
            if not length:
                break
        self._packed = prefix + body

    def pack(self) -> bytes:
        """Return the wire form (what paho writes)."""
        return self._packed

    @classmethod
    def for_message(cls, robot_id_pair: bytes, seq: int) -> UserProperties:
        """``robot_id`` (packed once by the caller), ``seq`` and ``stamp`` of one message."""
        return cls(body=robot_id_pair + pack_pair('seq', str(seq))
                   + pack_pair('stamp', f'{time.time():.6f}'))


def pack_pair(key: str, value: str) -> bytes:
    """Return one packed MQTT 5 user property."""
    k, v = key.encode(), value.encode()
    return bytes([_USER_PROPERTY]) + len(k).to_bytes(2, 'big') + k + len(v).to_bytes(2, 'big') + v




def unpack_pairs(packed: bytes) -> list[tuple[str, str]]:
    """Read back what :class:`UserProperties` packed (length prefix included); for tests."""
    length, shift, index = 0, 0, 0
    while True:
        byte = packed[index]
        length |= (byte & 0x7F) << shift
        index += 1
        shift += 7
        if not byte & 0x80:
            break
    body, pairs = packed[index:index + length], []
    while body:
        if body[0] != _USER_PROPERTY:
            raise ValueError(f'property 0x{body[0]:02x} is not a user property')
        key_len = int.from_bytes(body[1:3], 'big')
        key = body[3:3 + key_len].decode()
        value_len = int.from_bytes(body[3 + key_len:5 + key_len], 'big')
        value = body[5 + key_len:5 + key_len + value_len].decode()
        pairs.append((key, value))
        body = body[5 + key_len + value_len:]
    return pairs
