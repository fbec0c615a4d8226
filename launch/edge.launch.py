"""The whole edge stack of one robot: ``ros2 launch cobot_hybrid edge.launch.py robot_id:=r7``.

Starts ``safety_monitor_node`` and ``detector_node`` (lifecycle nodes), ``bridge_node``, and on
request ``image_source_node`` (a stand-in camera), ``driver_adapter_node`` (the safety decision
in your driver's own interface) and ``mission_executor_node`` with the reference
``skill_server_node``, all in
``namespace``, each with its shipped parameter file (``config/perception.yaml``,
``safety.yaml``, ``driver_adapter.yaml``, ``bridge.yaml``, keyed ``/**/<node>`` so they apply in
any namespace) and then ``params_file`` on top (your overrides, for every node).

Arguments:
* ``robot_id`` (``cobot-1``), ``namespace`` (``''``), ``log_level`` (``info``);
* ``params_file``: a YAML of overrides keyed ``/**/<node_name>`` (a misspelt key stops the
  node with the nearest valid name);
* topics, remapped on every node that uses them: ``image`` (the camera's
  ``sensor_msgs/Image``), ``camera_info``, ``robot_speed`` (the TCP speed: ``TwistStamped`` or
  ``Float64``, see ``robot_speed_type``), ``joint_states`` (the arm's pose, used with
  ``robot_geometry: arm``), ``speed_scale`` and ``protective_stop`` (what the safety monitor
  decides);
* ``lifecycle`` (``manager``): ``manager`` starts ``lifecycle_manager_node``, which configures
  and activates the lifecycle nodes one after the other (the safety monitor, the driver
  adapter, then the detector), all or none: a refusal undoes the rest and ends it with the
  refusing node's reason. ``self``: each lifecycle node
  configures and activates itself (a refusal ends that process). ``external``: they wait,
  unconfigured, for your lifecycle manager (Nav2's ``lifecycle_manager`` with the same
  ``node_names`` and ``bond_timeout: 0.0``; it configures all before activating any, so the
  driver hears the safety monitor only once the detector is configured);
* ``driver`` (``none``): also start ``driver_adapter_node`` with that ``output``:
  ``speed_scaling_factor`` (ros2_control's joint trajectory controller), ``ur_speed_slider``
  (the UR driver), ``stop_trigger`` or ``stop_setbool`` (std_srvs stop services);
* ``camera_tf`` (``false``): the safety monitor publishes ``camera_to_base`` as the static
  transform ``base_frame -> camera_frame`` on ``/tf_static`` (for rviz; leave it off when your
  robot description already places the camera);
* ``image_source`` (``false``): also start ``image_source_node`` publishing ``image``;
* ``executor`` (``false``): also start ``mission_executor_node`` and the reference
  ``skill_server_node`` it sends the tasks to (``execute_task``; docs/skills.md).
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue

TOPICS = ('image', 'camera_info', 'robot_speed', 'joint_states', 'speed_scale',
          'protective_stop')
LIFECYCLE_MODES = ('manager', 'self', 'external')
BOOLEAN = ('true', 'false')
DRIVERS = ('none', 'speed_scaling_factor', 'ur_speed_slider', 'stop_trigger', 'stop_setbool')
# Bring-up order, one node after the other: the safety monitor first, then the driver adapter,
# both active and holding the robot stopped while the detector loads (minutes for a first
# TensorRT engine build).


def generate_launch_description() -> LaunchDescription:
    """Describe the edge stack."""
    config = Path(get_package_share_directory('cobot_hybrid')) / 'config'
    arg = LaunchConfiguration
    namespace, log = arg('namespace'), ['--ros-args', '--log-level', arg('log_level')]
    remaps = [(topic, arg(topic)) for topic in TOPICS]
    autostart = PythonExpression(["'", arg('lifecycle'), "' == 'self'"])
    managed = PythonExpression(["['safety_monitor_node'] + (['driver_adapter_node'] if '",
                                arg('driver'), "' != 'none' else []) + ['detector_node']"])

    def equals(name: str, value: str) -> PythonExpression:
        return PythonExpression(["'", arg(name), f"' == '{value}'"])

    def text(name: str) -> ParameterValue:
        return ParameterValue(arg(name), value_type=str)   # a robot id '007' stays a string

    def params(shipped: str) -> list:
        return [str(config / shipped), arg('params_file')]

    return LaunchDescription([
        DeclareLaunchArgument('robot_id', default_value='cobot-1'),
        DeclareLaunchArgument('namespace', default_value=''),
        DeclareLaunchArgument('log_level', default_value='info'),
        DeclareLaunchArgument('params_file', default_value=str(config / 'edge_overrides.yaml'),
                              description='overrides for every node, keyed /**/<node_name>'),
        *[DeclareLaunchArgument(topic, default_value=topic) for topic in TOPICS],
        DeclareLaunchArgument('lifecycle', default_value='manager', choices=LIFECYCLE_MODES),
        DeclareLaunchArgument('driver', default_value='none', choices=DRIVERS),
        DeclareLaunchArgument('camera_tf', default_value='false', choices=BOOLEAN),
        DeclareLaunchArgument('image_source', default_value='false', choices=BOOLEAN),
        DeclareLaunchArgument('executor', default_value='false', choices=BOOLEAN),
        Node(package='cobot_hybrid', executable='image_source_node', name='image_source_node',
             namespace=namespace, parameters=params('perception.yaml'), remappings=remaps,
             arguments=log, output='screen', condition=IfCondition(arg('image_source'))),
        LifecycleNode(package='cobot_hybrid', executable='safety_monitor_node',
                      name='safety_monitor_node', namespace=namespace,
                      parameters=[*params('safety.yaml'), {'autostart': autostart,
                                                           'publish_camera_tf': arg('camera_tf')}],
                      remappings=remaps, arguments=log, output='screen'),
        LifecycleNode(package='cobot_hybrid', executable='detector_node',
                      name='detector_node', namespace=namespace,
                      parameters=[*params('perception.yaml'), {'autostart': autostart}],
                      remappings=remaps, arguments=log, output='screen'),
        LifecycleNode(package='cobot_hybrid', executable='driver_adapter_node',
                      name='driver_adapter_node', namespace=namespace,
                      parameters=[*params('driver_adapter.yaml'),
                                  {'autostart': autostart, 'output': text('driver')}],
                      remappings=remaps, arguments=log, output='screen',
                      condition=UnlessCondition(equals('driver', 'none'))),
        Node(package='cobot_hybrid', executable='lifecycle_manager_node',
             name='lifecycle_manager_node', namespace=namespace,
             parameters=[str(config / 'lifecycle_manager.yaml'), arg('params_file'),
                         {'node_names': managed}],
             arguments=log, output='screen',
             condition=IfCondition(equals('lifecycle', 'manager'))),
        Node(package='cobot_hybrid', executable='bridge_node', name='bridge_node',
             namespace=namespace,
             parameters=[*params('bridge.yaml'), {'robot_id': text('robot_id')}],
             remappings=remaps, arguments=log, output='screen'),
        Node(package='cobot_hybrid', executable='mission_executor_node',
             name='mission_executor_node', namespace=namespace,
             parameters=params('bridge.yaml'), remappings=remaps, arguments=log,
             output='screen', condition=IfCondition(arg('executor'))),
        Node(package='cobot_hybrid', executable='skill_server_node',
             name='skill_server_node', namespace=namespace,
             parameters=params('bridge.yaml'), remappings=remaps, arguments=log,
             output='screen', condition=IfCondition(arg('executor'))),
    ])
