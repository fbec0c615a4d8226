"""Launch the detector: ``ros2 launch cobot_hybrid perception.launch.py``.

Arguments: ``params_file`` (default: the package's config/perception.yaml), ``namespace``,
``log_level``. Remap ``image`` to your camera's topic in your own launch file.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode


def generate_launch_description() -> LaunchDescription:
    """Describe the detector_node launch."""
    share = Path(get_package_share_directory('cobot_hybrid'))
    return LaunchDescription([
        DeclareLaunchArgument('params_file',
                              default_value=str(share / 'config' / 'perception.yaml')),
        DeclareLaunchArgument('namespace', default_value=''),
        DeclareLaunchArgument('log_level', default_value='info'),
        LifecycleNode(
            package='cobot_hybrid',
            executable='detector_node',
            name='detector_node',
            namespace=LaunchConfiguration('namespace'),
            parameters=[LaunchConfiguration('params_file')],
            arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
            output='screen',
        ),
    ])
