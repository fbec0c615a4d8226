"""Durable uplink vs raw paho, backlog drain rate, and memory with a 100,000-message backlog.

Against one real mosquitto on 127.0.0.1 (started here), the consumer in its own process, in
the same run:

1. throughput of 1 KB messages: raw paho QoS 1 (in-flight 20, nothing on disk), raw paho
   sending the same user properties as the bridge (robot_id, seq, stamp), and ours (each
   message committed to SQLite with synchronous=FULL in 20 ms group commits before it is
   published, deleted in bulk once delivered) in both delivery modes: ``broker`` (delivered
   on the PUBACK) and ``cloud`` (delivered when the consumer acknowledges what it stored; the
   sink acknowledges every 20 ms, as seq ranges, like the planner after each step).
   Target: ours >= 0.8x raw.
2. drain rate after an outage: 100,000 messages queued while the broker was unreachable, then
   the link comes up; target >= 5x a live input of 200 msg/s.
3. peak RSS of the process holding that 100,000-message backlog; target <= 150 MB.

Run (loopback only): tools/run_isolated.sh .venv/bin/python benchmarks/bench_bridge.py
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from cobot_hybrid_bridge.durable_queue import DurableQueue, QueueConfig
from cobot_hybrid_bridge.mqtt_link import LinkConfig, MqttLink
from cobot_hybrid_bridge.mqtt_properties import UserProperties, pack_pair

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'tools'))
from local_broker import start_mosquitto  # noqa: E402

PAYLOAD = b'x' * 1024
WINDOW = 20


_SINK = """
import sys, threading, time, paho.mqtt.client as mqtt
from cobot_hybrid_protocol.delivery import DeliveredSeqs
count = [0]
stored, lock = DeliveredSeqs(), threading.Lock()
def on_message(client, userdata, message):
    count[0] += 1
    props = dict(getattr(message.properties, 'UserProperty', []) or [])
    if props.get('robot_id') == 'bench-cloud':   # only the cloud-mode runs expect acks
        with lock:
            stored.add(props['robot_id'], int(props['seq']))
def acknowledge():
    while True:
        time.sleep(0.02)
        with lock:
            acks = stored.take()
        for topic, payload in acks:
            client.publish(topic, payload, qos=1)
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id='sink', protocol=mqtt.MQTTv5)
client.on_message = on_message
client.connect('127.0.0.1', int(sys.argv[1]))
client.subscribe('bench/#', qos=1)
client.loop_start()
threading.Thread(target=acknowledge, daemon=True).start()
print('ready', flush=True)
for _ in sys.stdin:   # a line in: how many so far, out
    print(count[0], flush=True)
client.loop_stop()
"""


class Sink:
    """The cloud consumer in its own process (so the broker never answers 0x10)."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen([sys.executable, '-c', _SINK, str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.proc.stdout.readline()
        time.sleep(0.3)
        self.count = 0

    def received(self) -> int:
        """How many messages it has received so far."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write('\n')
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def settle(self, expected: int, timeout_s: float = 60.0) -> None:
        """Wait until it has everything published so far.

        A run that starts while the broker still feeds the last run's messages to the
        subscriber shares the CPU with that (two cores here) and reads slow: whichever
        series comes after the fastest one would pay for it.
        """
        deadline = time.monotonic() + timeout_s
        while self.received() < expected and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        """Stop it and read how many messages it got."""
        self.count = self.received()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def raw_paho(port: int, count: int, same_wire: bool = False) -> float:
    """Messages per second of plain paho QoS 1 publishing, all PUBACKs received.

    ``same_wire``: with the user properties the bridge adds (robot_id, seq, stamp), packed
    the bridge's cheap way, so both put the same bytes on the wire and the same decoding work
    on the subscriber.
    """
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id='raw',
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(WINDOW)
    done = threading.Event()
    acked = [0]

    def on_publish(*_: object) -> None:
        acked[0] += 1
        if acked[0] == count:
            done.set()
    client.on_publish = on_publish
    client.connect('127.0.0.1', port)
    client.loop_start()
    start = time.perf_counter()
    robot_id_pair = pack_pair('robot_id', 'raw')
    for seq in range(1, count + 1):
        properties = UserProperties.for_message(robot_id_pair, seq) if same_wire else None
        client.publish('bench/raw', PAYLOAD, qos=1,
                       properties=properties)  # type: ignore[arg-type]
    done.wait(300)
    elapsed = time.perf_counter() - start
    client.loop_stop()
    client.disconnect()
    return count / elapsed


def durable(port: int, count: int, workdir: Path, delivery: str = 'broker') -> float:
    """Messages per second through put -> group commit (FULL) -> publish -> ack -> delete.

    The ack is the PUBACK (``broker``) or the consumer's acknowledgement (``cloud``).
    """
    queue = DurableQueue(workdir / f'throughput-{delivery}.db', QueueConfig(synchronous='FULL'))
    lock = threading.Lock()
    link = MqttLink(LinkConfig(robot_id=f'bench-{delivery}', broker_port=port,
                               inflight_window=WINDOW, delivery=delivery), queue, lock)
    link.start()
    while not link.stats.connected:
        time.sleep(0.01)
    start = time.perf_counter()
    next_commit = start
    for _ in range(count):
        with lock:
            queue.put('bench/durable', PAYLOAD)
        now = time.perf_counter()
        if now >= next_commit:  # the node commits every 20 ms
            with lock:
                queue.commit()
            link.wake()
            next_commit = now + 0.02
    with lock:
        queue.commit()
    link.wake()
    while link.stats.acked < count:
        time.sleep(0.02)   # a tight poll here would take the GIL from the threads measured
    elapsed = time.perf_counter() - start
    link.stop()
    queue.close()
    return count / elapsed


def backlog_child(port: int, count: int, workdir: str) -> None:
    """Fill a backlog offline, then drain it; print drain rate and peak RSS as JSON."""
    queue = DurableQueue(Path(workdir) / 'backlog.db')
    lock = threading.Lock()
    for start in range(0, count, 1000):
        for _ in range(min(1000, count - start)):
            queue.put('bench/backlog', PAYLOAD)
        queue.commit()
    link = MqttLink(LinkConfig(robot_id='bench-backlog', broker_port=port, delivery='broker'),
                    queue, lock)
    rss_filled = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    begin = time.perf_counter()
    link.start()
    while link.stats.acked < count:
        time.sleep(0.01)
    elapsed = time.perf_counter() - begin
    link.stop()
    queue.close()
    print(json.dumps({'drain_rate': count / elapsed, 'rss_filled_mb': rss_filled,
                      'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      'seconds': elapsed}))


def main() -> None:
    """Print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--messages', type=int, default=20000)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--backlog', type=int, default=100000)
    parser.add_argument('--child', nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        backlog_child(int(args.child[0]), int(args.child[1]), args.child[2])
        return
    workdir = Path(tempfile.mkdtemp(prefix='cobot_hybrid_bench_bridge_'))
    broker, port = start_mosquitto(workdir, max_queued_messages=200_000)
    sink = Sink(port)
    try:
        raw: list[float] = []
        wire: list[float] = []
        ours: list[float] = []
        cloud: list[float] = []
        sent = 0
        for round_index in range(args.rounds):  # alternate, so drift hits all alike
            run_dir = workdir / f'run{round_index}'
            run_dir.mkdir()
            for runs in (raw, wire, ours, cloud):
                sink.settle(sent)   # each run starts with the subscriber caught up
                if runs is ours or runs is cloud:
                    runs.append(durable(port, args.messages, run_dir,
                                        'cloud' if runs is cloud else 'broker'))
                else:
                    runs.append(raw_paho(port, args.messages, same_wire=runs is wire))
                sent += args.messages
        print(f'1 KB messages, QoS 1, {args.messages} per run, {args.rounds} runs each '
              '(median; all runs in brackets), in-flight 20')
        for name, runs in (('raw paho', raw), ('raw paho, same user properties', wire),
                           ('ours, delivery: broker', ours), ('ours, delivery: cloud', cloud)):
            print(f'  {name:<32} {statistics.median(runs):>7.0f} msg/s '
                  f'({", ".join(f"{r:.0f}" for r in runs)})')
        for name, runs in (('broker', ours), ('cloud', cloud)):
            print(f'  ours ({name}) / raw paho: '
                  f'{statistics.median(runs) / statistics.median(raw):.2f}x; / raw paho with '
                  f'the same user properties: '
                  f'{statistics.median(runs) / statistics.median(wire):.2f}x')
        out = subprocess.run([sys.executable, __file__, '--child', str(port),
                              str(args.backlog), str(workdir)], capture_output=True, text=True,
                             check=True)
        backlog = json.loads(out.stdout.strip().splitlines()[-1])
        print(f'backlog of {args.backlog} x 1 KB after an outage: drained at '
              f'{backlog["drain_rate"]:.0f} msg/s ({backlog["drain_rate"] / 200:.1f}x a '
              f'200 msg/s live input) in {backlog["seconds"]:.1f} s')
        print(f'  process RSS with the backlog queued {backlog["rss_filled_mb"]:.0f} MB, peak '
              f'while draining {backlog["peak_rss_mb"]:.0f} MB')
    finally:
        sink.close()
        print(f'{sink.count} messages reached the subscriber in all')
        broker.terminate()
        broker.wait(timeout=10)


if __name__ == '__main__':
    main()
