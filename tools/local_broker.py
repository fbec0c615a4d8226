"""A mosquitto on 127.0.0.1 for the demo, the benchmarks and the test fixtures.

The one place that writes a mosquitto config: :func:`write_mosquitto_config` (one anonymous
listener, persistence on or off) and :func:`write_tls_mosquitto_config` (the shipped
``config/mosquitto/cobot_hybrid_tls.conf``: mTLS and ACLs on two listeners, moved to the given
ports, certificates and data dir). Never listens on anything but loopback. Started as root,
mosquitto drops to the user "mosquitto", which cannot write our temp dirs, so every config
names the current user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ['MOSQUITTO_CONFIG_DIR', 'TLS_CONFIG', 'free_port', 'mosquitto_binary',
           'start_mosquitto', 'wait_for_port', 'write_mosquitto_config',
           'write_tls_mosquitto_config']

MOSQUITTO_CONFIG_DIR = Path(__file__).resolve().parent.parent / 'config' / 'mosquitto'
TLS_CONFIG = MOSQUITTO_CONFIG_DIR / 'cobot_hybrid_tls.conf'
# What the shipped TLS config names, and what a local copy replaces it with.
_TLS_ROBOTS_LISTENER = 'listener 8883 127.0.0.1'
_TLS_CLOUD_LISTENER = 'listener 8884 127.0.0.1'
_TLS_CERTS = '/etc/cobot_hybrid/certs'
_TLS_ACLS = '/etc/cobot_hybrid/mosquitto'
_TLS_PERSISTENCE = 'persistence_location /var/lib/mosquitto/'


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


def _common_lines(log_file: Path | None) -> str:
    """Return the lines every config ends with: our user, and the log file if wanted."""
    lines = f'user {pwd.getpwuid(os.getuid()).pw_name}\n'
    if log_file is not None:
        lines += (f'log_dest file {log_file}\n'
                  'log_type error\nlog_type warning\nlog_type notice\n')
    return lines


def write_mosquitto_config(path: Path, port: int, *, persistence_dir: Path | None = None,
                           autosave_interval_s: int | None = None,
                           max_queued_messages: int | None = None,
                           log_file: Path | None = None, extra: str = '') -> Path:
    """Write a config of one anonymous listener on 127.0.0.1:``port``; return ``path``.

    ``persistence_dir``: persistence on, its database there, saved every
    ``autosave_interval_s`` (mosquitto's default: 1800 s) and on a graceful exit; None:
    persistence off. ``max_queued_messages``: per client (mosquitto's default: 1000).
    ``extra``: further config lines, as they are.
    """
    if autosave_interval_s is not None and persistence_dir is None:
        raise ValueError('autosave_interval_s needs persistence_dir (persistence is off)')
    text = f'listener {port} 127.0.0.1\nallow_anonymous true\n'
    if persistence_dir is None:
        text += 'persistence false\n'
    else:
        text += f'persistence true\npersistence_location {persistence_dir}/\n'
        if autosave_interval_s is not None:
            text += f'autosave_interval {autosave_interval_s}\n'
    if max_queued_messages is not None:
        text += f'max_queued_messages {max_queued_messages}\n'
    text += _common_lines(log_file) + extra
    path.write_text(text)
    return path


def write_tls_mosquitto_config(path: Path, robots_port: int, cloud_port: int, certs_dir: Path,
                               persistence_dir: Path, log_file: Path | None = None) -> Path:
    """Write the shipped TLS config moved to these ports, certificates and data; return ``path``.

    ``certs_dir`` holds what ``tools/make_test_certs.sh`` makes; the ACL files are the
    repository's own (``config/mosquitto/``). Raises ValueError if the shipped config no
    longer names what is replaced (a silent mismatch would test some other broker).
    """
    text = TLS_CONFIG.read_text()
    for line in (_TLS_ROBOTS_LISTENER, _TLS_CLOUD_LISTENER, _TLS_CERTS, _TLS_ACLS,
                 _TLS_PERSISTENCE):
        if line not in text:
            raise ValueError(f'{TLS_CONFIG} no longer holds {line!r}: update local_broker.py')
    text = (text.replace(_TLS_CERTS, str(certs_dir))
            .replace(_TLS_ACLS, str(MOSQUITTO_CONFIG_DIR))
            .replace(_TLS_ROBOTS_LISTENER, f'listener {robots_port} 127.0.0.1')
            .replace(_TLS_CLOUD_LISTENER, f'listener {cloud_port} 127.0.0.1')
            .replace(_TLS_PERSISTENCE, f'persistence_location {persistence_dir}/'))
    path.write_text(text + _common_lines(log_file))
    return path


def start_mosquitto(workdir: Path, extra_config: str = '', *,
                    persistence_dir: Path | None = None, autosave_interval_s: int | None = None,
                    max_queued_messages: int | None = None
                    ) -> tuple[subprocess.Popen[bytes], int]:
    """Start mosquitto on a free loopback port (config in ``workdir``); return it and port."""
    port = free_port()
    conf = write_mosquitto_config(workdir / 'mosquitto.conf', port,
                                  persistence_dir=persistence_dir,
                                  autosave_interval_s=autosave_interval_s,
                                  max_queued_messages=max_queued_messages, extra=extra_config)
    broker = subprocess.Popen([mosquitto_binary(), '-c', str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_for_port(port):
        broker.kill()
        raise SystemExit(f'mosquitto did not start on 127.0.0.1:{port} ({conf})')
    return broker, port
