"""camera_source: frame sources (pure) and the node publishing through the embedded runtime."""
import numpy as np
import pytest

from qail_ros import image as im
from qail_ros import messages as m
from qail_ros.bag import BagWriter
from qail_ros.errors import ParameterError
from qail_ros.nodes.camera_source import (IMAGE_QOS, CameraSource, SyntheticScene,
                                          open_frame_source)
from qail_ros.runtime import Node, QoS

IMAGE = 'sensor_msgs/msg/Image'


class FrameSink(Node):
    def __init__(self, topic='image_raw', qos: QoS | int = 10, name='sink', **kwargs):
        super().__init__(name, **kwargs)
        self.frames = []
        self.sub = self.create_subscription(IMAGE, topic, self.image_callback, qos)

    def image_callback(self, msg):
        self.frames.append(msg)


def _camera(**params):
    args = ['--ros-args']
    for key, value in params.items():
        args += ['-p', f'{key}:={value}']
    node = CameraSource(cli_args=args)
    node.on_configure()
    node.on_activate()
    return node


def _stop(node):
    node.on_deactivate()
    node.on_cleanup()
    node.destroy_node()


# -- the synthetic scene -------------------------------------------------------------------
def test_synthetic_scene_is_deterministic_and_moves():
    a, b = SyntheticScene(160, 120), SyntheticScene(160, 120)
    np.testing.assert_array_equal(a.frame(7), b.frame(7))
    assert a.frame(0).shape == (120, 160, 3) and a.frame(0).dtype == np.uint8
    positions = {a.block_position(k) for k in range(0, 60, 5)}
    assert len(positions) == 12                                    # the block keeps moving
    changed = (a.frame(0) != a.frame(15)).any(axis=-1).mean()
    assert 0.01 < changed < 0.5                                    # ...over a fixed background
    np.testing.assert_array_equal(a.frame(3), a.frame(3 + SyntheticScene.PERIOD_FRAMES))
    f = a.frame(1)
    assert not np.shares_memory(f, a.frame(1))                     # fresh array per frame
    red = (f[..., 0] > 180) & (f[..., 1] < 60)
    assert red.sum() == (min(160, 120) // 8) ** 2                  # one red block


@pytest.mark.parametrize('encoding,shape,dtype', [
    ('bgr8', (48, 64, 3), np.uint8), ('mono8', (48, 64), np.uint8),
    ('mono16', (48, 64), np.uint16), ('rgba8', (48, 64, 4), np.uint8)])
def test_synthetic_scene_encodings(encoding, shape, dtype):
    frame = SyntheticScene(64, 48, encoding).frame(5)
    assert frame.shape == shape and frame.dtype == dtype
    rgb = SyntheticScene(64, 48, 'rgb8').frame(5)
    if encoding == 'bgr8':
        np.testing.assert_array_equal(frame, rgb[..., ::-1])


# -- the node through the embedded runtime ---------------------------------------------------
def test_node_publishes_stamped_frames_to_reliable_and_best_effort_subscribers(runtime):
    camera = _camera(rate_hz=200.0, width=64, height=48, max_frames=8, frame_id='wrist')
    recorder = FrameSink(qos=10, name='recorder')
    policy = FrameSink(qos=QoS(depth=1, reliability='best_effort'), name='policy')
    runtime.spin_until(lambda: camera.finished, timeout_s=10)
    runtime.spin([camera, recorder, policy], duration_s=0.05)     # nothing more comes
    assert camera.published == 8 and len(recorder.frames) == 8
    assert 1 <= len(policy.frames) <= 8
    scene = SyntheticScene(64, 48)
    stamps = []
    for k, msg in enumerate(recorder.frames):
        assert m.type_name(msg) == IMAGE
        assert (msg.width, msg.height, msg.encoding, msg.step) == (64, 48, 'rgb8', 192)
        assert msg.header.frame_id == 'wrist'
        np.testing.assert_array_equal(im.to_numpy(msg), scene.frame(k))
        stamps.append(m.ns_from_time(msg.header.stamp))
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    assert abs(stamps[-1] - camera.now_ns()) < 60e9                # the node clock
    assert camera.image_pub.topic == '/image_raw'
    _stop(camera)


def test_publisher_qos_is_reliable_depth_5():
    assert IMAGE_QOS == QoS(depth=5, reliability='reliable', durability='volatile')


def test_topic_is_remappable(runtime):
    node = CameraSource(cli_args=['--ros-args', '-r', 'image_raw:=/cam/front/image_raw',
                                  '-p', 'width:=32', '-p', 'height:=24', '-p', 'rate_hz:=200.0',
                                  '-p', 'max_frames:=3'])
    node.on_configure()
    node.on_activate()
    sink = FrameSink(topic='/cam/front/image_raw')
    runtime.spin_until(lambda: len(sink.frames) == 3, timeout_s=10)
    assert node.image_pub.topic == '/cam/front/image_raw'
    assert [f.width for f in sink.frames] == [32, 32, 32]
    _stop(node)


def test_image_folder_source(runtime, tmp_path):
    from PIL import Image
    for k in range(3):
        Image.fromarray(np.full((30, 40, 3), 50 * k, np.uint8)).save(tmp_path / f'f{k}.png')
    (tmp_path / 'notes.txt').write_text('not an image')
    camera = _camera(source=str(tmp_path), rate_hz=200.0, width=20, height=15, loop=False,
                     encoding='mono8')
    sink = FrameSink()
    runtime.spin_until(lambda: camera.finished, timeout_s=10)
    runtime.spin([camera, sink], duration_s=0.02)
    assert [(f.width, f.height, f.encoding) for f in sink.frames] == [(20, 15, 'mono8')] * 3
    assert [int(im.to_numpy(f, 'passthrough')[0, 0]) for f in sink.frames] == [0, 50, 100]
    _stop(camera)


def test_bag_source_replays_raw_and_compressed_topics(runtime, tmp_path):
    scene = SyntheticScene(40, 30)
    with BagWriter(tmp_path / 'rec') as bag:
        for k in range(4):
            bag.write('/cam/raw', im.from_numpy(scene.frame(k), 'rgb8', stamp=k), k + 1)
            bag.write('/cam/png', im.compress(scene.frame(k), 'rgb8', fmt='png'), k + 1)
            bag.write('/other', m.new('std_msgs/msg/String', data='x'), k + 1)
    with pytest.raises(ParameterError, match='set bag_topic'):
        open_frame_source(str(tmp_path / 'rec'), 40, 30, 'rgb8')
    with pytest.raises(ParameterError, match="no image topic '/nope'"):
        open_frame_source(str(tmp_path / 'rec'), 40, 30, 'rgb8', bag_topic='/nope')
    for topic in ('/cam/raw', '/cam/png'):
        frames = list(open_frame_source(str(tmp_path / 'rec'), 40, 30, 'rgb8', loop=False,
                                        bag_topic=topic))
        assert len(frames) == 4
        for k, frame in enumerate(frames):
            np.testing.assert_array_equal(frame, scene.frame(k))
    camera = _camera(source=str(tmp_path / 'rec'), bag_topic='/cam/raw', rate_hz=200.0,
                     width=40, height=30, max_frames=6)          # loops: 4 + 2
    sink = FrameSink()
    runtime.spin_until(lambda: camera.finished, timeout_s=10)
    runtime.spin([camera, sink], duration_s=0.02)
    assert len(sink.frames) == 6
    np.testing.assert_array_equal(im.to_numpy(sink.frames[5]), scene.frame(1))
    _stop(camera)


def test_video_source(tmp_path):
    av = pytest.importorskip('av', reason='PyAV (av) is not installed')
    path = tmp_path / 'clip.mkv'
    scene = SyntheticScene(64, 48)
    with av.open(str(path), 'w') as container:
        stream = container.add_stream('ffv1', rate=30)      # lossless: frames compare exactly
        stream.width, stream.height, stream.pix_fmt = 64, 48, 'bgr0'
        for k in range(5):
            frame = av.VideoFrame.from_ndarray(scene.frame(k), format='rgb24')
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames = list(open_frame_source(str(path), 64, 48, 'rgb8', loop=False))
    assert len(frames) == 5
    for k, frame in enumerate(frames):
        np.testing.assert_array_equal(frame, scene.frame(k))
    looped = open_frame_source(str(path), 32, 24, 'mono8', loop=True)
    it = iter(looped)
    small = [next(it) for _ in range(7)]                         # past the end: loops
    assert all(f.shape == (24, 32) for f in small)
    looped.close()


def test_bad_parameters_are_explained(runtime, tmp_path):
    with pytest.raises(ParameterError, match="encoding 'yuv422'"):
        open_frame_source('synthetic', 64, 48, 'yuv422')
    with pytest.raises(ParameterError, match="neither 'synthetic' nor an existing path"):
        open_frame_source(str(tmp_path / 'missing.mp4'), 64, 48, 'rgb8')
    (tmp_path / 'data.csv').write_text('1,2')
    with pytest.raises(ParameterError, match='cannot tell what'):
        open_frame_source(str(tmp_path / 'data.csv'), 64, 48, 'rgb8')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ParameterError, match='no .png/.jpg'):
        open_frame_source(str(tmp_path / 'empty'), 64, 48, 'rgb8')
    with pytest.raises(ParameterError, match='rate_hz must be > 0'):
        CameraSource(cli_args=['--ros-args', '-p', 'rate_hz:=0.0'])
    with pytest.raises(ParameterError, match='must be int'):
        CameraSource(cli_args=['--ros-args', '-p', 'width:=wide'])


def test_main_runs_and_stops_cleanly(runtime, capfd):
    from qail_ros.runtime import nodes_main
    code = nodes_main([CameraSource], ['camera_source', '--ros-args', '-p', 'width:=32', '-p',
                                       'height:=24', '-p', 'rate_hz:=100.0', '-p',
                                       'log_period_s:=0.1'], duration_s=0.35)
    assert code == 0
    err = capfd.readouterr().err
    assert 'publishing synthetic frames (32x24 rgb8) at 100 Hz on /image_raw' in err
    assert 'frames published' in err and 'Hz over the last' in err
