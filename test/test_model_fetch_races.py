"""ModelFetcher HTTP thread races (a local server on loopback)."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time

from cobot_hybrid_bridge.model_fetch import FetchConfig, ModelFetcher
from cobot_hybrid_protocol.model_update import ModelCommand, ModelRef, Source

T0 = 1_800_000_000.0
DATA = hashlib.sha256(b'x').digest() * (1024 * 1024 // 32)      # 1 MiB
REF = ModelRef('m', 2, hashlib.sha256(DATA).hexdigest(), len(DATA), 320)


def serve(stall_first_s: float, first_bytes: int):
    state = {'n': 0}

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            state['n'] += 1
            n = state['n']
            start = 0
            rng = self.headers.get('Range')
            if rng:
                start = int(rng.split('=')[1].rstrip('-'))
                self.send_response(206)
                self.send_header('Content-Range', f'bytes {start}-{len(DATA)-1}/{len(DATA)}')
            else:
                self.send_response(200)
            body = DATA[start:]
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            try:
                if n == 1:
                    self.wfile.write(body[:first_bytes])
                    self.wfile.flush()
                    time.sleep(stall_first_s)
                    self.wfile.write(body[first_bytes:])
                else:
                    self.wfile.write(body)
            except OSError:
                pass

    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f'http://127.0.0.1:{srv.server_address[1]}/m.onnx'


def cmd(rev, source):
    return ModelCommand(f'c{rev}', 'r', 'ro', rev, T0, T0 + 3600, 'install', REF, source)


def test_a_resend_during_a_stalled_http_read_does_not_corrupt_the_file(tmp_path):
    srv, url = serve(stall_first_s=7.0, first_bytes=256 * 1024)
    f = ModelFetcher(tmp_path, FetchConfig(model_fetch_max_bytes_per_s=8e6), lambda raw: None,
                     lambda: T0)
    f.start(cmd(1, Source('http', url=url)), b'{}')
    f.tick()
    time.sleep(1.0)                     # thread 1 is blocked in read (server stalls 7 s)
    f.start(cmd(2, Source('http', url=url)), b'{}')     # the cloud's re-send after resend_s
    ready, statuses = None, []
    for _ in range(200):
        step = f.tick()
        statuses += step.statuses
        ready = ready or step.ready
        time.sleep(0.05)
    time.sleep(3)
    done = tmp_path / f'{REF.sha256}.onnx'
    print('ready:', ready is not None, 'statuses:', [(s.state, s.reason[:80]) for s in statuses])
    if done.exists():
        data = done.read_bytes()
        print('file', len(data), 'sha ok', hashlib.sha256(data).hexdigest() == REF.sha256)
        assert hashlib.sha256(data).hexdigest() == REF.sha256, 'the kept file changed after verify'
    assert not [s for s in statuses if s.state == 'failed'], 'a resend failed the download'
    srv.shutdown()


def test_http_progress_then_mqtt_command_for_the_same_file(tmp_path):
    srv, url = serve(stall_first_s=3.0, first_bytes=100_000)
    f = ModelFetcher(tmp_path, FetchConfig(model_fetch_max_bytes_per_s=8e6), lambda raw: None,
                     lambda: T0)
    f.start(cmd(1, Source('http', url=url)), b'{}')
    f.tick()
    time.sleep(0.5)
    f.start(cmd(2, Source('mqtt', 16 * 1024)), b'{}')    # same file, chunks over MQTT now
    for _ in range(3):
        f.tick()                                           # raises?
    srv.shutdown()


def test_http_progress_then_mqtt_chunks_start_on_a_chunk_boundary(tmp_path):
    srv, url = serve(stall_first_s=0.0, first_bytes=0)
    for attempt in range(10):
        folder = tmp_path / str(attempt)
        f = ModelFetcher(folder, FetchConfig(model_fetch_max_bytes_per_s=1e6), lambda raw: None,
                         lambda: T0)
        f.start(cmd(1, Source('http', url=url)), b'{}')
        f.tick()
        time.sleep(0.1 + 0.065 * attempt)
        f.start(cmd(2, Source('mqtt', 128 * 1024)), b'{}')
        written = f._fetch.written
        print('written', written, written % (128 * 1024))
        if written % (128 * 1024):
            f.tick()              # BlobRequest at an unaligned offset: SchemaError?
            break
    srv.shutdown()
