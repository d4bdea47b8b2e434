"""The runtime of this process: real rclpy when importable, the embedded runtime otherwise.

`QAIL_ROS_RUNTIME=rclpy|embedded|auto` (default auto) overrides the choice. The choice is made
once per process; `get_runtime()` returns the same object every time.
"""
from __future__ import annotations

import importlib.util
import os
import threading

from qail_ros.runtime.api import Runtime

__all__ = ['get_runtime', 'set_runtime', 'runtime_name', 'rclpy_available']

_lock = threading.Lock()
_runtime: Runtime | None = None


def rclpy_available() -> bool:
    return importlib.util.find_spec('rclpy') is not None


def runtime_name() -> str:
    """'rclpy' or 'embedded': what get_runtime() picks in this process."""
    choice = os.environ.get('QAIL_ROS_RUNTIME', 'auto').strip().lower()
    if choice not in ('auto', 'rclpy', 'embedded'):
        raise ValueError(f"QAIL_ROS_RUNTIME must be auto, rclpy or embedded, not '{choice}'")
    if choice == 'auto':
        return 'rclpy' if rclpy_available() else 'embedded'
    return choice


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            if runtime_name() == 'rclpy':
                from qail_ros.runtime.rclpy_runtime import RclpyRuntime
                _runtime = RclpyRuntime()
            else:
                from qail_ros.runtime.embedded import EmbeddedRuntime
                _runtime = EmbeddedRuntime()
        return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Install a runtime explicitly (tests, composed launches); None resets the choice."""
    global _runtime
    with _lock:
        _runtime = runtime
