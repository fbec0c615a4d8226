"""The edge model manager: signed model updates checked, tried and swapped in. No ROS.

The bridge hands the detector a :class:`~cobot_hybrid_protocol.model_update.LocalUpdate` (the
signed ``cmd/model`` envelope as it came from the cloud, and the fetched file). The manager
trusts nothing on the DDS domain: :meth:`ModelManager.prepare` opens the envelope with the
cloud's keys for this robot id and checks, cheapest first, stopping at the first failure
(each a ``failed`` status whose reason starts with the contract's code):

1. the update and the envelope: size, JSON, signature (``rejected: bad_signature ...``);
2. the command: schema, ``robot_id`` equal to ours, not issued more than
   :data:`MAX_CLOCK_SKEW_S` in the future, not expired (``rejected: ...``); a revision at
   most the highest applied, or a command issued before the store was rebuilt
   (``superseded: ...``). The revision is then recorded, before the slow steps;
3. install: the file copied into the :class:`~cobot_hybrid_perception.model_store.ModelStore`
   with its size and sha256 against the signed ones (``size_mismatch``, ``hash_mismatch``,
   ``no_space``, ``download_failed``), loaded beside the running model (``load_failed``), and
   the smoke check on stored frames (:class:`SmokeFrames`: the last frames the detector saw,
   topped up with the shipped photos): finite outputs (``not_finite``), latency p99 within
   ``max_latency_ms`` (``too_slow``), agreement with what the running model found on the same
   frames at least ``min_agreement`` (``disagrees``);
4. rollback: the named version from the store, or the ``model`` parameter's own file when the
   sha256 is its (``not_cached`` otherwise); no smoke check.

It returns a :class:`Prepared` holding the loaded candidate; the caller swaps it in between two
frames (a reference assignment) and calls :meth:`ModelManager.commit`, which reports ``active``
with the smoke metrics and ``swap_ms``. On any failure the running model was never touched:
that is the rollback "at once". :meth:`ModelManager.boot` is the crash-loop check at start:
within ``watch_s`` of a swap each start counts a restart, more than ``max_restarts`` and the
previous version runs again (``rolled_back``, ``crash_loop: ...``); a version that ran
``watch_s`` without (:meth:`ModelManager.tick`), or was found older than that at a start,
becomes known-good.

Loading and the smoke check take hundreds of milliseconds: the detector node runs
:meth:`~ModelManager.prepare` on a thread of its own, never on the frame path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cobot_hybrid_perception.detector import Detector, DetectorConfig, StageTimes
from cobot_hybrid_perception.errors import ConfigError, ModelOutputError, PerceptionError
from cobot_hybrid_perception.model_store import ModelStore, ModelUpdateError, file_sha256
from cobot_hybrid_perception.perception_budget import percentile
from cobot_hybrid_perception.runtime_bench import agreement
from cobot_hybrid_perception.yolo_decode import Detections
from cobot_hybrid_protocol.clock import SYSTEM_CLOCK, Clock
from cobot_hybrid_protocol.errors import PayloadError, RobotIdError, SchemaError, SignatureError
from cobot_hybrid_protocol.limits import COMMAND_LIMITS, Limits, parse_json
from cobot_hybrid_protocol.model_update import (
    PRECISIONS,
    ModelCommand,
    ModelMetrics,
    ModelRef,
    ModelStatus,
    validate_local_update,
    validate_model_command,
)
from cobot_hybrid_protocol.settings import check_settings, setting
from cobot_hybrid_protocol.signing import open_signed
from cobot_hybrid_protocol.topics import check_robot_id

__all__ = ['MAX_CLOCK_SKEW_S', 'Candidate', 'MetricsWindow', 'ModelManager',
           'ModelUpdateConfig', 'Prepared', 'SmokeFrame', 'SmokeFrames', 'agreement_score',
           'detector_loader', 'factory_ref', 'reference_samples']

#: Tolerated difference between the robot's and the cloud's clocks (the bridge's default) [s].
MAX_CLOCK_SKEW_S = 30.0
#: A live frame goes into the smoke ring at most this often, so the ring spans a few seconds.
SMOKE_FRAME_INTERVAL_S = 0.2
_UPDATE_LIMITS = Limits(max_bytes=300 * 1024, max_depth=2, max_string=256 * 1024,
                        max_items=3, max_values=4, unique_keys=True)
_LOG = logging.getLogger(__name__)

Box = tuple[str, float, float, float, float]       # class name, x1, y1, x2, y2


@dataclass(frozen=True)
class ModelUpdateConfig:
    """The detector node's model-update parameters."""

    model_updates: bool = setting(False, 'accept signed model updates on model_update (false: '
                                  'the model parameter only, as before)')
    # The same description and default as the bridge's robot_id and cloud_public_keys (the
    # bridge cannot be imported from perception): a robot sets both to the same values.
    robot_id: str = setting('cobot-1', 'this robot: MQTT client id and topic level '
                            '(cobot/v1/<robot_id>/...)')
    cloud_public_keys: tuple[str, ...] = setting(
        (), 'key_id=path of the cloud Ed25519 public keys (none: every command is refused)',
        array_type='string')
    model_store: str = setting('', 'folder of the model versions the robot holds and their '
                               'manifest ("" = <model cache>/fleet)')
    keep_versions: int = setting(3, 'known-good model versions kept (older files deleted)',
                                 low=1, high=100)
    metrics_period_s: float = setting(10.0, 'model_metrics period', unit='s', low=0.5,
                                      high=3600.0)
    smoke_frames_kept: int = setting(16, 'recent frames kept for the smoke check of a new '
                                     'model', low=1, high=256)

    def __post_init__(self) -> None:
        check_settings(self, ConfigError)
        try:
            check_robot_id(self.robot_id)
        except RobotIdError as exc:
            raise ConfigError(f'robot_id {self.robot_id!r}: {exc}') from None
        for entry in self.cloud_public_keys:
            if '=' not in entry:
                raise ConfigError(f'cloud_public_keys entry {entry!r} must be key_id=path')

    def key_paths(self) -> dict[str, Path]:
        """Cloud public keys by id."""
        return {k.strip(): Path(v.strip()).expanduser()
                for k, v in (e.split('=', 1) for e in self.cloud_public_keys)}

    def store_path(self, cache: Path) -> Path:
        """Return the store folder: ``model_store``, else ``<cache>/fleet``."""
        return Path(self.model_store).expanduser() if self.model_store else cache / 'fleet'


class Candidate(Protocol):
    """What the manager needs of a loaded model (a :class:`Detector` is one)."""

    def detect(self, image: npt.NDArray[Any], encoding: str = 'bgr8',
               conf: float | None = None) -> tuple[Detections, StageTimes]:
        """Detect in one image."""
        ...

    def close(self) -> None:
        """Release the runtime."""
        ...


# --- frames to judge a new model on -----------------------------------------------------------

@dataclass(frozen=True)
class SmokeFrame:
    """A frame and what the model ``sha256`` found in it (scoring ``conf`` or more)."""

    pixels: npt.NDArray[Any]
    encoding: str
    boxes: tuple[Box, ...]
    sha256: str
    conf: float
    source: str = 'live'             # 'live' or 'sample:<photo>'


def frame_boxes(detections: Detections, conf: float) -> tuple[Box, ...]:
    """Return (class, x1, y1, x2, y2) of the detections scoring ``conf`` or more."""
    boxes = detections.boxes.astype(np.float64).tolist()
    return tuple((detections.class_name(i), boxes[i][0], boxes[i][1], boxes[i][2], boxes[i][3])
                 for i in range(len(detections)) if float(detections.scores[i]) >= conf)


class SmokeFrames:
    """The last frames the detector saw, with the running model's boxes; and sample photos."""

    def __init__(self, kept: int = 16, interval_s: float = SMOKE_FRAME_INTERVAL_S) -> None:
        self._live: deque[SmokeFrame] = deque(maxlen=kept)
        self._samples: list[SmokeFrame] = []
        self._interval_s = interval_s
        self._last_s = -float('inf')
        self._lock = threading.Lock()

    def offer(self, now_s: float) -> bool:
        """Whether a frame seen at ``now_s`` should be kept (cheap: ask before copying)."""
        return now_s - self._last_s >= self._interval_s

    def add(self, pixels: npt.NDArray[Any], encoding: str, detections: Detections, conf: float,
            sha256: str, now_s: float) -> None:
        """Keep a copy of a frame and the boxes the running model found in it."""
        frame = SmokeFrame(np.array(pixels, copy=True), encoding,
                           frame_boxes(detections, conf), sha256, conf)
        with self._lock:
            self._live.append(frame)
            self._last_s = now_s

    def set_samples(self, frames: Sequence[SmokeFrame]) -> None:
        """Replace the sample photos and the running model's boxes in them (at every swap)."""
        with self._lock:
            self._samples = list(frames)

    @property
    def samples(self) -> list[SmokeFrame]:
        """The sample photos with the boxes of the model that last ran on them."""
        with self._lock:
            return list(self._samples)

    def pick(self, sha256: str, count: int) -> list[SmokeFrame]:
        """Up to ``count`` newest live frames of model ``sha256``, topped up with the photos.

        The photos are also added when the live frames hold no detection at all: agreement
        is never judged on nothing.
        """
        with self._lock:
            live = [f for f in self._live if f.sha256 == sha256][-count:]
            samples = [f for f in self._samples if f.sha256 == sha256]
        if len(live) < count:
            live += samples[:count - len(live)]
        if not any(f.boxes for f in live):
            live += [f for f in samples if f not in live]
        return live


def reference_samples(detector: Candidate, sha256: str, conf: float,
                      names: Sequence[str] | None = None) -> list[SmokeFrame]:
    """Run ``detector`` on the shipped photos: the references of the model ``sha256``."""
    from cobot_hybrid_perception.media import available_samples, load_image, sample_photo_path

    frames = []
    for name in names if names is not None else available_samples():
        pixels = load_image(sample_photo_path(name), 'bgr8')
        detections, _ = detector.detect(pixels, 'bgr8', conf=conf)
        frames.append(SmokeFrame(pixels, 'bgr8', frame_boxes(detections, conf), sha256, conf,
                                 f'sample:{name}'))
    return frames


def agreement_score(reference: Sequence[Sequence[Box]],
                    candidate: Sequence[Sequence[Box]]) -> float:
    """F1 of the candidate's boxes against the reference's, per frame and class, IoU >= 0.5.

    Recall alone would pass a model that adds boxes everywhere; precision alone one that
    misses people. 1.0 when neither found anything anywhere.
    """
    ref_lists: list[list[list[float]]] = []
    cand_lists: list[list[list[float]]] = []
    for ref, cand in zip(reference, candidate, strict=True):
        for cls in sorted({b[0] for b in ref} | {b[0] for b in cand}):
            ref_lists.append([list(b[1:]) for b in ref if b[0] == cls])
            cand_lists.append([list(b[1:]) for b in cand if b[0] == cls])
    if not any(ref_lists) and not any(cand_lists):
        return 1.0
    recall = agreement(ref_lists, cand_lists)[0] if any(ref_lists) else 0.0
    precision = agreement(cand_lists, ref_lists)[0] if any(cand_lists) else 0.0
    return 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)


# --- loading ----------------------------------------------------------------------------------

def detector_loader(base: DetectorConfig) -> Callable[[Path, ModelRef], Detector]:
    """Return a ``load(path, model)`` building a :class:`Detector` like ``base``, other file.

    One grey frame runs at once: the runtime's lazy initialisation is over before the smoke
    check times anything, and an output layout the decoder does not know is ``load_failed``.
    """
    def load(path: Path, model: ModelRef) -> Detector:
        cfg = replace(base, model=str(path), imgsz=model.imgsz)
        detector = Detector(cfg)
        try:
            if detector.info.task != model.task:
                raise ModelUpdateError('load_failed', f'{path.name} is a {detector.info.task} '
                                       f'model, the command says {model.task}')
            detector.detect(np.full((model.imgsz, model.imgsz, 3), 114, np.uint8))
        except ModelOutputError as exc:
            detector.close()
            raise ModelUpdateError('load_failed', f'first frame: {exc}') from None
        except BaseException:
            detector.close()
            raise
        return detector
    return load


def factory_ref(path: Path, sha256: str, size: int, imgsz: int, task: str,
                precision: str) -> ModelRef | None:
    """Describe the ``model`` parameter's file as version 1 of its name (None: not ONNX)."""
    if path.suffix != '.onnx' or task not in ('detect', 'pose'):
        return None
    name = ''.join(c for c in path.stem if c.isprintable())[:128] or 'model'
    return ModelRef(name=name, version=1, sha256=sha256, size_bytes=size, imgsz=imgsz,
                    task=task, precision=precision if precision in PRECISIONS else 'fp32')


# --- the manager -----------------------------------------------------------------------------

@dataclass
class Prepared:
    """A version loaded and checked, ready to swap in."""

    command: ModelCommand
    model: ModelRef
    candidate: Candidate
    metrics: dict[str, float] = field(default_factory=dict)
    samples: list[SmokeFrame] = field(default_factory=list)   # the candidate's references
    load_ms: float = 0.0
    smoke_ms: float = 0.0


@dataclass
class _Factory:
    path: Path
    sha256: str
    size: int


class ModelManager:
    """Opens, checks, tries and commits model updates for one detector."""

    def __init__(self, store: ModelStore, keys: Mapping[str, Ed25519PublicKey], robot_id: str,
                 load: Callable[[Path, ModelRef], Candidate],
                 report: Callable[[ModelStatus], None], frames: SmokeFrames | None = None,
                 factory_model: Path | None = None, clock: Clock = SYSTEM_CLOCK,
                 max_clock_skew_s: float = MAX_CLOCK_SKEW_S) -> None:
        self.store = store
        self.keys = dict(keys)
        self.robot_id = robot_id
        self.load = load
        self.report = report
        self.frames = frames if frames is not None else SmokeFrames()
        self.clock = clock
        self.max_clock_skew_s = max_clock_skew_s
        self.running: ModelRef | None = None      # what the detector runs now
        self._factory: _Factory | None = None
        if factory_model is not None:
            digest, size = file_sha256(factory_model)
            self._factory = _Factory(Path(factory_model), digest, size)
        self._watch_from: float | None = None     # monotonic start of this run's watch
        # (state, model, reason, rollout id, revision) to report once the detector runs
        self._boot_events: list[tuple[str, ModelRef | None, str, str, int]] = []
        self.rejected = 0
        self.duplicates = 0       # the last applied update delivered again

    @property
    def factory_sha256(self) -> str:
        """The sha256 of the ``model`` parameter's file ('' when not given)."""
        return self._factory.sha256 if self._factory else ''

    @property
    def factory_model(self) -> Path | None:
        """The ``model`` parameter's file (None when not given)."""
        return self._factory.path if self._factory else None

    # --- start -----------------------------------------------------------------------------

    def boot(self) -> ModelRef | None:
        """Check for a crash loop at start; return the stored version to run (None: factory).

        Call once per process start, before the model is loaded; then :meth:`started`.
        """
        trial = self.store.trial
        if trial is not None:
            elapsed = self.clock.wall() - trial.swapped_at
            if elapsed >= trial.watch_s:
                self.store.confirm_trial()
                _LOG.info('%s ran %.0f s since its swap: known-good', trial.model.label,
                          elapsed)
            else:
                trial = self.store.count_restart()
                assert trial is not None
                if trial.restarts > trial.max_restarts:
                    self.store.abandon_trial()
                    self._boot_events.append((
                        'rolled_back', trial.model,
                        f'crash_loop: {trial.restarts} restarts within {trial.watch_s:g} s of '
                        f'the swap to {trial.model.label} (max_restarts '
                        f'{trial.max_restarts})', trial.rollout_id, trial.revision))
                else:
                    self._watch_from = self.clock.monotonic()
        return self.store.active

    def active_failed(self, model: ModelRef, error: Exception) -> ModelRef | None:
        """Fall back from a stored version that did not load at start; return what to run."""
        trial = self.store.trial
        rollout_id, revision = ('', 0) if trial is None or trial.model.sha256 != model.sha256 \
            else (trial.rollout_id, trial.revision)
        if trial is not None and trial.model.sha256 == model.sha256:
            self.store.abandon_trial()
        else:
            rest = self.store.forget(model)
            self.store.activate(rest[0] if rest else None)
        self._watch_from = None
        self._boot_events.append(('rolled_back', model, f'load_failed: {error}', rollout_id,
                                  revision))
        return self.store.active

    def started(self, running: ModelRef | None) -> None:
        """Record that the detector runs ``running``; report it and what the start found."""
        self.running = running
        for state, model, reason, rollout_id, revision in self._boot_events:
            self._report(state, model=model, reason=reason, rollout_id=rollout_id,
                         revision=revision)
        self._boot_events.clear()
        self._report('active', model=running)

    def tick(self) -> ModelRef | None:
        """Confirm the version on trial once it ran ``watch_s`` in this run; return it then."""
        trial = self.store.trial
        if trial is None or self._watch_from is None:
            return None
        if self.clock.monotonic() - self._watch_from < trial.watch_s:
            return None
        self._watch_from = None
        confirmed = self.store.confirm_trial()
        if confirmed is not None:
            _LOG.info('%s ran %g s without a crash loop: known-good', confirmed.label,
                      trial.watch_s)
        return confirmed

    # --- updates ---------------------------------------------------------------------------

    def prepare(self, text: str | bytes) -> Prepared | None:
        """Check an update and load its version; None when it failed (reported) or was moot."""
        try:
            update = validate_local_update(parse_json(text, _UPDATE_LIMITS, 'the model update'))
        except (PayloadError, SchemaError) as exc:
            self._fail(None, ModelUpdateError('rejected', f'model update: {exc}'))
            return None
        try:
            command = self._open(update.command)
        except _Refused as exc:
            if exc.command is not None and exc.error.reason == 'superseded' \
                    and exc.command.revision == self.store.highest_revision:
                # The update this detector applied last, delivered again (the bridge keeps
                # it transient local for a detector that was down): counted, not answered.
                self.duplicates += 1
                _LOG.info('model update revision %d seen again: already handled',
                          exc.command.revision)
                return None
            self._fail(exc.command, exc.error)
            return None
        self.store.note_revision(command.revision)
        self._report('received', command)
        try:
            if command.action == 'rollback':
                return self._rollback(command)
            return self._install(command, update.path)
        except ModelUpdateError as exc:
            self._fail(command, exc)
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the update unanswered
            _LOG.exception('model update %s failed', command.command_id)
            self._fail(command, ModelUpdateError('internal_error',
                                                 f'{type(exc).__name__}: {exc}'))
        return None

    def busy(self, text: str | bytes, waiting: int) -> None:
        """Refuse an update that found ``waiting`` others queued (said, never dropped silently)."""
        self._fail(None, ModelUpdateError('rejected', f'busy: {waiting} model updates are '
                                          f'waiting; {len(text)} bytes refused, send it again'))

    def _open(self, envelope: str) -> ModelCommand:
        def refuse(code: str, detail: str, command: ModelCommand | None = None) -> _Refused:
            return _Refused(ModelUpdateError(code, detail), command)

        if not self.keys:
            raise refuse('rejected', 'no cloud key configured: set cloud_public_keys')
        try:
            payload = open_signed(envelope.encode(), self.keys, self.robot_id)
        except SignatureError as exc:
            raise refuse('rejected', str(exc)) from None
        try:
            command = validate_model_command(parse_json(payload, COMMAND_LIMITS, 'the command'))
        except PayloadError as exc:
            raise refuse('rejected', f'malformed: {exc}') from None
        except SchemaError as exc:
            raise refuse('rejected', f'schema: {exc}') from None
        now = self.clock.wall()
        if command.robot_id != self.robot_id:
            raise refuse('rejected', f'wrong_robot: the command is for {command.robot_id!r}',
                         command)
        # Ordering first: the update applied last, delivered again after a restart a day
        # later, is a duplicate, not an expired command.
        if command.revision <= self.store.highest_revision:
            raise refuse('superseded', f'revision {command.revision} <= the applied '
                         f'{self.store.highest_revision}', command)
        rebuilt = self.store.rebuilt_at
        if rebuilt is not None and command.issued_at < rebuilt:
            raise refuse('superseded', f'issued before the model store was rebuilt at '
                         f'{rebuilt:.0f}: send a new revision', command)
        if command.issued_at > now + self.max_clock_skew_s:
            raise refuse('rejected', f'not_yet_valid: issued {command.issued_at - now:.0f} s '
                         'in the future (clock skew?)', command)
        if command.valid_until <= now:
            raise refuse('rejected', f'expired: {now - command.valid_until:.0f} s ago',
                         command)
        return command

    def _install(self, command: ModelCommand, path: str) -> Prepared | None:
        model = command.model
        if self.running is not None and model.sha256 == self.running.sha256:
            self._report('active', command, reason='')   # already running: nothing to swap
            return None
        self._report('verifying', command)
        stored = self.store.add_file(Path(path) if path else None, model)
        try:
            self._report('loading', command)
            start = time.perf_counter()
            candidate = self._load(stored, model)
            load_ms = 1e3 * (time.perf_counter() - start)
            try:
                self._report('smoke_testing', command)
                start = time.perf_counter()
                metrics, samples = self._smoke(candidate, command)
                smoke_ms = 1e3 * (time.perf_counter() - start)
            except BaseException:
                candidate.close()
                raise
        except BaseException:
            self.store.release(model)
            raise
        _LOG.info('%s loaded in %.0f ms, smoke check %.0f ms: %s', model.label, load_ms,
                  smoke_ms, metrics)
        return Prepared(command, model, candidate, metrics, samples, load_ms, smoke_ms)

    def _load(self, path: Path, model: ModelRef) -> Candidate:
        try:
            return self.load(path, model)
        except ModelUpdateError:
            raise
        except PerceptionError as exc:
            raise ModelUpdateError('load_failed', str(exc)) from None

    def _smoke(self, candidate: Candidate, command: ModelCommand
               ) -> tuple[dict[str, float], list[SmokeFrame]]:
        acceptance = command.acceptance
        running = self.running.sha256 if self.running is not None else self.factory_sha256
        frames = self.frames.pick(running, acceptance.smoke_frames)
        if not frames:
            raise ModelUpdateError('internal_error', 'no stored frame and no sample photo to '
                                   'smoke-test the model on')
        latencies: list[float] = []
        found: list[tuple[Box, ...]] = []
        judged: dict[str, tuple[Box, ...]] = {}     # sample photo -> the candidate's boxes
        for frame in frames:
            start = time.perf_counter()
            try:
                detections, _ = candidate.detect(frame.pixels, frame.encoding, conf=frame.conf)
            except ModelOutputError as exc:
                raise ModelUpdateError('not_finite', f'on a {frame.source} frame: {exc}') \
                    from None
            except PerceptionError as exc:
                raise ModelUpdateError('load_failed', f'on a {frame.source} frame: {exc}') \
                    from None
            latencies.append(1e3 * (time.perf_counter() - start))
            arrays = [detections.boxes, detections.scores]
            if detections.keypoints is not None:
                arrays.append(detections.keypoints)
            if not all(np.isfinite(a).all() for a in arrays):
                raise ModelUpdateError('not_finite', f'NaN or infinite boxes, scores or '
                                       f'keypoints on a {frame.source} frame')
            found.append(frame_boxes(detections, frame.conf))
            if frame.source != 'live':
                judged[frame.source] = found[-1]
        p99 = percentile(latencies, 0.99)
        metrics = {'latency_p99_ms': round(p99, 3), 'smoke_frames': float(len(frames))}
        if p99 > acceptance.max_latency_ms:
            raise ModelUpdateError('too_slow', f'latency p99 {p99:.1f} ms over {len(frames)} '
                                   f'frames > max_latency_ms {acceptance.max_latency_ms:g}')
        score = agreement_score([f.boxes for f in frames], found)
        metrics['agreement'] = round(score, 4)
        if score < acceptance.min_agreement:
            raise ModelUpdateError('disagrees', f'agreement {score:.3f} with the running model '
                                   f'over {len(frames)} frames < min_agreement '
                                   f'{acceptance.min_agreement:g}')
        # The photos become the new model's references (for the next update's check).
        return metrics, self._samples_for(candidate, command.model, judged)

    def _samples_for(self, candidate: Candidate, model: ModelRef,
                     judged: Mapping[str, tuple[Box, ...]]) -> list[SmokeFrame]:
        """Return the sample photos with ``model``'s boxes (running it on those not judged)."""
        samples = []
        for sample in self.frames.samples:
            boxes = judged.get(sample.source)
            if boxes is None:
                detections, _ = candidate.detect(sample.pixels, sample.encoding,
                                                 conf=sample.conf)
                boxes = frame_boxes(detections, sample.conf)
            samples.append(replace(sample, boxes=boxes, sha256=model.sha256))
        return samples

    def _rollback(self, command: ModelCommand) -> Prepared | None:
        model = command.model
        if self.running is not None and model.sha256 == self.running.sha256:
            if self.store.trial is not None and self.store.trial.model.sha256 == model.sha256:
                self.store.confirm_trial()          # the cloud keeps it: no longer on trial
            self._report('active', command)
            return None
        known = self.store.find_known(model.sha256)
        if known is not None:
            path = self.store.add_file(None, known)   # checks its hash again
        elif self._factory is not None and model.sha256 == self._factory.sha256:
            path = self._factory.path
        else:
            raise ModelUpdateError('not_cached', f'{model.label} is not among the versions '
                                   'this robot keeps: send an install')
        self._report('loading', command)
        start = time.perf_counter()
        candidate = self._load(path, model)
        load_ms = 1e3 * (time.perf_counter() - start)
        try:
            samples = self._samples_for(candidate, model, {})
        except PerceptionError as exc:
            candidate.close()
            raise ModelUpdateError('load_failed', f'on a sample photo: {exc}') from None
        return Prepared(command, model, candidate, {}, samples, load_ms)

    def commit(self, prepared: Prepared, swap_ms: float) -> ModelStatus:
        """Record that the candidate runs (swapped in ``swap_ms``); report ``active``."""
        command, model = prepared.command, prepared.model
        if command.action == 'install':
            a = command.acceptance
            self.store.begin_trial(model, command.revision, command.rollout_id, a.max_restarts,
                                   a.watch_s)
            self._watch_from = self.clock.monotonic()
        else:
            factory = self._factory is not None and model.sha256 == self._factory.sha256 \
                and self.store.find_known(model.sha256) is None
            self.store.activate(None if factory else model)
            self._watch_from = None
        self.running = model
        self.frames.set_samples(prepared.samples)
        metrics = {**prepared.metrics, 'swap_ms': round(swap_ms, 4)}
        return self._report('active', command, metrics=metrics)

    def discard(self, prepared: Prepared, error: ModelUpdateError) -> None:
        """Close a candidate that could not be swapped in and report why."""
        prepared.candidate.close()
        if prepared.command.action == 'install':
            self.store.release(prepared.model)
        self._fail(prepared.command, error)

    # --- statuses --------------------------------------------------------------------------

    def _fail(self, command: ModelCommand | None, error: ModelUpdateError) -> None:
        if error.reason in ('rejected', 'superseded'):
            self.rejected += 1
        _LOG.warning('model update refused: %s', error)
        self._report('failed', command, reason=str(error)[:1000])

    def _report(self, state: str, command: ModelCommand | None = None, *,
                model: ModelRef | None = None, reason: str = '',
                metrics: dict[str, float] | None = None, rollout_id: str = '',
                revision: int = 0) -> ModelStatus:
        status = ModelStatus(state=state,
                             rollout_id=command.rollout_id if command else rollout_id,
                             revision=command.revision if command else revision,
                             model=command.model if command else model,
                             active=self.running, reason=reason, metrics=metrics or {},
                             stamp=self.clock.wall())
        self.report(status)
        return status


class _Refused(Exception):
    def __init__(self, error: ModelUpdateError, command: ModelCommand | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.command = command


# --- what the running model did -------------------------------------------------------------

class MetricsWindow:
    """Frames, errors, latency and detections of the running model over one period."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._detections = 0
        self._errors = 0
        self._since = clock.monotonic()

    def record(self, latency_ms: float, detections: int) -> None:
        """One frame processed in ``latency_ms`` with ``detections`` published."""
        with self._lock:
            if len(self._latencies) < 100_000:
                self._latencies.append(latency_ms)
            self._detections += detections

    def error(self) -> None:
        """One frame that failed."""
        with self._lock:
            self._errors += 1

    def reset(self) -> None:
        """Start a new period (a new model runs)."""
        with self._lock:
            self._latencies, self._detections, self._errors = [], 0, 0
            self._since = self.clock.monotonic()

    def summary(self, model: ModelRef) -> ModelMetrics:
        """Return the period so far as ModelMetrics of ``model``; start a new period."""
        with self._lock:
            latencies, detections, errors = self._latencies, self._detections, self._errors
            now = self.clock.monotonic()
            window = max(0.0, min(now - self._since, 86_400.0))
            self._latencies, self._detections, self._errors = [], 0, 0
            self._since = now
        frames = len(latencies)
        p50 = percentile(latencies, 0.5) if frames else 0.0
        p99 = percentile(latencies, 0.99) if frames else 0.0
        return ModelMetrics(model=model, window_s=window, frames=frames, errors=errors,
                            latency_p50_ms=min(p50, 1e6), latency_p99_ms=min(p99, 1e6),
                            detections_mean=min(detections / frames, 1e4) if frames else 0.0,
                            stamp=self.clock.wall())
