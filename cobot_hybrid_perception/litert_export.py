r"""Convert an ONNX model to a LiteRT ``.tflite`` with onnx2tf, offline. A script, not a module.

It runs in the export environment (``build/litert-export``: TensorFlow + onnx2tf, made by
``make litert-model``), never in the robot's, and imports nothing of cobot_hybrid::

    build/litert-export/bin/python -I cobot_hybrid_perception/litert_export.py \
        MODEL.onnx OUTPUT.tflite --calib CALIB.npy

``cobot-hybrid export MODEL.onnx --format litert`` calls it that way (``-I``: this folder's
modules must not shadow TensorFlow's imports) after writing ``CALIB.npy`` from the sample
photos. onnx2tf's habits, handled here: it downloads a calibration array unless one lies in
its working directory (we put ours there), it calls onnxsim unless told not to (``-nuo``; the
model is simplified at export already), and it rewrites its input ONNX in place, so a copy is
converted inside a temporary directory. The last line of stdout is JSON: the output's path and
the ``.tflite``'s input and output shapes, as the LiteRT interpreter reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

CALIB_NAME = 'calibration_image_sample_data_20x128x128x3_float32.npy'


def convert(onnx_path: Path, output: Path, calib: Path) -> dict[str, object]:
    """Write ``output`` (fp32 .tflite) from ``onnx_path``; return its shapes."""
    import onnx2tf
    from ai_edge_litert.interpreter import Interpreter

    with tempfile.TemporaryDirectory(prefix='litert-export-') as tmp:
        work = Path(tmp)
        shutil.copyfile(onnx_path, work / 'model.onnx')   # onnx2tf rewrites its input
        shutil.copyfile(calib, work / CALIB_NAME)          # else it downloads one
        cwd = os.getcwd()
        os.chdir(work)
        try:
            onnx2tf.convert(input_onnx_file_path='model.onnx', output_folder_path='out',
                            not_use_onnxsim=True, output_signaturedefs=True,
                            non_verbose=True)
        finally:
            os.chdir(cwd)
        produced = work / 'out' / 'model_float32.tflite'
        if not produced.is_file():
            raise SystemExit(f'onnx2tf wrote no model_float32.tflite for {onnx_path}')
        interpreter = Interpreter(model_path=str(produced))
        shapes = {'inputs': [d['shape'].tolist() for d in interpreter.get_input_details()],
                  'outputs': [d['shape'].tolist() for d in interpreter.get_output_details()]}
        output.parent.mkdir(parents=True, exist_ok=True)
        staged = output.with_name(output.name + '.part')
        shutil.copyfile(produced, staged)
        os.replace(staged, output)
    return {'output': str(output), **shapes}


def main() -> None:
    """Command line: ONNX in, .tflite out, JSON summary on the last line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('onnx', type=Path)
    parser.add_argument('output', type=Path)
    parser.add_argument('--calib', type=Path, required=True,
                        help="20x128x128x3 float32 .npy in 0..1 (onnx2tf's check data)")
    args = parser.parse_args()
    summary = convert(args.onnx.resolve(), args.output.resolve(), args.calib.resolve())
    sys.stdout.flush()
    print(json.dumps(summary))


if __name__ == '__main__':
    main()
