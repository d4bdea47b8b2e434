"""Bags: write rosbag2 (mcap / sqlite3), read rosbag2 of every layout and ROS 1, recover, play.

    from qail_ros.bag import BagWriter, BagReader, recover_bag
    with BagWriter('run1', custom_metadata={'task': 'pick'}) as bag:
        bag.add_topic('/image_raw', 'sensor_msgs/msg/Image', qos=QoS(depth=5))
        bag.write('/image_raw', img_msg, stamp_ns)          # a message or its CDR bytes
    with BagReader('run1') as bag:                          # or a .mcap / .db3 / ROS 1 .bag
        for topic, stamp_ns, msg in bag.messages(topics=['/image_raw']):
            ...
    report = recover_bag('crashed_run')                     # a repaired copy beside it

Modules: writer (BagWriter, crash-safe flushing), reader (BagReader), types (the bag's own
message definitions), scan (mcap without summary), recovery (recover_bag), play (bag play).
"""
from qail_ros.bag.reader import BagMessage, BagReader, TopicInfo
from qail_ros.bag.recovery import recover_bag
from qail_ros.bag.scan import McapScan, scan_mcap
from qail_ros.bag.writer import DEFAULT_VERSION, STORAGES, BagWriter

__all__ = ['BagWriter', 'BagReader', 'BagMessage', 'TopicInfo', 'recover_bag', 'scan_mcap',
           'McapScan', 'STORAGES', 'DEFAULT_VERSION']
