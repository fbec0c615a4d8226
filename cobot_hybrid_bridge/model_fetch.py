"""Model files down to the robot: chunks over MQTT, resumed, capped, verified. No ROS.

:class:`ModelFetcher` is driven by the bridge: :meth:`ModelFetcher.start` with a verified
``cmd/model`` (the signed envelope too), :meth:`ModelFetcher.on_chunk` for every
``cobot/v1/<robot_id>/blob/<sha256>/<offset>`` that arrives, :meth:`ModelFetcher.tick` on the
bridge's timer. The tick returns what to do: the window of chunks to ask for
(``events/blob_request``), statuses to send up, and the :class:`LocalUpdate` to hand to the
detector once the file is complete and its size and sha256 match the signed command.

* **Resume**: chunks are written in order to ``<sha256>.part``; the command waits in
  ``pending.json`` (written atomically). After a restart, a reconnect or an outage the
  fetch continues from the partial file's size: nothing that arrived is asked for again.
* **Bandwidth cap**: a token bucket of ``max_bytes_per_s``; a window of at most
  ``window_chunks`` chunks is outstanding at a time.
* **Hostile chunks**: a chunk of another file, of an offset that was not asked for or of the
  wrong length is dropped and counted (``chunks_dropped``); a file whose sha256 differs from
  the signed one is deleted and reported ``hash_mismatch`` with both digests (TCP and TLS do
  not corrupt bytes in flight: a mismatch is a wrong file or a wrong command, so it is not
  fetched again).
* **Stalls**: a window that did not arrive in ``chunk_timeout_s`` is asked for again; no
  chunk for ``stall_timeout_s`` while online is ``download_timeout``. Offline time does not
  count.
* **Space**: less free space than the file plus a margin is ``no_space`` before anything is
  written; a write that fails for lack of space is ``no_space`` too.
* **HTTP** (``source.kind = http``, for robots that reach the artifact store): the same file,
  resumed with a ``Range`` request from the partial file's size (a server without Range
  support is read from the start again, counted), at most the cap, on a thread of its own; a
  failed request is retried after ``chunk_timeout_s``, a server sending more than the signed
  size is ``size_mismatch``, and the sha256 check is the same.

A newer command replaces the one in progress (the same file keeps its progress). Completed
files stay in the folder (the last ``keep_files``) so a rollback to one of them needs no
download.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import logging
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_protocol.errors import PayloadError, SchemaError, SignatureError
from cobot_hybrid_protocol.limits import Limits, read_json_file
from cobot_hybrid_protocol.model_update import (
    MAX_FETCH_BYTES_PER_S,
    BlobRequest,
    LocalUpdate,
    ModelCommand,
    ModelStatus,
    file_digest,
)
from cobot_hybrid_protocol.settings import check_settings, setting

__all__ = ['FetchConfig', 'FetchStep', 'ModelFetcher']

_LOG = logging.getLogger(__name__)
_PENDING = 'pending.json'
_PENDING_LIMITS = Limits(max_bytes=512 * 1024, max_depth=2, max_string=400 * 1024,
                         max_items=8, max_values=16)
_SPACE_MARGIN = 64 * 1024 * 1024


@dataclass(frozen=True)
class FetchConfig:
    """How model files are fetched (``bridge_node`` re-exposes these)."""

    model_fetch_max_bytes_per_s: float = setting(
        4e6, 'bandwidth cap of a model download (the cloud serves a robot at most 8 MB/s)',
        unit='bytes/s', low=1e3, high=MAX_FETCH_BYTES_PER_S)
    model_fetch_window_chunks: int = setting(8, 'chunks of a model file asked for at once',
                                             low=1, high=64)
    model_fetch_chunk_timeout_s: float = setting(
        10.0, 'ask again for chunks that did not arrive within', unit='s', low=0.1,
        high=3600.0)
    model_fetch_stall_timeout_s: float = setting(
        600.0, 'give a download up when no chunk arrived for this long while online',
        unit='s', low=1.0, high=86_400.0)
    model_keep_files: int = setting(3, 'fetched model files kept for rollbacks', low=1,
                                    high=100)

    def __post_init__(self) -> None:
        check_settings(self, BridgeError)


@dataclass
class FetchStep:
    """What one tick asks the bridge to do."""

    requests: list[BlobRequest] = field(default_factory=list)
    statuses: list[ModelStatus] = field(default_factory=list)
    ready: LocalUpdate | None = None


@dataclass
class _Fetch:
    command: ModelCommand
    envelope: bytes
    written: int = 0                          # bytes in <sha>.part, in order
    asked: dict[int, float] = field(default_factory=dict)   # offset -> when asked
    early: dict[int, bytes] = field(default_factory=dict)   # arrived ahead of `written`
    last_progress: float = 0.0
    started: bool = False
    # source http: one download thread at a time, retried after chunk_timeout_s
    thread: threading.Thread | None = None
    error: str = ''
    retry_at: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)


class ModelFetcher:
    """One download at a time into ``folder``; the newest command wins."""

    def __init__(self, folder: Path, cfg: FetchConfig,
                 reopen: Callable[[bytes], ModelCommand],
                 now: Callable[[], float],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.folder = folder
        self.cfg = cfg
        self._wall = now           # the stamps of statuses
        self._now = monotonic      # every timer: a wall clock that jumps is not a stall
        self.counters: Counter[str] = Counter()
        self.bytes_received = 0
        self._fetch: _Fetch | None = None
        self._write_lock = threading.Lock()     # HTTP threads' writes against stopping them
        self._budget = 0.0
        self._budget_at = monotonic()
        self._pending_step = FetchStep()
        folder.mkdir(parents=True, exist_ok=True)
        self._resume(reopen)

    # --- commands ------------------------------------------------------------------------

    def start(self, command: ModelCommand, envelope: bytes) -> None:
        """Take a verified command; what follows comes out of :meth:`tick`."""
        step = self._pending_step
        current = self._fetch
        if current is not None and current.command.model.sha256 != command.model.sha256:
            step.statuses.append(self._status('failed', current.command,
                                              f'superseded: revision {command.revision} '
                                              f'({command.model.label}) came'))
            self._discard(current)
        self._fetch = None
        step.statuses.append(self._status('received', command))
        done = self.folder / f'{command.model.sha256}.onnx'
        if command.action == 'rollback':
            path = str(done) if done.is_file() else ''
            step.ready = LocalUpdate(envelope.decode(), path)
            self._drop_pending()
            return
        if done.is_file():
            if self._verified(done, command, step):
                step.ready = LocalUpdate(envelope.decode(), str(done))
                self._drop_pending()
            return
        free = shutil.disk_usage(self.folder).free
        if free < command.model.size_bytes + _SPACE_MARGIN:
            step.statuses.append(self._status(
                'failed', command, f'no_space: {command.model.size_bytes} bytes needed, '
                f'{free} free in {self.folder} (margin {_SPACE_MARGIN})'))
            return
        keep = current if current is not None and \
            current.command.model.sha256 == command.model.sha256 else None
        if keep is not None:
            self._stop_thread(keep)     # the new command's source instead
        # Whole chunks of the partial file only (an HTTP thread writes 64 KiB blocks).
        self._fetch = _Fetch(command, envelope, written=self._part_size(command),
                             last_progress=self._now())
        self._save_pending()

    def on_chunk(self, sha256: str, offset: int, data: bytes) -> None:
        """Take a chunk that arrived (not from the paho thread: the bridge queues it)."""
        fetch = self._fetch
        if fetch is None or sha256 != fetch.command.model.sha256:
            self.counters['chunks_dropped_other_file'] += 1
            return
        size, chunk = fetch.command.model.size_bytes, fetch.command.source.chunk_bytes
        if offset not in fetch.asked or offset < fetch.written:
            self.counters['chunks_dropped_not_asked'] += 1
            return
        if len(data) != min(chunk, size - offset):
            self.counters['chunks_dropped_bad_length'] += 1
            return
        del fetch.asked[offset]
        fetch.early[offset] = data
        fetch.last_progress = self._now()
        self.bytes_received += len(data)
        self.counters['chunks'] += 1

    def tick(self, online: bool = True) -> FetchStep:
        """Write what arrived, finish or fail, and say which chunks to ask for next."""
        step, self._pending_step = self._pending_step, FetchStep()
        fetch = self._fetch
        now = self._now()
        self._budget = min(self._budget + (now - self._budget_at)
                           * self.cfg.model_fetch_max_bytes_per_s, self._burst())
        self._budget_at = now
        if fetch is None:
            return step
        if not fetch.started:
            fetch.started = True
            step.statuses.append(self._status('downloading', fetch.command,
                                              metrics={'bytes_fetched': fetch.written}))
        try:
            self._write(fetch)
        except OSError as exc:
            reason = 'no_space' if exc.errno == errno.ENOSPC else 'download_failed'
            step.statuses.append(self._status('failed', fetch.command, f'{reason}: {exc}'))
            self._discard(fetch)
            return step
        model = fetch.command.model
        if fetch.command.source.kind == 'http':
            return self._tick_http(fetch, step, now)
        if fetch.written >= model.size_bytes:
            self._finish(fetch, step)
            return step
        if not online:
            fetch.last_progress = now        # offline time is not a stall
            fetch.asked.clear()              # ask again once online
            return step
        if now - fetch.last_progress > self.cfg.model_fetch_stall_timeout_s:
            step.statuses.append(self._status(
                'failed', fetch.command, f'download_timeout: no chunk for '
                f'{now - fetch.last_progress:.0f} s at {fetch.written}/{model.size_bytes} '
                'bytes'))
            self._discard(fetch)
            return step
        for offset, asked_at in list(fetch.asked.items()):
            if now - asked_at > self.cfg.model_fetch_chunk_timeout_s:
                del fetch.asked[offset]
                self.counters['chunks_asked_again'] += 1
        step.requests.extend(self._requests(fetch, now))
        return step

    # --- source http: Range requests on a thread ------------------------------------------

    def _tick_http(self, fetch: _Fetch, step: FetchStep, now: float) -> FetchStep:
        model = fetch.command.model
        running = fetch.thread is not None and fetch.thread.is_alive()
        if not running and fetch.written >= model.size_bytes and not fetch.error:
            self._finish(fetch, step)
            return step
        code = fetch.error.split(':', 1)[0]
        if not running and code in ('size_mismatch', 'no_space'):
            step.statuses.append(self._status('failed', fetch.command, fetch.error))
            self._discard(fetch)
            return step
        if now - fetch.last_progress > self.cfg.model_fetch_stall_timeout_s:
            step.statuses.append(self._status(
                'failed', fetch.command, f'download_timeout: nothing from '
                f'{fetch.command.source.url[:200]} for {now - fetch.last_progress:.0f} s at '
                f'{fetch.written}/{model.size_bytes} bytes'
                + (f' (last error: {fetch.error})' if fetch.error else '')))
            self._discard(fetch)
            return step
        if not running and now >= fetch.retry_at:
            if fetch.error:
                self.counters['http_retries'] += 1
            fetch.error = ''
            fetch.retry_at = now + self.cfg.model_fetch_chunk_timeout_s
            fetch.thread = threading.Thread(target=self._download, args=(fetch,),
                                            name='model-fetch', daemon=True)
            fetch.thread.start()
        return step

    def _download(self, fetch: _Fetch) -> None:
        """Fetch the rest of the file with a Range request, at most the cap (a thread)."""
        command, cap = fetch.command, self.cfg.model_fetch_max_bytes_per_s
        size = command.model.size_bytes
        headers = {'Range': f'bytes={fetch.written}-'} if fetch.written else {}
        try:
            request = urllib.request.Request(command.source.url, headers=headers)
            with urllib.request.urlopen(request,
                                        timeout=self.cfg.model_fetch_chunk_timeout_s) as reply, \
                    open(self._part(command), 'ab') as part:
                if fetch.written and reply.status != 206:   # no Range support: from 0
                    part.truncate(0)
                    fetch.written = 0
                    self.counters['http_no_range'] += 1
                started, got = time.monotonic(), 0
                while not fetch.stop.is_set():
                    block = reply.read(min(64 * 1024, size - fetch.written + 1))
                    if not block:
                        break
                    with self._write_lock:      # a stopped thread never writes again
                        if fetch.stop.is_set():
                            return
                        if fetch.written + len(block) > size:
                            fetch.error = (f'size_mismatch: {command.source.url[:200]} sends '
                                           f'more than the {size} bytes the command says')
                            break
                        part.write(block)
                        part.flush()
                        fetch.written += len(block)
                    got += len(block)
                    self.bytes_received += len(block)
                    fetch.last_progress = self._now()
                    ahead = got / cap - (time.monotonic() - started)
                    if ahead > 0:
                        fetch.stop.wait(ahead)
                part.flush()
                os.fsync(part.fileno())
        except OSError as exc:
            no_space = getattr(exc, 'errno', None) == errno.ENOSPC
            fetch.error = f'{"no_space" if no_space else "download_failed"}: {exc}'[:500]
        except (http.client.HTTPException, ValueError) as exc:
            fetch.error = f'download_failed: {type(exc).__name__}: {exc}'[:500]
        if fetch.error:
            _LOG.warning('model download from %s: %s (retried)', command.source.url[:200],
                         fetch.error)

    # --- internals -----------------------------------------------------------------------

    def _burst(self) -> float:
        fetch = self._fetch
        chunk = fetch.command.source.chunk_bytes if fetch else 0
        return float(max(chunk, 1) * self.cfg.model_fetch_window_chunks)

    def _requests(self, fetch: _Fetch, now: float) -> list[BlobRequest]:
        model, chunk = fetch.command.model, fetch.command.source.chunk_bytes
        offsets: list[int] = []
        offset = fetch.written
        while offset < model.size_bytes and len(fetch.asked) + len(offsets) \
                < self.cfg.model_fetch_window_chunks:
            if offset not in fetch.asked and offset not in fetch.early:
                length = min(chunk, model.size_bytes - offset)
                if self._budget < length:
                    break
                self._budget -= length
                offsets.append(offset)
            offset += chunk
        requests: list[BlobRequest] = []
        for offset in offsets:       # contiguous runs: one request each
            fetch.asked[offset] = now
            if requests and requests[-1].offset + requests[-1].length == offset:
                last = requests[-1]
                requests[-1] = BlobRequest(model.sha256, last.offset,
                                           last.length + min(chunk, model.size_bytes - offset),
                                           chunk)
            else:
                requests.append(BlobRequest(model.sha256, offset,
                                            min(chunk, model.size_bytes - offset), chunk))
        return requests

    def _write(self, fetch: _Fetch) -> None:
        if fetch.written not in fetch.early:
            return
        with open(self._part(fetch.command), 'ab') as part:
            while fetch.written in fetch.early:
                data = fetch.early.pop(fetch.written)
                part.write(data)
                fetch.written += len(data)
            part.flush()
            os.fsync(part.fileno())

    def _finish(self, fetch: _Fetch, step: FetchStep) -> None:
        command = fetch.command
        step.statuses.append(self._status('verifying', command,
                                          metrics={'bytes_fetched': fetch.written}))
        part = self._part(command)
        done = self.folder / f'{command.model.sha256}.onnx'
        part.replace(done)
        self._fetch = None
        self._drop_pending()
        if self._verified(done, command, step):
            step.ready = LocalUpdate(fetch.envelope.decode(), str(done))
            self._prune(keep=done)

    def _verified(self, path: Path, command: ModelCommand, step: FetchStep) -> bool:
        model = command.model
        size = path.stat().st_size
        if size != model.size_bytes:
            path.unlink(missing_ok=True)
            step.statuses.append(self._status('failed', command, f'size_mismatch: the file '
                                              f'has {size} bytes, the command says '
                                              f'{model.size_bytes}'))
            return False
        digest, _ = file_digest(path)
        if digest != model.sha256:
            path.unlink(missing_ok=True)
            self.counters['hash_mismatch'] += 1
            step.statuses.append(self._status(
                'failed', command, f'hash_mismatch: the file is sha256 {digest}, '
                f'the command says {model.sha256} (a wrong file in the registry, or a wrong '
                'command: not fetched again)'))
            return False
        return True

    def _prune(self, keep: Path) -> None:
        files = sorted(self.folder.glob('*.onnx'), key=lambda p: p.stat().st_mtime,
                       reverse=True)
        for old in files[self.cfg.model_keep_files:]:
            if old != keep:
                old.unlink(missing_ok=True)

    def _stop_thread(self, fetch: _Fetch) -> None:
        """Stop a download thread: after this it writes nothing more, even if still blocked."""
        with self._write_lock:
            fetch.stop.set()
        if fetch.thread is not None:
            fetch.thread.join(timeout=1.0)

    def _discard(self, fetch: _Fetch) -> None:
        self._stop_thread(fetch)
        self._part(fetch.command).unlink(missing_ok=True)
        if self._fetch is fetch:
            self._fetch = None
        self._drop_pending()

    def _part(self, command: ModelCommand) -> Path:
        return self.folder / f'{command.model.sha256}.part'

    def _part_size(self, command: ModelCommand) -> int:
        """Bytes of a partial file to keep: whole chunks only (a torn last write goes)."""
        part = self._part(command)
        if not part.is_file():
            return 0
        size = part.stat().st_size
        keep = min(size - size % command.source.chunk_bytes, command.model.size_bytes)
        if keep != size:
            with open(part, 'r+b') as handle:
                handle.truncate(keep)
        return keep

    def _status(self, state: str, command: ModelCommand, reason: str = '',
                metrics: dict[str, float] | None = None) -> ModelStatus:
        return ModelStatus(state, command.rollout_id, command.revision, command.model,
                           None, reason[:1000], dict(metrics or {}), self._wall())

    def _save_pending(self) -> None:
        fetch = self._fetch
        if fetch is None:
            return
        tmp = self.folder / f'{_PENDING}.tmp'
        with open(tmp, 'w') as handle:
            json.dump({'envelope': fetch.envelope.decode()}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.folder / _PENDING)

    def _drop_pending(self) -> None:
        (self.folder / _PENDING).unlink(missing_ok=True)

    def _resume(self, reopen: Callable[[bytes], ModelCommand]) -> None:
        """Continue the download that was in progress when the bridge stopped."""
        path = self.folder / _PENDING
        if not path.is_file():
            return
        try:
            body = read_json_file(path, _PENDING_LIMITS, 'the pending model download')
            if not isinstance(body, dict) or not isinstance(body.get('envelope'), str):
                raise SchemaError('pending.json must hold {"envelope": "..."}')
            envelope = body['envelope'].encode()
            command = reopen(envelope)
        except (PayloadError, SchemaError, SignatureError, UnicodeError) as exc:
            _LOG.error('the pending model download %s cannot be resumed (%s): dropped; the '
                       'cloud sends the command again', path, exc)
            with contextlib.suppress(OSError):
                path.replace(path.with_suffix('.corrupt'))
            return
        self.start(command, envelope)
        self._pending_step.statuses = [s for s in self._pending_step.statuses
                                       if s.state != 'received']
        _LOG.info('resuming the download of %s at %d bytes', command.model.label,
                  self._fetch.written if self._fetch else 0)
