"""The chunk fetcher's HTTP source against a real HTTP server on 127.0.0.1.

The server is ``http.server`` with Range support added here (the standard handler ignores
Range), or without it, or one that sends more than the file.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cobot_hybrid_bridge.model_fetch import FetchConfig, ModelFetcher
from cobot_hybrid_protocol.model_update import ModelCommand, ModelRef, Source

NOW = 1_800_000_000.0


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b''
    ranges = True
    extra = b''
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        type(self).requests.append(self.headers.get('Range', ''))
        match = re.fullmatch(r'bytes=(\d+)-', self.headers.get('Range', ''))
        start = int(match.group(1)) if match and self.ranges else 0
        data = self.body[start:] + self.extra
        self.send_response(206 if start else 200)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type('Handler', (_Handler,), {'requests': []})
    handler.body = hashlib.sha256(b'model').digest() * 20_000      # 640 kB
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/model.onnx', handler
    httpd.shutdown()


def _command(url: str, body: bytes, revision: int = 1, size: int | None = None) -> ModelCommand:
    ref = ModelRef('detector', 2, hashlib.sha256(body).hexdigest(), size or len(body), 320)
    return ModelCommand(f'c-{revision}', 'cobot-1', 'r-1', revision, NOW, NOW + 600, 'install',
                        ref, Source('http', url=url))


def _fetcher(folder: Path, **cfg: Any) -> ModelFetcher:
    return ModelFetcher(folder, FetchConfig(**cfg), lambda raw: None,  # type: ignore[arg-type]
                        time.time)


def _run(fetcher: ModelFetcher, seconds: float) -> list[Any]:
    statuses = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        step = fetcher.tick()
        statuses += step.statuses
        if step.ready is not None or any(s.state == 'failed' for s in step.statuses):
            return statuses + [step.ready]
        time.sleep(0.02)
    return statuses


def test_a_file_over_http_is_verified_and_capped(tmp_path: Path,
                                                  server: tuple[str, type[_Handler]]) -> None:
    url, handler = server
    fetcher = _fetcher(tmp_path, model_fetch_max_bytes_per_s=2e6)
    fetcher.start(_command(url, handler.body), b'{"envelope": 1}')
    start = time.monotonic()
    result = _run(fetcher, 10.0)
    elapsed = time.monotonic() - start
    ready = result[-1]
    assert ready is not None, result
    assert Path(ready.path).read_bytes() == handler.body
    assert [s.state for s in result[:-1]] == ['received', 'downloading', 'verifying']
    assert elapsed >= 0.25          # 640 kB at 2 MB/s: the cap held it back


def test_an_http_download_resumes_where_the_partial_file_ends(
        tmp_path: Path, server: tuple[str, type[_Handler]]) -> None:
    url, handler = server
    command = _command(url, handler.body)
    part = tmp_path / f'{command.model.sha256}.part'
    part.write_bytes(handler.body[:300_000])      # what a stopped bridge had written
    fetcher = _fetcher(tmp_path)
    fetcher.start(command, b'{}')
    ready = _run(fetcher, 10.0)[-1]
    assert ready is not None and Path(ready.path).read_bytes() == handler.body
    kept = 300_000 - 300_000 % command.source.chunk_bytes    # whole chunks are kept
    assert handler.requests == [f'bytes={kept}-']
    assert fetcher.bytes_received == len(handler.body) - kept


def test_a_server_without_range_support_is_read_from_the_start(
        tmp_path: Path, server: tuple[str, type[_Handler]]) -> None:
    url, handler = server
    handler.ranges = False
    command = _command(url, handler.body)
    (tmp_path / f'{command.model.sha256}.part').write_bytes(handler.body[:200_000])
    fetcher = _fetcher(tmp_path)
    fetcher.start(command, b'{}')
    ready = _run(fetcher, 10.0)[-1]
    assert ready is not None and Path(ready.path).read_bytes() == handler.body
    assert fetcher.counters['http_no_range'] == 1


def test_a_server_sending_more_than_the_signed_size_is_refused(
        tmp_path: Path, server: tuple[str, type[_Handler]]) -> None:
    url, handler = server
    handler.extra = b'x' * 1000
    fetcher = _fetcher(tmp_path)
    fetcher.start(_command(url, handler.body), b'{}')
    result = _run(fetcher, 10.0)
    failed = [s for s in result if s is not None and s.state == 'failed']
    assert failed and failed[0].code == 'size_mismatch', result
    assert not list(tmp_path.glob('*.onnx')) and not list(tmp_path.glob('*.part'))


def test_an_unreachable_server_is_retried_then_times_out(tmp_path: Path) -> None:
    body = b'm' * 10_000
    fetcher = _fetcher(tmp_path, model_fetch_chunk_timeout_s=0.2,
                       model_fetch_stall_timeout_s=1.0)
    fetcher.start(_command('http://127.0.0.1:9/model.onnx', body), b'{}')
    result = _run(fetcher, 10.0)
    failed = [s for s in result if s is not None and s.state == 'failed']
    assert failed and failed[0].code == 'download_timeout', result
    assert 'download_failed' in failed[0].reason          # the last error is named
    assert fetcher.counters['http_retries'] >= 1
