"""Other versions of an ONNX detector for rollout tests and the rollout demo.

``relabelled`` is the same network with one more metadata entry (another file and sha256,
the same outputs: a re-release); ``scaled_output`` multiplies one row of the output tensor
(a pose head's rows: 0-3 the box, 4 the person score, then the keypoints), e.g. shifting
every box (it disagrees with the original) or dimming every score (it sees nobody).
"""

from __future__ import annotations

from pathlib import Path


def relabelled(source: Path, target: Path, note: str) -> Path:
    """Save ``source`` with a ``release`` metadata entry ``note`` as ``target``."""
    import onnx

    model = onnx.load(str(source))
    entry = model.metadata_props.add()
    entry.key, entry.value = 'release', note
    onnx.save(model, str(target))
    return target


def scaled_output(source: Path, target: Path, row: int, factor: float) -> Path:
    """Save ``source`` with row ``row`` of its output multiplied by ``factor`` as ``target``."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    output = model.graph.output[0]
    rows = output.type.tensor_type.shape.dim[1].dim_value
    for node in model.graph.node:
        node.output[:] = ['raw_output' if o == output.name else o for o in node.output]
    scale = np.ones((1, rows, 1), np.float32)
    scale[0, row, 0] = factor
    model.graph.initializer.append(numpy_helper.from_array(scale, 'output_scale'))
    model.graph.node.append(helper.make_node('Mul', ['raw_output', 'output_scale'],
                                             [output.name]))
    onnx.save(model, str(target))
    return target
