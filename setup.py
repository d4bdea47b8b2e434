"""ament_python / pip build script for qail_ros."""
from glob import glob
import os
import runpy

from setuptools import find_packages, setup

PACKAGE = 'qail_ros'

# One console script per node, plus the `qail-ros` command line. The node list lives in one
# place, qail_ros/nodes/registry.py, read as a file (setup.py must not import the package).
NODES = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), PACKAGE,
                                    'nodes', 'registry.py'))['NODES']


def _tree(folder):
    """data_files entries installing `folder` recursively under share/qail_ros."""
    entries = []
    for root, _dirs, files in os.walk(folder):
        if files:
            entries.append((os.path.join('share', PACKAGE, root),
                            [os.path.join(root, f) for f in files]))
    return entries


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml')),
        ('share/' + PACKAGE + '/config/secure', glob('config/secure/*')),
    ] + _tree('models'),
    python_requires='>=3.10',
    install_requires=[
        'numpy',
        'pyyaml',
        'rosbags>=0.11.9,<0.12',  # bag.py relies on its mcap writer's chunking
        'eclipse-zenoh>=1.0',
        'mcap',
        'pillow',
        'tqdm',
        'rich',
        'psutil',
        'xxhash',  # rmw_zenoh-compatible GIDs
    ],
    extras_require={
        # torch is installed separately (pinned CPU wheel here, JetPack's wheel on Orin).
        'ml': ['torch', 'safetensors'],
        'video': ['av'],
        'test': ['pytest', 'mcap-ros2-support'],
        'openvino': ['openvino', 'nncf'],
    },
    zip_safe=False,
    maintainer='qail_ros maintainers',
    maintainer_email='maintainers@qail-ros.invalid',
    description='ROS 2 runtime for low-bit quantized imitation-learning policies.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': ['qail-ros = qail_ros.cli:main'] + [
            f'{name} = {target}' for name, target in NODES.items()],
    },
)
