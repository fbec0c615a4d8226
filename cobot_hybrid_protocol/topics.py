"""The MQTT topic tree of the contract (``cobot/v1/...``): every topic is built and read here.

::

    cobot/v1/<robot_id>/status                    robot -> cloud, retained: online / offline
    cobot/v1/<robot_id>/state                     robot -> cloud: CRDT state snapshot
    cobot/v1/<robot_id>/telemetry/<name>          robot -> cloud: routed ROS topics
    cobot/v1/<robot_id>/events/<name>             robot -> cloud: routed events, mission_ack,
                                                  task_progress, model_status, model_metrics,
                                                  blob_request (never retained)
    cobot/v1/<robot_id>/cmd/<kind>                cloud -> robot: signed commands (mission,
                                                  model, advisory)
    cobot/v1/<robot_id>/blob/<sha256>/<offset>    cloud -> robot: a chunk of a model file it
                                                  asked for (events/blob_request)
    cobot/v1/<robot_id>/delivered                 cloud -> robot: seqs the cloud has stored
    cobot/v1/orders                               operator -> cloud: work orders
    cobot/v1/planners/<fleet_id>/<kind>           between planner replicas: lease, ledger,
                                                  orders
    cobot/v1/workers/<group>/status               cloud workers, retained: backlog, latency
    $share/workers-<group>/cobot/v1/+/events/<n>  what the workers of a group split between
                                                  them (one replica takes each upload)

Robot ids and fleet ids are one topic level (and a robot id is the MQTT client id): 1-64
printable characters without ``/ + # $`` or spaces. ``planners``, ``workers`` and ``orders``
are taken by the cloud, so no robot may be called that: its prefix would overlap them.
:func:`parse_topic` reads any topic of the tree back into a :class:`Topic`, or raises
:class:`TopicError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cobot_hybrid_protocol.errors import RobotIdError, TopicError

__all__ = ['BLOB_REQUEST', 'COMMAND_KINDS', 'MISSION_ACK', 'MODEL_METRICS', 'MODEL_STATUS',
           'ORDERS_TOPIC', 'PLANNER_KINDS', 'RESERVED_ROBOT_IDS', 'STATE', 'STATUS',
           'TASK_PROGRESS', 'TOPIC_ROOT', 'UPLINK_BRANCHES', 'RobotIdError', 'Topic',
           'TopicError', 'blob_filter', 'blob_topic', 'check_fleet_id', 'check_robot_id',
           'command_topic', 'commands_filter', 'delivered_topic', 'fleet_filter', 'parse_topic',
           'planner_topic', 'robot_filter', 'robot_prefix', 'robot_topic',
           'shared_orders_filter', 'status_topic']

TOPIC_ROOT = 'cobot/v1'
RESERVED_ROBOT_IDS = frozenset({'planners', 'workers', 'orders'})
ORDERS_TOPIC = f'{TOPIC_ROOT}/orders'
MAX_TOPIC = 256                       # characters; longer topics are not part of the tree

# What follows ``cobot/v1/<robot_id>/``:
STATUS = 'status'
STATE = 'state'
DELIVERED = 'delivered'
MISSION_ACK = 'events/mission_ack'
TASK_PROGRESS = 'events/task_progress'
BRIDGE_TELEMETRY = 'telemetry/bridge'
MODEL_STATUS = 'events/model_status'
MODEL_METRICS = 'events/model_metrics'   # an event: the cloud reads it (telemetry: stored)
BLOB_REQUEST = 'events/blob_request'
BLOB = 'blob'
UPLINK_BRANCHES = ('telemetry/', 'events/')   # what a route may write under a robot's prefix
COMMAND_KINDS = ('mission', 'model', 'advisory')   # cmd/<kind>
PLANNER_KINDS = ('lease', 'ledger', 'orders')  # planners/<fleet_id>/<kind>


def _check_level(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 64 \
            or any(c in value for c in '/+#$ ') or not value.isprintable():
        raise RobotIdError(f'{what} {str(value)[:80]!r} must be 1-64 printable characters '
                           'without / + # $ or spaces (it is one MQTT topic level)')
    return value


def check_robot_id(robot_id: object) -> str:
    """Return ``robot_id`` if it is a valid robot id; raise RobotIdError saying why not."""
    _check_level(robot_id, 'robot_id')
    assert isinstance(robot_id, str)
    if robot_id in RESERVED_ROBOT_IDS:
        raise RobotIdError(f"robot_id {robot_id!r} is reserved for the cloud's topics "
                           f'({TOPIC_ROOT}/{robot_id}/...): choose another')
    return robot_id


def check_fleet_id(fleet_id: object) -> str:
    """Return ``fleet_id`` if it can be one topic level; raise RobotIdError saying why not."""
    return _check_level(fleet_id, 'fleet_id')


def robot_prefix(robot_id: str) -> str:
    """Return ``cobot/v1/<robot_id>`` for a valid robot id."""
    return f'{TOPIC_ROOT}/{check_robot_id(robot_id)}'


def robot_topic(robot_id: str, kind: str) -> str:
    """Return ``cobot/v1/<robot_id>/<kind>``; ``kind`` is a relative topic without wildcards."""
    if not kind or kind.startswith('/') or kind.endswith('/') or any(c in kind for c in '+#'):
        raise TopicError(f'topic kind {kind[:80]!r} must be a relative topic without + or #')
    return f'{robot_prefix(robot_id)}/{kind}'


def status_topic(robot_id: str) -> str:
    """Return the retained liveness topic of a robot."""
    return robot_topic(robot_id, STATUS)


def delivered_topic(robot_id: str) -> str:
    """Return where the cloud says which of a robot's seqs it has stored."""
    return robot_topic(robot_id, DELIVERED)


def command_topic(robot_id: str, kind: str = 'mission') -> str:
    """Return the topic of a signed command of ``kind`` to a robot."""
    if kind not in COMMAND_KINDS:
        raise TopicError(f'command kind {kind!r} is not one of {COMMAND_KINDS}')
    return robot_topic(robot_id, f'cmd/{kind}')


def blob_topic(robot_id: str, sha256: str, offset: int) -> str:
    """Return where the cloud sends the chunk of file ``sha256`` that starts at ``offset``."""
    if len(sha256) != 64 or any(c not in '0123456789abcdef' for c in sha256) \
            or isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise TopicError('a blob topic takes a sha256 (64 lower-case hex) and an offset >= 0')
    return robot_topic(robot_id, f'{BLOB}/{sha256}/{offset}')


def blob_filter(robot_id: str) -> str:
    """Return the filter a robot subscribes for the chunks it asked for."""
    return f'{robot_prefix(robot_id)}/{BLOB}/#'


def commands_filter(robot_id: str) -> str:
    """Return the filter a robot subscribes for its commands."""
    return f'{robot_prefix(robot_id)}/cmd/#'


def robot_filter(robot_id: str) -> str:
    """Return the filter of everything under one robot's prefix."""
    return f'{robot_prefix(robot_id)}/#'


def uplink_filters() -> tuple[str, ...]:
    """Return the filters of every robot's liveness, routed telemetry and events."""
    return (f'{TOPIC_ROOT}/+/{STATUS}', f'{TOPIC_ROOT}/+/telemetry/#',
            f'{TOPIC_ROOT}/+/events/#')


def fleet_filter() -> str:
    """Return the filter of the whole tree (a planner without a site list)."""
    return f'{TOPIC_ROOT}/#'


def planner_topic(fleet_id: str, kind: str) -> str:
    """Return ``cobot/v1/planners/<fleet_id>/<kind>`` (lease, ledger, orders)."""
    if kind not in PLANNER_KINDS:
        raise TopicError(f'planner topic kind {kind!r} is not one of {PLANNER_KINDS}')
    return f'{TOPIC_ROOT}/planners/{check_fleet_id(fleet_id)}/{kind}'


def worker_status_topic(group: str) -> str:
    """Return ``cobot/v1/workers/<group>/status`` (retained: what the group has to do)."""
    return f'{TOPIC_ROOT}/workers/{check_fleet_id(group)}/status'


def shared_uploads_filter(group: str, kind: str) -> str:
    """Return the shared subscription through which one worker of a group takes each upload.

    ``cobot/v1/<any robot>/<kind>``, ``kind``: ``events/<name>`` or ``telemetry/<name>``.
    """
    if not kind.startswith(UPLINK_BRANCHES) or any(c in kind for c in '+#') \
            or kind.endswith('/') or len(kind.split('/')) != 2:
        raise TopicError(f'a worker takes events/<name> or telemetry/<name>, not {kind[:80]!r}')
    return f'$share/workers-{check_fleet_id(group)}/{TOPIC_ROOT}/+/{kind}'


def shared_orders_filter(fleet_id: str) -> str:
    """Return the shared subscription through which one replica of a fleet takes each order."""
    return f'$share/planners-{check_fleet_id(fleet_id)}/{ORDERS_TOPIC}'


@dataclass(frozen=True)
class Topic:
    """A topic of the tree, read back: which part of it, for whom, and what follows."""

    scope: str                  # 'robot' | 'orders' | 'planners' | 'workers'
    robot_id: str = ''          # scope 'robot'
    fleet_id: str = ''          # scope 'planners' (the fleet), 'workers' (the group)
    kind: str = ''              # 'status', 'telemetry/detections', 'cmd/mission', 'lease'...

    @property
    def is_command(self) -> bool:
        """True for ``cobot/v1/<robot_id>/cmd/...``."""
        return self.scope == 'robot' and self.kind.startswith('cmd/')

    @property
    def blob(self) -> tuple[str, int] | None:
        """``(sha256, offset)`` of ``cobot/v1/<robot_id>/blob/<sha256>/<offset>``, else None."""
        parts = self.kind.split('/')
        if self.scope != 'robot' or len(parts) != 3 or parts[0] != BLOB \
                or len(parts[1]) != 64 or any(c not in '0123456789abcdef' for c in parts[1]) \
                or not parts[2].isascii() or not parts[2].isdigit() or len(parts[2]) > 12:
            return None
        return parts[1], int(parts[2])

    @property
    def is_uplink(self) -> bool:
        """True for what a robot publishes (status, state, telemetry/..., events/...)."""
        return self.scope == 'robot' and (self.kind in (STATUS, STATE)
                                          or self.kind.startswith(UPLINK_BRANCHES))


def parse_topic(topic: object) -> Topic:
    """Read a topic of the ``cobot/v1`` tree; raise TopicError saying what is wrong."""
    if not isinstance(topic, str) or len(topic) > MAX_TOPIC:
        raise TopicError(f'a topic is text of at most {MAX_TOPIC} characters')
    parts = topic.split('/')
    if parts[:2] != TOPIC_ROOT.split('/') or len(parts) < 3 \
            or any(not p or '+' in p or '#' in p for p in parts[2:]):
        raise TopicError(f'topic {topic[:80]!r} is not {TOPIC_ROOT}/<robot_id>/...')
    if parts[2] == 'orders' and len(parts) == 3:
        return Topic('orders')
    if parts[2] == 'planners':
        if len(parts) != 5 or parts[4] not in PLANNER_KINDS:
            raise TopicError(f'topic {topic[:80]!r} is not {TOPIC_ROOT}/planners/<fleet_id>/'
                             f'({"|".join(PLANNER_KINDS)})')
        return Topic('planners', fleet_id=check_fleet_id(parts[3]), kind=parts[4])
    if parts[2] == 'workers':
        if len(parts) != 5 or parts[4] != 'status':
            raise TopicError(f'topic {topic[:80]!r} is not {TOPIC_ROOT}/workers/<group>/status')
        return Topic('workers', fleet_id=check_fleet_id(parts[3]), kind=parts[4])
    if len(parts) < 4:
        raise TopicError(f'topic {topic[:80]!r} is not {TOPIC_ROOT}/<robot_id>/<kind>')
    return Topic('robot', robot_id=check_robot_id(parts[2]), kind='/'.join(parts[3:]))
