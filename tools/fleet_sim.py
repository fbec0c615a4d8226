"""Simulated robots for model rollouts: the real edge cores over real MQTT, without ROS.

A :class:`SimRobot` is what ``bridge_node`` and ``detector_node`` do for a model update, minus
the ROS graph: the real :class:`~cobot_hybrid_bridge.bridge.EdgeBridge` (outbox, command
verifier, chunk fetcher) on a real MQTT link, and on its detector side either

* ``real`` (``model`` given): the real :class:`~cobot_hybrid_perception.model_manager.
  ModelManager` with a real ONNX Runtime detector on a real photo at ``rate_hz``: installs are
  verified, loaded, smoke-checked and swapped exactly as on a robot, and the metrics windows
  are the detector's own; or
* ``light``: the signed command opened with the cloud key and the file's sha256 checked, then
  ``active`` reported, with metrics of a nominal detector (``frames_per_window`` frames of
  ``latency_ms``): for fleets larger than this machine can run detectors for.

Used by ``test_model_fleet.py``, ``benchmarks/bench_rollout.py`` and ``tools/demo_rollout.py``.
One thread per robot; every call into the bridge happens on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cobot_hybrid_bridge.bridge import EdgeBridge
from cobot_hybrid_bridge.bridge_config import BridgeConfig
from cobot_hybrid_bridge.routes import parse_routes
from cobot_hybrid_planner.service import PlannerConfig, PlannerService
from cobot_hybrid_planner.site import parse_site
from cobot_hybrid_protocol import signing
from cobot_hybrid_protocol.limits import COMMAND_LIMITS, parse_json
from cobot_hybrid_protocol.model_update import (
    ModelMetrics,
    ModelRef,
    ModelStatus,
    local_update_to_json,
    metrics_to_json,
    status_to_json,
    validate_model_command,
)

_LOG = logging.getLogger('fleet_sim')
ROUTES = parse_routes({'routes': [
    {'ros_topic': 'protective_stop', 'type': 'std_msgs/msg/Bool',
     'mqtt_topic': 'events/protective_stop', 'priority': 9}]})


class Cloud:
    """The planner service (rollout controller inside) stepping on a thread of its own."""

    def __init__(self, work: Path, port: int, robots: list[str], model_registry: str = '',
                 step_s: float = 0.02) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.pub = work / 'planner.pub'
        self.pub.write_bytes(self.key.public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
        site = parse_site({'stations': {'a': {'x': 0, 'y': 0}},
                           'robots': {r: {'capabilities': ['pick'], 'start': 'a'}
                                      for r in robots}})
        self.service = PlannerService(PlannerConfig(
            data_dir=work / 'cloud', broker_port=port, delivery_ack_period_s=0.05,
            model_registry=model_registry), site, self.key)
        self.lock = threading.Lock()       # held while the service steps
        self._stop = threading.Event()
        self._step_s = step_s
        self.service.start()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                self.service.step()
            self._stop.wait(self._step_s)

    def stop(self) -> None:
        """Stop the loop and the service."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.service.stop()


@dataclass
class Behaviour:
    """How a light robot's nominal detector behaves (the gates see these numbers)."""

    latency_ms: float = 25.0
    frames_per_window: int = 20
    detections: float = 1.5
    candidate_latency_ms: float | None = None   # on any model but the one it started with


@dataclass
class SimRobot:
    """One robot: see the module docstring."""

    robot_id: str
    port: int
    data_dir: Path
    public_key: Path
    model: Path | None = None                   # real: the factory model (ONNX)
    start_ref: ModelRef | None = None           # light: what it runs at start
    rate_hz: float = 1.0
    metrics_period_s: float = 2.0
    behaviour: Behaviour = field(default_factory=Behaviour)
    max_bytes_per_s: float = 4e6
    swaps: list[float] = field(default_factory=list)   # swap_ms of each swap
    statuses: list[ModelStatus] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.bridge = EdgeBridge(BridgeConfig(
            robot_id=self.robot_id, broker_port=self.port, data_dir=str(self.data_dir),
            cloud_public_keys=(f'planner={self.public_key}',), delivery='cloud',
            state_period_s=2.0, stats_period_s=5.0,
            model_fetch_max_bytes_per_s=self.max_bytes_per_s), ROUTES)
        self.keys = signing.load_public_keys({'planner': self.public_key})
        self.active = self.start_ref
        self._manager: Any = None
        self._detector: Any = None
        self._frame: Any = None
        if self.model is not None:
            self._start_real()

    # --- the detector side ---------------------------------------------------------------

    def _start_real(self) -> None:
        """Start as the detector node does: boot check, then the stored or factory model."""
        from cobot_hybrid_perception.detector import Detector, DetectorConfig
        from cobot_hybrid_perception.media import load_image, sample_photo_path
        from cobot_hybrid_perception.model_manager import (
            MetricsWindow,
            ModelManager,
            SmokeFrames,
            detector_loader,
            factory_ref,
            reference_samples,
        )
        from cobot_hybrid_perception.model_store import ModelStore

        assert self.model is not None
        base = DetectorConfig(model=str(self.model), backend='ort-cpu', threads=1, imgsz=0)
        store = ModelStore(self.data_dir / self.robot_id / 'detector-store')
        self._frames = SmokeFrames(8)
        self._manager = ModelManager(store, self.keys, self.robot_id, detector_loader(base),
                                     self._report, self._frames, factory_model=self.model)
        stored = self._manager.boot()
        if stored is not None:
            detector = detector_loader(base)(store.path_of(stored), stored)
            running: ModelRef | None = stored
        else:
            detector = Detector(base)
            running = factory_ref(self.model, self._manager.factory_sha256,
                                  self.model.stat().st_size, detector.info.imgsz[0],
                                  detector.info.task, detector.backend.precision)
        self._detector = detector
        self._frames.set_samples(reference_samples(detector, self._manager.factory_sha256
                                                   if running is None else running.sha256,
                                                   detector.cfg.conf))
        self._window = MetricsWindow()
        self._frame = load_image(sample_photo_path('zidane'))
        self._manager.started(running)
        self.active = running

    def _report(self, status: ModelStatus) -> None:
        self.statuses.append(status)
        if status.state == 'active' and status.active is not None:
            self.active = status.active
        self.bridge.report_model_status(json.dumps(status_to_json(status)))

    def _take_updates(self) -> None:
        for update in self.bridge.take_model_updates():
            text = json.dumps(local_update_to_json(update))
            if self._manager is None:
                self._light_update(update.command, update.path)
                continue
            prepared = self._manager.prepare(text)
            if prepared is None:
                continue
            start = time.perf_counter()
            old, self._detector = self._detector, prepared.candidate
            swap_ms = 1e3 * (time.perf_counter() - start)
            old.close()
            self.swaps.append(swap_ms)
            self._window.reset()
            self._manager.commit(prepared, swap_ms)

    def _light_update(self, envelope: str, path: str) -> None:
        payload = signing.open_signed(envelope.encode(), self.keys, self.robot_id)
        command = validate_model_command(parse_json(payload, COMMAND_LIMITS, 'the command'))
        if command.action == 'install':
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            if digest != command.model.sha256:
                self._report(ModelStatus('failed', command.rollout_id, command.revision,
                                         command.model, self.active, 'hash_mismatch: light '
                                         'robot', {}, time.time()))
                return
        self.swaps.append(0.0)
        self.active = command.model
        self._report(ModelStatus('active', command.rollout_id, command.revision,
                                 command.model, command.model, '', {'swap_ms': 0.0},
                                 time.time()))

    def _metrics(self) -> None:
        if self.active is None:
            return
        if self._manager is not None:
            summary = self._window.summary(self.active)
        else:
            b = self.behaviour
            latency = b.latency_ms if self.start_ref is None or b.candidate_latency_ms is None \
                or self.active.sha256 == self.start_ref.sha256 else b.candidate_latency_ms
            summary = ModelMetrics(self.active, self.metrics_period_s, b.frames_per_window, 0,
                                   latency * 0.8, latency, b.detections, time.time())
        if summary.frames:
            self.bridge.report_model_metrics(json.dumps(metrics_to_json(summary)))

    def _detect(self) -> None:
        start = time.perf_counter()
        try:
            detections, _ = self._detector.detect(self._frame)
        except Exception:  # noqa: BLE001 - counted as the detector node counts them
            self._window.error()
            return
        self._window.record(1e3 * (time.perf_counter() - start), len(detections))

    # --- the loop ------------------------------------------------------------------------

    def start(self) -> SimRobot:
        """Connect and run on a thread of its own."""
        self.bridge.start()
        self._thread = threading.Thread(target=self._run, name=self.robot_id, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        next_frame = next_metrics = time.monotonic()
        while not self._stop.is_set():
            try:
                self.bridge.tick()
                self.bridge.take_commands()
                self._take_updates()
                now = time.monotonic()
                if self._detector is not None and now >= next_frame:
                    self._detect()
                    next_frame = now + 1.0 / self.rate_hz
                if now >= next_metrics:
                    self._metrics()
                    next_metrics = now + self.metrics_period_s
            except Exception:  # noqa: BLE001 - a robot goes on, as the node shells do
                self.errors += 1
                _LOG.exception('%s: a step failed', self.robot_id)
            self._stop.wait(0.02)

    def stop(self) -> None:
        """Stop the loop, leave the broker, close the files (the outbox stays on disk)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        self.bridge.stop()
        self.bridge.queue.close()
        if self._detector is not None:
            self._detector.close()
