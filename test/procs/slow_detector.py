"""Child process: detector_node whose ONNX Runtime backend is made slow on purpose.

A fake for the one thing a test cannot choose on a real machine: how long inference takes.
``--delay-s`` is added to every ``infer`` of the real ``OnnxRuntimeBackend`` (the model still
runs, so the detections are real); the remaining arguments go to the node.
"""

import sys
import time

from cobot_hybrid_perception.backends import onnxruntime_backend
from cobot_hybrid_perception.nodes import detector_node

args = sys.argv[1:]
delay_s = 0.0
if '--delay-s' in args:
    at = args.index('--delay-s')
    delay_s = float(args[at + 1])
    del args[at:at + 2]
real_infer = onnxruntime_backend.OnnxRuntimeBackend.infer


def slow_infer(self, tensor):  # type: ignore[no-untyped-def]
    time.sleep(delay_s)
    return real_infer(self, tensor)


onnxruntime_backend.OnnxRuntimeBackend.infer = slow_infer  # type: ignore[method-assign]
detector_node.main(args)
