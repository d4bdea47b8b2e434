"""`recover_bag`: a repaired copy of a bag whose writer crashed, losing nothing that reached disk.

    report = recover_bag('run1')            # writes run1.recovered/ beside run1/
    report['recovered'], report['expected'], report['lost'], report['output']

* The original is never modified unless `in_place=True` (then the repaired files replace the
  originals only once they are complete on disk).
* The original metadata.yaml is kept: version, storage id, compression, QoS profiles, type
  hashes, custom data, ros_distro; only counts, times and the file list are updated. A bag
  without metadata.yaml gets one built from what its files carry (the bag's own definitions
  give the type hashes).
* mcap: every complete chunk is copied byte for byte and every whole message of a cut-off
  chunk is kept (qail_ros.bag.scan). sqlite3: the copy's unfinished transaction is rolled back
  (SQLite's own recovery). File-compressed (.zstd) files are decompressed as far as they go and
  written compressed again.
* `expected` comes from the original metadata.yaml or the mcap summary; `lost = expected -
  recovered` (None where nothing says how many there were).
* Refuses, unless `force`, a bag a process has open (/proc/*/fd) or whose files changed in the
  last `quiet_s` seconds: it may still be being written.
* Says plainly when recovery cannot help: missing split files, a serialization format other
  than cdr, a corrupt sqlite3 file, a file that is not mcap.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from qail_ros.bag.reader import check_metadata, read_metadata, storage_files
from qail_ros.bag.scan import QAIL_METADATA, footer_ok, scan_mcap, write_repaired
from qail_ros.errors import BagError

__all__ = ['recover_bag', 'open_by', 'QUIET_S']

log = logging.getLogger('qail_ros.bag')

#: a bag whose files changed this recently may still be being written
QUIET_S = 5.0


def open_by(bag_dir: Path) -> list[tuple[int, str]]:
    """(pid, file) of every other process that has a file of `bag_dir` open (Linux /proc)."""
    root = str(Path(bag_dir).resolve())
    found: list[tuple[int, str]] = []
    proc = Path('/proc')
    if not proc.is_dir():
        return found
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fds = list((entry / 'fd').iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target == root or target.startswith(root + os.sep):
                found.append((int(entry.name), target))
    return found


def _check_quiet(bag_dir: Path, quiet_s: float) -> None:
    busy = open_by(bag_dir)
    if busy:
        pids = sorted({p for p, _f in busy})
        raise BagError(f'{bag_dir} is open in process(es) {pids} ({busy[0][1]}): it is still '
                       'being written. Stop the recorder first (its bag is then closed and '
                       'needs no recovery), or pass --force if that process is not writing it')
    if quiet_s > 0:
        newest = max((p.stat().st_mtime for p in bag_dir.iterdir() if p.is_file()),
                     default=0.0)
        age = time.time() - newest
        if age < quiet_s:
            raise BagError(f'{bag_dir} changed {age:.1f} s ago: it may still be being written. '
                           f'Wait until nothing has written it for {quiet_s:g} s, or pass '
                           '--force')


def _output_dir(bag_dir: Path, output: str | os.PathLike | None) -> Path:
    if output is not None:
        out = Path(output)
        if out.exists() and any(out.iterdir()):
            raise BagError(f'{out} exists and is not empty; recover never overwrites: pick '
                           'another --output')
        return out
    out = bag_dir.with_name(bag_dir.name + '.recovered')
    n = 2
    while out.exists():
        out = bag_dir.with_name(f'{bag_dir.name}.recovered{n}')
        n += 1
    return out


def _zstd():
    try:
        from compression import zstd
    except ImportError:
        from backports import zstd
    return zstd


def _decompress_file(src: Path, dst: Path) -> bool:
    """Decompress a .zstd storage file as far as it goes; True when the stream was whole."""
    zstd = _zstd()
    dec = zstd.ZstdDecompressor()
    with src.open('rb') as fin, dst.open('wb') as fout:
        try:
            for block in iter(lambda: fin.read(1 << 22), b''):
                fout.write(dec.decompress(block))
        except zstd.ZstdError as exc:
            log.warning('%s: the compressed stream is corrupt after %d bytes (%s)', src,
                        fout.tell(), exc)
            return False
    return dec.eof


def _recover_mcap(src: Path, dst: Path, notes: list[str]) -> dict[str, Any]:
    scan = scan_mcap(src)
    whole = scan.complete and footer_ok(src)
    if whole:
        shutil.copyfile(src, dst)
    else:
        write_repaired(scan, dst, {'recovered': 'true'})
        notes.append(f'{src.name}: {scan.stop_reason}; kept {len(scan.chunks)} chunks'
                     + (f' ({scan.salvaged} messages from a cut-off chunk)'
                        if scan.salvaged else ''))
    counts: dict[str, int] = {}
    qos: dict[str, str] = {}
    for cid, n in scan.channel_counts().items():
        topic = scan.channels[cid][1]
        counts[topic] = counts.get(topic, 0) + n
    for _sid, topic, _enc, meta in scan.channels.values():
        counts.setdefault(topic, 0)
        if 'offered_qos_profiles' in meta:
            qos[topic] = meta['offered_qos_profiles']
    times = scan.times()
    return {'counts': counts, 'qos': qos, 'complete': whole, 'scan': scan,
            'start': min(times) if times else None, 'end': max(times) if times else None,
            'expected': scan.summary_count, 'cut_bytes': 0 if whole else
            scan.file_size - scan.good_end}


def _recover_sqlite(src: Path, dst: Path, notes: list[str]) -> dict[str, Any]:
    shutil.copyfile(src, dst)
    for suffix in ('-journal', '-wal'):
        side = src.with_name(src.name + suffix)
        if side.exists():
            shutil.copyfile(side, dst.with_name(dst.name + suffix))
            notes.append(f'{src.name}: rolled back the unfinished transaction ({suffix[1:]})')
    try:
        conn = sqlite3.connect(str(dst))
        try:
            check = conn.execute('PRAGMA quick_check').fetchone()[0]
            if check != 'ok':
                raise sqlite3.DatabaseError(check)
            rows = conn.execute(
                'SELECT topics.id, name, offered_qos_profiles, count(messages.id), '
                'min(messages.timestamp), max(messages.timestamp) FROM topics LEFT JOIN '
                'messages ON topics.id = messages.topic_id GROUP BY topics.id').fetchall() \
                if _has_qos_column(conn) else [
                    (r[0], r[1], None, r[2], r[3], r[4]) for r in conn.execute(
                        'SELECT topics.id, name, count(messages.id), min(messages.timestamp), '
                        'max(messages.timestamp) FROM topics LEFT JOIN messages ON topics.id '
                        '= messages.topic_id GROUP BY topics.id').fetchall()]
            conn.execute('PRAGMA journal_mode=DELETE')
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        shutil.rmtree(dst.parent, ignore_errors=True)
        raise BagError(f'{src} is a corrupt sqlite3 file ({exc}): `qail-ros bag recover` '
                       'cannot help, SQLite cannot read its pages. `sqlite3 FILE .recover` '
                       '(the sqlite3 shell) may salvage rows') from None
    for suffix in ('-journal', '-wal', '-shm'):
        dst.with_name(dst.name + suffix).unlink(missing_ok=True)
    starts = [r[4] for r in rows if r[4] is not None]
    ends = [r[5] for r in rows if r[5] is not None]
    return {'counts': {r[1]: r[3] for r in rows},
            'qos': {r[1]: r[2] for r in rows if r[2] is not None}, 'complete': True,
            'start': min(starts) if starts else None, 'end': max(ends) if ends else None,
            'expected': None, 'cut_bytes': 0}


def _has_qos_column(conn) -> bool:
    return any(r[1] == 'offered_qos_profiles' for r in conn.execute('PRAGMA table_info(topics)'))


def recover_bag(path: str | os.PathLike, output: str | os.PathLike | None = None,
                in_place: bool = False, force: bool = False,
                quiet_s: float = QUIET_S) -> dict[str, Any]:
    """Write a repaired copy of a bag whose writer crashed; returns the report (see module).

    A bag that is complete (metadata.yaml present and every file whole, with the counts it
    says) is left alone (action 'none: ...') unless `force`.
    """
    bag_dir = Path(path)
    if not bag_dir.exists():
        raise BagError(f'no bag at {bag_dir}: check the path')
    if bag_dir.is_file():
        if bag_dir.suffix == '.bag':
            raise BagError(f'{bag_dir} is a ROS 1 bag: `qail-ros bag recover` repairs rosbag2 '
                           'bags; use `rosbag reindex` (ROS 1)')
        bag_dir = bag_dir.parent
    if not force:
        _check_quiet(bag_dir, quiet_s)
    meta = read_metadata(bag_dir)
    if meta is not None:
        check_metadata(bag_dir, meta)   # what recovery cannot fix
        storage = meta.get('storage_identifier') or storage_files(bag_dir)[0]
        files = [bag_dir / Path(p).name for p in meta.get('relative_file_paths') or []]
        if not files:
            storage, files = storage_files(bag_dir)
    else:
        storage, files = storage_files(bag_dir)
    if storage not in ('mcap', 'sqlite3'):
        raise BagError(f"{bag_dir}: storage '{storage}' is not supported (mcap, sqlite3)")
    file_mode = meta is not None and (meta.get('compression_mode') or '').lower() == 'file'
    notes: list[str] = []
    out = _output_dir(bag_dir, None if in_place else output)
    work = bag_dir.with_name(f'.{bag_dir.name}.recover-tmp') if in_place else out
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    results = []
    try:
        for file in files:
            src, dst = file, work / file.name
            plain_dst = dst
            if file_mode and file.suffix == '.zstd':
                src = work / ('.src-' + file.stem)
                whole = _decompress_file(file, src)
                if not whole:
                    notes.append(f'{file.name}: the compressed stream is cut off; recovered '
                                 'what it holds')
                plain_dst = work / file.stem
            if storage == 'mcap':
                try:
                    result = _recover_mcap(src, plain_dst, notes)
                except BagError as exc:     # nothing readable in this file: said, skipped
                    notes.append(f'{file.name}: nothing recoverable ({exc}); left out')
                    for p in (src, plain_dst):
                        if p != file:
                            p.unlink(missing_ok=True)
                    continue
            else:
                result = _recover_sqlite(src, plain_dst, notes)
            if plain_dst != dst:        # compress again, as the original was
                zstd = _zstd()
                with plain_dst.open('rb') as fin, zstd.open(dst, 'wb') as fout:
                    shutil.copyfileobj(fin, fout, 1 << 22)
                plain_dst.unlink()
                src.unlink(missing_ok=True)
            result['file'] = file.name
            results.append(result)
        recovered = sum(sum(r['counts'].values()) for r in results)
        if meta is not None and 'message_count' in meta:
            expected, source = int(meta['message_count']), 'metadata.yaml'
        elif results and all(r['expected'] is not None for r in results):
            expected, source = sum(r['expected'] for r in results), 'mcap summary'
        else:
            expected, source = None, 'unknown (no metadata.yaml, no mcap summary)'
        complete = meta is not None and all(r['complete'] for r in results) and \
            expected == recovered
        report: dict[str, Any] = {
            'path': str(bag_dir), 'storage': storage, 'files': [r['file'] for r in results],
            'recovered': recovered, 'expected': expected,
            'lost': None if expected is None else max(0, expected - recovered),
            'expected_from': source, 'notes': notes,
            'truncated_bytes': sum(r['cut_bytes'] for r in results),
            # kept for older callers
            'messages': recovered, 'file': results[0]['file'] if results else '',
        }
        if complete and not force:
            shutil.rmtree(work)
            report.update(output=str(bag_dir), action='none: the bag is complete (metadata.yaml '
                          'matches its files); nothing to recover (use --force to write a copy '
                          'anyway)')
            return report
        _write_metadata(work, bag_dir, meta, storage, results)
        if in_place:
            for item in work.iterdir():
                os.replace(item, bag_dir / item.name)
            for suffix in ('-journal', '-wal', '-shm'):
                for file in files:
                    bag_dir.joinpath(file.name + suffix).unlink(missing_ok=True)
            work.rmdir()
            out = bag_dir
        report['output'] = str(out)
        report['action'] = ('repaired in place' if in_place else
                            f'wrote the repaired bag to {out} (the original is untouched)')
        return report
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _write_metadata(work: Path, bag_dir: Path, meta: dict | None, storage: str,
                    results: list[dict]) -> None:
    counts: dict[str, int] = {}
    qos: dict[str, str] = {}
    for r in results:
        for topic, n in r['counts'].items():
            counts[topic] = counts.get(topic, 0) + n
        for topic, text in r['qos'].items():
            qos.setdefault(topic, text)
    starts = [r['start'] for r in results if r['start'] is not None]
    ends = [r['end'] for r in results if r['end'] is not None]
    start = min(starts) if starts else 0
    duration = max(ends) - start if ends else 0
    total = sum(counts.values())
    if meta is None:
        meta = _fresh_metadata(work, storage, results, counts, qos)
    else:
        meta = dict(meta)
        version = int(meta.get('version', 0))
        kept = [r['file'] for r in results]
        paths = meta.get('relative_file_paths') or []
        if len(kept) < len(paths):       # a file with nothing recoverable was left out
            meta['relative_file_paths'] = [p for p in paths if Path(p).name in kept]
        from rosbags.rosbag2.metadata import dump_qos_v9, parse_qos
        topics = []
        for entry in meta.get('topics_with_message_count') or []:
            entry = dict(entry)
            tm = dict(entry.get('topic_metadata') or {})
            name = tm.get('name', '')
            entry['message_count'] = counts.get(name, 0)
            # the storage's own QoS text wins where the two disagree (rosbag2's sqlite3 test
            # bags): readers match a topic's messages by it
            text = qos.get(name)
            if text is not None and 'offered_qos_profiles' in tm:
                try:
                    if parse_qos(tm['offered_qos_profiles']) != parse_qos(text):
                        tm['offered_qos_profiles'] = (dump_qos_v9(parse_qos(text))
                                                      if version >= 9 else text)
                except Exception:  # noqa: BLE001 - keep the original text
                    pass
            entry['topic_metadata'] = tm
            topics.append(entry)
        meta['topics_with_message_count'] = topics
    meta['message_count'] = total
    meta['duration'] = {'nanoseconds': duration if total else 0}
    meta['starting_time'] = {'nanoseconds_since_epoch': start if total else 0}
    if 'files' in meta or int(meta.get('version', 0)) >= 5:
        meta['files'] = [{
            'path': r['file'],
            'starting_time': {'nanoseconds_since_epoch': r['start'] or 0},
            'duration': {'nanoseconds': (r['end'] - r['start']) if r['start'] is not None
                         else 0},
            'message_count': sum(r['counts'].values())} for r in results]
    from ruamel.yaml import YAML
    yaml = YAML(typ='safe')
    yaml.default_flow_style = False
    buf = io.StringIO()
    yaml.dump({'rosbag2_bagfile_information': meta}, buf)
    (work / 'metadata.yaml').write_text(buf.getvalue(), 'utf8')


def _guess_version(qos_text: str) -> int:
    """v8 writes enum values as integers, v9 as names."""
    return 9 if any(word in qos_text for word in ('keep_last', 'reliable', 'volatile')) else 8


def _fresh_metadata(work: Path, storage: str, results: list[dict], counts: dict[str, int],
                    qos: dict[str, str]) -> dict:
    """metadata.yaml for a bag that has none, from what its files carry."""
    import json

    from rosbags.rosbag2.metadata import dump_qos_v9, parse_qos

    from qail_ros.bag.types import BagTypes
    types: dict[str, str] = {}
    defs: dict[str, tuple[str, str]] = {}
    hashes: dict[str, str] = {}
    custom = None
    version = 0
    for r in results:
        scan = r.get('scan')
        if scan is not None:
            for sid, topic, _enc, _meta in scan.channels.values():
                name, fmt, text = scan.schemas.get(sid, ('', '', ''))
                types[topic] = name
                defs[name] = ({'ros2msg': 'msg', 'ros2idl': 'idl'}.get(fmt, ''), text)
            qail = scan.metadata.get(QAIL_METADATA, {})
            if qail:
                version = version or int(qail.get('rosbag2_version', 0) or 0)
                try:
                    custom = custom or json.loads(qail.get('custom_data', '{}')) or None
                except ValueError:
                    pass
    if storage == 'sqlite3':
        for r in results:
            conn = sqlite3.connect(f'file:{work / r["file"]}?mode=ro', uri=True)
            try:
                cols = [c[1] for c in conn.execute('PRAGMA table_info(topics)')]
                for row in conn.execute('SELECT name, type' + (
                        ', type_description_hash' if 'type_description_hash' in cols else '')
                        + ' FROM topics'):
                    types[row[0]] = row[1]
                    if len(row) > 2 and row[2]:
                        hashes[row[1]] = row[2]
                tables = [t[0] for t in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type='table'")]
                if 'message_definitions' in tables:
                    for name, enc, text in conn.execute(
                            'SELECT topic_type, encoding, encoded_message_definition FROM '
                            'message_definitions'):
                        defs[name] = ({'ros2msg': 'msg', 'ros2idl': 'idl'}.get(enc, ''), text)
            finally:
                conn.close()
    version = version or _guess_version(' '.join(qos.values()))
    bag_types = BagTypes(defs)
    entries = []
    for topic in sorted(types):
        msgtype = types[topic]
        text = qos.get(topic, '')
        entries.append({'topic_metadata': {
            'name': topic, 'type': msgtype, 'serialization_format': 'cdr',
            'offered_qos_profiles': (dump_qos_v9(parse_qos(text)) if text else [])
            if version >= 9 else text,
            'type_description_hash': hashes.get(msgtype) or bag_types.type_hash(msgtype)},
            'message_count': counts.get(topic, 0)})
    return {'version': version, 'storage_identifier': storage,
            'relative_file_paths': [r['file'] for r in results],
            'topics_with_message_count': entries, 'compression_format': '',
            'compression_mode': '', 'files': [], 'custom_data': custom,
            'ros_distro': 'rosbags'}
