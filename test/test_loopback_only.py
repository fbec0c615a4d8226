"""Nothing a test run starts may be reachable from, or send to, another machine.

The suite's ROS processes use ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and the Fast DDS profile
in config/ that allows only 127.0.0.1 and shared memory. In LOCALHOST mode rmw_fastrtps also
adds a UDPv4 transport of its own with no interface allow-list, whose *send* sockets bind to
INADDR_ANY and to every interface address (Fast DDS creates one multicast sender per
interface). That is why `make test` runs the suite in a private network namespace holding only
`lo`: there, INADDR_ANY means loopback and no other address exists. These tests check, on the
live processes, that every socket is bound to loopback (or INADDR_ANY where loopback is the
only interface); run outside that namespace they fail and say so.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

pytestmark = pytest.mark.ros

_SIOCGIFADDR = 0x8915


def _interface_addresses() -> dict[str, list[str]]:
    """IPv4 and IPv6 addresses of every interface in this network namespace."""
    found: dict[str, list[str]] = {}
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR,
                                     struct.pack('256s', name.encode()[:15]))
                found.setdefault(name, []).append(socket.inet_ntoa(packed[20:24]))
            except OSError:
                found.setdefault(name, [])
    inet6 = Path('/proc/net/if_inet6')
    if inet6.exists():
        for line in inet6.read_text().splitlines():
            parts = line.split()
            found.setdefault(parts[5], []).append(str(ipaddress.IPv6Address(int(parts[0], 16))))
    return found


def _non_loopback_addresses() -> list[str]:
    return [addr for addrs in _interface_addresses().values() for addr in addrs
            if not ipaddress.ip_address(addr).is_loopback]


def _decode(hex_addr: str) -> tuple[str, int]:
    host, port = hex_addr.split(':')
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:
        ip = socket.inet_ntop(socket.AF_INET6, b''.join(raw[i:i + 4][::-1]
                                                        for i in range(0, 16, 4)))
    return ip, int(port, 16)


def sockets_of(pid: int) -> list[tuple[str, str, int]]:
    """(protocol, local address, local port) of every socket the process holds."""
    inodes = set()
    for fd in Path(f'/proc/{pid}/fd').iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith('socket:['):
            inodes.add(target[8:-1])
    result = []
    for proto in ('udp', 'tcp', 'udp6', 'tcp6'):
        table = Path(f'/proc/{pid}/net/{proto}')
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ip, port = _decode(fields[1])
                result.append((proto, ip, port))
    return result


def offending_sockets(pid: int) -> list[tuple[str, str, int]]:
    """Sockets of ``pid`` that could talk to another machine."""
    only_loopback_here = not _non_loopback_addresses()
    bad = []
    for proto, ip, port in sockets_of(pid):
        addr = ipaddress.ip_address(ip)
        if addr.is_loopback:
            continue
        if addr.is_unspecified and only_loopback_here:
            continue
        bad.append((proto, ip, port))
    return bad


def _explain(pid: int, bad: list[tuple[str, str, int]]) -> str:
    return (f'process {pid} holds sockets bound beyond loopback: {bad}; interfaces here: '
            f'{_interface_addresses()}. Run the suite through `make test`, which puts it in '
            "a network namespace with only lo (see this module's docstring).")


def test_ros_processes_bind_only_loopback(make_node: Any, ros_process: Any) -> None:
    from vision_msgs.msg import Detection2DArray

    harness = make_node('listener')
    received: list[Any] = []
    harness.node.create_subscription(Detection2DArray, 'detections', received.append, 10)
    child = ros_process('publish_detections.py')
    assert harness.spin_until(lambda: len(received) >= 1, 30.0), child.log()
    # Discovery and data have flowed both ways, so every transport has opened its sockets.
    for pid in (os.getpid(), child.pid):
        assert sockets_of(pid), f'no sockets found for {pid}: the check itself is broken'
        bad = offending_sockets(pid)
        assert not bad, _explain(pid, bad)


def test_child_ros_processes_get_the_loopback_environment(ros_process: Any,
                                                          ros_domain_id: int) -> None:
    child = ros_process('publish_detections.py')
    # Its DDS sockets are open: this is the final process image (the venv's Python may
    # re-execute itself once at start) and rclpy has started with this environment.
    assert wait_for(lambda: bool(sockets_of(child.pid)), 30.0), child.log()
    environ = dict(
        entry.split('=', 1) for entry in
        Path(f'/proc/{child.pid}/environ').read_bytes().decode().split('\0') if '=' in entry)
    assert environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert environ['FASTDDS_DEFAULT_PROFILES_FILE'].endswith('config/fastdds_loopback.xml')
    assert Path(environ['FASTDDS_DEFAULT_PROFILES_FILE']).is_file()
    assert environ['ROS_DOMAIN_ID'] == str(ros_domain_id)
    assert 'ROS_LOCALHOST_ONLY' not in environ


def test_profile_alone_keeps_every_socket_on_127_0_0_1(make_node: Any,
                                                      ros_process: Any) -> None:
    """Our XML profile by itself (no rmw LOCALHOST extras) binds nothing but 127.0.0.1."""
    from vision_msgs.msg import Detection2DArray

    harness = make_node('listener')
    received: list[Any] = []
    harness.node.create_subscription(Detection2DArray, 'detections', received.append, 10)
    child = ros_process('publish_detections.py',
                        env={'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET'})
    # Discovery and data have flowed, so every transport of the child has opened its sockets.
    assert harness.spin_until(lambda: len(received) >= 1, 30.0), child.log()
    found = sockets_of(child.pid)
    assert found
    # Multicast discovery group membership is bound to 239.255.0.1 on the allowed interface.
    not_local = [s for s in found if s[1] != '127.0.0.1'
                 and not ipaddress.ip_address(s[1]).is_multicast]
    assert not not_local, f'the profile let sockets bind beyond 127.0.0.1: {not_local}'


def test_mosquitto_fixture_binds_loopback_only(mosquitto_broker: Any) -> None:
    pid = mosquitto_broker.popen.pid
    found = sockets_of(pid)
    assert ('tcp', '127.0.0.1', mosquitto_broker.port) in found
    assert all(ip == '127.0.0.1' for _, ip, _ in found), found
