"""`qail-ros verify MODEL_DIR [--write]`: check (or record) the sha256 of every file of a model
or checkpoint directory, in its SHA256SUMS (the format `sha256sum -c` reads).

Loaders check it too: the OpenVLA checkpoint loader and the engine manifest reader refuse a
directory whose files no longer match its SHA256SUMS, naming the files. Write it once from a
copy you trust (after the download, or on the machine that trained the model); ship it with
the directory.
"""
from __future__ import annotations

import sys

HELP = 'check (or --write) SHA256SUMS of a model / checkpoint directory: every file hashed'


def add_arguments(parser) -> None:
    parser.add_argument('directory', metavar='MODEL_DIR',
                        help='checkpoint or engine directory, e.g. models/openvla-tiny')
    parser.add_argument('--write', action='store_true',
                        help='hash every file into MODEL_DIR/SHA256SUMS (replaces it)')


def main(args) -> int:
    from pathlib import Path

    from qail_ros.engines.manifest import CHECKSUMS_FILE, verify_checksums, write_checksums
    from qail_ros.errors import QailRosError
    directory = Path(args.directory)
    if not directory.is_dir():
        raise QailRosError(f'{directory} is not a directory: give the model / checkpoint '
                           'directory')
    if args.write:
        path = write_checksums(directory)
        count = sum(1 for line in path.read_text().splitlines() if line.strip())
        print(f'wrote {path}: sha256 of {count} files')
        return 0
    report = verify_checksums(directory)
    if report is None:
        raise QailRosError(f'{directory} has no {CHECKSUMS_FILE}: write one from a copy you '
                           f'trust with qail-ros verify {directory} --write')
    for kind in ('changed', 'missing'):
        for name in report[kind]:
            print(f'{kind.upper()}: {name}')
    for name in report['unlisted']:
        print(f'not in {CHECKSUMS_FILE} (not checked): {name}')
    bad = len(report['changed']) + len(report['missing'])
    listed = len([line for line in (directory / CHECKSUMS_FILE).read_text().splitlines()
                  if line.strip()])
    if bad:
        print(f'{directory}: {bad} of {listed} files do not match {CHECKSUMS_FILE}: copy them '
              'again from the source', file=sys.stderr)
        return 1
    print(f'{directory}: OK, {listed} files match {CHECKSUMS_FILE}')
    return 0
