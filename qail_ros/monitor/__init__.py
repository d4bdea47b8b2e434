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

from qail_ros.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    '.tegrastats': ('parse_line', 'TegrastatsSample'),
    '.energy': ('EnergyAccountant',),
    '.sources': ('detect_source',),
})
