"""Launch the cloud planner: ``ros2 launch cobot_hybrid cloud.launch.py params_file:=...``.

Arguments: ``params_file`` (default: the package's config/planner.yaml, whose key and site
paths you point at your files), ``namespace``, ``log_level``.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    """Describe the planner_node launch."""
    share = Path(get_package_share_directory('cobot_hybrid'))
    return LaunchDescription([
        DeclareLaunchArgument('params_file',
                              default_value=str(share / 'config' / 'planner.yaml')),
        DeclareLaunchArgument('namespace', default_value=''),
        DeclareLaunchArgument('log_level', default_value='info'),
        Node(
            package='cobot_hybrid',
            executable='planner_node',
            name='planner_node',
            namespace=LaunchConfiguration('namespace'),
            parameters=[LaunchConfiguration('params_file')],
            arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
            output='screen',
        ),
    ])
