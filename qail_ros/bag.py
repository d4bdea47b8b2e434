"""rosbag2 bags over `rosbags`: mcap by default (sqlite3 on request), readable by ROS 2 Humble.

    from qail_ros.bag import BagWriter, BagReader
    with BagWriter('run1', custom_metadata={'task': 'pick'}) as bag:
        bag.add_topic('/image_raw', 'sensor_msgs/msg/Image', qos=QoS(depth=5))
        bag.write('/image_raw', img_msg, stamp_ns)          # a message or its CDR bytes
    with BagReader('run1') as bag:
        for topic, stamp_ns, msg in bag.messages(topics=['/image_raw']):
            ...

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

A bag cut off mid-write (no metadata.yaml, no mcap footer) still opens with `BagReader`, which
then scans the mcap file chunk by chunk and yields every message of every complete chunk;
`recover_bag(path)` (`qail-ros bag recover PATH`) truncates the partial tail, writes the mcap
summary and footer and a fresh metadata.yaml, after which any rosbag2 reader opens the bag.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import signal
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from qail_ros.errors import BagError

__all__ = ['BagWriter', 'BagReader', 'BagMessage', 'TopicInfo', 'recover_bag', 'scan_mcap',
           'STORAGES', 'DEFAULT_VERSION']

log = logging.getLogger('qail_ros.bag')

STORAGES = ('mcap', 'sqlite3')
#: rosbag2 metadata version written by default: the newest that ROS 2 Humble parses.
DEFAULT_VERSION = 8

_MAGIC = b'\x89MCAP0\r\n'
_QAIL_METADATA = 'qail_ros.bag'
_U16, _U32, _U64 = struct.Struct('<H'), struct.Struct('<I'), struct.Struct('<Q')

# rmw's "infinite" duration as each rosbag2 generation writes it into offered_qos_profiles.
_INFINITE = {8: (9223372036, 854775807), 9: (2147483647, 4294967295)}


class BagMessage(NamedTuple):
    topic: str
    timestamp_ns: int
    msg: Any          # a qail_ros.messages instance, or CDR bytes with raw=True


@dataclasses.dataclass
class TopicInfo:
    name: str
    msgtype: str
    count: int
    qos: list = dataclasses.field(default_factory=list)   # rosbags.interfaces.Qos
    msgdef: str = ''


# ------------------------------------------------------------------------------------------
# QoS
# ------------------------------------------------------------------------------------------
def _rosbags_qos(qos: Any, version: int):
    """qail_ros QoS -> the rosbags Qos that ROS 2 records as the offered profile."""
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)

    from qail_ros.runtime.api import QoS
    qos = QoS.coerce(qos)
    inf = QosTime(*_INFINITE[9 if version >= 9 else 8])
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
def _flushing_storages(chunk_size: int, flush_interval_s: float):
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
            _put_str(rec, name)
            _put_map(rec, values)
            _put_record(self.bio, 0x0C, rec.getvalue())
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
    old = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda signum, _frame: caught.append(signum))
    except (ValueError, OSError):   # e.g. an embedding host owns the handlers
        old.clear()
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
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
        self.version = version
        self.custom_metadata = dict(custom_metadata or {})
        self.chunk_size = int(chunk_size)
        self.flush_interval_s = float(flush_interval_s)
        self.compression = compression
        self._writer = None
        self._connections: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._old_sigterm = None
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
            writer.storage.write_metadata_record(_QAIL_METADATA, {
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

    def __exit__(self, exc_type, exc, tb) -> bool:
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
            self._check_open()
            known = self._connections.get(topic)
            if known is not None:
                if known.msgtype != msgtype:
                    raise BagError(f"topic '{topic}' is already in the bag as {known.msgtype}, "
                                   f'not {msgtype}; one topic carries one type')
                return
            cls = m.get_class(msgtype)   # UnknownMessageTypeError with a hint
            self._connections[topic] = self._writer.add_connection(
                topic, cls.__msgtype__, typestore=m.typestore(),
                offered_qos_profiles=[_rosbags_qos(DEFAULT_QOS if qos is None else qos,
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
        if isinstance(msg, (bytes, bytearray, memoryview)):
            data = msg
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
            self._check_open()
            self._writer.write(self._connections[topic], int(timestamp_ns), data)
            self.message_count += 1

    def flush(self) -> None:
        """Write the pending chunk (mcap) / commit (sqlite3) now."""
        with self._lock, _signals_deferred():
            if self._writer is not None and self._writer.storage is not None:
                self._writer.storage.flush()

    @property
    def flushed_count(self) -> int:
        """Messages handed to the OS so far: what survives if this process is killed now."""
        storage = self._writer.storage if self._writer is not None else None
        return storage.flushed_messages if storage is not None else self.message_count

    # -- internals ------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._writer is None:
            raise BagError(f'bag {self.path} is not open: use `with BagWriter(...) as bag:` '
                           'or call open()')

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_interval_s / 4):
            try:
                with self._lock:
                    storage = self._writer.storage if self._writer is not None else None
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


# ------------------------------------------------------------------------------------------
# mcap records (the small subset rosbag2 bags use), for crash recovery
# ------------------------------------------------------------------------------------------
def _put_str(bio, text: str) -> None:
    raw = text.encode()
    bio.write(_U32.pack(len(raw)))
    bio.write(raw)


def _put_map(bio, values: dict[str, str]) -> None:
    sub = io.BytesIO()
    for key, value in values.items():
        _put_str(sub, key)
        _put_str(sub, value)
    bio.write(_U32.pack(sub.tell()))
    bio.write(sub.getvalue())


def _put_record(bio, opcode: int, content: bytes) -> None:
    bio.write(bytes([opcode]))
    bio.write(_U64.pack(len(content)))
    bio.write(content)


class _Cursor:
    def __init__(self, data: bytes | memoryview, pos: int = 0):
        self.data, self.pos = data, pos

    def u16(self) -> int:
        self.pos += 2
        return _U16.unpack_from(self.data, self.pos - 2)[0]

    def u32(self) -> int:
        self.pos += 4
        return _U32.unpack_from(self.data, self.pos - 4)[0]

    def u64(self) -> int:
        self.pos += 8
        return _U64.unpack_from(self.data, self.pos - 8)[0]

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError('field runs past the end of its record')
        self.pos += n
        return bytes(self.data[self.pos - n:self.pos])

    def str(self) -> str:
        return self.raw(self.u32()).decode()

    def map(self) -> dict[str, str]:
        end = self.u32() + self.pos
        out = {}
        while self.pos < end:
            key = self.str()
            out[key] = self.str()
        return out


@dataclasses.dataclass
class _Chunk:
    start: int                 # file offset of the chunk record
    length: int                # whole record length (opcode + length + content)
    start_time: int
    end_time: int
    compression: str
    compressed_size: int
    uncompressed_size: int
    # (channel_id, log_time, offset in the uncompressed records, message data start, end)
    messages: list = dataclasses.field(default_factory=list)
    records: bytes = b''
    index_offsets: dict = dataclasses.field(default_factory=dict)   # channel -> file offset
    index_end: int = 0         # end of this chunk's message index records


@dataclasses.dataclass
class McapScan:
    """What a linear scan of an mcap file found: enough to read or repair a cut-off file."""

    path: Path
    schemas: dict = dataclasses.field(default_factory=dict)    # id -> (name, encoding, text)
    channels: dict = dataclasses.field(default_factory=dict)   # id -> (schema, topic, enc, meta)
    chunks: list = dataclasses.field(default_factory=list)
    metadata: dict = dataclasses.field(default_factory=dict)   # name -> {str: str}
    complete: bool = False     # a DataEnd / footer was reached: the file was closed properly
    good_end: int = 0          # end of the last complete record of the data section
    header_end: int = 0        # end of the header record (0: cut inside the header)
    file_size: int = 0
    stop_reason: str = ''

    @property
    def message_count(self) -> int:
        return sum(len(c.messages) for c in self.chunks)

    def channel_counts(self) -> dict[int, int]:
        counts: dict[int, int] = defaultdict(int)
        for chunk in self.chunks:
            for cid, *_rest in chunk.messages:
                counts[cid] += 1
        return counts


def _decompress(data: bytes, compression: str, size: int) -> bytes:
    if compression == '':
        return data
    if compression == 'zstd':
        try:
            from compression import zstd   # Python 3.14+
        except ImportError:
            from backports import zstd
        return zstd.decompress(data)
    if compression == 'lz4':
        import lz4.frame
        return lz4.frame.decompress(data)
    raise ValueError(f"unsupported chunk compression '{compression}'")


def _parse_chunk_records(chunk: _Chunk, scan: McapScan) -> None:
    cur = _Cursor(chunk.records)
    while cur.pos < len(chunk.records):
        op = chunk.records[cur.pos]
        cur.pos += 1
        length = cur.u64()
        start, end = cur.pos, cur.pos + length
        if end > len(chunk.records):
            raise ValueError('record runs past the end of its chunk')
        if op == 0x03:
            sid = cur.u16()
            scan.schemas[sid] = (cur.str(), cur.str(), cur.raw(cur.u32()).decode())
        elif op == 0x04:
            cid = cur.u16()
            sid = cur.u16()
            scan.channels[cid] = (sid, cur.str(), cur.str(), cur.map())
        elif op == 0x05:
            cid = cur.u16()
            cur.u32()
            log_time = cur.u64()
            chunk.messages.append((cid, log_time, start - 9, start + 22, end))
        cur.pos = end


def scan_mcap(path: str | os.PathLike) -> McapScan:
    """Read an mcap file front to back without its summary; stop at the first partial record.

    Works on a file whose writer was killed: everything up to the last complete chunk is
    returned. Raises BagError if the file is not mcap at all.
    """
    import mmap
    path = Path(path)
    with path.open('rb') as f:
        size = f.seek(0, 2)
        if size < len(_MAGIC):
            raise BagError(f'{path} is not an mcap file ({size} bytes); it is not a bag or '
                           'its writer died before writing anything')
        # Mapped, not read: a crashed recording may be many GB; only records are copied.
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _scan_mapped(path, data)


def _scan_mapped(path: Path, data) -> McapScan:
    scan = McapScan(path)
    scan.file_size = len(data)
    if data[:len(_MAGIC)] != _MAGIC:
        raise BagError(f'{path} is not an mcap file (bad magic {data[:8]!r}); '
                       'it is not a bag or is corrupt from its first byte')
    pos = len(_MAGIC)
    last_chunk: _Chunk | None = None
    scan.good_end = pos
    while True:
        if pos + 9 > len(data):
            scan.stop_reason = 'end of file' if pos == len(data) else 'partial record header'
            break
        op = data[pos]
        length = _U64.unpack_from(data, pos + 1)[0]
        end = pos + 9 + length
        if end > len(data):
            scan.stop_reason = f'record 0x{op:02x} at offset {pos} is cut off'
            break
        content = data[pos + 9:end]
        try:
            if op == 0x01:        # header
                scan.header_end = end
            elif op == 0x06:      # chunk
                cur = _Cursor(content)
                start_time, end_time, usize = cur.u64(), cur.u64(), cur.u64()
                cur.u32()             # uncompressed CRC (not checked)
                compression = cur.str()
                csize = cur.u64()
                records = _decompress(cur.raw(csize), compression, usize)
                if len(records) != usize:
                    raise ValueError('chunk size does not match its header')
                chunk = _Chunk(pos, end - pos, start_time, end_time, compression, csize, usize,
                               records=records)
                _parse_chunk_records(chunk, scan)
                chunk.records = b''
                chunk.index_end = end
                scan.chunks.append(chunk)
                last_chunk = chunk
            elif op == 0x07:      # message index of the chunk before it
                if last_chunk is not None:
                    last_chunk.index_offsets[_U16.unpack_from(content, 0)[0]] = pos
                    last_chunk.index_end = end
            elif op == 0x03:
                cur = _Cursor(content)
                sid = cur.u16()
                scan.schemas[sid] = (cur.str(), cur.str(), cur.raw(cur.u32()).decode())
            elif op == 0x04:
                cur = _Cursor(content)
                cid = cur.u16()
                sid = cur.u16()
                scan.channels[cid] = (sid, cur.str(), cur.str(), cur.map())
            elif op == 0x0C:      # metadata
                cur = _Cursor(content)
                name = cur.str()
                scan.metadata[name] = cur.map()
            elif op in (0x0F, 0x02):   # data end / footer: the file was closed properly
                scan.complete = True
                scan.stop_reason = 'data end'
                scan.good_end = pos
                break
            elif op == 0x00 or op > 0x0F:
                raise ValueError(f'unknown record opcode 0x{op:02x}')
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            scan.stop_reason = f'record 0x{op:02x} at offset {pos} is corrupt: {exc}'
            break
        pos = scan.good_end = end
    return scan


def _scan_messages(scan: McapScan, wanted: set[int] | None) -> Iterator[tuple[int, int, bytes]]:
    """(channel id, log time, data) of every message of every complete chunk, in file order."""
    with scan.path.open('rb') as f:
        for chunk in scan.chunks:
            f.seek(chunk.start + 9)
            content = f.read(chunk.length - 9)
            cur = _Cursor(content)
            cur.u64(), cur.u64(), cur.u64(), cur.u32()
            compression = cur.str()
            records = _decompress(cur.raw(cur.u64()), compression, chunk.uncompressed_size)
            for cid, log_time, _off, dstart, dend in sorted(chunk.messages, key=lambda x: x[1]):
                if wanted is None or cid in wanted:
                    yield cid, log_time, records[dstart:dend]


def _write_summary(f, scan: McapScan) -> None:
    """Append DataEnd, the summary section and the footer (file positioned at good_end)."""
    # Regenerate the last chunk's message indexes (they may have been cut off).
    last = scan.chunks[-1] if scan.chunks else None
    if last is not None:
        f.seek(last.start + last.length)
        f.truncate()
        by_channel: dict[int, list] = defaultdict(list)
        for cid, log_time, off, _ds, _de in last.messages:
            by_channel[cid].append((log_time, off))
        last.index_offsets = {}
        for cid, entries in by_channel.items():
            last.index_offsets[cid] = f.tell()
            rec = io.BytesIO()
            rec.write(_U16.pack(cid))
            rec.write(_U32.pack(len(entries) * 16))
            for log_time, off in entries:
                rec.write(_U64.pack(log_time))
                rec.write(_U64.pack(off))
            _put_record(f, 0x07, rec.getvalue())
        last.index_end = f.tell()
    elif scan.header_end:
        f.seek(scan.good_end)
        f.truncate()
    else:                      # cut inside the header: write a new one
        f.seek(0)
        f.truncate()
        f.write(_MAGIC)
        rec = io.BytesIO()
        _put_str(rec, 'ros2')
        _put_str(rec, 'qail_ros recover_bag')
        _put_record(f, 0x01, rec.getvalue())
    counts = scan.channel_counts()
    times = [t for c in scan.chunks for _cid, t, *_r in c.messages]
    meta_start = f.tell()
    rec = io.BytesIO()
    _put_str(rec, _QAIL_METADATA)
    _put_map(rec, {**scan.metadata.get(_QAIL_METADATA, {}), 'recovered': 'true'})
    _put_record(f, 0x0C, rec.getvalue())
    meta_end = f.tell()
    _put_record(f, 0x0F, _U32.pack(0))
    summary_start = f.tell()
    groups = []
    schema_start = f.tell()
    for sid, (name, enc, text) in sorted(scan.schemas.items()):
        rec = io.BytesIO()
        rec.write(_U16.pack(sid))
        _put_str(rec, name)
        _put_str(rec, enc)
        _put_str(rec, text)
        _put_record(f, 0x03, rec.getvalue())
    groups.append((0x03, schema_start, f.tell()))
    channel_start = f.tell()
    for cid, (sid, topic, enc, meta) in sorted(scan.channels.items()):
        rec = io.BytesIO()
        rec.write(_U16.pack(cid))
        rec.write(_U16.pack(sid))
        _put_str(rec, topic)
        _put_str(rec, enc)
        _put_map(rec, meta)
        _put_record(f, 0x04, rec.getvalue())
    groups.append((0x04, channel_start, f.tell()))
    index_start = f.tell()
    for chunk in scan.chunks:
        rec = io.BytesIO()
        rec.write(_U64.pack(chunk.start_time))
        rec.write(_U64.pack(chunk.end_time))
        rec.write(_U64.pack(chunk.start))
        rec.write(_U64.pack(chunk.length))
        rec.write(_U32.pack(len(chunk.index_offsets) * 10))
        for cid, off in chunk.index_offsets.items():
            rec.write(_U16.pack(cid))
            rec.write(_U64.pack(off))
        rec.write(_U64.pack(chunk.index_end - chunk.start - chunk.length))
        _put_str(rec, chunk.compression)
        rec.write(_U64.pack(chunk.compressed_size))
        rec.write(_U64.pack(chunk.uncompressed_size))
        _put_record(f, 0x08, rec.getvalue())
    groups.append((0x08, index_start, f.tell()))
    meta_index_start = f.tell()
    rec = io.BytesIO()
    rec.write(_U64.pack(meta_start))
    rec.write(_U64.pack(meta_end - meta_start))
    _put_str(rec, _QAIL_METADATA)
    _put_record(f, 0x0D, rec.getvalue())
    groups.append((0x0D, meta_index_start, f.tell()))
    stats_start = f.tell()
    rec = io.BytesIO()
    rec.write(_U64.pack(sum(counts.values())))
    rec.write(_U16.pack(len(scan.schemas)))
    rec.write(_U32.pack(len(scan.channels)))
    rec.write(_U32.pack(0))
    rec.write(_U32.pack(1))
    rec.write(_U32.pack(len(scan.chunks)))
    rec.write(_U64.pack(min(times) if times else 0))
    rec.write(_U64.pack(max(times) if times else 0))
    rec.write(_U32.pack(len(scan.channels) * 10))
    for cid in sorted(scan.channels):
        rec.write(_U16.pack(cid))
        rec.write(_U64.pack(counts.get(cid, 0)))
    _put_record(f, 0x0B, rec.getvalue())
    groups.append((0x0B, stats_start, f.tell()))
    offsets_start = f.tell()
    for opcode, start, end in groups:
        if end > start:
            _put_record(f, 0x0E, bytes([opcode]) + _U64.pack(start) + _U64.pack(end - start))
    _put_record(f, 0x02, _U64.pack(summary_start) + _U64.pack(offsets_start) + _U32.pack(0))
    f.write(_MAGIC)
    f.flush()
    os.fsync(f.fileno())


def _footer_ok(path: Path) -> bool:
    """True when the file ends with a footer record and the closing magic."""
    with path.open('rb') as f:
        size = f.seek(0, 2)
        if size < 8 + 37:
            return False
        f.seek(size - 37)
        tail = f.read(37)
    return tail[-8:] == _MAGIC and tail[0] == 0x02 and \
        _U64.unpack_from(tail, 1)[0] == 20


# ------------------------------------------------------------------------------------------
# metadata.yaml for a recovered bag
# ------------------------------------------------------------------------------------------
def _guess_version(qos_text: str) -> int:
    """v8 writes enum values as integers, v9 as names."""
    return 9 if any(word in qos_text for word in ('keep_last', 'reliable', 'volatile')) else 8


def _write_metadata_yaml(bag_dir: Path, storage: str, files: list[str], version: int,
                         topics: list[dict], start_ns: int, end_ns: int,
                         custom: dict[str, str] | None) -> None:
    from ruamel.yaml import YAML
    count = sum(t['message_count'] for t in topics)
    duration = max(0, end_ns - start_ns) if count else 0
    start = start_ns if count else 0
    info = {
        'version': version,
        'storage_identifier': storage,
        'relative_file_paths': files,
        'duration': {'nanoseconds': duration},
        'starting_time': {'nanoseconds_since_epoch': start},
        'message_count': count,
        'topics_with_message_count': topics,
        'compression_format': '',
        'compression_mode': '',
        'files': [{'path': name, 'starting_time': {'nanoseconds_since_epoch': start},
                   'duration': {'nanoseconds': duration},
                   'message_count': count} for name in files[:1]],
        'custom_data': custom or None,
        'ros_distro': 'rosbags',
    }
    yaml = YAML(typ='safe')
    yaml.default_flow_style = False
    buf = io.StringIO()
    yaml.dump({'rosbag2_bagfile_information': info}, buf)
    tmp = bag_dir / 'metadata.yaml.tmp'
    tmp.write_text(buf.getvalue(), 'utf8')
    tmp.replace(bag_dir / 'metadata.yaml')


def _topic_entry(topic: str, msgtype: str, qos_text: Any, count: int, version: int,
                 digest: str = '') -> dict:
    from rosbags.rosbag2.metadata import dump_qos_v9, parse_qos
    if version >= 9:
        qos: Any = dump_qos_v9(parse_qos(qos_text)) if qos_text else []
    else:
        qos = qos_text if isinstance(qos_text, str) else ''
    if not digest:
        try:
            from qail_ros import messages as m
            digest = m.type_hash(msgtype)
        except Exception:  # noqa: BLE001 - a type we do not know: ROS accepts an empty hash
            digest = ''
    return {'topic_metadata': {'name': topic, 'type': msgtype, 'serialization_format': 'cdr',
                               'offered_qos_profiles': qos, 'type_description_hash': digest},
            'message_count': count}


def _storage_files(bag_dir: Path) -> tuple[str, list[Path]]:
    mcaps = sorted(bag_dir.glob('*.mcap'))
    dbs = sorted(bag_dir.glob('*.db3'))
    if mcaps:
        return 'mcap', mcaps
    if dbs:
        return 'sqlite3', dbs
    compressed = sorted(bag_dir.glob('*.zstd'))
    hint = (' (file-compressed bags cannot be recovered: decompress with zstd first)'
            if compressed else '')
    raise BagError(f'{bag_dir} holds no .mcap or .db3 file: it is not a rosbag2 bag{hint}')


def _rollback_sqlite(db: Path) -> None:
    """Open read-write once so SQLite rolls back a hot journal left by a killed writer."""
    import sqlite3
    try:
        conn = sqlite3.connect(str(db))
        try:
            conn.execute('SELECT count(*) FROM messages').fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BagError(f'{db} is not a readable sqlite3 bag ({exc}); the file is corrupt') \
            from None


def recover_bag(path: str | os.PathLike, force: bool = False) -> dict:
    """Make a bag whose writer crashed readable by every rosbag2 reader again.

    mcap: keep every complete chunk, cut the partial tail, regenerate message indexes, write
    the summary and footer. sqlite3: roll back the unfinished transaction. Then write
    metadata.yaml. Returns a report dict. A bag that already opens is left alone unless
    `force` (then only metadata.yaml is rewritten).
    """
    bag_dir = Path(path)
    if not bag_dir.exists():
        raise BagError(f'no bag at {bag_dir}: check the path')
    if bag_dir.is_file():
        bag_dir = bag_dir.parent
    storage, files = _storage_files(bag_dir)
    if len(files) > 1:
        raise BagError(f'{bag_dir} holds {len(files)} storage files; recover splits one by one '
                       'is not supported: move each into its own directory')
    file = files[0]
    meta_exists = (bag_dir / 'metadata.yaml').exists()
    report: dict[str, Any] = {'path': str(bag_dir), 'storage': storage, 'file': file.name}
    if storage == 'sqlite3':
        _rollback_sqlite(file)
        import sqlite3
        conn = sqlite3.connect(f'file:{file}?mode=ro', uri=True)
        try:
            rows = conn.execute(
                'SELECT topics.id, name, type, offered_qos_profiles, count(messages.id), '
                'min(messages.timestamp), max(messages.timestamp) FROM topics LEFT JOIN '
                'messages ON topics.id = messages.topic_id GROUP BY topics.id ORDER BY '
                'topics.id').fetchall()
            cols = [r[1] for r in conn.execute('PRAGMA table_info(topics)')]
            hashes = dict(conn.execute('SELECT id, type_description_hash FROM topics')
                          .fetchall()) if 'type_description_hash' in cols else {}
        finally:
            conn.close()
        version = _guess_version(' '.join(r[3] or '' for r in rows)) if rows else 8
        topics = [_topic_entry(r[1], r[2], r[3], r[4], version, hashes.get(r[0], ''))
                  for r in rows]
        starts = [r[5] for r in rows if r[5] is not None]
        ends = [r[6] for r in rows if r[6] is not None]
        report.update(messages=sum(r[4] for r in rows), truncated_bytes=0)
        if meta_exists and not force:
            report['action'] = 'none: metadata.yaml exists (use --force to rewrite it)'
            return report
        _write_metadata_yaml(bag_dir, 'sqlite3', [file.name], version, topics,
                             min(starts) if starts else 0, max(ends) if ends else 0, None)
        report['action'] = 'wrote metadata.yaml'
        return report

    scan = scan_mcap(file)
    qail_meta = scan.metadata.get(_QAIL_METADATA, {})
    try:
        custom = json.loads(qail_meta.get('custom_data', '{}')) or None
    except ValueError:
        custom = None
    repair = not (scan.complete and _footer_ok(file))
    if not repair and meta_exists and not force:
        report.update(messages=scan.message_count, truncated_bytes=0,
                      action='none: the bag is complete (use --force to rewrite metadata.yaml)')
        return report
    truncated = 0
    if repair:
        truncated = 0 if scan.complete else scan.file_size - scan.good_end
        with file.open('r+b') as f:
            _write_summary(f, scan)
    counts = scan.channel_counts()
    qos_all = ' '.join(meta.get('offered_qos_profiles', '')
                       for _s, _t, _e, meta in scan.channels.values())
    version = int(qail_meta.get('rosbag2_version', 0)) or _guess_version(qos_all)
    topics = [_topic_entry(topic, scan.schemas.get(sid, ('',))[0],
                           meta.get('offered_qos_profiles', ''), counts.get(cid, 0), version)
              for cid, (sid, topic, _enc, meta) in sorted(scan.channels.items())]
    times = [t for c in scan.chunks for _cid, t, *_r in c.messages]
    _write_metadata_yaml(bag_dir, 'mcap', [file.name], version, topics,
                         min(times) if times else 0, max(times) if times else 0, custom)
    report.update(messages=scan.message_count, chunks=len(scan.chunks),
                  truncated_bytes=truncated, stop_reason=scan.stop_reason,
                  action='repaired the mcap file and wrote metadata.yaml' if repair
                  else 'wrote metadata.yaml')
    return report


# ------------------------------------------------------------------------------------------
# reader
# ------------------------------------------------------------------------------------------
def _register_bag_types(msgtype: str, msgdef: str) -> None:
    """Teach the typestore a type the bag defines but the typestore lacks."""
    from qail_ros import messages as m
    sep = '=' * 80 + '\n'
    sections = msgdef.split(sep)
    defs = {msgtype: sections[0]}
    for section in sections[1:]:
        head, _, body = section.partition('\n')
        if head.startswith('MSG: '):
            defs[m.normalize_type(head[5:].strip())] = body
    m.register_msgdefs(defs)


class BagReader:
    """Read a rosbag2 bag (directory, or a single .mcap / .db3 file); a context manager.

    A bag whose writer crashed (no metadata.yaml, mcap without summary) is read by scanning
    the mcap file: every message of every complete chunk, `recovered` is True, and `qail-ros
    bag recover PATH` makes it a normal bag again.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.recovered = False
        self.storage = ''
        self.version = 0
        self.custom_metadata: dict[str, str] = {}
        self._reader = None
        self._scan: McapScan | None = None
        self._topics: dict[str, TopicInfo] = {}
        self._conn_by_topic: dict[str, list] = {}
        self.start_ns = 0
        self.end_ns = 0
        self._open()

    # -- opening --------------------------------------------------------------------------
    def _open(self) -> None:
        from rosbags.rosbag2 import Reader, ReaderError
        path = self.path
        if not path.exists():
            raise BagError(f'no bag at {path}: check the path (a bag is a directory with '
                           'metadata.yaml and a .mcap or .db3 file)')
        if path.is_dir() and not (path / 'metadata.yaml').exists():
            storage, files = _storage_files(path)
            if storage == 'mcap':
                self._open_scan(files[0])
                return
            _rollback_sqlite(files[0])
            target = files[0]
            self.recovered = True
        elif path.is_file() and path.suffix not in ('.mcap', '.db3'):
            if path.name == 'metadata.yaml':
                path = path.parent
                target = path
            else:
                raise BagError(f'{path} is not a bag: expected a bag directory, a .mcap or a '
                               '.db3 file')
        else:
            target = path
        try:
            reader = Reader(target)
            reader.open()
        except (ReaderError, FileNotFoundError, KeyError, ValueError) as exc:
            mcap = (target if target.suffix == '.mcap' else
                    next(iter(sorted(Path(target).glob('*.mcap'))), None)
                    if Path(target).is_dir() else None)
            if mcap is not None and mcap.exists():
                try:
                    scan = scan_mcap(mcap)
                except BagError:
                    scan = None
                if scan is not None and not scan.complete and scan.chunks:
                    log.warning('%s: %s; reading the %d complete chunks (run `qail-ros bag '
                                'recover %s` to repair)', mcap, exc, len(scan.chunks), path)
                    self._open_scan(mcap, scan)
                    return
            raise BagError(f'cannot read bag {path}: {exc}. If its writer crashed, run '
                           f'`qail-ros bag recover {path}`; otherwise the bag is corrupt or not '
                           'a rosbag2 bag') from None
        self._reader = reader
        self.storage = ('mcap' if target.suffix == '.mcap' else 'sqlite3' if target.suffix ==
                        '.db3' else _storage_files(target)[0])
        self.version = self._read_version(target)
        self.custom_metadata = dict(reader.storage.metadata.custom or {})
        for conn in reader.connections:
            info = self._topics.get(conn.topic)
            if info is None:
                info = self._topics[conn.topic] = TopicInfo(
                    conn.topic, conn.msgtype, 0, list(conn.ext.offered_qos_profiles),
                    conn.msgdef.data)
            info.count += conn.msgcount
            self._conn_by_topic.setdefault(conn.topic, []).append(conn)
        count = reader.message_count
        self.start_ns = reader.start_time if count else 0
        self.end_ns = reader.end_time - 1 if count else 0

    def _read_version(self, target: Path) -> int:
        meta = Path(target) / 'metadata.yaml' if Path(target).is_dir() else None
        if meta is not None and meta.exists():
            from ruamel.yaml import YAML
            try:
                return int(YAML(typ='safe').load(meta.read_text())
                           ['rosbag2_bagfile_information']['version'])
            except Exception:  # noqa: BLE001 - rosbags already validated the file
                return 0
        return 0

    def _open_scan(self, mcap: Path, scan: McapScan | None = None) -> None:
        scan = scan or scan_mcap(mcap)
        self._scan = scan
        self.recovered = not scan.complete
        self.storage = 'mcap'
        qail_meta = scan.metadata.get(_QAIL_METADATA, {})
        try:
            self.custom_metadata = json.loads(qail_meta.get('custom_data', '{}'))
        except ValueError:
            self.custom_metadata = {}
        self.version = int(qail_meta.get('rosbag2_version', 0) or 0)
        counts = scan.channel_counts()
        from rosbags.rosbag2.metadata import parse_qos
        for cid, (sid, topic, _enc, meta) in sorted(scan.channels.items()):
            name, _fmt, text = scan.schemas.get(sid, ('', '', ''))
            info = self._topics.get(topic)
            if info is None:
                try:
                    qos = parse_qos(meta.get('offered_qos_profiles', ''))
                except Exception:  # noqa: BLE001 - QoS is informative only
                    qos = []
                info = self._topics[topic] = TopicInfo(topic, name, 0, qos, text)
            info.count += counts.get(cid, 0)
            self._conn_by_topic.setdefault(topic, []).append(cid)
        times = [t for c in scan.chunks for _cid, t, *_r in c.messages]
        self.start_ns = min(times) if times else 0
        self.end_ns = max(times) if times else 0
        if not scan.complete:
            log.warning('bag %s was not closed (%s): %d messages in %d complete chunks are '
                        'readable; run `qail-ros bag recover %s` to repair it', self.path,
                        scan.stop_reason, scan.message_count, len(scan.chunks), self.path)

    # -- info -----------------------------------------------------------------------------
    @property
    def topics(self) -> dict[str, TopicInfo]:
        return dict(self._topics)

    @property
    def message_count(self) -> int:
        return sum(t.count for t in self._topics.values())

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    @property
    def files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        return sorted(p for p in self.path.iterdir() if p.suffix in ('.mcap', '.db3', '.zstd'))

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    # -- messages -------------------------------------------------------------------------
    def messages(self, topics: Iterable[str] | str | None = None,
                 raw: bool = False) -> Iterator[BagMessage]:
        """(topic, timestamp_ns, msg) for every message, optionally only of `topics`.

        `raw=True` yields CDR bytes instead of messages. Time order for closed bags; file order
        (chunk by chunk) for a bag read by scanning.
        """
        from qail_ros import messages as m
        if isinstance(topics, str):
            topics = [topics]
        wanted = None if topics is None else set(topics)
        if wanted is not None:
            unknown = wanted - set(self._topics)
            if unknown:
                raise BagError(f'topic(s) {sorted(unknown)} not in bag {self.path}; it has '
                               f'{sorted(self._topics)}')
        registered: set[str] = set()

        def decode(topic: str, data: bytes) -> Any:
            info = self._topics[topic]
            if info.msgtype not in registered:
                try:
                    m.get_class(info.msgtype)
                except Exception:  # noqa: BLE001 - try the bag's own definition
                    if info.msgdef:
                        _register_bag_types(info.msgtype, info.msgdef)
                registered.add(info.msgtype)
            return m.deserialize(data, info.msgtype)

        if self._scan is not None:
            channels = {cid: ch[1] for cid, ch in self._scan.channels.items()}
            ids = None if wanted is None else {c for c, t in channels.items() if t in wanted}
            for cid, stamp, data in _scan_messages(self._scan, ids):
                topic = channels[cid]
                yield BagMessage(topic, stamp, data if raw else decode(topic, data))
            return
        if self._reader is None:
            raise BagError(f'bag {self.path} is closed')
        conns = [c for t, cs in self._conn_by_topic.items() if wanted is None or t in wanted
                 for c in cs]
        if not conns:
            return
        for conn, stamp, data in self._reader.messages(connections=conns):
            yield BagMessage(conn.topic, stamp, data if raw else decode(conn.topic, data))

    def __iter__(self) -> Iterator[BagMessage]:
        return self.messages()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> 'BagReader':
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False
