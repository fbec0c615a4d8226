"""What an ONNX file says about itself, read once without its weights: metadata, INT8, shapes.

Backends that are not ONNX Runtime (OpenVINO, the LiteRT export) need the custom metadata
Ultralytics writes (``names``, ``kpt_shape``, ``task``, ``imgsz``); every CPU backend needs to
know whether the graph is a QDQ INT8 model (``QuantizeLinear``/``DequantizeLinear`` nodes, as
``cobot-hybrid quantize`` writes), so that its precision label says what really runs.
``onnx.load(load_external_data=False)`` reads the graph without tensors held outside the file;
when the ``onnx`` package is missing (a lean robot image), the metadata is left empty and the
op types are found by a byte scan for the two QDQ op names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cobot_hybrid_perception.backends.base import file_key
from cobot_hybrid_perception.errors import ModelLoadError

__all__ = ['OnnxFacts', 'QDQ_OPS', 'onnx_facts']

QDQ_OPS = frozenset({'QuantizeLinear', 'DequantizeLinear'})
_QUANTIZED_OPS = QDQ_OPS | {'QLinearConv', 'QLinearMatMul', 'ConvInteger', 'MatMulInteger'}


@dataclass(frozen=True)
class OnnxFacts:
    """The parts of an ONNX file a backend needs before it runs it."""

    metadata: dict[str, str] = field(default_factory=dict)
    int8: bool = False                                  # QDQ or QLinear/Integer ops present
    outputs: tuple[tuple[int | None, ...], ...] = ()    # static output shapes (None: dynamic)
    onnx_available: bool = True


_CACHE: dict[tuple[str, int, int, int, int], OnnxFacts] = {}


def onnx_facts(path: Path) -> OnnxFacts:
    """Metadata, INT8-ness and output shapes of an ONNX file (cached by its ``file_key``)."""
    key = file_key(path)
    if key not in _CACHE:
        _CACHE[key] = _read(path)
    return _CACHE[key]


def _read(path: Path) -> OnnxFacts:
    try:
        import onnx
    except ImportError:
        data = path.read_bytes()
        return OnnxFacts(int8=any(op.encode() in data for op in QDQ_OPS), onnx_available=False)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise ModelLoadError(f'{path} is not a readable ONNX model: {exc}') from None
    ops = {node.op_type for node in proto.graph.node}
    outputs = tuple(
        tuple(d.dim_value if d.HasField('dim_value') else None
              for d in out.type.tensor_type.shape.dim)
        for out in proto.graph.output)
    return OnnxFacts(metadata={p.key: p.value for p in proto.metadata_props},
                     int8=bool(ops & _QUANTIZED_OPS), outputs=outputs)
