"""Cloud planner under fleet load: telemetry ingest rate and mission round trip.

100 simulated robots (plain paho clients, MQTT 5, each with its retained online status) send
telemetry with ``(robot_id, seq)`` user properties at ``--rate`` messages per second in total
to one mosquitto on 127.0.0.1; the planner service (its own thread, as planner_node runs it)
ingests everything into its SQLite fleet store. Meanwhile work orders arrive one by one; each
simulated robot answers a mission with an ``events/mission_ack`` the way bridge_node does.
Round trip = order published -> the planner has the acknowledgement of the mission that
carries its task. Target: >= 2,000 telemetry msg/s ingested; p99 round trip reported.

Run (loopback only): tools/run_isolated.sh .venv/bin/python benchmarks/bench_planner_ingest.py
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cobot_hybrid_planner.orders import ORDERS_SCHEMA
from cobot_hybrid_planner.service import PlannerConfig, PlannerService
from cobot_hybrid_planner.site import Robot, Site, Station
from cobot_hybrid_protocol.envelope import CONTRACT_TYPES, build_envelope
from cobot_hybrid_protocol.mission import MissionAck, ack_to_json
from cobot_hybrid_protocol.status import status_payload
from cobot_hybrid_protocol.topics import (
    MISSION_ACK,
    ORDERS_TOPIC,
    commands_filter,
    robot_topic,
    status_topic,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'tools'))
from local_broker import start_mosquitto  # noqa: E402

ROBOTS = 100


class Fleet:
    """100 robots on one network thread: telemetry out, mission acks back."""

    def __init__(self, port: int) -> None:
        self.clients: list[mqtt.Client] = []
        self.seq = {f'robot-{i:03d}': 0 for i in range(ROBOTS)}
        self.lock = threading.Lock()
        for robot_id in self.seq:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=robot_id,
                                 protocol=mqtt.MQTTv5)
            client.user_data_set(robot_id)
            client.on_message = self._on_mission
            client.connect('127.0.0.1', port)
            client.subscribe(commands_filter(robot_id), qos=1)
            client.publish(status_topic(robot_id), status_payload('online', time.time()),
                           qos=1, retain=True)
            client.loop_start()
            self.clients.append(client)

    def _props(self, robot_id: str) -> mqtt.Properties:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        with self.lock:
            self.seq[robot_id] += 1
            seq = self.seq[robot_id]
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [('robot_id', robot_id), ('seq', str(seq))]
        return props

    def _on_mission(self, client: mqtt.Client, robot_id: str, message: mqtt.MQTTMessage
                    ) -> None:
        import base64

        envelope = json.loads(message.payload)
        mission = json.loads(base64.b64decode(envelope['payload']))
        props = self._props(robot_id)
        seq = int(dict(props.UserProperty)['seq'])
        ack = ack_to_json(MissionAck('accepted', mission['mission_id'], mission['version']))
        client.publish(robot_topic(robot_id, MISSION_ACK), build_envelope(
            robot_id, seq, time.time(), 'mission_ack', CONTRACT_TYPES['mission_ack'], ack),
            qos=1, properties=props)

    def telemetry(self, rate: float, seconds: float) -> int:
        """Publish round-robin at ``rate`` msg/s in total; return how many."""
        sent, start = 0, time.perf_counter()
        ids = list(self.seq)
        while (elapsed := time.perf_counter() - start) < seconds:
            due = int(elapsed * rate) - sent
            for _ in range(max(0, due)):
                robot_id = ids[sent % ROBOTS]
                client = self.clients[sent % ROBOTS]
                client.publish(robot_topic(robot_id, 'telemetry/people'),
                               b'{"data": {"detections": []}}', qos=1,
                               properties=self._props(robot_id))
                sent += 1
            time.sleep(0.002)
        return sent

    def close(self) -> None:
        """Disconnect every robot."""
        for client in self.clients:
            client.loop_stop()
            client.disconnect()


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rate', type=float, default=2000.0)
    parser.add_argument('--seconds', type=float, default=15.0)
    parser.add_argument('--orders', type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix='cobot_hybrid_bench_planner_'))
    broker, port = start_mosquitto(work, max_queued_messages=100_000)
    site = Site({'a': Station('a', 0, 0), 'b': Station('b', 5, 0)},
                {f'robot-{i:03d}': Robot(f'robot-{i:03d}', frozenset({'pick'}), 'a')
                 for i in range(ROBOTS)})
    service = PlannerService(PlannerConfig(data_dir=work / 'cloud', broker_port=port,
                                           plan_time_limit_s=0.2, resend_after_s=30.0,
                                           offline_after_s=60.0), site,
                             Ed25519PrivateKey.generate())
    service.start()
    stop = threading.Event()
    step_times: list[float] = []

    def planner_loop() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            service.step()
            step_times.append(time.perf_counter() - start)
            time.sleep(0.01)

    fleet = Fleet(port)
    thread = threading.Thread(target=planner_loop, daemon=True)
    thread.start()
    time.sleep(2.0)
    orderer = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id='mes',
                          protocol=mqtt.MQTTv5)
    orderer.connect('127.0.0.1', port)
    orderer.loop_start()
    round_trips: list[float] = []

    def orders() -> None:
        for i in range(args.orders):
            order = {'schema': ORDERS_SCHEMA, 'order_id': f'o{i}', 'tasks': [
                {'task_id': f't{i}', 'type': 'pick', 'station': 'b', 'capability': 'pick',
                 'duration_s': 30}]}
            start = time.perf_counter()
            orderer.publish(ORDERS_TOPIC, json.dumps(order).encode(), qos=1)
            deadline = start + 30.0
            while time.perf_counter() < deadline:
                missions = service.missions()
                if any(f't{i}' in m['tasks'] and m['acked'] == 'accepted'
                       for m in missions.values()):
                    round_trips.append(time.perf_counter() - start)
                    break
                time.sleep(0.005)
            time.sleep(args.seconds / args.orders / 2)

    order_thread = threading.Thread(target=orders, daemon=True)
    before = service.fleet.counts['accepted']
    t0 = time.perf_counter()
    order_thread.start()
    sent = fleet.telemetry(args.rate, args.seconds)
    deadline = time.perf_counter() + 30.0
    while service.fleet.counts['accepted'] - before < sent and time.perf_counter() < deadline:
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    ingested = service.fleet.counts['accepted'] - before
    order_thread.join(timeout=60)
    stop.set()
    thread.join(timeout=10)
    fleet.close()
    orderer.loop_stop()
    service.stop()
    broker.terminate()
    ordered = sorted(round_trips)
    print(f'{ROBOTS} robots, telemetry offered at {args.rate:.0f} msg/s for '
          f'{args.seconds:.0f} s; the simulated fleet published {sent / args.seconds:.0f} msg/s')
    print(f'  ingested {ingested} of {sent} telemetry messages (de-duplicated, stored) in '
          f'{elapsed:.1f} s: {ingested / elapsed:.0f} msg/s (target >= 2,000)')
    if ordered:
        print(f'  mission round trip (order in -> acknowledged), {len(ordered)} orders: '
              f'p50 {1e3 * ordered[len(ordered) // 2]:.0f} ms, p99 '
              f'{1e3 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]:.0f} ms')
    print(f'  planner step p50 {1e3 * sorted(step_times)[len(step_times) // 2]:.1f} ms')


if __name__ == '__main__':
    main()
