"""``detector_node``: YOLO detection (TensorRT / ONNX Runtime / Ultralytics), lifecycle node.

Subscribes ``image`` (``sensor_msgs/Image``) or, with ``input: compressed``,
``image/compressed`` (``sensor_msgs/CompressedImage``), best effort, depth 1, and
``camera_info`` (optional, for the rviz markers). Inference runs on a worker thread that always
takes the newest frame; frames replaced before the worker got to them are counted as dropped,
so latency never grows under overload.

Publishes, with the header of the image: ``detections`` (``vision_msgs/Detection2DArray``:
class id = class name, score, box centre and size in pixels, ``id`` the track id; an empty
array for a frame with nothing in it), ``keypoints`` (pose models; the keypoint convention in
the README; each entry has the ``id`` of its detection),
``detection_markers`` (``visualization_msgs/MarkerArray``: boxes on a plane
``marker_depth_m`` in front of the camera, needs ``camera_info``), ``annotated_image``
(``publish_annotated``) and ``diagnostics`` (per-stage latency, fps, dropped frames, backend,
precision, model hash), once per second and whenever the health changes.

The perception budget (:mod:`cobot_hybrid_perception.perception_budget`): the detector reads
``max_perception_age_s`` (and ``human_speed_far_mps``) from the safety monitor named by
``budget_from`` through its parameter service, measures each frame's capture-to-publish latency
and the period between frames, and publishes a second status, ``perception budget:
detector_node``: OK, WARN when the worst perception age leaves little margin or is over the
limit, ERROR when over it for seconds, with the numbers and the fix. At configure it times a
few warm-up frames, so a detector too slow for the limit is reported before the first image.
The budget status is advice: it never marks the detector unhealthy.

Track ids (``tracking``, :mod:`cobot_hybrid_perception.tracking`): ``<class>-<n>`` for a
confirmed track, ``new-<n>`` while it is tentative, ``det-<k>`` for a detection without a
track; with ``tracking: false`` the index in the frame. Every detection scoring ``conf`` or
more is published either way; the tracker is also fed the ones down to ``track_low_thresh``.
Time is the image stamp (the arrival time for an image stamped 0).

Model updates (``model_updates: true``, :mod:`cobot_hybrid_perception.model_manager`):
subscribes ``model_update`` (``std_msgs/String``, a ``LocalUpdate`` JSON from the bridge:
the signed command and the fetched file), publishes ``model_status`` (``std_msgs/String``
JSON of ``ModelStatus``, reliable, transient local) and ``model_metrics`` (``ModelMetrics``
JSON every ``metrics_period_s``). Updates are checked, loaded and smoke-tested on a thread of
their own; a version that passed is swapped in between two frames (a reference assignment
under the lock the frame worker holds per frame), so the pipeline never stops. At configure
a version the store holds as active runs instead of the ``model`` parameter (which stays the
fallback), after the crash-loop check.

Lifecycle: the model is loaded in ``on_configure`` (a failure is FAILURE with the reason),
frames flow while active, ``on_cleanup`` frees the runtime (GPU memory).
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.srv import GetParameters
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import ColorRGBA, Header, String
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
from visualization_msgs.msg import Marker, MarkerArray

from cobot_hybrid_perception.annotate import draw_detections
from cobot_hybrid_perception.detector import Detector, DetectorConfig
from cobot_hybrid_perception.detector_stats import DIAG_PERIOD_S, DetectorStats, diagnostics_due
from cobot_hybrid_perception.errors import ConfigError, PerceptionError
from cobot_hybrid_perception.frame_policy import for_inference
from cobot_hybrid_perception.model_info import COCO_KEYPOINTS
from cobot_hybrid_perception.model_manager import (
    MetricsWindow,
    ModelManager,
    ModelUpdateConfig,
    Prepared,
    SmokeFrames,
    detector_loader,
    factory_ref,
    reference_samples,
)
from cobot_hybrid_perception.model_store import ModelStore
from cobot_hybrid_perception.models import model_cache_dir, resolve_model
from cobot_hybrid_perception.perception_budget import AgeWindow, BudgetWatch, limit_problem
from cobot_hybrid_perception.tracking import (
    Tracker,
    TrackerConfig,
    TrackingError,
    decode_conf,
    track_detections,
    untracked_ids,
)
from cobot_hybrid_perception.yolo_decode import Detections
from cobot_hybrid_protocol.errors import KeyFileError
from cobot_hybrid_protocol.model_update import (
    ModelRef,
    ModelStatus,
    metrics_to_json,
    status_to_json,
)
from cobot_hybrid_protocol.settings import check_settings, same_as, setting
from cobot_hybrid_protocol.signing import load_public_keys
from cobot_hybrid_ros.diagnostics import diagnostic_array
from cobot_hybrid_ros.errors import ImageCodecError
from cobot_hybrid_ros.images import (
    compressed_to_numpy,
    image_to_numpy,
    numpy_to_image,
)
from cobot_hybrid_ros.params import ParameterBinding, refuse_unknown_parameters
from cobot_hybrid_ros.runner import AutostartSetting, autostart, run_node

_STATUS_NAME = 'detector_node: inference'
#: The budget's status: a name the safety monitor's detector-health prefix does not match.
_BUDGET_STATUS = 'perception budget: detector_node'
#: How often the monitor's limit is asked for again (it is a live parameter) [s].
_LIMIT_REFRESH_S = 5.0
#: Warm-up frames timed at configure (the first, lazy initialisation, is not counted).
_WARMUP_FRAMES = 4
#: Model updates waiting for the update thread; more are refused as busy.
_UPDATES_WAITING = 8
_STATUS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: The bridge keeps its newest update transient local: a detector that was down when the file
#: was handed over gets it when it comes back (the one it applied last is ignored, counted).
_UPDATE_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass(frozen=True)
class DetectorNodeConfig:
    """The shell's own parameters (the detector's are :class:`DetectorConfig`)."""

    input: str = setting('raw', 'raw: sensor_msgs/Image on image | compressed: '
                         'sensor_msgs/CompressedImage on image/compressed',
                         choices=('raw', 'compressed'))
    publish_annotated: bool = setting(False, 'publish annotated_image for rviz', live=True)
    marker_depth_m: float = setting(2.0, 'distance of the marker plane from the camera',
                                    unit='m', low=0.05, high=100.0, live=True)
    budget_from: str = setting('safety_monitor_node', 'the safety monitor whose '
                               'max_perception_age_s the latency + camera period is judged '
                               'against (a node name, relative to this namespace); empty: no '
                               'budget check')
    autostart: bool = same_as(AutostartSetting, 'autostart')

    def __post_init__(self) -> None:
        check_settings(self, ConfigError)


#: Every config whose settings this node declares (checked against config/*.yaml).
CONFIGS = (DetectorConfig, DetectorNodeConfig, TrackerConfig, ModelUpdateConfig)


class DetectorNode(LifecycleNode):
    """Lifecycle shell around :class:`Detector`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('detector_node', **kwargs)
        self._params = ParameterBinding(self, DetectorConfig,
                                        on_change=self._reconfigure)
        self._shell = ParameterBinding(self, DetectorNodeConfig)   # read where used
        self._tracking = ParameterBinding(self, TrackerConfig, on_change=self._retrack)
        self._updates = ParameterBinding(self, ModelUpdateConfig)   # all read-only
        refuse_unknown_parameters(self)   # a misspelt key is an error
        # One tracker for the node's life: its ids are never given twice, across
        # reconfigurations and tracking switched off and on.
        self._tracker = Tracker(self._tracking.config)
        self._track_lock = threading.Lock()   # the worker tracks, parameter changes reset
        self._track_errors = 0
        self._detector: Detector | None = None
        self._stats = DetectorStats()
        self._lock = threading.Condition()
        self._pending: Any = None
        self._running = False
        self._worker: threading.Thread | None = None
        self._entities: list[Any] = []
        self._camera_info: CameraInfo | None = None
        self._last_diag = 0.0
        self._budget = BudgetWatch(AgeWindow())
        self._limit: tuple[float, float] | None = None   # (max age, human speed) of the monitor
        self._limit_client: Any = None
        self._limit_future: Any = None
        self._limit_asked = -_LIMIT_REFRESH_S
        self._limit_at = -math.inf     # when the monitor last answered with a usable limit
        self._limit_problem = ''       # why its last answer was not usable
        # Frames: the worker holds this per frame (detector read + detect); a swap takes it.
        self._detect_lock = threading.Lock()
        self._seq = 0                  # frames received
        self._last_done: tuple[int, Any, float] | None = None   # seq, detector, publish time
        self._recent_lost: deque[int] = deque(maxlen=10)   # frames lost between two frames
        self._swap_info: dict[str, str] = {}
        # Model updates (model_updates: true): made at the first configure, kept for the life
        # of the node (its boot is the crash-loop check of this process start).
        self._manager: ModelManager | None = None
        self._frames: SmokeFrames | None = None
        self._metrics = MetricsWindow()
        self._running_ref: ModelRef | None = None
        self._update_queue: queue.Queue[str] = queue.Queue(maxsize=_UPDATES_WAITING)
        self._update_thread: threading.Thread | None = None
        self._updates_running = False
        self._update_sub: Any = None
        self._metrics_timer: Any = None
        self._boot_choice: ModelRef | None = None   # what the crash-loop check chose

    # --- lifecycle ---------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model into its backend (FAILURE with the reason when it cannot)."""
        cfg = self._params.config
        try:
            if self._updates.config.model_updates:
                self._start_updates()
            stored = self._load_stored()
            self._detector = stored[0] if stored else Detector(cfg)
        except (PerceptionError, KeyFileError, OSError) as exc:
            self.get_logger().error(f'cannot load the model: {exc}')
            self._stop_updates()
            return TransitionCallbackReturn.FAILURE
        d = self._detector
        if self._manager is not None:
            self._started(d, stored[1] if stored else None)
        warmup_s = self._warm_up(d)
        self._budget = BudgetWatch(AgeWindow(), startup_latency_s=warmup_s)
        self.get_logger().info(
            f'{d.model_path.name} ({d.model_hash}) on {d.backend.name} {d.backend.precision}, '
            f'input {d.info.imgsz}, task {d.info.task}, warm-up {1e3 * warmup_s:.1f} ms per '
            f'frame: {d.backend_reason}')
        budget_from = self._shell.config.budget_from
        if budget_from and self._limit_client is None:
            self._limit_client = self.create_client(GetParameters,
                                                    f'{budget_from}/get_parameters')
        self._det_pub = self.create_lifecycle_publisher(Detection2DArray, 'detections', 10)
        self._kp_pub = self.create_lifecycle_publisher(Detection2DArray, 'keypoints', 10)
        self._marker_pub = self.create_lifecycle_publisher(MarkerArray, 'detection_markers', 1)
        self._annotated_pub = self.create_lifecycle_publisher(Image, 'annotated_image', 1)
        self._diag_pub = self.create_lifecycle_publisher(DiagnosticArray, 'diagnostics', 10)
        self._tracker.reset()   # a new model may see other classes
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe and start the worker."""
        result = super().on_activate(state)
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        if self._shell.config.input == 'compressed':
            image_sub = self.create_subscription(CompressedImage, 'image/compressed',
                                                 self._on_image, qos)
        else:
            image_sub = self.create_subscription(Image, 'image', self._on_image, qos)
        self._entities = [image_sub, self.create_subscription(
            CameraInfo, 'camera_info', self._on_camera_info, qos_profile_sensor_data)]
        self._running = True
        self._worker = threading.Thread(target=self._work, name='detector', daemon=True)
        self._worker.start()
        self._diag_timer = self.create_timer(DIAG_PERIOD_S, self._publish_diagnostics)
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking frames."""
        self._stop_worker()
        for entity in self._entities:
            self.destroy_subscription(entity)
        self._entities = []
        self.destroy_timer(self._diag_timer)
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the runtime (GPU memory included) and the publishers."""
        self._stop_updates()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop and free everything."""
        self._stop_threads()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    # --- model updates -----------------------------------------------------------------------

    def _start_updates(self) -> None:
        """Make the manager (once), the topics and the update thread."""
        updates, cfg = self._updates.config, self._params.config
        log = self.get_logger()
        self._status_pub = self.create_publisher(String, 'model_status', _STATUS_QOS)
        self._metrics_pub = self.create_publisher(String, 'model_metrics', 10)
        if self._manager is None:
            keys = load_public_keys(updates.key_paths())
            if not keys:
                log.warning('model_updates is on but cloud_public_keys is empty: every model '
                            'command is refused')
            try:
                factory: Path | None = resolve_model(
                    cfg.model, cfg.imgsz or 640, '.tflite' if cfg.backend == 'litert'
                    else '.onnx')
            except PerceptionError:
                factory = None     # a stored version may still run; the fallback is missing
            store = ModelStore(updates.store_path(model_cache_dir()), updates.keep_versions)
            self._frames = SmokeFrames(updates.smoke_frames_kept)
            self._manager = ModelManager(
                store, keys, updates.robot_id,
                lambda path, ref: detector_loader(self._params.config)(path, ref),
                self._publish_status, self._frames, factory_model=factory)
            self._boot_choice = self._manager.boot()
            log.info(f'model updates on: store {store.root}, {len(store.known_good)} '
                     f'known-good, robot {updates.robot_id}, {len(keys)} cloud key(s)')
        self._update_sub = self.create_subscription(String, 'model_update', self._on_update,
                                                    _UPDATE_QOS)
        self._metrics_timer = self.create_timer(updates.metrics_period_s,
                                                self._publish_metrics)
        self._updates_running = True
        self._update_thread = threading.Thread(target=self._work_updates,
                                               name='model-updates', daemon=True)
        self._update_thread.start()

    def _load_stored(self) -> tuple[Detector, ModelRef] | None:
        """Load the store's active version, falling back past any that does not load."""
        manager = self._manager
        if manager is None:
            return None
        to_run = self._boot_choice or manager.store.active
        self._boot_choice = None
        while to_run is not None:
            try:
                path = manager.store.add_file(None, to_run)     # its hash, checked again
                detector = detector_loader(self._params.config)(path, to_run)
            except PerceptionError as exc:
                self.get_logger().error(f'stored model {to_run.label} does not load: {exc}')
                to_run = manager.active_failed(to_run, exc)
                continue
            self.get_logger().warning(
                f'running {to_run.label} from the model store {manager.store.root}: it '
                f'overrides the model parameter ({self._params.config.model}), which stays '
                'the fallback')
            return detector, to_run
        return None

    def _started(self, detector: Detector, stored: ModelRef | None) -> None:
        """Tell the manager what runs; keep the running model's boxes on the sample photos."""
        manager, frames = self._manager, self._frames
        assert manager is not None and frames is not None
        running = stored
        if running is None and detector.model_path == manager.factory_model:
            running = factory_ref(detector.model_path, manager.factory_sha256,
                                  detector.model_path.stat().st_size, detector.info.imgsz[0],
                                  detector.info.task, detector.backend.precision)
        if running is None:
            self.get_logger().warning(
                f'{detector.model_path.name} is not an ONNX file: model_metrics are not '
                'published and updates are judged without a reference name')
        self._running_ref = running
        sha = running.sha256 if running is not None else manager.factory_sha256
        frames.set_samples(reference_samples(detector, sha, detector.cfg.conf))
        self._metrics.reset()
        manager.started(running)

    def _on_update(self, msg: String) -> None:
        try:
            self._update_queue.put_nowait(msg.data)
        except queue.Full:
            assert self._manager is not None
            self._manager.busy(msg.data, _UPDATES_WAITING)

    def _work_updates(self) -> None:
        manager = self._manager
        assert manager is not None
        while self._updates_running:
            try:
                text = self._update_queue.get(timeout=0.5)
            except queue.Empty:
                manager.tick()
                continue
            prepared = manager.prepare(text)
            if prepared is not None:
                self._swap(prepared)
            manager.tick()

    def _swap(self, prepared: Prepared) -> None:
        """Put the candidate in between two frames; close the old model off the frame path."""
        manager = self._manager
        assert manager is not None
        candidate = prepared.candidate
        assert isinstance(candidate, Detector)   # what detector_loader builds
        with self._detect_lock:
            start = time.perf_counter()
            old, self._detector = self._detector, candidate
            self._running_ref = prepared.model
            swap_ms = 1e3 * (time.perf_counter() - start)
        if old is not None:
            # Live changes of conf, iou, max_det made while the candidate was checked.
            self._reconfigure(self._params.config)
        self._metrics.reset()
        status = manager.commit(prepared, swap_ms)
        self.get_logger().info(
            f'now running {prepared.model.label}: frame path held {swap_ms:.3f} ms, load '
            f'{prepared.load_ms:.0f} ms, smoke check {prepared.smoke_ms:.0f} ms, '
            f'{status.metrics}')
        self._swap_info = {'model_swap_ms': f'{swap_ms:.3f}',
                           'model_load_ms': f'{prepared.load_ms:.0f}',
                           'model_smoke_ms': f'{prepared.smoke_ms:.0f}'}
        if old is not None:
            old.close()

    def _publish_status(self, status: ModelStatus) -> None:
        pub = getattr(self, '_status_pub', None)
        if pub is not None:
            pub.publish(String(data=json.dumps(status_to_json(status))))

    def _publish_metrics(self) -> None:
        running, pub = self._running_ref, getattr(self, '_metrics_pub', None)
        if running is None or pub is None:
            return
        summary = self._metrics.summary(running)
        pub.publish(String(data=json.dumps(metrics_to_json(summary))))

    def _stop_updates(self) -> None:
        self._updates_running = False
        if self._update_thread is not None:
            self._update_thread.join(timeout=30.0)
            self._update_thread = None
        if self._update_sub is not None:
            self.destroy_subscription(self._update_sub)
            self._update_sub = None
        if self._metrics_timer is not None:
            self.destroy_timer(self._metrics_timer)
            self._metrics_timer = None
        for name in ('_status_pub', '_metrics_pub'):
            pub = getattr(self, name, None)
            if pub is not None:
                self.destroy_publisher(pub)
                setattr(self, name, None)

    def _stop_threads(self) -> None:
        self._stop_worker()
        self._stop_updates()

    @staticmethod
    def _warm_up(detector: Detector) -> float:
        """Time a few frames of a grey VGA image: the slowest, in seconds (NaN on failure)."""
        import numpy as np

        frame = np.full((480, 640, 3), 114, np.uint8)
        times = []
        try:
            for _ in range(_WARMUP_FRAMES + 1):
                start = time.perf_counter()
                detector.detect(frame)
                times.append(time.perf_counter() - start)
        except PerceptionError:
            return float('nan')   # the frames themselves will say what is wrong
        return max(times[1:])

    def _poll_limit(self) -> None:
        """Ask the safety monitor for its limit now and then; take the answer when it came."""
        client, future = self._limit_client, self._limit_future
        if client is None:
            return
        now = time.monotonic()
        if future is not None and future.done():
            self._limit_future = None
            self._take_limit(future.result(), now)
        elif future is not None and now - self._limit_asked >= _LIMIT_REFRESH_S:
            client.remove_pending_request(future)   # never answered (the monitor restarted)
            self._limit_future = None
        if self._limit_future is None and now - self._limit_asked >= _LIMIT_REFRESH_S \
                and client.service_is_ready():
            self._limit_asked = now
            self._limit_future = client.call_async(GetParameters.Request(
                names=['max_perception_age_s', 'human_speed_far_mps']))

    def _take_limit(self, response: Any, now: float) -> None:
        values = list(getattr(response, 'values', []) or [])
        source = self._shell.config.budget_from
        if len(values) == 2 and all(v.type == ParameterType.PARAMETER_DOUBLE for v in values):
            limit = (float(values[0].double_value), float(values[1].double_value))
            problem = limit_problem(*limit)
        else:
            limit, problem = None, ('answered without max_perception_age_s and '
                                    'human_speed_far_mps as doubles')
        if problem is None:
            self._limit, self._limit_at, self._limit_problem = limit, now, ''
            return
        self._limit, self._limit_problem = None, f'{source} {problem}'
        self.get_logger().warning(
            f'{source} {problem}: no perception budget check (set budget_from to the safety '
            'monitor node, or empty)', throttle_duration_sec=60.0)

    def _release(self) -> None:
        if self._detector is not None:
            self._detector.close()
            self._detector = None
        for name in ('_det_pub', '_kp_pub', '_marker_pub', '_annotated_pub', '_diag_pub'):
            pub = getattr(self, name, None)
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
                setattr(self, name, None)

    def _reconfigure(self, cfg: DetectorConfig) -> None:
        detector = self._detector
        if detector is not None:  # conf, iou, max_det apply from the next frame
            # A swapped-in version keeps its own file and size.
            detector.cfg = replace(cfg, model=detector.cfg.model, imgsz=detector.cfg.imgsz)

    def _retrack(self, cfg: TrackerConfig) -> None:
        with self._track_lock:
            if cfg.tracking and not self._tracker.cfg.tracking:
                self._tracker.reset()   # tracks from before it was off would be stale
            self._tracker.cfg = cfg     # applies from the next frame

    # --- frames ------------------------------------------------------------------------------

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _on_image(self, msg: Image | CompressedImage) -> None:
        arrived_s = self.get_clock().now().nanoseconds * 1e-9
        with self._lock:
            if self._pending is not None:
                self._stats.dropped += 1
            self._seq += 1
            self._pending = (msg, time.perf_counter(), arrived_s, self._seq)
            self._lock.notify()

    def _stop_worker(self) -> None:
        with self._lock:
            self._running = False
            self._lock.notify()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._running and self._pending is None:
                    self._lock.wait(timeout=0.5)
                if not self._running:
                    return
                msg, received, arrived_s, seq = self._pending
                self._pending = None
            try:
                self._process(msg, received, arrived_s, seq)
            except RCLError:
                if self.context.ok():
                    raise
                return  # shutting down (Ctrl-C): the context went away under the worker

    def _process(self, msg: Image | CompressedImage, received: float, arrived_s: float,
                 seq: int = 0) -> None:
        try:
            t0 = time.perf_counter()
            if isinstance(msg, CompressedImage):
                pixels, encoding = compressed_to_numpy(msg)
            else:
                pixels, encoding = image_to_numpy(msg), msg.encoding
            pixels, encoding = for_inference(pixels, encoding)
            convert_ms = 1e3 * (time.perf_counter() - t0)
            with self._detect_lock:   # a swap happens between two frames, never in one
                detector, running = self._detector, self._running_ref
                if detector is None:
                    return
                conf = detector.cfg.conf   # published; the tracker also takes lower scores
                detections, times = detector.detect(pixels, encoding,
                                                    conf=decode_conf(conf, self._tracker.cfg))
        except (PerceptionError, ImageCodecError) as exc:
            self._stats.fail(str(exc))
            self._metrics.error()
            self.get_logger().error(f'frame skipped: {exc}', throttle_duration_sec=2.0)
            self._publish_diagnostics(force=True)
            return
        self._stats.record(convert_ms, times, 1e3 * (time.perf_counter() - received))
        frames = self._frames
        if frames is not None and frames.offer(received):
            frames.add(pixels, encoding, detections, conf,
                       running.sha256 if running is not None else '', received)
        stamp = msg.header.stamp
        # The image stamp; an unstamped image (0) is timed by its arrival instead, else the
        # tracker's time would stand still and lost tracks never expire.
        now_s = stamp.sec + stamp.nanosec * 1e-9 if stamp.sec or stamp.nanosec else received
        try:
            with self._track_lock:
                detections, ids = track_detections(self._tracker, detections, now_s, conf)
        except TrackingError as exc:   # publish every person all the same, untracked
            self._track_errors += 1
            self.get_logger().error(f'tracking skipped: {exc}', throttle_duration_sec=2.0)
            detections, ids = untracked_ids(detections, conf, prefix='det-')
        self._publish(msg.header, detections, ids, pixels, encoding)
        self._metrics.record(times.total_ms, len(ids))
        self._count_swap(seq, detector)
        # The budget is on the ROS clock the stamps are on: capture (or arrival) to publish.
        captured_s = stamp.sec + stamp.nanosec * 1e-9 if stamp.sec or stamp.nanosec \
            else arrived_s
        self._budget.window.add(captured_s, self.get_clock().now().nanoseconds * 1e-9)
        if self._stats.level_changed():
            self._publish_diagnostics(force=True)

    def _count_swap(self, seq: int, detector: Detector) -> None:
        """Count the frames lost across a swap, and the most lost between two frames before.

        Lost: received between the last frame of the old model and the first of the new one,
        and never processed. The most lost between two frames of the 10 before it is what the
        load alone loses.
        """
        now = time.perf_counter()
        last, self._last_done = self._last_done, (seq, detector, now)
        if last is None or self._manager is None:
            return
        lost = max(0, seq - last[0] - 1)
        if last[1] is detector:
            self._recent_lost.append(lost)
            return
        before = max(self._recent_lost, default=0)
        self._recent_lost.clear()
        gap_ms = 1e3 * (now - last[2])
        self._swap_info.update(model_swap_frames_lost=str(lost),
                               model_swap_frames_lost_before=str(before),
                               model_swap_gap_ms=f'{gap_ms:.1f}')
        self.get_logger().info(f'first frame of the new model: {lost} frame(s) lost across '
                               f'the swap (at most {before} between two frames before it), '
                               f'{gap_ms:.0f} ms between the last frame of the old model and '
                               'the first of the new')

    # --- outputs -----------------------------------------------------------------------------

    def _publish(self, header: Header, detections: Detections, ids: list[str], pixels: Any,
                 encoding: str) -> None:
        array = Detection2DArray(header=header)
        keypoints = Detection2DArray(header=header)
        for i in range(len(detections)):
            x1, y1, x2, y2 = (float(v) for v in detections.boxes[i])
            det = Detection2D(header=header, id=ids[i])
            det.bbox.center.position.x = (x1 + x2) / 2.0
            det.bbox.center.position.y = (y1 + y2) / 2.0
            det.bbox.size_x, det.bbox.size_y = x2 - x1, y2 - y1
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id = detections.class_name(i)
            hyp.hypothesis.score = float(detections.scores[i])
            det.results.append(hyp)
            array.detections.append(det)
            if detections.keypoints is not None:
                keypoints.detections.append(self._keypoint_detection(det, detections, i))
        if detections.keypoints is not None:
            self._kp_pub.publish(keypoints)  # first, so a consumer has them with the boxes
        self._det_pub.publish(array)
        if self._camera_info is not None:
            self._marker_pub.publish(self._markers(header, detections))
        if self._shell.config.publish_annotated:
            annotated = draw_detections(pixels, encoding, detections)
            self._annotated_pub.publish(numpy_to_image(annotated, 'bgr8', header))

    @staticmethod
    def _keypoint_detection(det: Detection2D, detections: Detections, i: int) -> Detection2D:
        kp_det = Detection2D(header=det.header, id=det.id, bbox=det.bbox)
        assert detections.keypoints is not None
        for k, (x, y, c) in enumerate(detections.keypoints[i]):
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id = COCO_KEYPOINTS[k] if len(detections.keypoints[i]) == 17 \
                else f'kp{k}'
            hyp.hypothesis.score = float(c)
            hyp.pose.pose.position.x, hyp.pose.pose.position.y = float(x), float(y)
            kp_det.results.append(hyp)
        return kp_det

    def _markers(self, header: Header, detections: Detections) -> MarkerArray:
        info = self._camera_info
        assert info is not None
        fx, fy, cx, cy = info.k[0], info.k[4], info.k[2], info.k[5]
        depth = self._shell.config.marker_depth_m
        markers = [Marker(header=header, action=Marker.DELETEALL)]
        if fx <= 0 or fy <= 0:
            return MarkerArray(markers=markers)

        def point(u: float, v: float) -> Point:
            return Point(x=(u - cx) / fx * depth, y=(v - cy) / fy * depth, z=depth)

        for i in range(len(detections)):
            x1, y1, x2, y2 = (float(v) for v in detections.boxes[i])
            box = Marker(header=header, ns='boxes', id=i, type=Marker.LINE_STRIP,
                         action=Marker.ADD)
            box.pose.orientation.w = 1.0
            box.scale.x = 0.01
            box.color = ColorRGBA(r=0.1, g=0.9, b=0.2, a=1.0)
            box.points = [point(x1, y1), point(x2, y1), point(x2, y2), point(x1, y2),
                          point(x1, y1)]
            label = Marker(header=header, ns='labels', id=i, type=Marker.TEXT_VIEW_FACING,
                           action=Marker.ADD)
            label.pose.position = point(x1, y1)
            label.pose.orientation.w = 1.0
            label.scale.z = 0.08
            label.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
            label.text = f'{detections.class_name(i)} {float(detections.scores[i]):.2f}'
            markers.extend((box, label))
        return MarkerArray(markers=markers)

    def _publish_diagnostics(self, force: bool = False) -> None:
        detector, pub = self._detector, getattr(self, '_diag_pub', None)
        if detector is None or pub is None:
            return
        now = time.monotonic()
        if not diagnostics_due(now, self._last_diag, force):
            return
        self._last_diag = now
        stats = self._stats
        tracker = self._tracker
        values = stats.diagnostic_values({
            'backend': detector.backend.name, 'precision': detector.backend.precision,
            'model': detector.model_path.name, 'model_hash': detector.model_hash,
            'tracking': 'on' if tracker.cfg.tracking else 'off',
            'tracks_confirmed': str(tracker.alive_confirmed),
            'track_ids_issued': str(tracker.stats.started),
            'track_time_resets': str(tracker.stats.time_resets),
            'track_errors': str(self._track_errors),
            **({'model_version': self._running_ref.label if self._running_ref else 'unnamed',
                **self._swap_info} if self._manager is not None else {})})
        array = diagnostic_array(self.get_clock(), _STATUS_NAME, stats.level(),
                                 stats.message(), values, detector.backend.name)
        self._poll_limit()
        array.status.extend(self._budget_status(now).status)
        pub.publish(array)

    def _budget_status(self, now: float) -> DiagnosticArray:
        """Build the budget status (OK, "no budget check", while there is no limit to use)."""
        measured = self._budget.window.values()
        values: dict[str, object] = {key: f'{value:.1f}' for key, value in measured.items()}
        values['warmup_ms'] = f'{1e3 * self._budget.startup_latency_s:.1f}'
        values['frames_implausible'] = str(self._budget.window.implausible)
        source = self._shell.config.budget_from
        if self._limit is None:
            if not source:
                level, why = 'OK', 'budget_from is empty'
            elif self._limit_problem:
                level, why = 'WARN', self._limit_problem
            else:
                level, why = 'OK', f'waiting for {source}/get_parameters (max_perception_age_s)'
            return diagnostic_array(self.get_clock(), _BUDGET_STATUS, level,
                                    f'no budget check: {why}', values)
        limit_s, human_speed = self._limit
        clock_s = self.get_clock().now().nanoseconds * 1e-9
        verdict = self._budget.verdict(now, limit_s, human_speed, clock_s)
        limit_age = now - self._limit_at
        values.update(limit_ms=f'{1e3 * limit_s:.1f}', limit_from=source,
                      limit_age_s=f'{limit_age:.1f}',
                      worst_age_ms=f'{1e3 * verdict.worst_age_s:.1f}')
        level, message = verdict.level, verdict.message
        if limit_age > 3 * _LIMIT_REFRESH_S:
            message += (f'; the limit was last confirmed by {source} {limit_age:.0f} s ago '
                        '(is it running?)')
            level = 'WARN' if level == 'OK' else level
        return diagnostic_array(self.get_clock(), _BUDGET_STATUS, level, message, values)


def _spin(node: DetectorNode) -> None:
    if node._shell.config.autostart:
        autostart(node)
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    executor.spin()


def main(args: list[str] | None = None) -> None:
    """Run the detector until interrupted."""
    run_node('detector_node', DetectorNode, (PerceptionError,), args, spin=_spin,
             cleanup=lambda node: node._stop_threads())

if __name__ == '__main__':
    main()
