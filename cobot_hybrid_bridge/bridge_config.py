"""Validated parameters of ``bridge_node`` and the pieces they configure. No ROS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cobot_hybrid_bridge.durable_queue import QueueConfig
from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_bridge.mqtt_link import LinkConfig, topic_prefix
from cobot_hybrid_protocol.paths import robot_data_dir

__all__ = ['BridgeConfig']


@dataclass(frozen=True)
class BridgeConfig:
    """Everything ``bridge_node`` needs; files default to the data dir, per robot."""

    robot_id: str = 'cobot-1'
    broker_host: str = '127.0.0.1'
    broker_port: int = 1883
    protocol: str = 'mqtt5'
    routes_file: str = ''                 # '' = the package's config/bridge_routes.yaml
    data_dir: str = ''                    # '' = default_data_dir()
    max_queue_bytes: int = 256 * 2**20
    message_ttl_s: float = 24 * 3600.0
    synchronous: str = 'FULL'
    commit_interval_s: float = 0.02       # group commit
    inflight_window: int = 20
    drain_rate_hz: float = 0.0
    retry_no_subscribers: bool = True
    session_expiry_s: int = 3600
    reconnect_max_s: float = 30.0         # cap of the exponential reconnect backoff
    delivery: str = 'cloud'               # cloud: until the consumer stored it | broker: PUBACK
    cloud_window: int = 1000
    cloud_ack_timeout_s: float = 30.0
    tls_ca: str = ''
    tls_cert: str = ''
    tls_key: str = ''
    username: str = ''
    password_file: str = ''
    password_env: str = ''
    cloud_public_keys: tuple[str, ...] = ()   # 'key_id=/path/to/key.pem'
    max_command_bytes: int = 256 * 1024
    max_clock_skew_s: float = 30.0
    state_period_s: float = 5.0
    stats_period_s: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, 'cloud_public_keys', tuple(self.cloud_public_keys))
        topic_prefix(self.robot_id)
        if not 0 < self.broker_port < 65536:
            raise BridgeError(f'broker_port {self.broker_port} is not a TCP port')
        for name in ('commit_interval_s', 'state_period_s', 'stats_period_s'):
            if not getattr(self, name) > 0:
                raise BridgeError(f'{name} must be > 0')
        for entry in self.cloud_public_keys:
            if '=' not in entry:
                raise BridgeError(f'cloud_public_keys entry {entry!r} must be key_id=path')
        self.queue_config()
        self.link_config()

    @property
    def data_path(self) -> Path:
        """Folder of this robot's queue and replay database."""
        return robot_data_dir(self.data_dir, self.robot_id)

    def queue_config(self) -> QueueConfig:
        """Return the durable queue's bounds."""
        return QueueConfig(max_bytes=self.max_queue_bytes, ttl_s=self.message_ttl_s,
                           synchronous=self.synchronous)

    def link_config(self) -> LinkConfig:
        """Return the MQTT link's settings."""
        return LinkConfig(robot_id=self.robot_id, host=self.broker_host, port=self.broker_port,
                          protocol=self.protocol, inflight_window=self.inflight_window,
                          drain_rate_hz=self.drain_rate_hz,
                          retry_no_subscribers=self.retry_no_subscribers,
                          session_expiry_s=self.session_expiry_s,
                          reconnect_max_s=self.reconnect_max_s, delivery=self.delivery,
                          cloud_window=self.cloud_window,
                          cloud_ack_timeout_s=self.cloud_ack_timeout_s, tls_ca=self.tls_ca,
                          tls_cert=self.tls_cert, tls_key=self.tls_key, username=self.username,
                          password_file=self.password_file, password_env=self.password_env)

    def key_paths(self) -> dict[str, Path]:
        """Cloud public keys by id."""
        return {k.strip(): Path(v.strip()).expanduser()
                for k, v in (e.split('=', 1) for e in self.cloud_public_keys)}
