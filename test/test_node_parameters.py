"""One source per parameter: every node, its YAML and its config dataclass agree, by value.

For every node: the parameters it declares are exactly the settings of its configs
(``CONFIGS`` in its module), with the setting's range and read-only flag; its section of
``config/*.yaml`` names every one of them (a key, or a ``# name:`` comment for optional
arrays) with the dataclass default as value (deployment paths excepted, listed here); a
read-only parameter set live is refused and changes nothing; a live one set to a bad value is
refused with the reason, and set to a good one it is applied (the behaviour tests of the
individual live settings are further down).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cobot_hybrid_protocol.settings import specs

ROOT = Path(__file__).resolve().parent.parent
NODES = {
    'image_source_node': ('cobot_hybrid_perception.nodes.image_source_node', 'ImageSourceNode',
                          'perception.yaml'),
    'detector_node': ('cobot_hybrid_perception.nodes.detector_node', 'DetectorNode',
                      'perception.yaml'),
    'safety_monitor_node': ('cobot_hybrid_perception.nodes.safety_monitor_node',
                            'SafetyMonitorNode', 'safety.yaml'),
    'bridge_node': ('cobot_hybrid_bridge.nodes.bridge_node', 'BridgeNode', 'bridge.yaml'),
    'mission_executor_node': ('cobot_hybrid_bridge.nodes.mission_executor_node',
                              'MissionExecutorNode', 'bridge.yaml'),
    'skill_server_node': ('cobot_hybrid_bridge.nodes.skill_server_node', 'SkillServerNode',
                          'bridge.yaml'),
    'planner_node': ('cobot_hybrid_planner.nodes.planner_node', 'PlannerNode',
                     'planner.yaml'),
    'driver_adapter_node': ('cobot_hybrid_perception.nodes.driver_adapter_node',
                            'DriverAdapterNode', 'driver_adapter.yaml'),
    'lifecycle_manager_node': ('cobot_hybrid_ros.nodes.lifecycle_manager_node',
                               'LifecycleManagerNode', 'lifecycle_manager.yaml'),
    'static_transform_node': ('cobot_hybrid_ros.nodes.static_transform_node',
                              'StaticTransformNode', 'static_transforms.yaml'),
}
#: Values a YAML file sets for a deployment, deliberately not the dataclass default.
DEPLOYMENT = {('planner_node', 'site_file'), ('planner_node', 'private_key_file')}
_ROS_OWN = {'use_sim_time', 'start_type_description_service'}


def _settings(node: str) -> dict[str, tuple[Any, Any]]:
    module = importlib.import_module(NODES[node][0])
    merged: dict[str, tuple[Any, Any]] = {}
    for config in module.CONFIGS:
        for name, item in specs(config).items():
            assert name not in merged, f'{node}: {name} declared by two configs'
            merged[name] = item
    return merged


def _yaml_section(node: str) -> tuple[dict[str, Any], str]:
    text = (ROOT / 'config' / NODES[node][2]).read_text()
    data = yaml.safe_load(text)
    key = f'/**/{node}'   # matches the node in any namespace (a bare name would not)
    assert key in data, f'config/{NODES[node][2]} has no {key} section'
    return data[key]['ros__parameters'], text


def _same(value: Any, default: Any) -> bool:
    if isinstance(default, (tuple, list)):
        return list(default) == list(value)
    if isinstance(default, float) and isinstance(value, (int, float)) \
            and not isinstance(value, bool):
        return float(value) == default
    return type(value) is type(default) and value == default


@pytest.mark.parametrize('node', sorted(NODES))
def test_the_yaml_holds_every_setting_with_its_default_value(node: str) -> None:
    settings = _settings(node)
    values, text = _yaml_section(node)
    unknown = sorted(set(values) - set(settings))
    assert not unknown, f'{node}: YAML keys that are no parameter: {unknown}'
    missing = [name for name in settings if name not in values
               and not re.search(rf'^\s*#\s*{name}:', text, re.M)]
    assert not missing, f'{node}: parameters the YAML does not document: {missing}'
    wrong = {name: (values[name], settings[name][0]) for name in values
             if (node, name) not in DEPLOYMENT and not _same(values[name], settings[name][0])}
    assert not wrong, f'{node}: YAML value differs from the dataclass default: {wrong}'


def test_the_yaml_check_would_catch_a_drifted_value() -> None:
    assert not _same(2.5, 2.0) and not _same(True, 1) and not _same('FULL ', 'FULL')
    assert _same(2, 2.0) and _same(['person'], ('person',))


@pytest.fixture
def make_node(ros_context: Any, tmp_path: Path, mosquitto_broker: Any) -> Any:
    """Build a node in this process with what it needs to start (files, a broker)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )
    from rclpy.parameter import Parameter

    key = tmp_path / 'planner.pem'
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    needs = {
        'bridge_node': {'data_dir': str(tmp_path), 'broker_port': mosquitto_broker.port},
        'planner_node': {'data_dir': str(tmp_path), 'broker_port': mosquitto_broker.port,
                         'site_file': str(ROOT / 'config' / 'examples' / 'site.yaml'),
                         'private_key_file': str(key)},
    }
    built: list[Any] = []

    def make(node: str, namespace: str = '', params_file: Path | None = None,
             **overrides: Any) -> Any:
        module, cls, _ = NODES[node]
        params = {**needs.get(node, {}), **overrides}
        extra: dict[str, Any] = {'namespace': namespace} if namespace else {}
        if params_file is not None:
            extra['cli_args'] = ['--ros-args', '--params-file', str(params_file)]
        instance = getattr(importlib.import_module(module), cls)(
            context=ros_context, parameter_overrides=[Parameter(k, value=v)
                                                      for k, v in params.items()], **extra)
        built.append(instance)
        return instance

    yield make
    for instance in built:
        for stop in ('bridge', 'service'):
            part = getattr(instance, stop, None)
            if part is not None:
                part.stop()
        instance.destroy_node()


def _changed(value: Any, low: Any, high: Any, choices: tuple[str, ...]) -> Any:
    """A valid value other than ``value`` for a setting."""
    if isinstance(value, bool):
        return not value
    if choices:
        return next(c for c in choices if c != value)
    if isinstance(value, int):
        return value + 1 if high is None or value + 1 <= high else value - 1
    if isinstance(value, float):
        return (value + high) / 2 if high is not None else value + 0.5
    if isinstance(value, tuple):
        return value
    return f'{value}-changed' if value else 'changed'


@pytest.mark.parametrize('node', sorted(NODES))
def test_the_node_declares_its_settings_and_refuses_what_it_cannot_apply(
        node: str, make_node: Any) -> None:
    from rclpy.parameter import Parameter

    settings = _settings(node)
    instance = make_node(node)
    declared = set(instance._parameters) - _ROS_OWN
    assert declared == set(settings), (sorted(declared - set(settings)),
                                       sorted(set(settings) - declared))
    for name, (default, spec) in settings.items():
        descriptor = instance.describe_parameter(name)
        assert descriptor.read_only == (not spec.live), name
        assert spec.description in descriptor.description, name
        if spec.low is not None and isinstance(default, float):
            assert descriptor.floating_point_range[0].from_value == spec.low, name
        new = _changed(default, spec.low, spec.high, spec.choices)
        if isinstance(new, tuple):
            if not new:   # an optional typed array, unset: nothing to set it back to
                continue
            new = list(new)
        before = instance.get_parameter(name).value
        result = instance.set_parameters([Parameter(name, value=new)])[0]
        if not spec.live:
            assert not result.successful, f'{node}: read-only {name} was accepted'
            assert instance.get_parameter(name).value == before, name
            continue
        assert result.successful, f'{node}: live {name} = {new!r} refused: {result.reason}'
        bindings = [b for b in vars(instance).values()
                    if type(b).__name__ == 'ParameterBinding' and name in b.names]
        assert bindings and _same(getattr(bindings[0].config, name), new), name
        if spec.high is not None and isinstance(default, (int, float)) \
                and not isinstance(default, bool):
            too_big = type(default)(spec.high * 2 + 1)
            result = instance.set_parameters([Parameter(name, value=too_big)])[0]
            assert not result.successful, f'{node}: {name} = {too_big} accepted'
            assert _same(getattr(bindings[0].config, name), new), name


def test_planner_live_settings_reach_the_service(make_node: Any) -> None:
    from rclpy.parameter import Parameter

    planner = make_node('planner_node')
    service = planner.service
    results = planner.set_parameters([Parameter('plan_time_limit_s', value=0.7),
                                      Parameter('offline_after_s', value=42.0),
                                      Parameter('max_task_failures', value=7),
                                      Parameter('resend_after_s', value=3.0),
                                      Parameter('mission_validity_s', value=600.0)])
    assert all(r.successful for r in results), [r.reason for r in results]
    assert service.cfg.plan_time_limit_s == 0.7 and service.cfg.max_task_failures == 7
    assert service.cfg.resend_after_s == 3.0 and service.cfg.mission_validity_s == 600.0
    assert service.fleet.offline_after_s == 42.0     # the fleet store judges liveness with it
    refused = planner.set_parameters([Parameter('plan_time_limit_s', value=-1.0)])[0]
    assert not refused.successful and service.cfg.plan_time_limit_s == 0.7


def test_a_planner_service_refuses_to_change_a_fixed_setting_live(tmp_path: Path) -> None:
    import dataclasses

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cobot_hybrid_planner.errors import PlannerError
    from cobot_hybrid_planner.service import PlannerConfig, PlannerService
    from cobot_hybrid_planner.site import load_site

    cfg = PlannerConfig(data_dir=tmp_path)
    service = PlannerService(cfg, load_site(ROOT / 'config' / 'examples' / 'site.yaml'),
                             Ed25519PrivateKey.generate())
    try:
        with pytest.raises(PlannerError, match='broker_port cannot change'):
            service.reconfigure(dataclasses.replace(cfg, broker_port=1884))
        assert service.cfg.broker_port == 1883
    finally:
        service.stop()


def test_detector_thresholds_apply_to_the_loaded_detector(make_node: Any) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    detector = make_node('detector_node')
    assert detector.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert detector.set_parameters([Parameter('conf', value=0.6)])[0].successful
    assert detector._detector.cfg.conf == 0.6      # the next frame is filtered with it


def test_image_source_rate_changes_the_timer(make_node: Any) -> None:
    from rclpy.parameter import Parameter

    source = make_node('image_source_node')
    assert source.set_parameters([Parameter('rate_hz', value=25.0)])[0].successful
    assert source._timer.timer_period_ns == int(1e9 / 25.0)


def test_safety_live_settings_reach_the_pipeline(make_node: Any) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    monitor = make_node('safety_monitor_node')
    assert monitor.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert monitor.set_parameters([Parameter('min_score', value=0.55)])[0].successful
    assert monitor._pipeline.cfg.min_score == 0.55
    bad = monitor.set_parameters([Parameter('human_speed_near_mps', value=1.0)])[0]
    assert not bad.successful and 'human_speed_near_mps' in bad.reason   # < far speed
    assert monitor._pipeline.cfg.human_speed_near_mps == 2.0


# --- the params file follows the node; a misspelt key is an error -------------------------------

@pytest.mark.parametrize('namespace', ['', 'cobot7', 'cell_a/cobot7'])
@pytest.mark.parametrize('node', sorted(NODES))
def test_the_shipped_yaml_reaches_the_node_in_any_namespace(node: str, namespace: str,
                                                            make_node: Any,
                                                            tmp_path: Path) -> None:
    values, _ = _yaml_section(node)
    shipped = ROOT / 'config' / NODES[node][2]
    changed = tmp_path / 'changed.yaml'   # a value that differs from every default
    text = shipped.read_text()
    probe = next((name for name, value in values.items()
                  if isinstance(value, float) and (node, name) not in DEPLOYMENT), None)
    if probe is not None:
        _, spec = _settings(node)[probe]
        new: Any = _changed(values[probe], spec.low, spec.high, spec.choices)
    else:   # a node without a float setting (static_transform_node): rename a frame
        probe = next(name for name, value in values.items()
                     if isinstance(value, list) and value and isinstance(value[0], str))
        new = [f'{v}_moved' for v in values[probe]]
    section = text.index(f'/**/{node}:')   # the node's own section: files hold several
    changed.write_text(text[:section] + re.sub(rf'^(\s+){probe}: .*$',
                                               rf'\g<1>{probe}: {new!r}', text[section:],
                                               count=1, flags=re.M))
    instance = make_node(node, namespace=namespace, params_file=changed)
    assert instance.get_namespace() == '/' + namespace if namespace else '/'
    got = instance.get_parameter(probe).value
    assert (list(got) == new if isinstance(new, list) else got == pytest.approx(new)), \
        f'{probe} of {instance.get_fully_qualified_name()} did not come from the file'
    for name, value in values.items():
        if name == probe or (node, name) in DEPLOYMENT or name in ('broker_port', 'data_dir'):
            continue   # (the fixture gives those for this machine)
        assert _same(instance.get_parameter(name).value, value), name


@pytest.mark.parametrize(('node', 'typo', 'meant'), [
    ('safety_monitor_node', 'max_perception_age', 'max_perception_age_s'),
    ('detector_node', 'confidence', 'conf'),
    ('bridge_node', 'broker_hots', 'broker_host'),
    ('lifecycle_manager_node', 'node_name', 'node_names'),
    ('planner_node', 'plan_time_limit', 'plan_time_limit_s'),
    ('mission_executor_node', 'stall_timeout', 'stall_timeout_s'),
    ('image_source_node', 'rate', 'rate_hz'),
    ('driver_adapter_node', 'input_timeout', 'input_timeout_s'),
])
def test_a_misspelt_key_in_the_params_file_is_refused_with_the_nearest_name(
        node: str, typo: str, meant: str, make_node: Any, tmp_path: Path) -> None:
    from cobot_hybrid_ros.errors import UnknownParameterError

    path = tmp_path / 'typo.yaml'
    path.write_text(yaml.safe_dump({f'/**/{node}': {'ros__parameters': {typo: 0.5}}}))
    with pytest.raises(UnknownParameterError, match=f"{typo}.*did you mean '{meant}'"):
        make_node(node, namespace='cobot7', params_file=path)


def test_a_misspelt_override_stops_the_node_process_with_the_reason(ros_process: Any) -> None:
    monitor = ros_process('cobot_hybrid_perception.nodes.safety_monitor_node', '--ros-args',
                          '-p', 'max_perception_age:=0.5')
    assert monitor.wait(30.0) == 2, monitor.log()
    assert "did you mean 'max_perception_age_s'" in monitor.log()


def test_a_change_of_several_parameters_is_applied_whole_or_not_at_all(make_node: Any) -> None:
    from rclpy.parameter import Parameter

    monitor = make_node('safety_monitor_node')
    result = monitor.set_parameters_atomically([
        Parameter('base_frame', value='odom'),                 # the shell's: valid
        Parameter('human_speed_near_mps', value=1.0)])         # the core's: below far speed
    assert not result.successful
    assert monitor._shell.config.base_frame == 'base_link'     # nothing of it applied
    assert monitor.get_parameter('base_frame').value == 'base_link'
    assert monitor.set_parameters_atomically([
        Parameter('base_frame', value='odom'), Parameter('min_score', value=0.4)]).successful
    assert monitor._shell.config.base_frame == 'odom' and monitor._params.config.min_score == 0.4


def test_array_parameters_set_through_the_parameter_service_apply(make_node: Any) -> None:
    """``ros2 param set`` delivers double arrays as array.array, not lists."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    monitor = make_node('safety_monitor_node')
    assert monitor.trigger_configure() == TransitionCallbackReturn.SUCCESS
    wire = Parameter.from_parameter_msg(Parameter('tcp_xyz', value=[0.1, 0.2, 0.3])
                                        .to_parameter_msg())
    assert type(wire.value).__name__ == 'array'
    result = monitor.set_parameters([wire])[0]
    assert result.successful, result.reason
    assert monitor._pipeline.cfg.tcp_xyz == (0.1, 0.2, 0.3)
