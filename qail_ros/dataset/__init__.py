"""Training data sets from recorded bags: build, inspect, read, export to LeRobot v3.

    from qail_ros.dataset import build_dataset, load_manifest, QailDataset, export_lerobot

`import qail_ros.dataset` is lean: numpy only; torch loads when a QailDataset is made,
safetensors when shards are written or read, pyarrow when exporting to LeRobot.
"""
from qail_ros.dataset.builder import FORMAT, MANIFEST, build_dataset, find_bags, vector_stats
from qail_ros.dataset.lerobot import export_lerobot
from qail_ros.dataset.reader import QailDataset, ShardedArrays, load_manifest
from qail_ros.dataset.topic_map import TopicMap

__all__ = ['build_dataset', 'find_bags', 'vector_stats', 'load_manifest', 'ShardedArrays',
           'QailDataset', 'export_lerobot', 'TopicMap', 'FORMAT', 'MANIFEST']
