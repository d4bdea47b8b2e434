"""How a command shows training progress: module loggers, one stderr handler set up by the CLI.

Trainers (`qail_ros.training.bc.fit`, the QAIL trainer, the physics / CILRS / VLA behaviour
cloning, the benches' pipelines) report progress through `logging.getLogger(__name__)` at INFO;
a library user sees nothing unless they configure logging. A command that trains calls
`show_progress()` once: INFO of the training loggers goes to stderr (stdout stays free for
tables and the --json line), message text only.
"""
from __future__ import annotations

import logging
import sys

__all__ = ['show_progress', 'TRAINING_LOGGERS']

#: the loggers whose INFO records are training progress
TRAINING_LOGGERS = ('qail_ros.training', 'qail_ros.qail', 'qail_ros.physics', 'qail_ros.cilrs',
                    'qail_ros.manipulation', 'qail_ros.driving')


class _StderrHandler(logging.Handler):
    """Writes each record to the sys.stderr of the moment (a test's capture, a redirection)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + '\n')
            sys.stderr.flush()
        except Exception:           # logging must never raise into the trainer
            self.handleError(record)


def show_progress(names: tuple[str, ...] = TRAINING_LOGGERS,
                  level: int = logging.INFO) -> None:
    """Send `level` records of the loggers `names` to stderr, once (calling again adds no
    second handler). They still propagate (to pytest's capture, or a root handler the
    application set up)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter('%(message)s'))
            logger.addHandler(handler)
        logger.setLevel(level)
