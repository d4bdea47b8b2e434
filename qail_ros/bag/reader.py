"""Reading bags: rosbag2 (metadata versions 1-9, mcap and sqlite3, split, compressed), ROS 1.

    from qail_ros.bag import BagReader
    with BagReader('run1') as bag:                    # a directory, .mcap, .db3 or ROS 1 .bag
        for topic, stamp_ns, msg in bag.messages(topics=['/image_raw']):
            ...

Messages are decoded with the definitions the bag carries (qail_ros.bag.types), ours only for
types it does not define. A bag whose writer crashed (no metadata.yaml, mcap without summary)
is read by scanning its mcap files: every message that reached the disk whole; `recovered` is
then True and `qail-ros bag recover PATH` writes a repaired copy.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from qail_ros.bag.scan import QAIL_METADATA, McapScan, scan_mcap, scan_messages
from qail_ros.bag.types import BagTypes
from qail_ros.errors import BagError

if TYPE_CHECKING:
    from rosbags.interfaces import Connection, ConnectionExtRosbag2
    from rosbags.rosbag1 import Reader as Reader1
    from rosbags.rosbag2 import Reader

__all__ = ['BagReader', 'BagMessage', 'TopicInfo', 'storage_files', 'read_metadata',
           'rollback_sqlite', 'check_metadata', 'BAG_SUFFIXES']

log = logging.getLogger('qail_ros.bag')

#: storage file suffixes (file-compressed rosbag2 files end in .zstd)
BAG_SUFFIXES = ('.mcap', '.db3', '.bag')


class BagMessage(NamedTuple):
    topic: str
    timestamp_ns: int
    msg: Any          # a message instance, or CDR bytes with raw=True


@dataclasses.dataclass
class TopicInfo:
    name: str
    msgtype: str
    count: int
    qos: list = dataclasses.field(default_factory=list)   # rosbags.interfaces.Qos
    msgdef: str = ''
    msgdef_format: str = ''     # 'msg' | 'idl' | '' (none in the bag)
    type_hash: str = ''         # the bag's type_description_hash (or computed from its def)
    serialization: str = 'cdr'


def read_metadata(bag_dir: Path) -> dict | None:
    """metadata.yaml's `rosbag2_bagfile_information` as written, None when there is none."""
    path = Path(bag_dir) / 'metadata.yaml'
    if not path.exists():
        return None
    from ruamel.yaml import YAML
    try:
        data = YAML(typ='safe').load(path.read_text())
        return dict(data['rosbag2_bagfile_information'])
    except Exception as exc:  # noqa: BLE001 - said plainly
        raise BagError(f'{path} is not a rosbag2 metadata file ({exc})') from None


def storage_files(bag_dir: Path) -> tuple[str, list[Path]]:
    """(storage id, files) of a bag directory, from its file names."""
    mcaps = sorted(bag_dir.glob('*.mcap'), key=_split_key)
    dbs = sorted(bag_dir.glob('*.db3'), key=_split_key)
    if mcaps:
        return 'mcap', mcaps
    if dbs:
        return 'sqlite3', dbs
    compressed = sorted(bag_dir.glob('*.zstd'))
    hint = (' (its files are zstd-compressed and metadata.yaml, which says so, is missing: '
            'decompress them with `zstd -d`)' if compressed else '')
    raise BagError(f'{bag_dir} holds no .mcap or .db3 file: it is not a rosbag2 bag{hint}')


def _split_key(path: Path) -> tuple:
    """name_0, name_1, ..., name_10 in split order."""
    stem = path.name.split('.')[0]
    head, _, tail = stem.rpartition('_')
    return (head, int(tail)) if tail.isdigit() else (stem, -1)


def rollback_sqlite(db: Path) -> None:
    """Open read-write once so SQLite rolls back a hot journal left by a killed writer."""
    import sqlite3
    try:
        conn = sqlite3.connect(str(db))
        try:
            conn.execute('SELECT count(*) FROM messages').fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BagError(f'{db} is not a readable sqlite3 bag ({exc}); the file is corrupt and '
                       '`qail-ros bag recover` cannot help (SQLite cannot read its pages)') \
            from None


def check_metadata(bag_dir: Path, meta: dict) -> None:
    """Problems no reader (and no recovery) can fix, said plainly."""
    files = [bag_dir / Path(p).name for p in meta.get('relative_file_paths') or []]
    missing = [p.name for p in files if not p.exists()]
    if missing:
        raise BagError(f'bag {bag_dir}: metadata.yaml lists {len(files)} storage files and '
                       f'{len(missing)} are missing ({", ".join(missing)}); copy them '
                       'into the bag directory. `qail-ros bag recover` cannot help: it '
                       'cannot recreate the messages of a missing split file')
    formats = {t.get('topic_metadata', {}).get('serialization_format', 'cdr')
               for t in meta.get('topics_with_message_count') or []}
    if formats - {'cdr'}:
        raise BagError(f'bag {bag_dir}: serialization format {sorted(formats - {"cdr"})} '
                       'is not supported (only cdr, what every ROS 2 rmw writes); '
                       '`qail-ros bag recover` cannot help, the messages are not broken: '
                       'convert the bag with the tool that wrote it')
    fmt = meta.get('compression_format') or ''
    if (meta.get('compression_mode') or '').lower() not in ('', 'none') and fmt != 'zstd':
        raise BagError(f"bag {bag_dir}: compression format '{fmt}' is not supported "
                       "(rosbag2 writes 'zstd'); `qail-ros bag recover` cannot help")


def _fmt(msgdef) -> str:
    name = getattr(getattr(msgdef, 'format', None), 'name', '')
    return {'MSG': 'msg', 'IDL': 'idl'}.get(name, '')


def _ext2(conn: Connection) -> ConnectionExtRosbag2:
    """The rosbag2 part (QoS, serialization format) of a connection of a rosbag2 reader."""
    from rosbags.interfaces import ConnectionExtRosbag2
    if not isinstance(conn.ext, ConnectionExtRosbag2):
        raise BagError(f'topic {conn.topic}: not a rosbag2 connection')
    return conn.ext


class BagReader:
    """Read a bag (directory, .mcap, .db3, metadata.yaml or ROS 1 .bag); a context manager."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.recovered = False
        self.storage = ''
        self.version = 0
        self.ros_distro = ''
        self.compression = ('', '')      # (format, mode) as metadata.yaml says
        self.custom_metadata: dict[str, str] = {}
        self.metadata: dict | None = None
        self.types: BagTypes              # set by _make_types, once the topics are known
        self._reader: Reader | list[Reader] | None = None  # rosbags rosbag2 Reader(s)
        self._storages: list = []         # rosbags storage readers, in file order
        self._scans: list[McapScan] = []
        self._ros1: Reader1 | None = None
        self._topics: dict[str, TopicInfo] = {}
        self.start_ns = 0
        self.end_ns = 0
        self._open()
        self._make_types()

    # -- opening --------------------------------------------------------------------------
    def _open(self) -> None:
        path = self.path
        if not path.exists():
            raise BagError(f'no bag at {path}: check the path (a bag is a directory with '
                           'metadata.yaml and .mcap or .db3 files, or a ROS 1 .bag file)')
        if path.is_file() and path.name == 'metadata.yaml':
            path = self.path = path.parent
        if path.is_file():
            if path.suffix == '.bag':
                self._open_ros1(path)
            elif path.suffix in ('.mcap', '.db3'):
                self._open_rosbags(path)
            else:
                raise BagError(f'{path} is not a bag: expected a bag directory, a .mcap, a '
                               '.db3 or a ROS 1 .bag file')
            return
        ros1 = sorted(path.glob('*.bag'))
        if ros1 and not any(path.glob('*.mcap')) and not any(path.glob('*.db3')):
            if len(ros1) > 1:
                raise BagError(f'{path} holds {len(ros1)} ROS 1 bags; pass one .bag file')
            self._open_ros1(ros1[0])
            return
        if (path / 'metadata.yaml').exists():
            self._open_rosbags(path)
            return
        storage, files = storage_files(path)
        if storage == 'mcap':
            self._open_scans(files)
            return
        self.recovered = True
        for db in files:
            rollback_sqlite(db)
        self._open_files(files)

    def _open_rosbags(self, target: Path) -> None:
        from rosbags.rosbag2 import Reader, ReaderError
        meta = read_metadata(target) if target.is_dir() else None
        if meta is not None:
            check_metadata(target, meta)
        try:
            reader = Reader(target)
            reader.open()
        except (ReaderError, FileNotFoundError, KeyError, ValueError) as exc:
            mcaps = ([target] if target.suffix == '.mcap' else
                     sorted(target.glob('*.mcap'), key=_split_key) if target.is_dir() else [])
            if mcaps:
                try:
                    scans = [scan_mcap(p) for p in mcaps]
                except BagError:
                    scans = []
                if scans and any(not s.complete for s in scans) and any(s.chunks for s in scans):
                    log.warning('%s: %s; reading the messages that reached the disk (run '
                                '`qail-ros bag recover %s` to repair)', target, exc, self.path)
                    self.metadata = meta
                    self.recovered = True
                    self._open_scans(mcaps, scans)
                    return
            raise BagError(f'cannot read bag {self.path}: {exc}. If its writer crashed, run '
                           f'`qail-ros bag recover {self.path}`; otherwise the bag is corrupt '
                           'or not a rosbag2 bag') from None
        self._reader = reader
        self.metadata = meta
        if meta is not None:  # target is a directory
            self.storage = meta.get('storage_identifier', '') if meta else ''
            self.version = int(meta.get('version', 0)) if meta else 0
            self.ros_distro = str(meta.get('ros_distro') or '') if meta else ''
            # the multi-file storage of rosbags' Reader (not in its ReaderProtocol)
            self._storages = list(reader.storage.storages)  # type: ignore[attr-defined]
            self.compression = (str(meta.get('compression_format') or ''),
                                str(meta.get('compression_mode') or '').lower())
        else:
            self.storage = 'mcap' if target.suffix == '.mcap' else 'sqlite3'
            self._storages = [reader.storage]
        self.custom_metadata = dict(getattr(reader.storage.metadata, 'custom', None) or {})
        for conn in reader.connections:
            ext = _ext2(conn)
            self._add_topic(conn.topic, conn.msgtype, conn.msgcount,
                            list(ext.offered_qos_profiles), conn.msgdef.data,
                            _fmt(conn.msgdef), conn.digest, ext.serialization_format)
        self._fill_definitions()
        count = reader.message_count
        self.start_ns = reader.start_time if count else 0
        self.end_ns = reader.end_time - 1 if count else 0

    def _open_files(self, files: list[Path]) -> None:
        """Storage files without metadata.yaml (sqlite3 after a crash)."""
        from rosbags.rosbag2 import Reader
        self.storage = 'sqlite3'
        readers = []
        for file in files:
            reader = Reader(file)
            reader.open()
            readers.append(reader)
        self._reader = readers
        self._storages = [r.storage for r in readers]
        starts, ends = [], []
        for reader in readers:
            for conn in reader.connections:
                ext = _ext2(conn)
                self._add_topic(conn.topic, conn.msgtype, conn.msgcount,
                                list(ext.offered_qos_profiles), conn.msgdef.data,
                                _fmt(conn.msgdef), conn.digest, ext.serialization_format)
            if reader.message_count:
                starts.append(reader.start_time)
                ends.append(reader.end_time - 1)
        self._fill_definitions()
        self.start_ns = min(starts) if starts else 0
        self.end_ns = max(ends) if ends else 0

    def _open_scans(self, files: list[Path], scans: list[McapScan] | None = None) -> None:
        from rosbags.rosbag2.metadata import parse_qos
        scans = scans or [scan_mcap(p) for p in files]
        self._scans = scans
        self.recovered = any(not s.complete for s in scans) or self.recovered
        self.storage = 'mcap'
        for scan in scans:
            qail_meta = scan.metadata.get(QAIL_METADATA, {})
            if qail_meta and not self.custom_metadata:
                try:
                    self.custom_metadata = json.loads(qail_meta.get('custom_data', '{}'))
                except ValueError:
                    self.custom_metadata = {}
                self.version = int(qail_meta.get('rosbag2_version', 0) or 0)
            counts = scan.channel_counts()
            for cid, (sid, topic, enc, meta) in sorted(scan.channels.items()):
                name, sfmt, text = scan.schemas.get(sid, ('', '', ''))
                try:
                    qos = parse_qos(meta.get('offered_qos_profiles', ''))
                except Exception:  # noqa: BLE001 - QoS is informative only
                    qos = []
                fmt = {'ros2msg': 'msg', 'ros2idl': 'idl'}.get(sfmt, '')
                self._add_topic(topic, name, counts.get(cid, 0), qos, text, fmt, '', enc)
        if self.metadata:
            self.version = int(self.metadata.get('version', 0)) or self.version
        self._fill_definitions()
        times = [t for s in scans for t in s.times()]
        self.start_ns = min(times) if times else 0
        self.end_ns = max(times) if times else 0
        if self.recovered:
            n = sum(s.message_count for s in scans)
            log.warning('bag %s was not closed (%s): %d messages that reached the disk are '
                        'readable; run `qail-ros bag recover %s` to repair it', self.path,
                        '; '.join(s.stop_reason for s in scans if not s.complete), n,
                        self.path)

    def _open_ros1(self, path: Path) -> None:
        from rosbags.rosbag1 import Reader as Reader1
        try:
            reader = Reader1(path)
            reader.open()
        except Exception as exc:  # noqa: BLE001 - rosbags' ROS 1 errors, said plainly
            raise BagError(f'cannot read ROS 1 bag {path}: {exc}. If it was not closed, '
                           'reindex it with `rosbag reindex` (ROS 1); `qail-ros bag recover` '
                           'repairs rosbag2 bags only') from None
        self._ros1 = reader
        self.storage = 'rosbag1'
        self.version = 1
        for conn in reader.connections:
            self._add_topic(conn.topic, conn.msgtype, conn.msgcount, [], conn.msgdef.data,
                            'msg', conn.digest, 'ros1')
        count = reader.message_count
        self.start_ns = reader.start_time if count else 0
        self.end_ns = reader.end_time - 1 if count else 0

    def _add_topic(self, topic: str, msgtype: str, count: int, qos: list, msgdef: str,
                   fmt: str, digest: str, serialization: str) -> None:
        info = self._topics.get(topic)
        if info is None:
            self._topics[topic] = TopicInfo(topic, msgtype, count, qos, msgdef, fmt,
                                            digest or '', serialization or 'cdr')
            return
        if info.msgtype != msgtype:
            raise BagError(f"bag {self.path}: topic '{topic}' carries two types ({info.msgtype}"
                           f', {msgtype}); read it with rosbags directly')
        info.count += count
        if not info.msgdef and msgdef:
            info.msgdef, info.msgdef_format = msgdef, fmt
        if not info.type_hash and digest:
            info.type_hash = digest

    def _fill_definitions(self) -> None:
        """A topic whose metadata lacks the definition takes the one of its type elsewhere."""
        by_type = {t.msgtype: (t.msgdef, t.msgdef_format) for t in self._topics.values()
                   if t.msgdef}
        for info in self._topics.values():
            if not info.msgdef and info.msgtype in by_type:
                info.msgdef, info.msgdef_format = by_type[info.msgtype]

    def _make_types(self) -> None:
        defs = {t.msgtype: (t.msgdef_format, t.msgdef) for t in self._topics.values()}
        self.types = BagTypes(defs, ros1=self._ros1 is not None)
        if self._ros1 is None:
            for info in self._topics.values():
                if not info.type_hash and info.msgdef:
                    info.type_hash = self.types.type_hash(info.msgtype)

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
        if self.metadata and self.metadata.get('relative_file_paths'):
            return [self.path / Path(p).name for p in self.metadata['relative_file_paths']]
        return sorted((p for p in self.path.iterdir()
                       if p.suffix in BAG_SUFFIXES + ('.zstd',)), key=_split_key)

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files if p.exists())

    # -- messages -------------------------------------------------------------------------
    def deserialize(self, data: bytes, topic: str) -> Any:
        """A message of `topic` from the CDR bytes `messages(raw=True)` gave."""
        types = self.types
        if types.ros1:
            from qail_ros.bag.types import type_key
            return types.store.deserialize_cdr(data, type_key(self._topics[topic].msgtype))
        return types.deserialize(data, self._topics[topic].msgtype)

    def messages(self, topics: Iterable[str] | str | None = None,
                 raw: bool = False) -> Iterator[BagMessage]:
        """(topic, timestamp_ns, msg) for every message, optionally only of `topics`.

        `raw=True` yields CDR bytes (ROS 1 messages converted) instead of messages. Time order
        within each storage file (split files follow each other); file order for a bag read
        by scanning.
        """
        if isinstance(topics, str):
            topics = [topics]
        wanted = None if topics is None else set(topics)
        if wanted is not None:
            unknown = wanted - set(self._topics)
            if unknown:
                raise BagError(f'topic(s) {sorted(unknown)} not in bag {self.path}; it has '
                               f'{sorted(self._topics)}')
        types = self.types

        def out(topic: str, stamp: int, data: bytes) -> BagMessage:
            mtype = self._topics[topic].msgtype
            if raw:
                return BagMessage(topic, stamp, types.to_cdr(data, mtype))
            return BagMessage(topic, stamp, types.deserialize(data, mtype))

        if self._scans:
            for scan in self._scans:
                channels = {cid: ch[1] for cid, ch in scan.channels.items()}
                ids = None if wanted is None else {c for c, t in channels.items()
                                                   if t in wanted}
                for cid, stamp, data in scan_messages(scan, ids):
                    yield out(channels[cid], stamp, data)
            return
        if self._ros1 is not None:
            conns = [c for c in self._ros1.connections if wanted is None or c.topic in wanted]
            if conns:
                for conn, stamp, data in self._ros1.messages(connections=conns):
                    yield out(conn.topic, stamp, data)
            return
        if self._reader is None:
            raise BagError(f'bag {self.path} is closed')
        decompress = None
        if self.compression[1] == 'message':
            try:
                from compression import zstd
            except ImportError:
                from backports import zstd
            decompress = zstd.decompress
        for storage in self._storages:
            # Matched by topic and type only: rosbag2's own sqlite3 bags may store QoS text
            # that differs from metadata.yaml's (rosbags would then match nothing).
            conns = [c for c in storage.connections
                     if (wanted is None or c.topic in wanted) and c.topic in self._topics
                     and c.msgtype == self._topics[c.topic].msgtype]
            if not conns:
                continue
            for conn, stamp, data in storage.messages(conns):
                yield out(conn.topic, stamp, decompress(data) if decompress else data)

    def __iter__(self) -> Iterator[BagMessage]:
        return self.messages()

    def close(self) -> None:
        readers = self._reader if isinstance(self._reader, list) else [self._reader]
        for reader in readers + [self._ros1]:
            if reader is not None:
                try:
                    reader.close()
                except Exception:  # noqa: BLE001 - closing twice
                    pass
        self._reader = None
        self._ros1 = None
        self._storages = []

    def __enter__(self) -> 'BagReader':
        return self

    def __exit__(self, *exc) -> Literal[False]:
        self.close()
        return False
