"""The monitor: latency, power and energy per inference, from tegrastats or whatever is there.

* tegrastats.py  parser of tegrastats lines (every Jetson / JetPack format), pure Python
* sources.py     tegrastats child process, followed or replayed logs, NVML, RAPL, psutil
* energy.py      energy per inference (power integrated over inference windows), idle baseline
* throttle.py    the thermal-throttling rule
* timing.py      per-inference windows from the policy nodes' policy_timing messages
* report.py      recorded sessions and the Markdown + PNG comparison report

The node is qail_ros.nodes.power_monitor; the command line `qail-ros monitor`. Nothing heavy is
imported here.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ['parse_line', 'TegrastatsSample', 'EnergyAccountant', 'detect_source']

_LAZY = {
    'parse_line': 'qail_ros.monitor.tegrastats',
    'TegrastatsSample': 'qail_ros.monitor.tegrastats',
    'EnergyAccountant': 'qail_ros.monitor.energy',
    'detect_source': 'qail_ros.monitor.sources',
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
