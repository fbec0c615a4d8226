"""Shared fixtures: isolated ROS contexts, ROS processes, a real mosquitto on 127.0.0.1.

Every ROS participant the suite creates (in this process or a child) gets
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, the loopback Fast DDS profile in ``config/`` and a
``ROS_DOMAIN_ID`` of its own test, so parallel workers never see each other's traffic.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
from local_broker import (  # noqa: E402, F401
    free_port,
    mosquitto_binary,
    wait_for_port,
    write_mosquitto_config,
    write_tls_mosquitto_config,
)
from loopback_env import configure_ros_environment  # noqa: E402

PROCS = Path(__file__).resolve().parent / 'procs'
DOMAINS_PER_WORKER = 24


configure_ros_environment()


def _worker_index() -> int:
    worker = os.environ.get('PYTEST_XDIST_WORKER', 'gw0')
    return int(worker[2:]) if worker.startswith('gw') and worker[2:].isdigit() else 0


# Domain ids 1..96: each xdist worker owns a block of 24, each test takes the next id in it.
_domain_counter = itertools.count()


@pytest.fixture
def ros_domain_id() -> int:
    """A ROS_DOMAIN_ID used by this test alone (among those running at the same time)."""
    block = _worker_index() % 4
    return 1 + block * DOMAINS_PER_WORKER + next(_domain_counter) % DOMAINS_PER_WORKER


@pytest.fixture
def ros_context(ros_domain_id: int) -> Iterator[Any]:
    """An initialised rclpy context on the test's own domain, shut down afterwards."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


def wait_for(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return bool(predicate())


@dataclass
class NodeHarness:
    """A node in the test process with an executor to spin it until a condition holds."""

    node: Any
    executor: Any

    def spin_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Spin until ``predicate()`` is true or the timeout passes; return the predicate."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return bool(predicate())

    def spin_for(self, duration_s: float) -> None:
        """Spin for a fixed time (to let messages that should not come arrive)."""
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)


@pytest.fixture
def make_node(ros_context: Any) -> Iterator[Callable[[str], NodeHarness]]:
    """Factory of test-process nodes in the test's context (destroyed at teardown)."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    created: list[NodeHarness] = []

    def factory(name: str) -> NodeHarness:
        node = Node(name, context=ros_context)
        executor = SingleThreadedExecutor(context=ros_context)
        executor.add_node(node)
        harness = NodeHarness(node, executor)
        created.append(harness)
        return harness

    yield factory
    for harness in created:
        harness.executor.remove_node(harness.node)
        harness.executor.shutdown()
        harness.node.destroy_node()


@dataclass
class ChildProcess:
    """A process the test started, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    killed: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors='replace') if self.log_path.exists() else ''

    def wait(self, timeout_s: float) -> int:
        return self.popen.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGINT (like Ctrl-C under ros2 launch), then SIGKILL if it does not exit."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)
            self.killed = True


def child_env(domain_id: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a ROS child process: the suite's DDS settings plus its domain."""
    env = dict(os.environ)
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env.update(extra or {})
    return env


def clean_fastdds_shm() -> None:
    """Remove shared-memory segments left by processes that were SIGKILLed."""
    tool = shutil.which('fastdds', path=str(Path(sys.executable).parent))
    if tool:
        subprocess.run([tool, 'shm', 'clean'], capture_output=True, timeout=30, check=False)


@pytest.fixture
def ros_process(ros_domain_id: int, tmp_path: Path) -> Iterator[Callable[..., ChildProcess]]:
    """Factory: start ``python -m module`` or ``python script`` as a separate ROS process."""
    started: list[ChildProcess] = []

    def start(target: str, *args: str, name: str | None = None,
              env: dict[str, str] | None = None) -> ChildProcess:
        if target.endswith('.py'):
            script = Path(target)
            command = [sys.executable, str(script if script.is_absolute() else PROCS / script)]
        else:
            command = [sys.executable, '-m', target]
        label = name or Path(target).stem.split('.')[-1]
        log_path = tmp_path / f'{label}-{len(started)}.log'
        with log_path.open('wb') as log_file:
            popen = subprocess.Popen([*command, *args], stdout=log_file,
                                     stderr=subprocess.STDOUT, cwd=tmp_path,
                                     env=child_env(ros_domain_id, env))
        child = ChildProcess(label, popen, log_path)
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop(timeout_s=5.0)
    if any(child.killed for child in started):
        clean_fastdds_shm()


@dataclass
class MosquittoBroker:
    """A real mosquitto on 127.0.0.1 with persistence in a temp dir (restartable)."""

    port: int
    data_dir: Path
    config_path: Path
    popen: subprocess.Popen[bytes] | None = None
    host: str = '127.0.0.1'

    def start(self) -> None:
        binary = mosquitto_binary()
        log = (self.data_dir / 'stdout.log').open('ab')
        self.popen = subprocess.Popen([binary, '-c', str(self.config_path)], stdout=log,
                                      stderr=subprocess.STDOUT)
        if not wait_for_port(self.port):
            self.stop()
            raise RuntimeError(f'mosquitto did not listen on {self.host}:{self.port}; log:\n'
                               + (self.data_dir / 'mosquitto.log').read_text(errors='replace'))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self.popen = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _mosquitto_available() -> bool:
    return bool(shutil.which('mosquitto') or Path('/usr/sbin/mosquitto').exists())


def start_broker(data_dir: Path, persistence: str = 'autosave_interval 1',
                 port: int | None = None) -> MosquittoBroker:
    """Start mosquitto on 127.0.0.1 with its files in ``data_dir``.

    ``persistence``: ``autosave_interval N`` (persistence on, saved every N s) or ``off``.
    ``port``: a port chosen before (nothing listening there yet); else a free one.
    """
    if not _mosquitto_available():
        pytest.fail('mosquitto is not installed: run `make setup` (apt-get install mosquitto)')
    words = persistence.split()
    if persistence != 'off' and (len(words) != 2 or words[0] != 'autosave_interval'
                                 or not words[1].isdigit()):
        raise ValueError(f'persistence {persistence!r}: use "autosave_interval N" or "off"')
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port() if port is None else port
    config_path = write_mosquitto_config(
        data_dir / 'mosquitto.conf', port,
        persistence_dir=None if persistence == 'off' else data_dir,
        autosave_interval_s=None if persistence == 'off' else int(words[1]),
        log_file=data_dir / 'mosquitto.log')
    broker = MosquittoBroker(port=port, data_dir=data_dir, config_path=config_path)
    broker.start()
    return broker


def start_tls_broker(data_dir: Path, certs_dir: Path) -> tuple[MosquittoBroker, int]:
    """Start the shipped TLS config (``config/mosquitto/``) on two free loopback ports.

    Returns the broker (its ``port``: the robots' listener) and the cloud services' port.
    """
    if not _mosquitto_available():
        pytest.fail('mosquitto is not installed: run `make setup` (apt-get install mosquitto)')
    data_dir.mkdir(parents=True, exist_ok=True)
    robots = free_port()
    cloud = free_port()
    while cloud == robots:
        cloud = free_port()
    config_path = write_tls_mosquitto_config(data_dir / 'mosquitto.conf', robots, cloud,
                                             certs_dir, persistence_dir=data_dir,
                                             log_file=data_dir / 'mosquitto.log')
    broker = MosquittoBroker(port=robots, data_dir=data_dir, config_path=config_path)
    broker.start()
    if not wait_for_port(cloud):
        broker.stop()
        raise RuntimeError(f'mosquitto did not listen on the cloud port {cloud}')
    return broker, cloud


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """Start mosquitto on a free loopback port; stop it after the test."""
    broker = start_broker(tmp_path / 'mosquitto')
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def qdq_model(tmp_path: Path) -> Path:
    """A tiny INT8 QDQ ONNX model ``qdq.onnx`` and its FP32 twin ``fp32.onnx`` beside it.

    QuantizeLinear/DequantizeLinear around a Conv: what `cobot-hybrid quantize` writes, in small.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    x = helper.make_tensor_value_info('images', TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info('output0', TensorProto.FLOAT, [1, 4, 32, 32])
    conv = {'kernel_shape': [3, 3], 'pads': [1, 1, 1, 1]}
    scale = numpy_helper.from_array(np.array(1 / 64, np.float32), 's')
    zero = numpy_helper.from_array(np.array(0, np.int8), 'z')
    wscale = numpy_helper.from_array(np.array(1 / 32, np.float32), 'ws')
    wq = numpy_helper.from_array(np.clip(np.round(weight * 32), -127, 127).astype(np.int8),
                                 'wq')
    qdq = helper.make_graph([
        helper.make_node('QuantizeLinear', ['images', 's', 'z'], ['xq']),
        helper.make_node('DequantizeLinear', ['xq', 's', 'z'], ['xd']),
        helper.make_node('DequantizeLinear', ['wq', 'ws', 'z'], ['wd']),
        helper.make_node('Conv', ['xd', 'wd'], ['output0'], **conv),
    ], 'qdq', [x], [y], [scale, zero, wscale, wq])
    fp32 = helper.make_graph([helper.make_node('Conv', ['images', 'w'], ['output0'], **conv)],
                             'fp32', [x], [y], [numpy_helper.from_array(weight, 'w')])
    for graph, name in ((qdq, 'qdq.onnx'), (fp32, 'fp32.onnx')):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp_path / name))
    return tmp_path / 'qdq.onnx'
