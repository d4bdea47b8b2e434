"""Record a small vla_policy bag for `qail-ros replay` (docs/replay.md), all nodes in one process.

    python scripts/record_vla_bag.py OUTPUT_DIR [FRAMES]

camera_source publishes the synthetic table-top scene at 2 Hz, vla_policy (models/openvla-tiny,
fp32) answers each frame, fp_recorder (config/fp_recorder.yaml) writes one bag with the frames,
the instruction and the stamped actions; the process ends after FRAMES frames.
"""
import sys

from qail_ros.nodes.camera_source import CameraSource
from qail_ros.nodes.fp_recorder import FpRecorder
from qail_ros.nodes.vla_policy import VLAPolicy
from qail_ros.runtime.node import nodes_main


def main() -> int:
    out = sys.argv[1]
    frames = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    return nodes_main([
        (CameraSource, ['--ros-args', '-p', 'rate_hz:=2.0', '-p', f'max_frames:={frames}',
                        '-p', 'width:=96', '-p', 'height:=72', '-p', 'loop:=false']),
        (VLAPolicy, ['--ros-args', '-p', 'instruction:=pick up the red block',
                     '-p', 'log_period_s:=5.0']),
        (FpRecorder, ['--ros-args', '--params-file', 'config/fp_recorder.yaml',
                      '-p', f'output_dir:={out}', '-p', 'policy_id:=vla_policy',
                      '-p', 'task:=pick up the red block']),
    ], ['record_vla_bag'], duration_s=frames / 2.0 + 15)


if __name__ == '__main__':
    sys.exit(main())
