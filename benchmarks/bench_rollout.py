"""A model rollout to a 100-robot fleet: time to 100 %, bytes per robot, and the fetch vs HTTP.

One mosquitto on 127.0.0.1; the planner service (its own thread, as planner_node runs it)
with the rollout controller; ``--robots`` simulated robots (``tools/fleet_sim.py``: the real
bridge core each, the real MQTT link, outbox, command verifier and chunk fetcher; the
detector side "light": the signed command and the file's sha256 checked, then ``active``;
this machine cannot run 100 detectors). The candidate is the real default model at 320
(11.7 MB). The rollout goes 5 % -> 25 % -> 100 % with ``--observe-s`` of metrics per gate.

Measured: time from the rollout's start to each step's robots all running the candidate and
to 100 %; the share of it the gates' observation takes (the rest is fetch, verify and swap);
bytes the cloud sent per robot against the file's size; the robots' own chunk counters.

The peer, in the same run: the same file fetched by one robot over plain HTTP from a local
server (``http.server`` + ``urllib``, what a robot pulling an MLflow artifact URL does)
against one robot fetching it in chunks over MQTT through the broker, uncapped and at the
default 4 MB/s cap.

Run (loopback only): tools/run_isolated.sh .venv/bin/python benchmarks/bench_rollout.py
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from cobot_hybrid_perception.models import default_model_path
from cobot_hybrid_planner.rollout import RolloutController, RolloutSpec
from cobot_hybrid_planner.rollout_gates import GateConfig
from cobot_hybrid_protocol.model_update import Acceptance, ModelRef

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'tools'))
from fleet_sim import Cloud, SimRobot  # noqa: E402
from local_broker import start_mosquitto  # noqa: E402


def _ref(path: Path, name: str, version: int) -> ModelRef:
    data = path.read_bytes()
    return ModelRef(name, version, hashlib.sha256(data).hexdigest(), len(data), 320)


class CloudProcess:
    """``cobot-hybrid serve`` in a process of its own, as in the cloud.

    (In one process with 100 robots the planner's paho thread would get a descriptor above
    1023, which paho's own loop passes to select(): a limit of this all-in-one set-up.)
    """

    def __init__(self, work: Path, port: int, robots: list[str]) -> None:
        key = Ed25519PrivateKey.generate()
        self.pub = work / 'planner.pub'
        self.pub.write_bytes(key.public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
        pem = work / 'planner.pem'
        pem.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                          NoEncryption()))
        site = work / 'site.yaml'
        site.write_text(json.dumps({'stations': {'a': {'x': 0, 'y': 0}},
                                    'robots': {r: {'capabilities': ['pick'], 'start': 'a'}
                                               for r in robots}}))
        self.data = work / 'cloud'
        self.process = subprocess.Popen(
            [sys.executable, '-m', 'cobot_hybrid_cli', 'serve', '--site', str(site), '--key',
             str(pem), '--port', str(port), '--data-dir', str(self.data)],
            stdout=subprocess.DEVNULL, stderr=open(work / 'planner.log', 'wb'))
        self.rollouts = RolloutController(self.data / 'rollouts', _no_send, _no_send)

    def stop(self) -> None:
        """Stop the planner."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _no_send(*args: object) -> bytes:
    raise RuntimeError('the planner process sends, not this one')


def fleet_rollout(work: Path, port: int, n: int, observe_s: float, model: Path) -> dict:
    robots = [f'robot-{i:03d}' for i in range(n)]
    cloud = CloudProcess(work, port, robots)
    champion = _ref(model, 'champion', 1)
    candidate_file = work / 'candidate.onnx'
    candidate_file.write_bytes(model.read_bytes() + b'\0' * 16)   # another version
    candidate = _ref(candidate_file, 'detector', 2)
    sims = [SimRobot(r, port, work / 'edge', cloud.pub, start_ref=champion,
                     metrics_period_s=1.0) for r in robots]
    for sim in sims:
        sim.start()
    rollouts = cloud.rollouts
    deadline = time.monotonic() + 120
    while not all(s.bridge.link.stats.connected for s in sims) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3.0)    # the planner sees them online
    spec = RolloutSpec('bench', candidate, champion, {r: f'site-{i % 5}'
                                                      for i, r in enumerate(robots)},
                       gates=GateConfig(min_frames=20, min_windows=2), observe_s=observe_s,
                       step_timeout_s=600.0, chunk_bytes=128 * 1024,
                       acceptance=Acceptance(watch_s=observe_s))
    start = time.monotonic()
    rollouts.create(spec, candidate_file, time.time())
    reached: dict[int, float] = {}
    state = 'running'
    while state == 'running' and time.monotonic() - start < 900:
        status = rollouts.status('bench')
        state = status['state']
        for threshold in (max(1, round(0.05 * n)), max(1, round(0.25 * n)), n):
            if status['on_candidate'] >= threshold and threshold not in reached:
                reached[threshold] = time.monotonic() - start
        time.sleep(0.2)
    total = time.monotonic() - start
    fetch = {}
    for sim in sims:
        for key, value in sim.bridge.stats()['model_fetch'].items():
            fetch[key] = fetch.get(key, 0) + value
    result = {'robots': n, 'state': state, 'reached': reached, 'total_s': total,
              'gated_steps': len(spec.steps) - 1, 'observe_s': observe_s,
              'bytes_per_robot': sum(s.bridge._fetcher.bytes_received for s in sims
                                     if s.bridge._fetcher) / n,
              'file_bytes': candidate.size_bytes, 'fetch': fetch,
              'swaps': sum(len(s.swaps) for s in sims)}
    for sim in sims:
        sim.stop()
    cloud.stop()
    return result


def single_fetch_mqtt(work: Path, port: int, model: Path, cap: float, robot: str) -> float:
    """Seconds for one robot to fetch the file in chunks through the broker."""
    robots = [robot]
    cloud = Cloud(work, port, robots)
    champion_file = work / 'old.onnx'
    champion_file.write_bytes(b'old model' * 1000)
    champion = _ref(champion_file, 'champion', 1)
    candidate = _ref(model, 'detector', 2)
    sim = SimRobot(robot, port, work / 'edge', cloud.pub, start_ref=champion,
                   max_bytes_per_s=cap).start()
    deadline = time.monotonic() + 30
    while robot not in cloud.service.online() and time.monotonic() < deadline:
        time.sleep(0.05)
    spec = RolloutSpec(robot, candidate, champion, {robot: 's'}, steps=(1.0,),
                       chunk_bytes=128 * 1024)
    start = time.monotonic()
    cloud.service.rollouts.create(spec, model, time.time())
    while sim.active != candidate and time.monotonic() - start < 300:
        time.sleep(0.01)
    elapsed = time.monotonic() - start
    sim.stop()
    cloud.stop()
    return elapsed


def single_fetch_http(model: Path) -> float:
    """Seconds for one plain HTTP GET of the file from a local server, written to disk."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(model.parent))
    handler.log_message = lambda *a: None   # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f'http://127.0.0.1:{server.server_address[1]}/{model.name}'
    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        with urllib.request.urlopen(url) as response, open(Path(tmp) / 'f', 'wb') as out:
            digest = hashlib.sha256()
            for block in iter(lambda: response.read(1024 * 1024), b''):
                out.write(block)
                digest.update(block)
        elapsed = time.monotonic() - start
    server.shutdown()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--robots', type=int, default=100)
    parser.add_argument('--observe-s', type=float, default=5.0)
    args = parser.parse_args()
    model = default_model_path(320)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker, port = start_mosquitto(work)
        try:
            http_s = single_fetch_http(model)
            (work / 'a').mkdir()
            mqtt_s = single_fetch_mqtt(work / 'a', port, model, 8e6, 'solo-a')
            (work / 'b').mkdir()
            capped_s = single_fetch_mqtt(work / 'b', port, model, 4e6, 'solo-b')
            (work / 'fleet').mkdir()
            fleet = fleet_rollout(work / 'fleet', port, args.robots, args.observe_s, model)
        finally:
            broker.terminate()
            broker.wait(timeout=10)
    size_mb = model.stat().st_size / 1e6
    print(f'\nOne robot, {size_mb:.1f} MB model, loopback:')
    print('| fetch | seconds | MB/s |')
    print('|---|---|---|')
    print(f'| plain HTTP GET (peer: an artifact URL) | {http_s:.3f} | {size_mb / http_s:.0f} |')
    print(f'| ours: chunks over MQTT, 8 MB/s cap (the highest), to active | {mqtt_s:.3f} | '
          f'{size_mb / mqtt_s:.0f} |')
    print(f'| ours: chunks over MQTT, 4 MB/s cap, command to active | {capped_s:.3f} | '
          f'{size_mb / capped_s:.1f} |')
    n = fleet['robots']
    reached = fleet['reached']
    gates = (fleet['gated_steps'] + 1) * fleet['observe_s']   # the last step is watched too
    print(f'\nRollout to {n} robots (5 % -> 25 % -> 100 %, {fleet["observe_s"]:g} s of '
          f'metrics per gate, 4 MB/s cap per robot): {fleet["state"]}')
    print('| robots on the candidate | seconds from the start |')
    print('|---|---|')
    for count, seconds in sorted(reached.items()):
        print(f'| {count} | {seconds:.1f} |')
    print(f'| total (succeeded) | {fleet["total_s"]:.1f} (of which the gates\' observation '
          f'{gates:.0f} s) |')
    print(f'\nbytes sent per robot: {fleet["bytes_per_robot"]:.0f} (file '
          f'{fleet["file_bytes"]}: x{fleet["bytes_per_robot"] / fleet["file_bytes"]:.3f}); '
          f'swaps {fleet["swaps"]}; robots\' chunk counters '
          f'{fleet["fetch"]}')


if __name__ == '__main__':
    main()
