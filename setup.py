"""ament_python build of cobot_hybrid (also installs editable into a plain venv)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'cobot_hybrid'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=['cobot_hybrid_*']),
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.launch.py')),
        (f'share/{PACKAGE}/config', glob('config/*.yaml') + glob('config/*.xml')),
        (f'share/{PACKAGE}/rviz', glob('rviz/*.rviz')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='cobot_hybrid maintainers',
    maintainer_email='maintainers@cobot-hybrid.invalid',
    description='Cloud-edge hybrid AI suite for collaborative robots (ROS 2).',
    license='Apache-2.0',
    python_requires='>=3.10',
    entry_points={
        'console_scripts': [
            'image_source_node = cobot_hybrid_perception.nodes.image_source_node:main',
            'safety_monitor_node = cobot_hybrid_perception.nodes.safety_monitor_node:main',
            'driver_adapter_node = cobot_hybrid_perception.nodes.driver_adapter_node:main',
            'detector_node = cobot_hybrid_perception.nodes.detector_node:main',
            'bridge_node = cobot_hybrid_bridge.nodes.bridge_node:main',
            'mission_executor_node = cobot_hybrid_bridge.nodes.mission_executor_node:main',
            'skill_server_node = cobot_hybrid_bridge.nodes.skill_server_node:main',
            'planner_node = cobot_hybrid_planner.nodes.planner_node:main',
            'lifecycle_manager_node = cobot_hybrid_ros.nodes.lifecycle_manager_node:main',
            'static_transform_node = cobot_hybrid_ros.nodes.static_transform_node:main',
            'cobot-hybrid = cobot_hybrid_cli:main',
        ],
        # cloud offload jobs, found by name by `cobot-hybrid worker` (docs/offload.md)
        'cobot_hybrid.jobs': [
            'snapshot = cobot_hybrid_perception.snapshot_analysis:make_job',
        ],
    },
)
