"""camera_source: publishes sensor_msgs/Image at a set rate, so the demo runs with no camera.

Topic (remap it from the launcher as usual, e.g. `image_raw:=/camera/image_raw`):
  image_raw  sensor_msgs/Image, QoS reliable / volatile / keep_last 5.

Why reliable depth 5 rather than SENSOR_DATA (best effort): it is what most camera drivers
offer, and in ROS 2 a *reliable* publisher matches both reliable subscribers (the recorder,
`ros2 bag record`) and best-effort ones (the policy's latest-frame subscription), whereas a
best-effort publisher is incompatible with a reliable subscriber, which then receives nothing.
keep_last 5 bounds what is queued for a slow subscriber to ~5 frames and never blocks the
publisher.

Parameters:
  source      'synthetic' (default: a deterministic moving scene), a folder of png/jpg images
              (name order), a bag directory / .mcap / .db3 (its Image or CompressedImage topic,
              see bag_topic), or a video file (.mp4 .mkv .avi .mov .webm; needs PyAV: `av`).
  bag_topic   image topic to replay from a bag ('' = the bag's only image topic).
  rate_hz     publishing rate (30.0).
  width, height  output size (640 x 480); file / bag / video frames are resized to it, 0 keeps
              their own size.
  encoding    rgb8 (default), bgr8, rgba8, bgra8, mono8 or mono16.
  frame_id    header.frame_id ('camera'); header.stamp is the node clock at publication.
  loop        start again at the end of a folder / bag / video (true).
  max_frames  stop after this many frames (0 = unlimited).
  log_period_s  log the achieved rate this often (5.0 s; 0 = never).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from qail_ros.errors import ParameterError
from qail_ros.runtime import Node, QoS, run_node

__all__ = ['CameraSource', 'IMAGE_QOS', 'SyntheticScene', 'open_frame_source', 'main']

#: What most camera drivers offer; see the module docstring.
IMAGE_QOS = QoS(depth=5, reliability='reliable', durability='volatile')

CAMERA_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
VIDEO_SUFFIXES = ('.mp4', '.mkv', '.avi', '.mov', '.webm', '.m4v', '.mpg', '.mpeg')


# ------------------------------------------------------------------------------------------
# frame sources (pure: no ROS; each yields H x W (x C) arrays in the requested encoding)
# ------------------------------------------------------------------------------------------
def _from_rgb(rgb: np.ndarray, encoding: str) -> np.ndarray:
    from qail_ros import image
    if encoding == 'rgb8':
        return rgb
    return image.to_numpy(image.from_numpy(np.ascontiguousarray(rgb), 'rgb8'), desired=encoding)


class SyntheticScene:
    """A deterministic table-top scene: a red block slides over a wooden table past a green
    target square, with a moving shadow; frame k is always the same image.

    The background is rendered once; a frame costs one copy plus two slice fills
    (about 0.2 ms at 640x480), so 30 Hz takes well under 1 % of a core.
    """

    PERIOD_FRAMES = 180     # one full loop of the block's path

    def __init__(self, width: int = 640, height: int = 480, encoding: str = 'rgb8'):
        self.width, self.height, self.encoding = int(width), int(height), encoding
        h, w = self.height, self.width
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        horizon = int(h * 0.35)
        rgb = np.empty((h, w, 3), np.float32)
        # wall: light grey-blue gradient
        rgb[:horizon] = np.stack([170 + 30 * yy[:horizon] / max(horizon, 1),
                                  180 + 25 * yy[:horizon] / max(horizon, 1),
                                  200 + 10 * yy[:horizon] / max(horizon, 1)], axis=-1)
        # table: wood colour with grain (sinusoidal stripes) and perspective shading
        t = yy[horizon:]
        grain = 12 * np.sin(xx[horizon:] / 9.0 + 3 * np.sin(t / 23.0))
        shade = 0.75 + 0.25 * (t - horizon) / max(h - horizon, 1)
        rgb[horizon:] = np.stack([(150 + grain) * shade, (100 + grain * 0.7) * shade,
                                  (60 + grain * 0.4) * shade], axis=-1)
        rgb[horizon:horizon + max(1, h // 160)] = 90          # table edge
        self._horizon = horizon
        self._background = _from_rgb(np.clip(rgb, 0, 255).astype(np.uint8), encoding)
        self._block_size = max(2, min(h, w) // 8)
        self._target = (int(w * 0.72), int(h * 0.70), max(2, min(h, w) // 10))

        def colour(r, g, b):
            return _from_rgb(np.array([[[r, g, b]]], np.uint8), encoding)[0, 0]

        self._red, self._green, self._shadow = (colour(210, 30, 35), colour(40, 170, 60),
                                                colour(70, 50, 35))
        x0, y0, size = self._target
        self._background[y0:y0 + size, x0:x0 + size] = self._green
        self._index = 0

    def block_position(self, k: int) -> tuple[int, int]:
        """Top-left pixel of the block in frame k (a Lissajous path over the table)."""
        phase = 2 * np.pi * (k % self.PERIOD_FRAMES) / self.PERIOD_FRAMES
        s = self._block_size
        x = (self.width - s) * (0.5 + 0.42 * np.sin(phase))
        top = self._horizon + s // 2
        y = top + (self.height - s - top) * (0.5 + 0.4 * np.sin(2 * phase + 0.6))
        return int(x), int(y)

    def frame(self, k: int) -> np.ndarray:
        """Frame number k (a new array each time: published messages share its memory)."""
        out = self._background.copy()
        x, y = self.block_position(k)
        s = self._block_size
        d = max(1, s // 6)
        out[y + d:y + s + d, x + d:x + s + d] = self._shadow
        out[y:y + s, x:x + s] = self._red
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        k = 0
        while True:
            yield self.frame(k)
            k += 1

    def close(self) -> None:
        pass


def _resize(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    if (width <= 0 and height <= 0) or (arr.shape[1] == width and arr.shape[0] == height):
        return arr
    from PIL import Image as PILImage
    w = width if width > 0 else arr.shape[1]
    h = height if height > 0 else arr.shape[0]
    return np.asarray(PILImage.fromarray(arr).resize((w, h), PILImage.BILINEAR))


class ImageFolder:
    """png/jpg files of a folder in name order (or one image file), decoded one at a time."""

    def __init__(self, path: Path, width: int, height: int, encoding: str, loop: bool):
        self.files = ([path] if path.is_file() else
                      sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        if not self.files:
            raise ParameterError(f"camera_source: folder '{path}' holds no .png/.jpg images")
        self.width, self.height, self.encoding, self.loop = width, height, encoding, loop

    def _load(self, path: Path) -> np.ndarray:
        from PIL import Image as PILImage
        with PILImage.open(path) as pil:
            rgb = np.asarray(pil.convert('RGB'))
        return _from_rgb(np.ascontiguousarray(_resize(rgb, self.width, self.height)),
                         self.encoding)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            for path in self.files:
                yield self._load(path)
            if not self.loop:
                return

    def close(self) -> None:
        pass


class BagFrames:
    """Image / CompressedImage messages of one bag topic, converted to the encoding."""

    IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')

    def __init__(self, path: Path, topic: str, width: int, height: int, encoding: str,
                 loop: bool):
        from qail_ros.bag import BagReader
        self.path = path
        with BagReader(path) as bag:
            images = {t: i.msgtype for t, i in bag.topics.items() if i.msgtype in
                      self.IMAGE_TYPES}
        if topic:
            if topic not in images:
                raise ParameterError(f"camera_source: bag '{path}' has no image topic "
                                     f"'{topic}'; its image topics are {sorted(images)}")
        elif len(images) == 1:
            topic = next(iter(images))
        else:
            raise ParameterError(
                f"camera_source: bag '{path}' has {len(images)} image topics "
                f'{sorted(images)}: set bag_topic to the one to replay')
        self.topic = topic
        self.width, self.height, self.encoding, self.loop = width, height, encoding, loop

    def __iter__(self) -> Iterator[np.ndarray]:
        from qail_ros import image
        from qail_ros.bag import BagReader
        while True:
            count = 0
            with BagReader(self.path) as bag:
                for _topic, _stamp, msg in bag.messages(self.topic):
                    rgb = image.to_numpy(msg, desired='rgb8')
                    count += 1
                    yield _from_rgb(np.ascontiguousarray(_resize(rgb, self.width,
                                                                 self.height)), self.encoding)
            if not self.loop or count == 0:
                return

    def close(self) -> None:
        pass


class VideoFrames:
    """Frames of a video file decoded with PyAV (ffmpeg), scaled by ffmpeg's swscale."""

    def __init__(self, path: Path, width: int, height: int, encoding: str, loop: bool):
        try:
            import av  # noqa: F401
        except ImportError:
            raise ParameterError(
                f"camera_source: playing video '{path}' needs PyAV: pip install av "
                '(a wheel with ffmpeg inside; pinned in requirements.txt), or convert the '
                'video to an image folder') from None
        self.path, self.width, self.height = path, width, height
        self.encoding, self.loop = encoding, loop
        self._container = None

    def __iter__(self) -> Iterator[np.ndarray]:
        import av
        while True:
            count = 0
            try:
                container = self._container = av.open(str(self.path))
            except av.FFmpegError as exc:
                raise ParameterError(f"camera_source: cannot open video '{self.path}': "
                                     f'{exc}') from None
            try:
                if not container.streams.video:
                    raise ParameterError(f"camera_source: '{self.path}' has no video stream")
                stream = container.streams.video[0]
                stream.thread_type = 'AUTO'
                for frame in container.decode(stream):
                    kwargs = {}
                    if self.width > 0 or self.height > 0:
                        kwargs = {'width': self.width or frame.width,
                                  'height': self.height or frame.height}
                    rgb = frame.to_ndarray(format='rgb24', **kwargs)
                    count += 1
                    yield _from_rgb(rgb, self.encoding)
            finally:
                container.close()   # closing twice (close() ran first) is harmless in PyAV
                self._container = None
            if not self.loop or count == 0:
                return

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def open_frame_source(source: str, width: int, height: int, encoding: str, loop: bool = True,
                      bag_topic: str = ''):
    """The frame source a `source` parameter names (see the module docstring)."""
    if encoding not in CAMERA_ENCODINGS:
        raise ParameterError(f"camera_source: encoding '{encoding}' is not one a camera "
                             f'publishes here; use one of {", ".join(CAMERA_ENCODINGS)}')
    if width < 0 or height < 0:
        raise ParameterError(f'camera_source: width/height must be >= 0, not {width}x{height}')
    if source == 'synthetic':
        if width <= 0 or height <= 0:
            raise ParameterError('camera_source: the synthetic scene needs width and height '
                                 f'> 0, not {width}x{height}')
        return SyntheticScene(width, height, encoding)
    path = Path(source).expanduser()
    if not path.exists():
        raise ParameterError(
            f"camera_source: source '{source}' is neither 'synthetic' nor an existing path "
            '(an image folder, a bag, or a video file)')
    is_bag = (path.suffix in ('.mcap', '.db3') or (path.is_dir() and (
        (path / 'metadata.yaml').exists() or any(path.glob('*.mcap'))
        or any(path.glob('*.db3')))))
    if is_bag:
        return BagFrames(path, bag_topic, width, height, encoding, loop)
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFolder(path, width, height, encoding, loop)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoFrames(path, width, height, encoding, loop)
    raise ParameterError(
        f"camera_source: cannot tell what '{source}' is: use an image folder, a png/jpg, a bag "
        f'(.mcap/.db3 or its directory) or a video ({" ".join(VIDEO_SUFFIXES)})')


# ------------------------------------------------------------------------------------------
# the node
# ------------------------------------------------------------------------------------------
class CameraSource(Node):
    """Publishes frames from a frame source on `image_raw` at `rate_hz`."""

    def __init__(self, **kwargs):
        super().__init__('camera_source', **kwargs)
        self.source = self.declare_parameter(
            'source', 'synthetic', "'synthetic', an image folder, a bag or a video").value
        self.bag_topic = self.declare_parameter('bag_topic', '', 'image topic in a bag').value
        self.rate_hz = self.declare_parameter('rate_hz', 30.0, 'frames per second').value
        self.width = self.declare_parameter('width', 640, 'output width (0: keep)').value
        self.height = self.declare_parameter('height', 480, 'output height (0: keep)').value
        self.encoding = self.declare_parameter('encoding', 'rgb8', 'image encoding').value
        self.frame_id = self.declare_parameter('frame_id', 'camera', 'header.frame_id').value
        self.loop = self.declare_parameter('loop', True, 'restart at the end').value
        self.max_frames = self.declare_parameter('max_frames', 0, '0 = unlimited').value
        self.log_period_s = self.declare_parameter('log_period_s', 5.0,
                                                   'rate log period (0 = never)').value
        if self.rate_hz <= 0:
            raise ParameterError(f'camera_source: rate_hz must be > 0, not {self.rate_hz}')
        if self.max_frames < 0:
            raise ParameterError(f'camera_source: max_frames must be >= 0, not '
                                 f'{self.max_frames}')
        self.image_pub = self.create_publisher('sensor_msgs/msg/Image', 'image_raw', IMAGE_QOS)
        self.published = 0
        self.finished = False
        self._frames = None
        self._iter = None
        self._timer = None
        self._window = (time.monotonic(), 0)

    def on_configure(self) -> None:
        self._frames = open_frame_source(self.source, int(self.width), int(self.height),
                                         self.encoding, bool(self.loop), self.bag_topic)
        self._iter = iter(self._frames)

    def on_activate(self) -> None:
        self._window = (time.monotonic(), self.published)
        self._timer = self.create_timer(1.0 / self.rate_hz, self.timer_callback)
        self.get_logger().info(
            f'publishing {self.source} frames ({self.width}x{self.height} {self.encoding}) at '
            f'{self.rate_hz:g} Hz on {self.image_pub.topic}')

    def timer_callback(self) -> None:
        from qail_ros import image
        if self.finished:
            return
        frame = next(self._iter, None)
        if frame is None:
            self._finish(f'source {self.source} ended after {self.published} frames '
                         '(loop is false)')
            return
        msg = image.from_numpy(frame, self.encoding, stamp=self.now(), frame_id=self.frame_id)
        self.image_pub.publish(msg)
        self.published += 1
        self._log_rate()
        if self.max_frames and self.published >= self.max_frames:
            self._finish(f'published max_frames={self.max_frames} frames')

    def _log_rate(self) -> None:
        if self.log_period_s <= 0:
            return
        start, count = self._window
        elapsed = time.monotonic() - start
        if elapsed >= self.log_period_s:
            rate = (self.published - count) / elapsed
            self.get_logger().info(f'{self.published} frames published, {rate:.1f} Hz over the '
                                   f'last {elapsed:.1f} s (target {self.rate_hz:g} Hz)')
            self._window = (time.monotonic(), self.published)

    def _finish(self, why: str) -> None:
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
        self.get_logger().info(f'{why}; not publishing any more')

    def on_deactivate(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def on_cleanup(self) -> None:
        if self._frames is not None:
            self._frames.close()
            self._frames = None
            self._iter = None


def main(args=None):
    return run_node(CameraSource, args)


if __name__ == '__main__':
    sys.exit(main())
