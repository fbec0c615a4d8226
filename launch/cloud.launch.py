"""The cloud planner: ``ros2 launch cobot_hybrid cloud.launch.py params_file:=/etc/.../mine.yaml``.

Starts ``planner_node`` in ``namespace`` with the shipped ``config/planner.yaml`` (keyed
``/**/planner_node``) and then ``params_file`` on top: point its ``site_file``,
``private_key_file`` and broker settings at your deployment.

Arguments:
* ``params_file``: overrides keyed ``/**/planner_node`` (default ``config/cloud_overrides.yaml``,
  which changes nothing; a misspelt key stops the node with the nearest valid name);
* ``namespace`` (``''``), ``log_level`` (``info``);
* ``client_id`` (``planner``): the MQTT client id, one per replica;
* ``fleet_id`` (``''``): set it (the same on every replica) to run several planners of one
  fleet, one owning the fleet at a time.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description() -> LaunchDescription:
    """Describe the planner_node launch."""
    config = Path(get_package_share_directory('cobot_hybrid')) / 'config'
    arg = LaunchConfiguration

    def text(name: str) -> ParameterValue:
        return ParameterValue(arg(name), value_type=str)   # '' and '007' stay strings

    return LaunchDescription([
        DeclareLaunchArgument('params_file', default_value=str(config / 'cloud_overrides.yaml'),
                              description='overrides keyed /**/planner_node'),
        DeclareLaunchArgument('namespace', default_value=''),
        DeclareLaunchArgument('log_level', default_value='info'),
        DeclareLaunchArgument('client_id', default_value='planner'),
        DeclareLaunchArgument('fleet_id', default_value=''),
        Node(package='cobot_hybrid', executable='planner_node', name='planner_node',
             namespace=arg('namespace'),
             parameters=[str(config / 'planner.yaml'), arg('params_file'),
                         {'client_id': text('client_id'), 'fleet_id': text('fleet_id')}],
             arguments=['--ros-args', '--log-level', arg('log_level')], output='screen'),
    ])
