"""ROS-style console logging for the embedded runtime and the Zenoh transport.

    ros_log_line(level, node, message)   `[INFO] [1700000000.123456789] [talker]: message`
    RosFormatter(node)                   a logging.Formatter writing that line
    StderrHandler()                      a handler writing to whatever sys.stderr is at emit time
    make_node_logger(fqn, level)         the logger of one embedded node (`--log-level` rules)
"""
from __future__ import annotations

import logging
import sys
import time

from qail_ros.errors import ParameterError

__all__ = ['LEVELS', 'ros_log_line', 'RosFormatter', 'StderrHandler', 'make_node_logger']

#: `--log-level` names (rcutils' and Python's) -> logging levels
LEVELS = {'debug': logging.DEBUG, 'info': logging.INFO, 'warn': logging.WARNING,
          'warning': logging.WARNING, 'error': logging.ERROR, 'fatal': logging.CRITICAL}


def ros_log_line(level: str, node: str, message: str, stamp_ns: int | None = None) -> str:
    """`[INFO] [1700000000.123456789] [talker]: message`, the rcutils console format."""
    ns = time.time_ns() if stamp_ns is None else stamp_ns
    return f'[{level}] [{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}] [{node}]: {message}'


class RosFormatter(logging.Formatter):
    """Formats records as rcutils' console line for `node` (WARN / FATAL level names)."""
    _NAMES = {'WARNING': 'WARN', 'CRITICAL': 'FATAL'}

    def __init__(self, node: str):
        super().__init__()
        self._node = node

    def format(self, record: logging.LogRecord) -> str:
        level = self._NAMES.get(record.levelname, record.levelname)
        stamp = getattr(record, 'created_ns', None) or int(record.created * 1e9)
        text = ros_log_line(level, self._node, record.getMessage(), stamp)
        if record.exc_info:
            text += '\n' + self.formatException(record.exc_info)
        return text


class StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at emit time (pytest swaps it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def make_node_logger(fqn: str, level: str | None) -> logging.Logger:
    """The logger of node `fqn`, printing ROS-style on stderr at `level` ('info', 'warn', ...,
    or 'NAME:=LEVEL' for one node; INFO by default)."""
    dotted = fqn.strip('/').replace('/', '.')
    logger = logging.getLogger(f'qail_ros.node.{dotted}')
    for h in list(logger.handlers):
        if isinstance(h, StderrHandler):
            logger.removeHandler(h)
    handler = StderrHandler()
    handler.setFormatter(RosFormatter(dotted))
    logger.addHandler(handler)
    logger.propagate = False
    if level is not None and ':=' in level:  # `--log-level NAME:=LEVEL` (rcl): one logger
        who, _, lvl = level.partition(':=')
        level = lvl if who in (dotted, fqn.rsplit('/', 1)[-1]) else None
    if level is not None:
        if level.lower() not in LEVELS:
            raise ParameterError(f"--log-level '{level}' is not one of "
                                 f"{', '.join(sorted(LEVELS))}")
        logger.setLevel(LEVELS[level.lower()])
    else:
        logger.setLevel(logging.INFO)  # rcutils' default, also for a re-created node
    return logger
