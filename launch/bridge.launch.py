"""Launch the edge bridge: ``ros2 launch cobot_hybrid bridge.launch.py robot_id:=cobot-7``.

Arguments: ``params_file`` (default: the package's config/bridge.yaml), ``namespace``,
``robot_id``, ``log_level``, ``executor`` (``true`` also starts ``mission_executor_node``,
which sends every task of the mission to a skill server and reports task progress, and the
reference ``skill_server_node`` serving ``execute_task``; docs/skills.md).
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    """Describe the bridge_node launch."""
    share = Path(get_package_share_directory('cobot_hybrid'))
    return LaunchDescription([
        DeclareLaunchArgument('params_file', default_value=str(share / 'config' / 'bridge.yaml')),
        DeclareLaunchArgument('namespace', default_value=''),
        DeclareLaunchArgument('robot_id', default_value='cobot-1'),
        DeclareLaunchArgument('log_level', default_value='info'),
        DeclareLaunchArgument('executor', default_value='false'),
        Node(
            package='cobot_hybrid',
            executable='bridge_node',
            name='bridge_node',
            namespace=LaunchConfiguration('namespace'),
            parameters=[LaunchConfiguration('params_file'),
                        {'robot_id': LaunchConfiguration('robot_id')}],
            arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
            output='screen',
        ),
        Node(
            package='cobot_hybrid',
            executable='mission_executor_node',
            name='mission_executor_node',
            namespace=LaunchConfiguration('namespace'),
            parameters=[LaunchConfiguration('params_file')],
            arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
            output='screen',
            condition=IfCondition(LaunchConfiguration('executor')),
        ),
        Node(
            package='cobot_hybrid',
            executable='skill_server_node',
            name='skill_server_node',
            namespace=LaunchConfiguration('namespace'),
            parameters=[LaunchConfiguration('params_file')],
            arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
            output='screen',
            condition=IfCondition(LaunchConfiguration('executor')),
        ),
    ])
