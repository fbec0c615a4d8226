"""Validated parameters of ``bridge_node`` and the pieces they configure. No ROS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cobot_hybrid_bridge.durable_queue import QueueConfig
from cobot_hybrid_bridge.errors import BridgeError
from cobot_hybrid_bridge.model_fetch import FetchConfig
from cobot_hybrid_bridge.mqtt_link import LinkConfig, topic_prefix
from cobot_hybrid_protocol.paths import robot_data_dir
from cobot_hybrid_protocol.settings import check_settings, project, same_as, setting

__all__ = ['BridgeConfig']


@dataclass(frozen=True)
class BridgeConfig:
    """Everything ``bridge_node`` needs; files default to the data dir, per robot."""

    robot_id: str = setting('cobot-1', 'this robot: MQTT client id and topic level '
                            '(cobot/v1/<robot_id>/...)')
    broker_host: str = same_as(LinkConfig, 'broker_host')
    broker_port: int = same_as(LinkConfig, 'broker_port')
    protocol: str = same_as(LinkConfig, 'protocol')
    routes_file: str = setting('', 'uplink routes YAML ("" = config/bridge_routes.yaml of this '
                               'package)')
    data_dir: str = setting('', 'outbox and replay store folder ("" = '
                            '~/.local/state/cobot_hybrid/<robot_id>/)')
    max_queue_bytes: int = same_as(QueueConfig, 'max_bytes')
    message_ttl_s: float = same_as(QueueConfig, 'ttl_s')
    synchronous: str = same_as(QueueConfig, 'synchronous')
    commit_interval_s: float = setting(0.02, 'group commit period', unit='s', low=0.001,
                                       high=10.0)
    inflight_window: int = same_as(LinkConfig, 'inflight_window')
    drain_rate_hz: float = same_as(LinkConfig, 'drain_rate_hz')
    retry_no_subscribers: bool = same_as(LinkConfig, 'retry_no_subscribers')
    session_expiry_s: int = same_as(LinkConfig, 'session_expiry_s')
    reconnect_max_s: float = same_as(LinkConfig, 'reconnect_max_s')
    delivery: str = same_as(LinkConfig, 'delivery')
    cloud_window: int = same_as(LinkConfig, 'cloud_window')
    cloud_ack_timeout_s: float = same_as(LinkConfig, 'cloud_ack_timeout_s')
    tls_ca: str = same_as(LinkConfig, 'tls_ca')
    tls_cert: str = same_as(LinkConfig, 'tls_cert')
    tls_key: str = same_as(LinkConfig, 'tls_key')
    username: str = same_as(LinkConfig, 'username')
    password_file: str = same_as(LinkConfig, 'password_file')
    password_env: str = same_as(LinkConfig, 'password_env')
    cloud_public_keys: tuple[str, ...] = setting(
        (), 'key_id=path of the cloud Ed25519 public keys (none: every command is refused)',
        array_type='string')
    advisory_key_ids: tuple[str, ...] = setting(
        (), "key ids of cloud_public_keys that may sign advisories only (the cloud workers' "
        'key): a mission or model command signed with one is refused', array_type='string')
    max_command_bytes: int = setting(256 * 1024, 'larger commands are rejected', unit='bytes',
                                     low=64, high=2**26)
    max_clock_skew_s: float = setting(30.0, 'tolerated difference between robot and cloud '
                                      'clocks', unit='s', low=0.0, high=3600.0)
    model_fetch_max_bytes_per_s: float = same_as(FetchConfig, 'model_fetch_max_bytes_per_s')
    model_fetch_window_chunks: int = same_as(FetchConfig, 'model_fetch_window_chunks')
    model_fetch_chunk_timeout_s: float = same_as(FetchConfig, 'model_fetch_chunk_timeout_s')
    model_fetch_stall_timeout_s: float = same_as(FetchConfig, 'model_fetch_stall_timeout_s')
    model_keep_files: int = same_as(FetchConfig, 'model_keep_files')
    json_topics: bool = setting(True, 'also publish missions as std_msgs/String JSON on '
                                '`mission_json` and take JSON task progress on '
                                '`task_progress_json` (deprecated: removed in the next '
                                'release; use the typed cobot_hybrid_msgs topics)')
    state_period_s: float = setting(5.0, 'CRDT telemetry state snapshot period', unit='s',
                                    low=0.1, high=3600.0)
    stats_period_s: float = setting(2.0, 'diagnostics and link telemetry period', unit='s',
                                    low=0.1, high=3600.0)

    def __post_init__(self) -> None:
        check_settings(self, BridgeError)
        topic_prefix(self.robot_id)
        for entry in self.cloud_public_keys:
            if '=' not in entry:
                raise BridgeError(f'cloud_public_keys entry {entry!r} must be key_id=path')
        unknown = set(self.advisory_key_ids) - set(self.key_paths())
        if unknown:
            raise BridgeError(f'advisory_key_ids {sorted(unknown)} are not key ids of '
                              'cloud_public_keys')
        self.queue_config()
        self.link_config()

    @property
    def data_path(self) -> Path:
        """Folder of this robot's queue and replay database."""
        return robot_data_dir(self.data_dir, self.robot_id)

    def queue_config(self) -> QueueConfig:
        """Return the durable queue's bounds (the queue fields this config re-exposes)."""
        config: QueueConfig = project(self, QueueConfig)
        return config

    def link_config(self) -> LinkConfig:
        """Return the MQTT link's settings (the link fields this config re-exposes)."""
        config: LinkConfig = project(self, LinkConfig, robot_id=self.robot_id)
        return config

    def key_paths(self) -> dict[str, Path]:
        """Cloud public keys by id."""
        return {k.strip(): Path(v.strip()).expanduser()
                for k, v in (e.split('=', 1) for e in self.cloud_public_keys)}
