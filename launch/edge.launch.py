"""The whole edge stack of one robot: ``ros2 launch cobot_hybrid edge.launch.py robot_id:=r7``.

Starts ``detector_node`` and ``safety_monitor_node`` (lifecycle nodes), ``bridge_node``, and on
request ``image_source_node`` (a stand-in camera) and the reference ``mission_executor_node``,
all in ``namespace``, each with its shipped parameter file (``config/perception.yaml``,
``safety.yaml``, ``bridge.yaml``, keyed ``/**/<node>`` so they apply in any namespace) and then
``params_file`` on top (your overrides, for every node; by default nothing more).

Arguments:
* ``robot_id`` (``cobot-1``), ``namespace`` (``''``), ``log_level`` (``info``);
* ``params_file``: a YAML of overrides keyed ``/**/<node_name>`` (a misspelt key stops the
  node with the nearest valid name);
* topics, remapped on every node that uses them: ``image`` (the camera's
  ``sensor_msgs/Image``), ``camera_info``, ``robot_speed`` (the TCP speed: ``TwistStamped`` or
  ``Float64``, see ``robot_speed_type``), ``speed_scale`` and ``protective_stop`` (what the
  safety monitor decides);
* ``autostart`` (``true``): the lifecycle nodes configure and activate themselves (a failed
  transition stops the process with the reason). ``false`` leaves them unconfigured for your
  lifecycle manager (Nav2's ``lifecycle_manager`` with ``node_names: [detector_node,
  safety_monitor_node]``);
* ``camera_tf`` (``false``): the safety monitor publishes ``camera_to_base`` as the static
  transform ``base_frame -> camera_frame`` on ``/tf_static`` (for rviz; leave it off when your
  robot description already places the camera);
* ``image_source`` (``false``): also start ``image_source_node`` publishing ``image``;
* ``executor`` (``false``): also start ``mission_executor_node``.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

TOPICS = ('image', 'camera_info', 'robot_speed', 'speed_scale', 'protective_stop')


def generate_launch_description() -> LaunchDescription:
    """Describe the edge stack."""
    config = Path(get_package_share_directory('cobot_hybrid')) / 'config'
    arg = LaunchConfiguration
    namespace, log = arg('namespace'), ['--ros-args', '--log-level', arg('log_level')]
    remaps = [(topic, arg(topic)) for topic in TOPICS]

    def params(shipped: str) -> list:
        return [str(config / shipped), arg('params_file')]

    return LaunchDescription([
        DeclareLaunchArgument('robot_id', default_value='cobot-1'),
        DeclareLaunchArgument('namespace', default_value=''),
        DeclareLaunchArgument('log_level', default_value='info'),
        DeclareLaunchArgument('params_file', default_value=str(config / 'edge_overrides.yaml'),
                              description='overrides for every node, keyed /**/<node_name>'),
        *[DeclareLaunchArgument(topic, default_value=topic) for topic in TOPICS],
        DeclareLaunchArgument('autostart', default_value='true'),
        DeclareLaunchArgument('camera_tf', default_value='false'),
        DeclareLaunchArgument('image_source', default_value='false'),
        DeclareLaunchArgument('executor', default_value='false'),
        Node(package='cobot_hybrid', executable='image_source_node', name='image_source_node',
             namespace=namespace, parameters=params('perception.yaml'), remappings=remaps,
             arguments=log, output='screen', condition=IfCondition(arg('image_source'))),
        LifecycleNode(package='cobot_hybrid', executable='detector_node',
                      name='detector_node', namespace=namespace,
                      parameters=[*params('perception.yaml'), {'autostart': arg('autostart')}],
                      remappings=remaps, arguments=log, output='screen'),
        LifecycleNode(package='cobot_hybrid', executable='safety_monitor_node',
                      name='safety_monitor_node', namespace=namespace,
                      parameters=[*params('safety.yaml'), {'autostart': arg('autostart'),
                                                           'publish_camera_tf': arg('camera_tf')}],
                      remappings=remaps, arguments=log, output='screen'),
        Node(package='cobot_hybrid', executable='bridge_node', name='bridge_node',
             namespace=namespace,
             parameters=[*params('bridge.yaml'), {'robot_id': arg('robot_id')}],
             remappings=remaps, arguments=log, output='screen'),
        Node(package='cobot_hybrid', executable='mission_executor_node',
             name='mission_executor_node', namespace=namespace,
             parameters=params('bridge.yaml'), remappings=remaps, arguments=log,
             output='screen', condition=IfCondition(arg('executor'))),
    ])
