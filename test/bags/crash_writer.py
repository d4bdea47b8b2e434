"""A bag writer for the crash tests: writes images until killed, reporting progress.

    python test/bags/crash_writer.py BAG STORAGE RATE_HZ WIDTH HEIGHT [FLUSH_INTERVAL_S [CHUNK]]

After every write it prints `written W flushed F` (F: messages already handed to the OS, i.e.
what must survive SIGKILL) and flushes stdout, so the test knows what it may expect back.
"""
import sys
import time

import numpy as np

from qail_ros import image
from qail_ros.bag import BagWriter


def main() -> int:
    path, storage = sys.argv[1], sys.argv[2]
    rate_hz, width, height = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    interval = float(sys.argv[6]) if len(sys.argv) > 6 else 1.0
    chunk_size = int(sys.argv[7]) if len(sys.argv) > 7 else 1 << 20
    frame = np.zeros((height, width, 3), np.uint8)
    with BagWriter(path, storage=storage, flush_interval_s=interval, chunk_size=chunk_size,
                   custom_metadata={'writer': 'crash_writer'}) as bag:
        bag.add_topic('/image_raw', 'sensor_msgs/msg/Image')
        i = 0
        next_t = time.monotonic()
        while True:
            frame[...] = i % 256
            stamp = 1_000_000_000 + i * 1_000_000
            bag.write('/image_raw', image.from_numpy(frame, 'rgb8', stamp=stamp), stamp)
            i += 1
            print(f'written {i} flushed {bag.flushed_count}', flush=True)
            next_t += 1.0 / rate_hz
            time.sleep(max(0.0, next_t - time.monotonic()))


if __name__ == '__main__':
    sys.exit(main())
