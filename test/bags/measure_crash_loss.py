"""Measure what a bag loses when its writer is killed with SIGKILL (numbers for docs/bags.md).

    PYTHONPATH=. python test/bags/measure_crash_loss.py [--runs 5] [--rate 30] [--size 640x480]
        [--flush-interval 1.0] [--storage mcap]

Starts test/bags/crash_writer.py, kills it after a random 1.5-3.5 s, recovers the bag and
reports, per run, messages written (as the writer last reported), recovered, lost, and the
loss in seconds of data at the writing rate. Not a unit test: it takes ~20 s.
"""
import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRITER = Path(__file__).with_name('crash_writer.py')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--rate', type=float, default=30.0)
    parser.add_argument('--size', default='640x480')
    parser.add_argument('--flush-interval', type=float, default=1.0)
    parser.add_argument('--storage', default='mcap')
    args = parser.parse_args()
    from qail_ros.bag import BagReader, recover_bag
    width, height = (int(v) for v in args.size.split('x'))
    rng = random.Random(0)
    tmp = Path(tempfile.mkdtemp(prefix='crashloss-'))
    rows = []
    try:
        for run in range(args.runs):
            bag = tmp / f'run{run}'
            proc = subprocess.Popen(
                [sys.executable, str(WRITER), str(bag), args.storage, str(args.rate),
                 str(width), str(height), str(args.flush_interval)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            while not proc.stdout.readline().startswith('written'):
                pass                                  # started writing
            time.sleep(rng.uniform(1.5, 3.5))
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate()
            last = [ln.split() for ln in out.splitlines() if ln.startswith('written')][-1]
            written = int(last[1])
            with BagReader(bag) as reader:
                got = reader.message_count
            recover_bag(bag)
            lost = written - got
            rows.append((run, written, got, lost, lost / args.rate))
            print(f'run {run}: written {written}  recovered {got}  lost {lost} '
                  f'({lost / args.rate:.2f} s of data)', flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    worst = max(r[3] for r in rows)
    print(f'{args.storage} {width}x{height} at {args.rate:g} Hz, flush_interval_s '
          f'{args.flush_interval:g}: lost at most {worst} messages '
          f'({worst / args.rate:.2f} s) over {len(rows)} kills')
    return 0


if __name__ == '__main__':
    sys.exit(main())
