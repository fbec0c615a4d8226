"""The cloud's second look at a snapshot: a bigger input, a flipped pass, the backbone's embedding.

A robot sends a snapshot when it stops for a person (:mod:`cobot_hybrid_protocol.snapshot`:
the JPEG, the trigger, and the detections the robot had). The edge runs YOLO11n-pose at 320
or 640 to keep its stop latency; here, where latency does not matter, the same model family
runs at several input sizes (640 and 1280 by default: far people become big enough, near ones
stay whole) with test-time augmentation (the image and its mirror), all passes merged by NMS
(and a box mostly inside a surer one of the same class dropped: an upscaled near person is
often found twice, as a whole and as a part), and the result is compared with the edge's:

* ``missed``: people the cloud finds (score >= ``person_score``) that no edge detection
  overlaps (IoU >= ``match_iou``, or the cloud box mostly inside an edge box): what the edge
  did not see;
* ``false_alarms``: edge people that no cloud detection (score >= ``conf``) overlaps;
* ``verdict``: ``agree``, ``edge_missed_people``, ``edge_false_alarm`` or ``both``;
  ``no_edge_context`` when the snapshot carries no detections of the robot's (nothing to
  compare with: no advisory goes).

The result also carries ``embedding``: the mean over both passes at the first size of the
globally pooled
output of the backbone's last block (``embed_layer``, 256 floats for YOLO11n), L2-normalised,
for the worker's similarity index. The embedding model is the detector's own ONNX file with
that tensor added as a second output (written once beside the model, in the cache), so one
inference gives both.

:func:`make_job` is the ``snapshot`` job of ``cobot-hybrid worker`` (entry point group
``cobot_hybrid.jobs``). Pure: no ROS, no MQTT.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from cobot_hybrid_perception.detector import Detector, DetectorConfig
from cobot_hybrid_perception.errors import ConfigError, ModelLoadError
from cobot_hybrid_perception.models import model_cache_dir, resolve_model
from cobot_hybrid_perception.runtime_bench import box_iou
from cobot_hybrid_perception.yolo_decode import Detections, batched_nms, decode
from cobot_hybrid_protocol.errors import PayloadError, SchemaError
from cobot_hybrid_protocol.offload import Job, JobInputError, Upload
from cobot_hybrid_protocol.settings import check_settings, from_options, setting
from cobot_hybrid_protocol.snapshot import parse_snapshot

__all__ = ['AnalysisConfig', 'SnapshotAnalyser', 'SnapshotJob', 'augment', 'decode_jpeg',
           'edge_people', 'embedding_model', 'make_job']

#: The output of YOLO11's last backbone block (C2PSA, stride 32) in an Ultralytics export.
DEFAULT_EMBED_LAYER = '/model.10/cv2/act/Mul_output_0'
MAX_EDGE_DETECTIONS = 1000


@dataclass(frozen=True)
class AnalysisConfig:
    """The snapshot job's options (``cobot-hybrid worker --option name=value``)."""

    model: str = setting('default', 'default (YOLO11n-pose from the model cache) or an '
                         '.onnx path')
    sizes: tuple[int, ...] = setting((640, 1280), 'network input sizes, each a pass (the '
                                     'default model: cached exports at these sizes, made by '
                                     '`make setup`); the embedding comes from the first',
                                     unit='px', array_type='integer')
    tta: bool = setting(True, 'also run the mirrored image and merge both (test-time '
                        'augmentation)')
    conf: float = setting(0.25, 'lowest score the cloud keeps', low=0.0, high=1.0)
    iou: float = setting(0.45, 'NMS IoU threshold', low=0.0, high=1.0)
    person_score: float = setting(0.5, 'a cloud detection at least this sure, that no edge '
                                  'detection overlaps, is a person the edge missed',
                                  low=0.0, high=1.0)
    match_iou: float = setting(0.3, 'edge and cloud boxes overlapping this much are the same '
                               'person', low=0.0, high=1.0)
    person_class: str = setting('person', 'the class that is a person')
    embed_layer: str = setting(DEFAULT_EMBED_LAYER, 'the tensor pooled into the embedding '
                               "(the backbone's last block)")
    backend: str = setting('ort-cpu', 'inference runtime (ort-cuda on a GPU node; the '
                           'embedding output needs an ONNX Runtime backend)',
                           choices=('ort-cpu', 'ort-cuda'))
    threads: int = setting(0, 'CPU inference threads (0: the runtime default)', low=0,
                           high=256)
    max_pixels: int = setting(40_000_000, 'larger images are refused', unit='px', low=1)

    def __post_init__(self) -> None:
        check_settings(self, ConfigError)
        if not self.sizes or len(self.sizes) > 4 \
                or any(size % 32 or not 32 <= size <= 4096 for size in self.sizes):
            raise ConfigError(f'sizes {list(self.sizes)}: give 1-4 multiples of 32 in 32..4096')


def _writable_cache(cache: Path) -> Path:
    """``cache``, or a per-user cache under $XDG_CACHE_HOME or /tmp when it is read-only."""
    if os.access(cache, os.W_OK) or not cache.exists() and os.access(cache.parent, os.W_OK):
        return cache
    base = Path(os.environ.get('XDG_CACHE_HOME') or tempfile.gettempdir())
    return base / 'cobot_hybrid' / 'models'


def embedding_model(onnx_path: Path, layer: str, cache: Path | None = None) -> Path:
    """Return the model with ``layer`` as a second output (written once, into the cache).

    The model cache of an image is read-only: the file made at build time is used, or one
    is written under ``$XDG_CACHE_HOME`` (or /tmp).
    """
    source = Path(onnx_path)
    digest = hashlib.sha256(source.read_bytes() + layer.encode()).hexdigest()[:12]
    name = f'{source.stem}-embed-{digest}.onnx'
    home = cache or model_cache_dir()
    if (home / name).is_file():
        return home / name
    target = _writable_cache(home) / name
    if target.is_file():
        return target
    import onnx

    model = onnx.load(str(source))
    produced = {out for node in model.graph.node for out in node.output}
    if layer not in produced:
        raise ModelLoadError(f'{source.name} has no tensor {layer!r} to pool into an '
                             'embedding; set embed_layer to one of its intermediate outputs '
                             '(`python -c "import onnx; ..."` lists node outputs)')
    if layer not in {o.name for o in model.graph.output}:
        model.graph.output.append(onnx.helper.make_tensor_value_info(
            layer, onnx.TensorProto.FLOAT, None))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f'{name}.{os.getpid()}.part')   # replicas may race here
    onnx.save(model, str(partial))
    partial.replace(target)
    return target


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        return None
    return float(value)


def edge_people(context: Mapping[str, Any], person_class: str = 'person'
                ) -> list[list[float]]:
    """Return the person boxes (xyxy px) of a ``vision_msgs/Detection2DArray`` dict.

    Entries that are not well formed (missing fields, non-finite numbers, negative sizes)
    are skipped; at most :data:`MAX_EDGE_DETECTIONS` are read.
    """
    detections = context.get('detections')
    boxes: list[list[float]] = []
    if not isinstance(detections, list):
        return boxes
    for item in detections[:MAX_EDGE_DETECTIONS]:
        try:
            results = item['results']
            is_person = any(r['hypothesis']['class_id'] == person_class for r in results)
            bbox = item['bbox']
            cx, cy = _number(bbox['center']['position']['x']), \
                _number(bbox['center']['position']['y'])
            w, h = _number(bbox['size_x']), _number(bbox['size_y'])
        except (KeyError, TypeError):
            continue
        if not is_person or None in (cx, cy, w, h) or w < 0 or h < 0:   # type: ignore[operator]
            continue
        assert cx is not None and cy is not None and w is not None and h is not None
        boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return boxes


CONTAINED = 0.8      # a box this much inside a surer one of its class is a part of it


def _inside(a: list[list[float]], b: list[list[float]]) -> npt.NDArray[np.float64]:
    """Matrix of the share of each box of ``a`` (area) that lies inside each box of ``b``."""
    aa, bb = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(aa[:, None, 2], bb[None, :, 2])
                - np.maximum(aa[:, None, 0], bb[None, :, 0]), 0, None)
    h = np.clip(np.minimum(aa[:, None, 3], bb[None, :, 3])
                - np.maximum(aa[:, None, 1], bb[None, :, 1]), 0, None)
    area = (aa[:, 2] - aa[:, 0]) * (aa[:, 3] - aa[:, 1])
    share: npt.NDArray[np.float64] = (w * h) / (area[:, None] + 1e-9)
    return share


def _unmatched(a: list[list[float]], b: list[list[float]], threshold: float) -> list[int]:
    """Return the boxes of ``a`` that no box of ``b`` overlaps or holds.

    Overlaps: IoU >= threshold; holds: :data:`CONTAINED` of its area inside.
    """
    if not a:
        return []
    if not b:
        return list(range(len(a)))
    iou, inside = box_iou(np.array(a), np.array(b)), _inside(a, b)
    return [i for i in range(len(a))
            if float(iou[i].max()) < threshold and float(inside[i].max()) < CONTAINED]


class SnapshotAnalyser:
    """The detector at each size, with its embedding output, and the comparison with the edge."""

    def __init__(self, cfg: AnalysisConfig) -> None:
        self.cfg = cfg
        self.detectors: list[Detector] = []
        digest = hashlib.sha256()
        for size in cfg.sizes:
            source = resolve_model(cfg.model, size)
            digest.update(source.read_bytes())
            path = embedding_model(source, cfg.embed_layer)
            self.detectors.append(Detector(DetectorConfig(
                model=str(path), backend=cfg.backend, imgsz=size, conf=cfg.conf, iou=cfg.iou,
                threads=cfg.threads, max_det=300)))
        self.model_sha256 = digest.hexdigest()

    def close(self) -> None:
        """Release the runtimes."""
        for detector in self.detectors:
            detector.close()

    def _pass(self, detector: Detector, image: npt.NDArray[Any]
              ) -> tuple[Detections, npt.NDArray[np.float32]]:
        transform = detector.letterbox(image, 'bgr8')
        outputs = detector.backend.infer(detector.letterbox.tensor)
        if len(outputs) < 2:
            raise ModelLoadError('the embedding model returned no embedding output')
        found = decode(outputs[:1], detector.info, transform, self.cfg.conf, self.cfg.iou, 300)
        feature = np.asarray(outputs[1], np.float32)
        if feature.ndim != 4 or not np.isfinite(feature).all():
            raise ModelLoadError(f'embedding output of shape {feature.shape} is not a finite '
                                 'NCHW tensor')
        return found, feature.mean(axis=(2, 3))[0]

    def _detect(self, image: npt.NDArray[Any]
                ) -> tuple[list[dict[str, Any]], npt.NDArray[np.float32], int]:
        boxes, scores, classes, features = [], [], [], []
        views = [(False, image)]
        if self.cfg.tta:
            views.append((True, np.ascontiguousarray(image[:, ::-1])))
        width = float(image.shape[1])
        for n, detector in enumerate(self.detectors):
            for flipped, view in views:
                found, feature = self._pass(detector, view)
                b = found.boxes.copy()
                if flipped:
                    b[:, 0], b[:, 2] = width - found.boxes[:, 2], width - found.boxes[:, 0]
                boxes.append(b)
                scores.append(found.scores)
                classes.append(found.class_ids)
                if n == 0:
                    features.append(feature)
        names = self.detectors[0].info.names
        all_boxes, all_scores = np.concatenate(boxes), np.concatenate(scores)
        all_classes = np.concatenate(classes)
        keep = [int(i) for i in batched_nms(all_boxes, all_scores, all_classes, self.cfg.iou)]
        kept: list[int] = []
        for i in keep:   # best first: drop a box mostly inside a surer one of its class
            same = [j for j in kept if all_classes[j] == all_classes[i]]
            if same and float(_inside([all_boxes[i].tolist()],
                                      [all_boxes[j].tolist() for j in same]).max()) \
                    >= CONTAINED:
                continue
            kept.append(i)
        cloud = [{'class_name': names[int(all_classes[i])]
                  if 0 <= int(all_classes[i]) < len(names) else str(int(all_classes[i])),
                  'score': round(float(all_scores[i]), 4),
                  'bbox_xyxy': [round(float(v), 2) for v in all_boxes[i]]} for i in kept]
        return cloud, np.mean(features, axis=0), len(boxes)

    def analyse(self, image: npt.NDArray[Any], edge: list[list[float]]) -> dict[str, Any]:
        """Detect in a BGR image (every size, mirrored too when ``tta``); compare with edge.

        ``edge``: the person boxes the robot had (xyxy px).
        """
        cloud, feature, passes = self._detect(image)
        person = self.cfg.person_class
        sure = [d['bbox_xyxy'] for d in cloud if d['class_name'] == person
                and d['score'] >= self.cfg.person_score]
        seen = [d['bbox_xyxy'] for d in cloud if d['class_name'] == person]
        missed = [sure[i] for i in _unmatched(sure, edge, self.cfg.match_iou)]
        false_alarms = [edge[i] for i in _unmatched(edge, seen, self.cfg.match_iou)]
        verdict = {(False, False): 'agree', (True, False): 'edge_missed_people',
                   (False, True): 'edge_false_alarm', (True, True): 'both'}[
                       (bool(missed), bool(false_alarms))]
        norm = float(np.linalg.norm(feature))
        embedding = feature / norm if norm > 0 else feature
        return {'verdict': verdict, 'cloud_people': len(sure), 'edge_people': len(edge),
                'missed': missed, 'false_alarms': false_alarms, 'detections': cloud,
                'passes': passes, 'sizes': list(self.cfg.sizes),
                'model_sha256': self.model_sha256,
                'embedding': [round(float(v), 6) for v in embedding]}

    def embed(self, image: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """Return the L2-normalised embedding of a BGR image (first size; mirrored too: tta)."""
        detector = self.detectors[0]
        features = [self._pass(detector, image)[1]]
        if self.cfg.tta:
            features.append(self._pass(detector, np.ascontiguousarray(image[:, ::-1]))[1])
        feature = np.mean(features, axis=0)
        norm = float(np.linalg.norm(feature))
        result: npt.NDArray[np.float32] = (feature / norm if norm > 0 else feature).astype(
            np.float32)
        return result


def decode_jpeg(jpeg: bytes, max_pixels: int) -> npt.NDArray[Any]:
    """Decode JPEG bytes to BGR; JobInputError when they are not one or it is too large."""
    head = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    if head is None:
        raise JobInputError('the snapshot is not a JPEG OpenCV can read')
    if head.shape[0] * head.shape[1] * 64 > max_pixels:
        raise JobInputError(f'the snapshot is about {head.shape[1] * 8}x{head.shape[0] * 8} '
                            f'px, more than max_pixels {max_pixels}')
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise JobInputError('the snapshot is not a JPEG OpenCV can read')
    return image


def augment(image: npt.NDArray[Any], rng: np.random.Generator) -> npt.NDArray[Any]:
    """Return a near-duplicate of a BGR image: cropped, mirrored, lit, turned, re-encoded."""
    h, w = image.shape[:2]
    scale = rng.uniform(0.85, 1.0)
    ch, cw = max(8, int(h * scale)), max(8, int(w * scale))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = image[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    turn = cv2.getRotationMatrix2D((cw / 2, ch / 2), float(rng.uniform(-8, 8)), 1.0)
    out = cv2.warpAffine(np.ascontiguousarray(out), turn, (cw, ch),
                         borderMode=cv2.BORDER_REFLECT)
    out = cv2.convertScaleAbs(out, alpha=float(rng.uniform(0.75, 1.25)),
                              beta=float(rng.uniform(-25, 25)))
    noisy = out.astype(np.float32) + rng.normal(0, rng.uniform(0, 8), out.shape)
    out = np.clip(noisy, 0, 255).astype(np.uint8)
    quality = int(rng.integers(40, 95))
    ok, jpeg = cv2.imencode('.jpg', out, [cv2.IMWRITE_JPEG_QUALITY, quality])
    decoded = cv2.imdecode(jpeg, cv2.IMREAD_COLOR) if ok else None
    return decoded if decoded is not None else out


class SnapshotJob:
    """The ``snapshot`` job: a snapshot upload in, the cloud's analysis out."""

    def __init__(self, cfg: AnalysisConfig) -> None:
        self.cfg = cfg
        self.analyser = SnapshotAnalyser(cfg)   # this thread's; others make their own
        self._local = threading.local()
        self._local.analyser = self.analyser

    @property
    def _analyser(self) -> SnapshotAnalyser:
        """Return the calling thread's analyser.

        A detector holds one input buffer and one output binding: two threads on one would
        overwrite each other's frames.
        """
        analyser = getattr(self._local, 'analyser', None)
        if analyser is None:
            analyser = self._local.analyser = SnapshotAnalyser(self.cfg)
        return analyser

    def __call__(self, upload: Upload) -> dict[str, Any]:
        """Analyse one upload (JobInputError: it is not a snapshot this job can read)."""
        cfg = self.cfg
        try:
            snapshot = parse_snapshot(upload.payload)
        except (PayloadError, SchemaError) as exc:
            raise JobInputError(str(exc)) from None
        if snapshot.envelope.robot_id != upload.robot_id:
            raise JobInputError(f'the snapshot says robot {snapshot.envelope.robot_id!r}, its '
                                f'topic {upload.robot_id!r}')
        image = decode_jpeg(snapshot.jpeg, cfg.max_pixels)
        if (image.shape[1], image.shape[0]) != (snapshot.width, snapshot.height):
            raise JobInputError(f'the JPEG is {image.shape[1]}x{image.shape[0]} px, its header '
                                f'says {snapshot.width}x{snapshot.height}')
        edge: list[list[float]] = []
        context_age = None
        for entry in snapshot.context.values():
            if 'detections' in entry['data']:
                edge.extend(edge_people(entry['data'], cfg.person_class))
                context_age = round(snapshot.image_stamp - float(entry['stamp']), 3)
        result = self._analyser.analyse(image, edge)
        if context_age is None:   # nothing to compare with: not a verdict on the edge
            result.update(verdict='no_edge_context', missed=[], false_alarms=[])
        result.update({'trigger': snapshot.trigger, 'image_stamp': snapshot.image_stamp,
                       'edge_context_age_s': context_age,
                       'edge_context': bool(snapshot.context)})
        return result

    def embed(self, image_bytes: bytes, variants: int = 0, seed: int = 0
              ) -> list[tuple[str, list[float]]]:
        """Embed an image file's bytes and ``variants`` augmentations of it.

        ``('', vector)`` first, then ``('~<n>', vector)``: the reference database.
        """
        image = decode_jpeg(image_bytes, self.cfg.max_pixels)
        rng = np.random.default_rng(seed)
        analyser = self._analyser
        out = [('', analyser.embed(image).tolist())]
        for n in range(variants):
            out.append((f'~{n + 1}', analyser.embed(augment(image, rng)).tolist()))
        return out


def make_job(options: Mapping[str, str]) -> Job:
    """Build the ``snapshot`` job (entry point ``cobot_hybrid.jobs``)."""
    return SnapshotJob(from_options(AnalysisConfig, options, ConfigError))
