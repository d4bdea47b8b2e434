"""The pure core of the fp_recorder node: pairing by stamp, rate limits, episodes, the writer.

Nothing here needs a ROS runtime; the node (qail_ros/nodes/fp_recorder.py) wires these to
subscriptions.

    stamp_of(msg)            header stamp, or the policy_io stamp prefix, or None
    StampPairing             exact-stamp pairing of actions with observations, bounded
    RateLimiter              per-topic rate limit on message stamps
    EpisodeInfo              the facts of one episode -> bag custom metadata / a JSON message
    BagWriterThread          a writer thread with a bounded queue over qail_ros.bag.BagWriter
"""
from qail_ros.recording.episode import EPISODE_TOPIC, EpisodeInfo, engine_hash
from qail_ros.recording.rate import RateLimiter, parse_rate_limits
from qail_ros.recording.sync import StampPairing, stamp_of
from qail_ros.recording.writer import BagWriterThread, WriterStats

__all__ = ['stamp_of', 'StampPairing', 'RateLimiter', 'parse_rate_limits', 'EpisodeInfo',
           'EPISODE_TOPIC', 'engine_hash', 'BagWriterThread', 'WriterStats']
