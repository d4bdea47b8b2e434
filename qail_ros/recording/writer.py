"""A writer thread with a bounded queue: subscription callbacks never wait for the disk.

Callbacks hand messages to `put()`, which only appends to a queue bounded in bytes and in
messages. A thread serialises them (CDR) and writes them with qail_ros.bag.BagWriter. When
the disk is slower than the stream the queue fills and `put()` drops the message, counts it
per topic and returns False: the caller logs loudly, the robot's callbacks keep their timing.

Bag opening, custom metadata and closing go through the same queue (control items are never
dropped), so they happen in order with the messages and never on the callback's thread. A
write error (disk full, a path that became unwritable) closes the bag that was being written,
so everything already written stays readable, records the error in `stats.error` and drops
(counting) what follows until the next bag opens. `stats.written` counts what a reader finds in
the bags: when the bag cannot be closed after an error (the disk is full), the messages of its
last, unflushed chunk move from `written` to `failed`.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from qail_ros.errors import BagError

if TYPE_CHECKING:
    from qail_ros.bag import BagWriter

__all__ = ['BagWriterThread', 'WriterStats', 'message_nbytes']

log = logging.getLogger('qail_ros.recording')


def message_nbytes(msg: Any) -> int:
    """Cheap size estimate of a message (its big array, plus a small constant)."""
    data = getattr(msg, 'data', None)
    nbytes = getattr(data, 'nbytes', None)
    if nbytes is None:
        try:
            nbytes = len(data) if isinstance(data, (bytes, bytearray, str, list)) else 0
        except TypeError:
            nbytes = 0
    return int(nbytes) + 128


@dataclasses.dataclass
class WriterStats:
    written: int = 0
    written_bytes: int = 0
    dropped: int = 0                      # queue full: the disk did not keep up
    dropped_by_topic: dict = dataclasses.field(default_factory=dict)
    failed: int = 0                       # lost after a write error
    bags_opened: int = 0
    bags_closed: int = 0
    max_queue_bytes: int = 0
    error: str = ''


def set_bag_custom_metadata(bag, values: dict[str, str]) -> None:
    """Custom metadata written into metadata.yaml when the bag closes."""
    for key, value in values.items():
        bag.set_custom_metadata(key, value)


class BagWriterThread:
    """Owns the open BagWriter; everything reaches it through a bounded queue.

    Args:
        storage, chunk_size, flush_interval_s, compression: passed to BagWriter.
        max_queue_bytes / max_queue_messages: the bound on what waits for the disk.
        on_error: called (from the writer thread) with the error text after a write failure.
    """

    def __init__(self, storage: str = 'mcap', max_queue_bytes: int = 256 << 20,
                 max_queue_messages: int = 2000, chunk_size: int = 1 << 20,
                 flush_interval_s: float = 1.0, compression: str | None = None,
                 on_error: Callable[[str], None] | None = None):
        self.storage = storage
        self.max_queue_bytes = int(max_queue_bytes)
        self.max_queue_messages = int(max_queue_messages)
        self.bag_options: dict[str, Any] = {'storage': storage, 'chunk_size': int(chunk_size),
                                            'flush_interval_s': float(flush_interval_s),
                                            'compression': compression or None}
        self.on_error = on_error
        self.stats = WriterStats()
        self.bag_paths: list[Path] = []
        self._queue: collections.deque = collections.deque()
        self._queued_bytes = 0
        self._queued_messages = 0
        self._cond = threading.Condition()
        self._bag: BagWriter | None = None
        self._bag_written = 0               # messages handed to the open bag
        self._failed = False
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- producer side (any thread; never blocks on I/O) ------------------------------------
    def start(self) -> 'BagWriterThread':
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name='fp_recorder-writer',
                                            daemon=True)
            self._thread.start()
        return self

    def open_bag(self, path: str | os.PathLike, custom_metadata: dict[str, str],
                 topics: dict[str, tuple[str, Any]]) -> None:
        """Queue: open a new bag at `path` with `topics` {topic: (msgtype, qos)}."""
        self._control(('open', Path(path), dict(custom_metadata), dict(topics)))

    def set_metadata(self, values: dict[str, str]) -> None:
        self._control(('meta', dict(values)))

    def close_bag(self) -> None:
        self._control(('close',))

    def put(self, topic: str, msg: Any, stamp_ns: int, force: bool = False) -> bool:
        """Queue one message; False (and counted) if the queue is full. `force` (episode
        facts) bypasses the bound."""
        nbytes = message_nbytes(msg)
        with self._cond:
            full = (self._queued_bytes + nbytes > self.max_queue_bytes
                    or self._queued_messages >= self.max_queue_messages)
            if not force and full:
                self.stats.dropped += 1
                self.stats.dropped_by_topic[topic] = self.stats.dropped_by_topic.get(topic,
                                                                                     0) + 1
                return False
            self._queue.append(('msg', topic, msg, int(stamp_ns), nbytes))
            self._queued_bytes += nbytes
            self._queued_messages += 1
            if self._queued_bytes > self.stats.max_queue_bytes:
                self.stats.max_queue_bytes = self._queued_bytes
            self._cond.notify()
        return True

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def _control(self, item: tuple) -> None:
        with self._cond:
            self._queue.append(item)
            self._cond.notify()

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Write what is queued, close the bag, end the thread. True if it finished in time."""
        with self._cond:
            self._queue.append(('close',))
            self._stopping = True
            self._cond.notify()
        thread, self._thread = self._thread, None
        if thread is None:
            self._drain_now()
            return True
        thread.join(timeout_s)
        if thread.is_alive():
            log.error('the bag writer did not finish within %.0f s (%d messages still '
                      'queued); the bag is closed by the bag layer at exit', timeout_s,
                      self._queued_messages)
            return False
        return True

    def flush_wait(self, timeout_s: float = 10.0) -> bool:
        """Wait until the queue is empty (tests, benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._cond:
                if not self._queue and not self._busy:
                    return True
            time.sleep(0.01)
        return False

    # -- the writer thread ------------------------------------------------------------------
    _busy = False

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait(0.5)
                if not self._queue and self._stopping:
                    return
                item = self._queue.popleft()
                self._busy = True
                if item[0] == 'msg':
                    self._queued_bytes -= item[4]
                    self._queued_messages -= 1
            try:
                self._handle(item)
            finally:
                self._busy = False

    def _drain_now(self) -> None:
        while self._queue:
            item = self._queue.popleft()
            if item[0] == 'msg':
                self._queued_bytes -= item[4]
                self._queued_messages -= 1
            self._handle(item)

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        try:
            if kind == 'msg':
                if self._bag is None:
                    self.stats.failed += 1
                    return
                _k, topic, msg, stamp, nbytes = item
                self._bag.write(topic, msg, stamp)
                self._bag_written += 1
                self.stats.written += 1
                self.stats.written_bytes += nbytes
            elif kind == 'open':
                self._close_current()
                _k, path, meta, topics = item
                from qail_ros.bag import BagWriter
                bag = BagWriter(path, custom_metadata=meta, **self.bag_options)
                bag.open()
                self._bag = bag
                self._bag_written = 0
                self._failed = False
                self.bag_paths.append(Path(path))
                self.stats.bags_opened += 1
                for topic, (msgtype, qos) in topics.items():
                    bag.add_topic(topic, msgtype, qos=qos)
            elif kind == 'meta':
                if self._bag is not None:
                    set_bag_custom_metadata(self._bag, item[1])
            elif kind == 'close':
                self._close_current()
        except (OSError, BagError) as exc:
            self._fail(kind, exc)
        except Exception as exc:  # noqa: BLE001 - one bad message must not stop recording
            if kind == 'msg':
                self.stats.failed += 1
                log.error('could not write a message on %s: %s', item[1], exc)
            else:
                self._fail(kind, exc)

    def _close_current(self) -> None:
        bag, self._bag = self._bag, None
        if bag is not None:
            bag.close()
            self.stats.bags_closed += 1

    def _fail(self, kind: str, exc: BaseException) -> None:
        path = self._bag.path if self._bag is not None else None
        what = {'msg': 'writing to', 'open': 'creating', 'close': 'closing',
                'meta': 'updating'}.get(kind, kind)
        hint = ''
        if isinstance(exc, OSError) and exc.errno == 28:
            hint = ' The disk is full: free space or point output_dir at a bigger disk.'
        elif isinstance(exc, (PermissionError,)):
            hint = ' The path is not writable: fix its permissions or change output_dir.'
        text = (f'recording failed while {what} bag {path or ""}: {exc}.{hint} Bags written '
                'before this are closed and intact; messages are dropped until a new bag '
                'opens.')
        self.stats.error = text
        self._failed = True
        if kind == 'msg':
            self.stats.failed += 1
        bag, in_bag = self._bag, self._bag_written
        flushed = in_bag
        if bag is not None:
            try:
                flushed = min(in_bag, int(bag.flushed_count))
            except Exception:  # noqa: BLE001 - a storage without the count: assume all
                flushed = in_bag
        try:
            self._close_current()   # what is in the bag so far stays readable
        except Exception as close_exc:  # noqa: BLE001 - report, the first error matters most
            log.error('closing the bag after the error also failed: %s', close_exc)
            self._bag = None
            lost = in_bag - flushed     # the chunk that never reached the disk
            if lost > 0:
                self.stats.written -= lost
                self.stats.failed += lost
                log.error('%d messages of the last chunk of %s did not reach the disk', lost,
                          path)
        log.error('%s', text)
        if self.on_error is not None:
            self.on_error(text)
