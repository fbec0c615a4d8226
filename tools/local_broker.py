"""A mosquitto on 127.0.0.1 for the demo, the benchmarks and the test fixtures.

Never listens on anything but loopback. Started as root, mosquitto drops to the user
"mosquitto", which cannot write our temp dirs, so the config names the current user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ['free_port', 'mosquitto_binary', 'start_mosquitto', 'wait_for_port']


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0, host: str = '127.0.0.1') -> bool:
    """Poll until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def mosquitto_binary() -> str:
    """Path of the mosquitto executable (Debian puts it in /usr/sbin)."""
    return shutil.which('mosquitto') or '/usr/sbin/mosquitto'


def start_mosquitto(workdir: Path, extra_config: str = '') -> tuple[subprocess.Popen[bytes], int]:
    """Start mosquitto on a free loopback port with ``extra_config`` lines; return it and port."""
    port = free_port()
    conf = workdir / 'mosquitto.conf'
    conf.write_text(f'listener {port} 127.0.0.1\nallow_anonymous true\n'
                    f'user {pwd.getpwuid(os.getuid()).pw_name}\n{extra_config}')
    broker = subprocess.Popen([mosquitto_binary(), '-c', str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_for_port(port):
        broker.kill()
        raise SystemExit(f'mosquitto did not start on 127.0.0.1:{port} ({conf})')
    return broker, port
