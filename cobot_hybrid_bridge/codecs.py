"""ROS messages to plain data and to the JSON the cloud reads. No ROS import: duck typing.

Generated ROS 2 Python messages expose ``get_fields_and_field_types()``; :func:`message_to_dict`
walks them: nested messages become objects, sequences become lists, ``uint8[]``/``byte[]``
(image data, for example) become base64 text, which the bridge wraps in the contract's uplink
envelope (:mod:`cobot_hybrid_protocol.envelope`).
"""

from __future__ import annotations

import array
import base64
import math
from typing import Any

__all__ = ['message_to_dict', 'to_plain']


def to_plain(value: Any) -> Any:
    """Convert a field value (message, sequence, bytes, numpy array...) to JSON-able data."""
    if hasattr(value, 'get_fields_and_field_types'):
        return message_to_dict(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, array.array):
        if value.typecode in ('B', 'b'):
            return base64.b64encode(value.tobytes()).decode()
        return [to_plain(v) for v in value.tolist()]
    if hasattr(value, 'tolist') and hasattr(value, 'dtype'):  # numpy arrays and scalars
        if getattr(value, 'dtype', None) is not None and str(value.dtype) == 'uint8' \
                and getattr(value, 'ndim', 0) > 0:
            return base64.b64encode(value.tobytes()).decode()
        return to_plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


def message_to_dict(msg: Any) -> dict[str, Any]:
    """Fields of a ROS message as a dict (recursively)."""
    return {name: to_plain(getattr(msg, name)) for name in msg.get_fields_and_field_types()}
