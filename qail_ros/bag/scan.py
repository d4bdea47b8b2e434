"""mcap without its summary: a linear scan that reads a cut-off file, and the summary writer.

rosbag2's mcap files use a small subset of mcap: a header, schema / channel / metadata records,
chunks (each followed by its message indexes), then DataEnd, the summary and the footer. A
writer killed mid-recording leaves no summary and usually a partial chunk at the end.
`scan_mcap` reads every complete record and, from a cut-off last chunk, every message record
that is whole (uncompressed chunks, and the decompressible prefix of zstd / lz4 ones), so
nothing that reached the disk is lost. `write_repaired` writes such a scan as a valid file.
"""
from __future__ import annotations

import dataclasses
import io
import os
import struct
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from qail_ros.errors import BagError

__all__ = ['McapScan', 'scan_mcap', 'scan_messages', 'write_repaired', 'footer_ok', 'MAGIC',
           'QAIL_METADATA']

MAGIC = b'\x89MCAP0\r\n'
#: name of the mcap Metadata record BagWriter writes right after the header
QAIL_METADATA = 'qail_ros.bag'
_U16, _U32, _U64 = struct.Struct('<H'), struct.Struct('<I'), struct.Struct('<Q')


def put_str(bio, text: str) -> None:
    raw = text.encode()
    bio.write(_U32.pack(len(raw)))
    bio.write(raw)


def put_map(bio, values: dict[str, str]) -> None:
    sub = io.BytesIO()
    for key, value in values.items():
        put_str(sub, key)
        put_str(sub, value)
    bio.write(_U32.pack(sub.tell()))
    bio.write(sub.getvalue())


def put_record(bio, opcode: int, content: bytes) -> None:
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

    def string(self) -> str:
        return self.raw(self.u32()).decode()

    def map(self) -> dict[str, str]:
        end = self.u32() + self.pos
        out = {}
        while self.pos < end:
            key = self.string()
            out[key] = self.string()
        return out


@dataclasses.dataclass
class Chunk:
    start: int                 # file offset of the chunk record
    length: int                # whole record length (opcode + length + content) in the file
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
    partial: bool = False      # cut off: only its whole message records were salvaged
    records_end: int = 0       # partial: end of the last whole record in the records


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
    header: tuple = ('ros2', '')   # (profile, library)
    summary_count: int | None = None   # message count of a summary Statistics record

    @property
    def message_count(self) -> int:
        return sum(len(c.messages) for c in self.chunks)

    @property
    def salvaged(self) -> int:
        """Messages read from a cut-off last chunk."""
        return sum(len(c.messages) for c in self.chunks if c.partial)

    def channel_counts(self) -> dict[int, int]:
        counts: dict[int, int] = defaultdict(int)
        for chunk in self.chunks:
            for cid, *_rest in chunk.messages:
                counts[cid] += 1
        return counts

    def times(self) -> list[int]:
        return [t for c in self.chunks for _cid, t, *_r in c.messages]


def _decompress(data: bytes, compression: str, partial: bool = False) -> bytes:
    """A chunk's records; `partial`: as much as a cut-off compressed stream gives."""
    if compression == '':
        return data
    if compression == 'zstd':
        try:
            from compression import zstd   # Python 3.14+
        except ImportError:
            from backports import zstd
        if partial:
            return zstd.ZstdDecompressor().decompress(data)
        return zstd.decompress(data)
    if compression == 'lz4':
        import lz4.frame
        if partial:
            return lz4.frame.LZ4FrameDecompressor().decompress(data)
        return lz4.frame.decompress(data)
    raise ValueError(f"unsupported chunk compression '{compression}'")


def _parse_chunk_records(chunk: Chunk, scan: McapScan, partial: bool = False) -> None:
    cur = _Cursor(chunk.records)
    size = len(chunk.records)
    while cur.pos < size:
        if cur.pos + 9 > size:
            if partial:
                break
            raise ValueError('record header runs past the end of its chunk')
        op = chunk.records[cur.pos]
        cur.pos += 1
        length = cur.u64()
        start, end = cur.pos, cur.pos + length
        if end > size:
            if partial:
                cur.pos = start - 9
                break
            raise ValueError('record runs past the end of its chunk')
        if op == 0x03:
            sid = cur.u16()
            scan.schemas[sid] = (cur.string(), cur.string(), cur.raw(cur.u32()).decode())
        elif op == 0x04:
            cid = cur.u16()
            sid = cur.u16()
            scan.channels[cid] = (sid, cur.string(), cur.string(), cur.map())
        elif op == 0x05:
            cid = cur.u16()
            cur.u32()
            log_time = cur.u64()
            chunk.messages.append((cid, log_time, start - 9, start + 22, end))
        cur.pos = end
    chunk.records_end = cur.pos


def scan_mcap(path: str | os.PathLike) -> McapScan:
    """Read an mcap file front to back without its summary; stop at the first partial record.

    Works on a file whose writer was killed: every complete chunk, and every whole message of
    a cut-off last chunk, is returned. Raises BagError if the file is not mcap at all.
    """
    import mmap
    path = Path(path)
    with path.open('rb') as f:
        size = f.seek(0, 2)
        if size < len(MAGIC):
            raise BagError(f'{path} is not an mcap file ({size} bytes); it is not a bag or '
                           'its writer died before writing anything')
        # Mapped, not read: a crashed recording may be many GB; only records are copied.
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _scan_mapped(path, data)


def _salvage_chunk(scan: McapScan, data, pos: int) -> None:
    """Whole message records of a chunk record cut off at the end of the file."""
    try:
        cur = _Cursor(data, pos + 9)
        start_time, end_time, usize = cur.u64(), cur.u64(), cur.u64()
        cur.u32()
        compression = cur.string()
        csize = cur.u64()
        avail = bytes(data[cur.pos:min(len(data), cur.pos + csize)])
        records = _decompress(avail, compression, partial=True)[:usize]
    except (ValueError, struct.error, UnicodeDecodeError, ImportError):
        return
    except Exception:  # noqa: BLE001 - a corrupt compressed tail: nothing to salvage
        return
    chunk = Chunk(pos, len(data) - pos, start_time, end_time, compression, csize, usize,
                  records=records, partial=True)
    try:
        _parse_chunk_records(chunk, scan, partial=True)
    except (ValueError, struct.error, UnicodeDecodeError):
        return
    if chunk.messages:
        chunk.records = records[:chunk.records_end]
        times = [t for _c, t, *_r in chunk.messages]
        chunk.start_time, chunk.end_time = min(times), max(times)
        scan.chunks.append(chunk)


def _scan_mapped(path: Path, data) -> McapScan:
    scan = McapScan(path)
    scan.file_size = len(data)
    if data[:len(MAGIC)] != MAGIC:
        raise BagError(f'{path} is not an mcap file (bad magic {bytes(data[:8])!r}); '
                       'it is not a bag or is corrupt from its first byte')
    pos = len(MAGIC)
    last_chunk: Chunk | None = None
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
            if op == 0x06:
                _salvage_chunk(scan, data, pos)
            break
        content = data[pos + 9:end]
        try:
            if op == 0x01:        # header
                cur = _Cursor(content)
                scan.header = (cur.string(), cur.string())
                scan.header_end = end
            elif op == 0x06:      # chunk
                cur = _Cursor(content)
                start_time, end_time, usize = cur.u64(), cur.u64(), cur.u64()
                cur.u32()             # uncompressed CRC (not checked)
                compression = cur.string()
                csize = cur.u64()
                records = _decompress(cur.raw(csize), compression)
                if len(records) != usize:
                    raise ValueError('chunk size does not match its header')
                chunk = Chunk(pos, end - pos, start_time, end_time, compression, csize, usize,
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
                scan.schemas[sid] = (cur.string(), cur.string(), cur.raw(cur.u32()).decode())
            elif op == 0x04:
                cur = _Cursor(content)
                cid = cur.u16()
                sid = cur.u16()
                scan.channels[cid] = (sid, cur.string(), cur.string(), cur.map())
            elif op == 0x0C:      # metadata
                cur = _Cursor(content)
                name = cur.string()
                scan.metadata[name] = cur.map()
            elif op in (0x0F, 0x02):   # data end / footer: the file was closed properly
                scan.complete = True
                scan.stop_reason = 'data end'
                scan.good_end = pos
                scan.summary_count = _summary_count(data, end)
                break
            elif op == 0x00 or op > 0x0F:
                raise ValueError(f'unknown record opcode 0x{op:02x}')
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            scan.stop_reason = f'record 0x{op:02x} at offset {pos} is corrupt: {exc}'
            break
        pos = scan.good_end = end
    return scan


def _summary_count(data, pos: int) -> int | None:
    """The message count of the Statistics record after DataEnd, if there is one."""
    try:
        while pos + 9 <= len(data):
            op = data[pos]
            length = _U64.unpack_from(data, pos + 1)[0]
            if op == 0x0B:
                return _U64.unpack_from(data, pos + 9)[0]
            if op == 0x02:
                return None
            pos += 9 + length
    except struct.error:
        pass
    return None


def _chunk_records(f, chunk: Chunk) -> bytes:
    if chunk.partial and chunk.records:
        return chunk.records
    f.seek(chunk.start + 9)
    content = f.read(chunk.length - 9)
    cur = _Cursor(content)
    cur.u64(), cur.u64(), cur.u64(), cur.u32()
    compression = cur.string()
    return _decompress(cur.raw(cur.u64()), compression)


def scan_messages(scan: McapScan, wanted: set[int] | None) -> Iterator[tuple[int, int, bytes]]:
    """(channel id, log time, data) of every message of every complete chunk, in file order."""
    with scan.path.open('rb') as f:
        for chunk in scan.chunks:
            records = _chunk_records(f, chunk)
            for cid, log_time, _off, dstart, dend in sorted(chunk.messages, key=lambda x: x[1]):
                if wanted is None or cid in wanted:
                    yield cid, log_time, records[dstart:dend]


def _copy_range(src, dst, start: int, end: int) -> None:
    src.seek(start)
    left = end - start
    while left > 0:
        block = src.read(min(left, 1 << 22))
        if not block:
            break
        dst.write(block)
        left -= len(block)


def _write_indexes(f, chunk: Chunk) -> None:
    by_channel: dict[int, list] = defaultdict(list)
    for cid, log_time, off, _ds, _de in chunk.messages:
        by_channel[cid].append((log_time, off))
    chunk.index_offsets = {}
    for cid, entries in sorted(by_channel.items()):
        chunk.index_offsets[cid] = f.tell()
        rec = io.BytesIO()
        rec.write(_U16.pack(cid))
        rec.write(_U32.pack(len(entries) * 16))
        for log_time, off in entries:
            rec.write(_U64.pack(log_time))
            rec.write(_U64.pack(off))
        put_record(f, 0x07, rec.getvalue())
    chunk.index_end = f.tell()


def write_repaired(scan: McapScan, out_path: str | os.PathLike,
                   extra_metadata: dict[str, str] | None = None) -> None:
    """Write `scan`'s file as a valid mcap at `out_path` (never the scanned file itself).

    Every complete chunk is copied byte for byte; the last complete chunk gets fresh message
    indexes; a cut-off chunk's whole messages become a new (uncompressed) chunk; then DataEnd,
    the summary (schemas, channels, chunk indexes, metadata index, statistics, summary
    offsets) and the footer.
    """
    out_path = Path(out_path)
    if out_path.resolve() == scan.path.resolve():
        raise BagError(f'write_repaired would overwrite its source {scan.path}')
    with scan.path.open('rb') as src, out_path.open('wb') as f:
        if scan.header_end:
            whole = [c for c in scan.chunks if not c.partial]
            if whole:
                last = whole[-1]
                _copy_range(src, f, 0, last.start + last.length)
                _write_indexes(f, last)
            else:
                end = scan.good_end if not scan.chunks else scan.chunks[0].start
                _copy_range(src, f, 0, min(end, scan.good_end))
        else:                      # cut inside the header: write a new one
            f.write(MAGIC)
            rec = io.BytesIO()
            put_str(rec, 'ros2')
            put_str(rec, 'qail_ros recover')
            put_record(f, 0x01, rec.getvalue())
        for chunk in scan.chunks:
            if not chunk.partial:
                continue
            # the salvaged records (schemas, channels, whole messages) as a new chunk
            records = chunk.records
            chunk.start = f.tell()
            rec = io.BytesIO()
            rec.write(_U64.pack(chunk.start_time))
            rec.write(_U64.pack(chunk.end_time))
            rec.write(_U64.pack(len(records)))
            rec.write(_U32.pack(0))
            put_str(rec, '')
            rec.write(_U64.pack(len(records)))
            rec.write(records)
            put_record(f, 0x06, rec.getvalue())
            chunk.length = f.tell() - chunk.start
            chunk.compression = ''
            chunk.compressed_size = chunk.uncompressed_size = len(records)
            _write_indexes(f, chunk)
        _write_summary(f, scan, extra_metadata or {})


def _write_summary(f, scan: McapScan, extra_metadata: dict[str, str]) -> None:
    counts = scan.channel_counts()
    times = scan.times()
    meta_start = f.tell()
    rec = io.BytesIO()
    put_str(rec, QAIL_METADATA)
    put_map(rec, {**scan.metadata.get(QAIL_METADATA, {}), **extra_metadata})
    put_record(f, 0x0C, rec.getvalue())
    meta_end = f.tell()
    put_record(f, 0x0F, _U32.pack(0))
    summary_start = f.tell()
    groups = []
    schema_start = f.tell()
    for sid, (name, enc, text) in sorted(scan.schemas.items()):
        rec = io.BytesIO()
        rec.write(_U16.pack(sid))
        put_str(rec, name)
        put_str(rec, enc)
        put_str(rec, text)
        put_record(f, 0x03, rec.getvalue())
    groups.append((0x03, schema_start, f.tell()))
    channel_start = f.tell()
    for cid, (sid, topic, enc, meta) in sorted(scan.channels.items()):
        rec = io.BytesIO()
        rec.write(_U16.pack(cid))
        rec.write(_U16.pack(sid))
        put_str(rec, topic)
        put_str(rec, enc)
        put_map(rec, meta)
        put_record(f, 0x04, rec.getvalue())
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
        put_str(rec, chunk.compression)
        rec.write(_U64.pack(chunk.compressed_size))
        rec.write(_U64.pack(chunk.uncompressed_size))
        put_record(f, 0x08, rec.getvalue())
    groups.append((0x08, index_start, f.tell()))
    meta_index_start = f.tell()
    rec = io.BytesIO()
    rec.write(_U64.pack(meta_start))
    rec.write(_U64.pack(meta_end - meta_start))
    put_str(rec, QAIL_METADATA)
    put_record(f, 0x0D, rec.getvalue())
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
    put_record(f, 0x0B, rec.getvalue())
    groups.append((0x0B, stats_start, f.tell()))
    offsets_start = f.tell()
    for opcode, start, end in groups:
        if end > start:
            put_record(f, 0x0E, bytes([opcode]) + _U64.pack(start) + _U64.pack(end - start))
    put_record(f, 0x02, _U64.pack(summary_start) + _U64.pack(offsets_start) + _U32.pack(0))
    f.write(MAGIC)
    f.flush()
    os.fsync(f.fileno())


def footer_ok(path: Path) -> bool:
    """True when the file ends with a footer record and the closing magic."""
    with path.open('rb') as f:
        size = f.seek(0, 2)
        if size < 8 + 37:
            return False
        f.seek(size - 37)
        tail = f.read(37)
    return tail[-8:] == MAGIC and tail[0] == 0x02 and \
        _U64.unpack_from(tail, 1)[0] == 20
