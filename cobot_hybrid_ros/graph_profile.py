"""Profile a running ROS graph: per topic, node and process what it costs, then place it.

:func:`sample` joins the graph as one node for a few seconds and measures, independently of
what the nodes say about themselves:

* per topic: messages/s and bytes/s (raw subscriptions: nothing is deserialized), who
  publishes and who subscribes;
* per node: its process (found by its name on the command line), CPU in cores and resident
  memory over the window (psutil; a Jetson's GPU/EMC load when ``jtop`` is installed);
* the nodes' own diagnostics (latest status per name): the detector's per-stage latency and
  its perception budget, the bridge's link RTT.

:func:`workloads` turns a sample into :class:`~cobot_hybrid_ros.placement.Workload` rows (the
suite's nodes by :data:`WORKLOADS`; any other node as a row without a deadline) and
:func:`link_from` the link. A sample is plain JSON (``--out`` writes it), so a recorded run is
placed again later with other link numbers (``cobot-hybrid profile --from``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from cobot_hybrid_ros.placement import Link, Workload

__all__ = ['WORKLOADS', 'WorkloadSpec', 'link_from', 'sample', 'workloads']

#: Topics not worth measuring (the graph's own plumbing).
SKIP_TOPICS = frozenset({'/rosout', '/parameter_events'})


@dataclass(frozen=True)
class WorkloadSpec:
    """How to read one of the suite's nodes as a workload."""

    name: str
    deadline: str          # where its deadline is read: 'budget' | a parameter of the node
    safety: bool = False   # a safety function: must keep working when the link drops
    fleet: bool = False    # needs every robot's state: belongs where they all are
    latency_key: str = ''  # its own diagnostics value of its latency [ms]


#: The suite's nodes, by node name.
WORKLOADS = {
    'detector_node': WorkloadSpec('person detection', 'budget', safety=True,
                                  latency_key='total_ms_p50'),
    'safety_monitor_node': WorkloadSpec('speed and separation monitoring',
                                        'max_perception_age_s', safety=True),
    'mission_executor_node': WorkloadSpec('mission execution', 'step_period_s', safety=True),
    'planner_node': WorkloadSpec('fleet mission planning', 'plan_time_limit_s', fleet=True),
}


def _find_processes(nodes: list[tuple[str, str]]) -> dict[str, Any]:
    """psutil.Process per fully qualified node, by its name (and namespace) on its command line.

    A node matches a process whose command line names it (``__node:=name``, or a module or
    executable ending in it) in the same namespace (``__ns:=/ns``; none given: the root).
    """
    import psutil

    found: dict[str, Any] = {}
    for proc in psutil.process_iter(['pid', 'cmdline']):
        args = proc.info.get('cmdline') or []
        cmdline = ' '.join(args) + ' '
        if 'graph_profile' in cmdline or 'cobot-hybrid profile' in cmdline \
                or 'cobot_hybrid_cli profile' in cmdline:
            continue
        ns = next((a.split(':=', 1)[1] for a in args if a.startswith('__ns:=')), '/')
        for name, namespace in nodes:
            qualified = _qualified(namespace, name)
            if qualified in found or (ns.rstrip('/') or '/') != (namespace.rstrip('/') or '/'):
                continue
            if f'__node:={name} ' in cmdline or f'.{name} ' in cmdline \
                    or f'/{name} ' in cmdline:
                found[qualified] = proc
    return found


def _jetson() -> dict[str, Any] | str:
    try:
        from jtop import jtop  # type: ignore[import-not-found]
    except ImportError:
        return 'jtop (jetson_stats) not installed: no GPU/EMC figures'
    try:
        with jtop() as jetson:
            return {k: v for k, v in jetson.stats.items() if isinstance(v, (int, float, str))}
    except Exception as exc:  # noqa: BLE001 - jtop's service may be down: say so
        return f'jtop failed: {exc}'


def sample(node: Any, seconds: float) -> dict[str, Any]:
    """Measure the graph ``node`` is on for ``seconds``; return the sample (JSON-ready)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    me = node.get_fully_qualified_name()
    _discover(node)
    counts: dict[str, list[int]] = {}
    since: dict[str, float] = {}
    # Deep queues: a burst while this process waits for a core is counted late, not lost.
    best_effort = QoSProfile(depth=1000, reliability=ReliabilityPolicy.BEST_EFFORT)
    executor = _executor(node)
    topics: dict[str, dict[str, Any]] = {}
    statuses: dict[str, dict[str, Any]] = {}

    def on_diag(msg: Any, prefix: str) -> None:
        at = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        for status in msg.status:
            level = status.level[0] if isinstance(status.level, bytes) else int(status.level)
            values = {kv.key: kv.value for kv in status.values}
            key = f'{prefix}{status.name}'
            first = statuses.get(key, {})
            statuses[key] = {'level': level, 'message': status.message, 'values': values,
                             'first_values': first.get('first_values', values),
                             'first_at': first.get('first_at', at), 'last_at': at}

    def watch(topic: str, types: list[str]) -> None:
        if topic in counts or topic in SKIP_TOPICS or not types:
            return
        msg_type = _message_class(types[0])
        if msg_type is None:
            return   # a type this environment cannot import: not measured
        counts[topic] = [0, 0]
        since[topic] = time.monotonic()

        def on_raw(raw: bytes, tally: list[int] = counts[topic]) -> None:
            tally[0] += 1
            tally[1] += len(raw)
        node.create_subscription(msg_type, topic, on_raw, best_effort, raw=True)
        topics[topic] = {'type': types[0]}
        if types[0] == 'diagnostic_msgs/msg/DiagnosticArray' and topic.endswith('/diagnostics'):
            # Every namespace's diagnostics: a status of /r1/diagnostics is kept as
            # '/r1/<name>', one of /diagnostics as '<name>'.
            prefix = topic[:-len('diagnostics')] if topic != '/diagnostics' else ''
            node.create_subscription(DiagnosticArray, topic,
                                     lambda m, p=prefix: on_diag(m, p), 50)

    procs: dict[str, Any] = {}
    cpu_since: dict[str, float] = {}

    def watch_graph() -> None:
        for topic, types in node.get_topic_names_and_types():
            watch(topic, types)
        graph = [(n, ns) for n, ns in node.get_node_names_and_namespaces()
                 if _qualified(ns, n) != me]
        missing = [(n, ns) for n, ns in graph if _qualified(ns, n) not in procs]
        if missing:
            for qualified, proc in _find_processes(missing).items():
                procs[qualified] = proc
                _safe(proc.cpu_percent, None)   # its CPU is measured from now
                cpu_since[qualified] = time.monotonic()
    watch_graph()
    settle = time.monotonic() + 0.5   # the subscriptions match their publishers
    while time.monotonic() < settle:
        executor.spin_once(timeout_sec=0.05)
    start = time.monotonic()
    for topic, tally in counts.items():
        tally[:] = [0, 0]
        since[topic] = start
    for qualified, proc in procs.items():
        _safe(proc.cpu_percent, None)
        cpu_since[qualified] = start
    looked = start
    while (now := time.monotonic()) - start < seconds:
        if now - looked >= 1.0:   # what appears during the window is measured from then on
            looked = now
            watch_graph()
        executor.spin_once(timeout_sec=0.05)
    end = time.monotonic()
    graph_nodes = [(n, ns) for n, ns in node.get_node_names_and_namespaces()
                   if _qualified(ns, n) != me]
    for topic, (messages, size) in counts.items():
        window = max(end - since[topic], 1e-3)
        # Who publishes and subscribes, asked at the end: endpoints are discovered after
        # their topics are, and a graph of many processes takes seconds to settle.
        ends = {kind: sorted({_qualified(i.node_namespace, i.node_name) for i in infos} - {me})
                for kind, infos in (('publishers', node.get_publishers_info_by_topic(topic)),
                                    ('subscribers', node.get_subscriptions_info_by_topic(topic)))}
        topics[topic].update(ends, window_s=window, rate_hz=messages / window,
                             bytes_per_s=size / window,
                             mean_message_bytes=size / messages if messages else 0.0)
    processes = {}
    for qualified, proc in procs.items():
        cpu = _safe(proc.cpu_percent, None)
        memory = _safe(proc.memory_info)
        processes[qualified] = {'pid': proc.pid,
                                'cpu_cores': cpu / 100.0 if cpu is not None else None,
                                'rss_mb': memory.rss / 2**20 if memory is not None else None,
                                'window_s': end - cpu_since[qualified]}
    nodes = {}
    for name, namespace in graph_nodes:
        subs = [t for t, _ in node.get_subscriber_names_and_types_by_node(name, namespace)]
        nodes[_qualified(namespace, name)] = {'name': name, 'subscribes': sorted(subs)}
    return {'seconds': end - start, 'topics': topics, 'processes': processes, 'nodes': nodes,
            'diagnostics': statuses, 'parameters': _parameters(node, nodes),
            'jetson': _jetson()}


def _executor(node: Any) -> Any:
    """One executor holding ``node`` for the whole sample.

    ``rclpy.spin_once(node)`` adds the node to the global executor and removes it again on
    every call, rebuilding its wait set each time: on a loaded machine that alone fell behind
    the graph's ~100 messages/s and the counts came out low.
    """
    from rclpy.executors import SingleThreadedExecutor

    executor = getattr(node, '_profile_executor', None)
    if executor is None:
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
        node._profile_executor = executor
    return executor


def _discover(node: Any, quiet_s: float = 2.0, most_s: float = 8.0) -> None:
    """Spin until the graph's topics and nodes stop changing for ``quiet_s`` (or ``most_s``)."""
    start = time.monotonic()
    seen: tuple[Any, ...] = ()
    changed = start
    while time.monotonic() - start < most_s and time.monotonic() - changed < quiet_s:
        _executor(node).spin_once(timeout_sec=0.1)
        now = (tuple(sorted(t for t, _ in node.get_topic_names_and_types())),
               tuple(sorted(node.get_node_names_and_namespaces())))
        if now != seen:
            seen, changed = now, time.monotonic()


def _message_class(type_name: str) -> Any:
    """``pkg/msg/Name`` -> the Python message class, or None when it cannot be imported."""
    import importlib

    parts = type_name.split('/')
    if len(parts) != 3 or not all(p.isidentifier() for p in parts):
        return None
    try:
        return getattr(importlib.import_module(f'{parts[0]}.{parts[1]}'), parts[2], None)
    except ImportError:
        return None


def _qualified(namespace: str, name: str) -> str:
    return f'{namespace.rstrip("/")}/{name}'


def _safe(fn: Any, *args: Any) -> Any:
    import psutil

    try:
        return fn(*args)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _parameters(node: Any, nodes: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Ask the suite's nodes for their deadline parameters over their parameter services."""
    from rcl_interfaces.msg import ParameterType
    from rcl_interfaces.srv import GetParameters

    out: dict[str, dict[str, float]] = {}
    for qualified, info in nodes.items():
        spec = WORKLOADS.get(info['name'])
        if spec is None or spec.deadline == 'budget':
            continue
        client = node.create_client(GetParameters, f'{qualified}/get_parameters')
        if not client.wait_for_service(timeout_sec=2.0):
            continue
        future = client.call_async(GetParameters.Request(names=[spec.deadline]))
        _executor(node).spin_until_future_complete(future, timeout_sec=2.0)
        values = getattr(future.result(), 'values', None) or []
        if values and values[0].type == ParameterType.PARAMETER_DOUBLE:
            out[qualified] = {spec.deadline: float(values[0].double_value)}
        node.destroy_client(client)
    return out


#: Largest value read from a sample's diagnostics strings (every one is a time, a rate, a
#: size or a load: none is negative or astronomically large).
_MAX_READING = 1e12


def _num(text: Any) -> float:
    """Read a diagnostics value as a number: NaN unless finite and in 0..``_MAX_READING``."""
    try:
        value = float(text)
    except (TypeError, ValueError, OverflowError):
        return math.nan
    return value if math.isfinite(value) and 0.0 <= value <= _MAX_READING else math.nan


def workloads(data: dict[str, Any]) -> list[Workload]:
    """Read a sample as workloads: the suite's nodes by WORKLOADS, others without a deadline."""
    rows = []
    topics = data.get('topics', {})
    diag = data.get('diagnostics', {})
    for qualified, info in sorted(data.get('nodes', {}).items()):
        name = info['name']
        spec = WORKLOADS.get(name)
        proc = data.get('processes', {}).get(qualified, {})
        ns = qualified[:-len(name)] if qualified.endswith(name) else '/'
        prefix = '' if ns == '/' else ns   # '/r1/' for /r1/detector_node
        inputs = [(topics[t].get('bytes_per_s', 0.0), t) for t in info.get('subscribes', [])
                  if t in topics and t != '/diagnostics']
        rate, topic = max(inputs) if inputs else (math.nan, '')
        deadline, source, latency = math.nan, '', math.nan
        if spec is not None and spec.deadline == 'budget':
            budget = diag.get(f'{prefix}perception budget: {name}', {}).get('values', {})
            deadline = _num(budget.get('limit_ms')) / 1e3
            source = f'{budget.get("limit_from", "?")} max_perception_age_s'
        elif spec is not None:
            deadline = _num(data.get('parameters', {}).get(qualified, {}).get(spec.deadline))
            source = f'{qualified} {spec.deadline}'
        if spec is not None and spec.latency_key:
            key = spec.latency_key
            own: dict[str, Any] = next((s['values'] for n, s in diag.items()
                                        if n.startswith(f'{prefix}{name}:')
                                        and key in s['values']), {})
            latency = _num(own.get(spec.latency_key)) / 1e3
        rows.append(Workload(
            name=spec.name if spec else name, node=qualified, deadline_s=deadline,
            deadline_source=source, edge_latency_s=latency, input_topic=topic,
            input_bytes_per_s=rate, input_message_bytes=(
                topics[topic].get('mean_message_bytes', math.nan) if topic else math.nan),
            cpu_cores=_num(proc.get('cpu_cores')), rss_mb=_num(proc.get('rss_mb')),
            safety=bool(spec and spec.safety), fleet=bool(spec and spec.fleet)))
    return rows


def link_from(data: dict[str, Any], probe: dict[str, Any] | None = None,
              may_drop: bool = True) -> Link:
    """Return the link: a probe's numbers if given, else the bridge's RTT (its diagnostics)."""
    if probe:
        return Link(probe.get('rtt_s', math.nan), probe.get('uplink_bytes_per_s', math.nan),
                    may_drop, probe.get('source', 'probe'))
    bridge = next((s['values'] for n, s in data.get('diagnostics', {}).items()
                   if 'rtt_ms' in s.get('values', {})), None)
    if bridge is None:
        return Link(may_drop=may_drop, source='no bridge diagnostics heard, no probe')
    return Link(_num(bridge.get('rtt_ms')) / 1e3, math.nan, may_drop,
                'the bridge link RTT (its diagnostics); uplink not probed')
