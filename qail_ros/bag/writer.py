"""Writing rosbag2 bags over `rosbags`: mcap by default (sqlite3 on request), readable by Humble.

What ROS 2 needs to accept the bag (`ros2 bag info/play`): a `metadata.yaml` in rosbag2 format
version 8 (the default here: Humble parses `offered_qos_profiles` as a YAML *string*, which
version 8 writes and version 9 does not), message definitions embedded (mcap schemas / the
sqlite3 `message_definitions` table, both written by rosbags) and each topic's offered QoS
profile.

Crash safety. rosbags writes `metadata.yaml` and the mcap summary only on close, and buffers the
current chunk in memory (1 MiB chunks). `BagWriter` therefore

* closes the current chunk when it reaches `chunk_size` bytes *or* is `flush_interval_s` old
  (a background thread flushes a quiet bag), and hands it to the OS at once, so a writer killed
  with SIGKILL loses at most about one flush interval or one chunk;
* closes the bag properly on any exception in its `with` block, KeyboardInterrupt included, and
  turns SIGTERM into KeyboardInterrupt while it is open (unless a handler is already set);
* commits sqlite3 transactions on the same schedule.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Literal, cast

from qail_ros.bag.scan import QAIL_METADATA, put_map, put_record, put_str
from qail_ros.errors import BagError

if TYPE_CHECKING:
    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.storage_mcap import McapWriter
    from rosbags.rosbag2.storage_sqlite3 import Sqlite3Writer

#: what signal.signal() returns and takes
_SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

__all__ = ['BagWriter', 'STORAGES', 'DEFAULT_VERSION', 'rosbags_qos']

log = logging.getLogger('qail_ros.bag')

STORAGES = ('mcap', 'sqlite3')
#: rosbag2 metadata version written by default: the newest that ROS 2 Humble parses.
DEFAULT_VERSION = 8

#: rmw's RMW_DURATION_INFINITE as rosbag2 writes it into offered_qos_profiles: the same
#: {sec, nsec} in version 8 (a YAML string) and version 9 (a YAML list), since Humble (rosbag2
#: qos.cpp encodes rmw_time_t as is; {2147483647, 4294967295} is Foxy Fast-DDS's value, which
#: rosbag2 only translates when reading).
INFINITE = (9223372036, 854775807)


# ------------------------------------------------------------------------------------------
# QoS
# ------------------------------------------------------------------------------------------
def rosbags_qos(qos: Any, version: int):
    """qail_ros QoS -> the rosbags Qos that ROS 2 records as the offered profile."""
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)

    from qail_ros.runtime.api import QoS
    qos = QoS.coerce(qos)
    inf = QosTime(*INFINITE)
    return Qos(
        history=QosHistory.KEEP_LAST if qos.history == 'keep_last' else QosHistory.KEEP_ALL,
        depth=qos.depth,
        reliability=(QosReliability.RELIABLE if qos.reliability == 'reliable'
                     else QosReliability.BEST_EFFORT),
        durability=(QosDurability.VOLATILE if qos.durability == 'volatile'
                    else QosDurability.TRANSIENT_LOCAL),
        deadline=inf, lifespan=inf, liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=inf, avoid_ros_namespace_conventions=False)


# ------------------------------------------------------------------------------------------
# writer
# ------------------------------------------------------------------------------------------
def _flushing_storages(chunk_size: int, flush_interval_s: float
                       ) -> tuple[type[McapWriter], type[Sqlite3Writer]]:
    """rosbags storage writers that flush on size or age (see module docstring)."""
    from rosbags.rosbag2.storage_mcap import McapWriter
    from rosbags.rosbag2.storage_sqlite3 import Sqlite3Writer

    class FlushingMcapWriter(McapWriter):
        # Uses McapWriter internals (chunk, close_chunk, bio) of the pinned rosbags version;
        # test/bags/test_bag_crash.py fails if they change.
        def __init__(self, path, compression):
            super().__init__(path, compression)
            self.chunk_opened = time.monotonic()
            self.flushed_messages = 0
            self.pending_messages = 0

        def write(self, connection, timestamp, data):
            if not self.chunk.msgs:
                self.chunk_opened = time.monotonic()
            super().write(connection, timestamp, data)  # closes at 1 MiB by itself
            self.pending_messages += 1
            if self.chunk.msgs and (
                    self.chunk.bio.tell() >= chunk_size
                    or time.monotonic() - self.chunk_opened >= flush_interval_s):
                self.close_chunk()

        def close_chunk(self):
            super().close_chunk()
            self.bio.flush()                 # to the OS: survives SIGKILL of this process
            self.flushed_messages += self.pending_messages
            self.pending_messages = 0
            self.chunk_opened = time.monotonic()

        def flush(self):
            if self.chunk.msgs:
                self.close_chunk()
            else:
                self.bio.flush()

        def write_metadata_record(self, name: str, values: dict[str, str]) -> None:
            """A top-level mcap Metadata record (read back by recover_bag after a crash)."""
            rec = io.BytesIO()
            put_str(rec, name)
            put_map(rec, values)
            put_record(self.bio, 0x0C, rec.getvalue())
            self.bio.flush()

    class CommittingSqlite3Writer(Sqlite3Writer):
        def __init__(self, path, compression):
            super().__init__(path, compression)
            self.last_commit = time.monotonic()
            self.flushed_messages = 0
            self.pending_messages = 0

        def write(self, connection, timestamp, data):
            super().write(connection, timestamp, data)
            self.pending_messages += 1
            if time.monotonic() - self.last_commit >= flush_interval_s:
                self.flush()

        def flush(self):
            self.conn.commit()
            self.last_commit = time.monotonic()
            self.flushed_messages += self.pending_messages
            self.pending_messages = 0

    return FlushingMcapWriter, CommittingSqlite3Writer


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM until the block ends, then deliver them.

    Python raises KeyboardInterrupt between any two bytecodes of the main thread; inside
    rosbags' write / close_chunk that would leave a chunk half written *and then* closed into
    the bag. Storage updates therefore run as one unit (cost: four signal() calls).
    """
    if threading.current_thread() is not threading.main_thread():
        yield   # Python runs signal handlers only in the main thread
        return
    caught: list[int] = []
    old: dict[int, _SignalHandler] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda signum, _frame: caught.append(signum))
    except (ValueError, OSError):   # e.g. an embedding host owns the handlers
        old.clear()
    try:
        yield
    finally:
        for number, handler in old.items():
            signal.signal(number, handler)
        for signum in caught:
            handler = old.get(signum)
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signum)


class BagWriter:
    """Write a rosbag2 bag directory; a context manager.

    Args:
        path: bag directory to create (must not exist).
        storage: 'mcap' (default) or 'sqlite3'.
        version: rosbag2 metadata version, 8 (default; Humble, Iron, Jazzy and later read it)
            or 9 (Jazzy's newer layout, which Humble cannot parse).
        custom_metadata: str -> str written as `custom_data` in metadata.yaml (and, for mcap,
            into the file at once, so a crashed bag keeps it).
        chunk_size: mcap chunk size in bytes; a chunk is written when it reaches this size...
        flush_interval_s: ...or this age; also the sqlite3 commit interval. 0 disables the
            background flusher thread (flushes then happen only on write / flush()).
        compression: None or 'zstd' (mcap chunk compression; readable by Humble's mcap plugin).
    """

    def __init__(self, path: str | os.PathLike, storage: str = 'mcap',
                 version: int = DEFAULT_VERSION, custom_metadata: dict[str, str] | None = None,
                 chunk_size: int = 1 << 20, flush_interval_s: float = 1.0,
                 compression: str | None = None):
        if storage not in STORAGES:
            raise BagError(f"bag storage '{storage}' is not supported; use one of "
                           f'{", ".join(STORAGES)}')
        if version not in (8, 9):
            raise BagError(f'rosbag2 version {version} cannot be written; use 8 (Humble and '
                           'later read it) or 9 (Jazzy and later only)')
        if compression not in (None, 'zstd'):
            raise BagError(f"compression '{compression}' is not supported; use None or 'zstd'")
        if compression and storage != 'mcap':
            raise BagError('compression is only supported with mcap storage')
        if chunk_size <= 0:
            raise BagError(f'chunk_size must be > 0 bytes, not {chunk_size}')
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f'{self.path} exists already; bags are never overwritten: pick a new '
                           'path or delete the old bag')
        for key, value in (custom_metadata or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise BagError(f'custom_metadata must map str to str; got {key!r}: {value!r} '
                               '(convert values with str() or json.dumps)')
        self.storage = storage
        self.version = cast(Literal[8, 9], version)  # checked above
        self.custom_metadata = dict(custom_metadata or {})
        self.chunk_size = int(chunk_size)
        self.flush_interval_s = float(flush_interval_s)
        self.compression = compression
        self._writer: Writer | None = None
        self._connections: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._old_sigterm: _SignalHandler = None
        self.message_count = 0

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> 'BagWriter':
        from rosbags.rosbag2 import Writer
        from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin
        mcap_cls, sqlite_cls = _flushing_storages(self.chunk_size, max(self.flush_interval_s,
                                                                       1e-3)
                                                  if self.flush_interval_s > 0 else 1e9)

        class _Writer(Writer):
            STORAGE_PLUGINS = {StoragePlugin.MCAP: mcap_cls, StoragePlugin.SQLITE3: sqlite_cls}

        plugin = StoragePlugin.MCAP if self.storage == 'mcap' else StoragePlugin.SQLITE3
        writer = _Writer(self.path, version=self.version, storage_plugin=plugin)
        if self.compression:
            writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        for key, value in self.custom_metadata.items():
            writer.set_custom_data(key, value)
        try:
            writer.open()
        except Exception as exc:
            raise BagError(f'cannot create bag {self.path}: {exc}') from exc
        self._writer = writer
        if self.storage == 'mcap':
            self._storage().write_metadata_record(QAIL_METADATA, {
                'rosbag2_version': str(self.version),
                'custom_data': json.dumps(self.custom_metadata, sort_keys=True)})
        if self.flush_interval_s > 0 and self.storage == 'mcap':
            self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                             name=f'bag-flush:{self.path.name}')
            self._flusher.start()
        self._install_sigterm()
        return self

    def set_custom_metadata(self, key: str, value: str) -> None:
        """Set one `custom_data` entry of metadata.yaml (written when the bag closes)."""
        if not isinstance(key, str) or not isinstance(value, str):
            raise BagError(f'custom metadata must map str to str; got {key!r}: {value!r} '
                           '(convert values with str() or json.dumps)')
        with self._lock:
            self.custom_metadata[key] = value
            if self._writer is not None:
                self._writer.set_custom_data(key, value)

    def close(self) -> None:
        """Write the last chunk, the mcap summary and metadata.yaml. Idempotent."""
        self._stop.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(timeout=5)
        with self._lock, _signals_deferred():
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.close()
        self._restore_sigterm()

    def __enter__(self) -> 'BagWriter':
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        # Close properly on errors too (Ctrl-C included): what was written is valid data.
        self.close()
        return False

    def __del__(self):
        if getattr(self, '_writer', None) is not None:
            log.warning('bag %s was not closed; closing it now', self.path)
            try:
                self.close()
            except Exception:  # noqa: BLE001 - never raise from __del__
                pass

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    # -- topics and messages --------------------------------------------------------------
    def add_topic(self, topic: str, msgtype: str, qos: Any = None) -> None:
        """Declare a topic with its ROS 2 type and the QoS it is offered with (default:
        reliable, volatile, keep_last 10). Adding a topic twice with the same type is a no-op."""
        from qail_ros import messages as m
        from qail_ros.runtime.api import DEFAULT_QOS
        msgtype = m.normalize_type(msgtype)
        with self._lock:
            writer = self._check_open()
            known = self._connections.get(topic)
            if known is not None:
                if known.msgtype != msgtype:
                    raise BagError(f"topic '{topic}' is already in the bag as {known.msgtype}, "
                                   f'not {msgtype}; one topic carries one type')
                return
            cls = m.get_class(msgtype)   # UnknownMessageTypeError with a hint
            self._connections[topic] = writer.add_connection(
                topic, cls.__msgtype__, typestore=m.typestore(),
                offered_qos_profiles=[rosbags_qos(DEFAULT_QOS if qos is None else qos,
                                                  self.version)])

    @property
    def topics(self) -> dict[str, str]:
        return {t: c.msgtype for t, c in self._connections.items()}

    def write(self, topic: str, msg: Any, timestamp_ns: int | None = None) -> None:
        """Write a message (a qail_ros.messages instance, added to the bag's topics on first
        use) or its CDR bytes (add_topic first). `timestamp_ns` defaults to the wall clock."""
        from qail_ros import messages as m
        if timestamp_ns is None:
            timestamp_ns = time.time_ns()
        data: bytes | memoryview
        if isinstance(msg, (bytes, bytearray, memoryview)):
            data = memoryview(msg) if isinstance(msg, bytearray) else msg
            if topic not in self._connections:
                raise BagError(f"topic '{topic}' is not in the bag: call add_topic(topic, type) "
                               'before writing CDR bytes')
        else:
            if topic not in self._connections:
                self.add_topic(topic, m.type_name(msg))
            elif self._connections[topic].msgtype != m.type_name(msg):
                raise BagError(f"topic '{topic}' carries {self._connections[topic].msgtype}, "
                               f'not {m.type_name(msg)}')
            data = m.serialize(msg)
        with self._lock, _signals_deferred():
            self._check_open().write(self._connections[topic], int(timestamp_ns), data)
            self.message_count += 1

    def flush(self) -> None:
        """Write the pending chunk (mcap) / commit (sqlite3) now."""
        with self._lock, _signals_deferred():
            storage = self._storage()
            if storage is not None:
                storage.flush()

    @property
    def flushed_count(self) -> int:
        """Messages handed to the OS so far: what survives if this process is killed now."""
        storage = self._storage()
        return storage.flushed_messages if storage is not None else self.message_count

    # -- internals ------------------------------------------------------------------------
    def _check_open(self) -> Writer:
        if self._writer is None:
            raise BagError(f'bag {self.path} is not open: use `with BagWriter(...) as bag:` '
                           'or call open()')
        return self._writer

    def _storage(self) -> Any:
        """The open storage writer (one of _flushing_storages' classes, with their counters
        and flush), or None."""
        return self._writer.storage if self._writer is not None else None

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_interval_s / 4):
            try:
                with self._lock:
                    storage = self._storage()
                    if storage is None:
                        return
                    if self.storage == 'mcap' and storage.chunk.msgs and (
                            time.monotonic() - storage.chunk_opened >= self.flush_interval_s):
                        storage.close_chunk()
                    # sqlite3 connections belong to the thread that made them: commits happen
                    # in write() / flush() on the writing thread.
            except Exception as exc:  # noqa: BLE001 - a flush failure must be seen, not kill
                log.error('bag %s: background flush failed: %s', self.path, exc)

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                def on_sigterm(_signum, _frame):
                    raise KeyboardInterrupt('SIGTERM')
                self._old_sigterm = signal.signal(signal.SIGTERM, on_sigterm)
        except (ValueError, OSError):
            self._old_sigterm = None

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None and \
                threading.current_thread() is threading.main_thread():
            try:
                signal.signal(signal.SIGTERM, self._old_sigterm)
            except (ValueError, OSError):
                pass
            self._old_sigterm = None
