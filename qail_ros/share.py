"""Where the package's launch/, config/ and models/ live.

On ROS: the ament share directory (`get_package_share_directory('qail_ros')`). Installed with
pip: `<prefix>/share/qail_ros` (setup.py data_files). From a source checkout: the checkout root.
`QAIL_ROS_SHARE` overrides all three.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

PACKAGE = 'qail_ros'


@functools.lru_cache(maxsize=1)
def share_dir() -> Path:
    env = os.environ.get('QAIL_ROS_SHARE')
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / 'package.xml').is_file() and (checkout / 'config').is_dir():
        return checkout
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # noqa: BLE001 - ament missing or package not in its index
        pass
    for prefix in (sys.prefix, sys.base_prefix, os.path.expanduser('~/.local')):
        candidate = Path(prefix) / 'share' / PACKAGE
        if (candidate / 'package.xml').is_file():
            return candidate
    raise FileNotFoundError(
        'cannot find the qail_ros share directory (launch/, config/, models/): install the '
        'package (pip install . or colcon build) or set QAIL_ROS_SHARE')


def config_path(name: str) -> Path:
    return share_dir() / 'config' / name


def launch_path(name: str) -> Path:
    return share_dir() / 'launch' / name


def models_dir() -> Path:
    return share_dir() / 'models'


def resolve_share_path(path: str) -> Path:
    """A path as given when it is absolute or exists (relative to the working directory),
    else relative to the share directory when it exists there (`models/...` of the package),
    else as given (the caller's error then names it). Engine and model files of the nodes."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    try:
        shared = share_dir() / path
    except FileNotFoundError:
        return p
    return shared if shared.exists() else p
