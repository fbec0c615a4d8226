"""Offload worker throughput and latency: snapshots per second per core, and what the ledger costs.

Snapshots in the bridge's format (:mod:`cobot_hybrid_protocol.snapshot`) of the real sample
photos, analysed by the real snapshot job on one CPU thread (one core):

* **the job alone** (the peer: what a bare serverless function would run): the analysis
  called in a loop, no broker, no ledger;
* **the worker**: the same job behind :class:`~cobot_hybrid_planner.offload.worker.Worker`
  (uploads taken into the SQLite ledger, claimed under a lease, the result and the
  embedding stored, similar incidents searched), uploads arriving all at once through the
  in-memory broker; throughput from the first upload to the last result, and the latency
  from an upload being taken to its result (p50/p99: queueing included);

for the default analysis (640 + 1280, mirrored: 4 passes) and the edge's own setting (640,
one pass), to show what the cloud's second look costs. Asserts nothing.

Run: .venv/bin/python benchmarks/bench_worker.py [--snapshots 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cobot_hybrid_perception.media import load_image, sample_photo_path  # noqa: E402
from cobot_hybrid_perception.snapshot_analysis import make_job  # noqa: E402
from cobot_hybrid_planner.offload.worker import Worker, WorkerConfig  # noqa: E402
from cobot_hybrid_protocol.envelope import build_envelope  # noqa: E402
from cobot_hybrid_protocol.offload import Upload  # noqa: E402
from cobot_hybrid_protocol.snapshot import SNAPSHOT_TYPE, build_snapshot  # noqa: E402
from cobot_hybrid_protocol.topics import robot_topic  # noqa: E402
from cobot_hybrid_protocol.transport import MemoryBroker  # noqa: E402

PHOTOS = ('bus', 'zidane', 'astronaut', 'camera', 'coffee')


def snapshots(count: int) -> list[bytes]:
    out = []
    for seq in range(1, count + 1):
        image = load_image(sample_photo_path(PHOTOS[seq % len(PHOTOS)]))
        ok, jpeg = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        now = time.time()
        data = {'image': {'width': image.shape[1], 'height': image.shape[0], 'frame_id': 'c',
                          'stamp': now, 'bytes': len(jpeg)},
                'trigger': {'topic': 'protective_stop', 'field': 'data', 'value': True,
                            'stamp': now}, 'context': {}}
        out.append(build_snapshot(build_envelope('cobot-1', seq, now, 'image', SNAPSHOT_TYPE,
                                                 data), jpeg.tobytes()))
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--snapshots', type=int, default=20)
    args = parser.parse_args()
    payloads = snapshots(args.snapshots)
    mean_kb = statistics.fmean(len(p) for p in payloads) / 1024
    print(f'{args.snapshots} snapshots of the sample photos, {mean_kb:.0f} KB on average; '
          'one CPU thread')
    print(f'{"analysis":<22} {"runner":<10} {"per snapshot ms p50":>20} {"p99":>8} '
          f'{"snapshots/s/core":>17} {"taken->result p50 s":>20} {"p99 s":>7}')
    for label, options in (('640+1280 mirrored (4)', {}),
                           ('640 (1 pass)', {'sizes': '640', 'tta': 'false'})):
        job = make_job({'threads': '1', **options})
        job(Upload('cobot-1', 1, 'events/stop_snapshot', payloads[0], 0.0))   # warm up
        times = []
        t0 = time.perf_counter()
        for seq, payload in enumerate(payloads, 1):
            t = time.perf_counter()
            job(Upload('cobot-1', seq, 'events/stop_snapshot', payload, 0.0))
            times.append((time.perf_counter() - t) * 1e3)
        alone = len(payloads) / (time.perf_counter() - t0)
        print(f'{label:<22} {"job alone":<10} {pct(times, 0.5):>20.0f} {pct(times, 0.99):>8.0f} '
              f'{alone:>17.2f}', flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            broker = MemoryBroker()
            worker = Worker(WorkerConfig(data_dir=tmp, worker_id='bench', concurrency=1,
                                         status_period_s=3600.0),
                            broker.transport('bench'), {'snapshot': job})
            worker.start()
            robot = broker.transport('cobot-1')
            robot.connect([], lambda m: None)
            t0 = time.perf_counter()
            for payload in payloads:
                robot.publish(robot_topic('cobot-1', 'events/stop_snapshot'), payload)
            while worker.ledger.stats(time.time())['done'] < len(payloads):
                worker.step()
                time.sleep(0.002)
            elapsed = time.perf_counter() - t0
            waits = [r['done_s'] - r['received_s'] for r in worker.ledger.results()]
            per = [(b - a) * 1e3 for a, b in zip(sorted(r['done_s'] for r in
                                                        worker.ledger.results())[:-1],
                                                 sorted(r['done_s'] for r in
                                                        worker.ledger.results())[1:],
                                                 strict=True)]
            worker.close()
        print(f'{label:<22} {"worker":<10} {pct(per, 0.5):>20.0f} {pct(per, 0.99):>8.0f} '
              f'{len(payloads) / elapsed:>17.2f} {pct(waits, 0.5):>20.2f} '
              f'{pct(waits, 0.99):>7.2f}', flush=True)
        job.analyser.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
