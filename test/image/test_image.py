"""sensor_msgs Image / CompressedImage <-> numpy (qail_ros.image), checked through real CDR."""
import numpy as np
import pytest

from qail_ros import image as im
from qail_ros import messages as m
from qail_ros.errors import ImageEncodingError

RNG = np.random.default_rng(0)


def _array(encoding, h=6, w=7):
    info = im.encoding_info(encoding)
    shape = (h, w) if info.channels == 1 else (h, w, info.channels)
    if info.dtype == np.float32:
        return RNG.standard_normal(shape).astype(np.float32)
    return RNG.integers(0, np.iinfo(info.dtype).max, shape, endpoint=True).astype(info.dtype)


def _wire(msg):
    """The message as a subscriber in another process gets it."""
    return m.deserialize(m.serialize(msg), 'sensor_msgs/msg/Image')


@pytest.mark.parametrize('encoding', list(im.ENCODINGS))
def test_round_trip_every_encoding_through_cdr(encoding):
    arr = _array(encoding)
    msg = im.from_numpy(arr, encoding, stamp=1_500_000_123, frame_id='cam')
    assert (msg.height, msg.width, msg.encoding) == (6, 7, encoding)
    assert msg.step == 7 * arr.itemsize * (1 if arr.ndim == 2 else arr.shape[2])
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1, 500_000_123)
    back = im.to_numpy(_wire(msg), desired='passthrough')
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_zero_copy_both_ways():
    arr = _array('rgb8')
    msg = im.from_numpy(arr, 'rgb8')
    assert msg.data.dtype == np.uint8 and np.shares_memory(msg.data, arr)
    view = im.to_numpy(msg)
    assert np.shares_memory(view, arr)
    wire = _wire(msg)
    assert np.shares_memory(im.to_numpy(wire), wire.data)


@pytest.mark.parametrize('encoding,pad', [('rgb8', 5), ('mono8', 3), ('mono16', 3),
                                          ('bgra8', 16), ('32FC1', 4)])
def test_padded_step_is_honoured(encoding, pad):
    arr = _array(encoding, h=5, w=9)
    row = arr.reshape(5, -1).view(np.uint8).reshape(5, -1)
    padded = np.concatenate([row, np.full((5, pad), 0xAB, np.uint8)], axis=1)
    msg = m.new('sensor_msgs/msg/Image', height=5, width=9, encoding=encoding,
                step=row.shape[1] + pad, data=padded.reshape(-1).copy())
    np.testing.assert_array_equal(im.to_numpy(_wire(msg), 'passthrough'), arr)


def test_big_endian_mono16():
    arr = _array('mono16')
    msg = m.new('sensor_msgs/msg/Image', height=6, width=7, encoding='mono16', is_bigendian=1,
                step=14, data=arr.astype('>u2').reshape(-1).view(np.uint8).copy())
    out = im.to_numpy(msg, 'passthrough')
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, arr)
    np.testing.assert_array_equal(im.to_numpy(msg, 'mono8'), (arr >> 8).astype(np.uint8))


def test_colour_conversions():
    rgb = _array('rgb8')
    msg = im.from_numpy(rgb, 'rgb8')
    np.testing.assert_array_equal(im.to_numpy(msg, 'bgr8'), rgb[..., ::-1])
    rgba = im.to_numpy(msg, 'rgba8')
    np.testing.assert_array_equal(rgba[..., :3], rgb)
    assert (rgba[..., 3] == 255).all()
    bgra = im.from_numpy(rgba[..., [2, 1, 0, 3]].copy(), 'bgra8')
    np.testing.assert_array_equal(im.to_numpy(bgra), rgb)   # default desired is rgb8
    # 8UC3 is OpenCV's bgr8
    np.testing.assert_array_equal(im.to_numpy(im.from_numpy(rgb[..., ::-1].copy(), '8UC3'),
                                              'bgr8'), rgb[..., ::-1])


def test_mono_conversions():
    pure = np.zeros((2, 3, 3), np.uint8)
    pure[0, :, 0] = 255      # red row
    pure[1, :, 1] = 255      # green row
    mono = im.to_numpy(im.from_numpy(pure, 'rgb8'), 'mono8')
    assert mono.shape == (2, 3)
    assert (mono[0] == 76).all() and (mono[1] == 150).all()    # BT.601, as OpenCV
    gray = _array('mono8')
    rgb = im.to_numpy(im.from_numpy(gray, 'mono8'), 'rgb8')
    assert rgb.shape == gray.shape + (3,)
    np.testing.assert_array_equal(rgb[..., 1], gray)
    np.testing.assert_array_equal(im.to_numpy(im.from_numpy(gray, 'mono8'), 'mono16'),
                                  gray.astype(np.uint16) * 257)
    deep = _array('mono16')
    np.testing.assert_array_equal(im.to_numpy(im.from_numpy(deep, 'mono16'), 'mono8'),
                                  (deep >> 8).astype(np.uint8))


def test_unsupported_encoding_names_the_supported_ones():
    msg = m.new('sensor_msgs/msg/Image', height=2, width=2, encoding='yuv422', step=4,
                data=np.zeros(8, np.uint8))
    with pytest.raises(ImageEncodingError) as err:
        im.to_numpy(msg)
    assert "'yuv422' is not supported" in str(err.value)
    for name in ('rgb8', 'bgr8', 'mono8', 'mono16'):
        assert name in str(err.value)
    with pytest.raises(ImageEncodingError, match="'bayer_rggb8' is not supported"):
        im.to_numpy(im.from_numpy(_array('rgb8'), 'rgb8'), desired='bayer_rggb8')
    with pytest.raises(ImageEncodingError, match='not supported'):
        im.from_numpy(_array('rgb8'), 'rgb16')


def test_bad_messages_and_arrays_are_explained():
    short = m.new('sensor_msgs/msg/Image', height=4, width=4, encoding='rgb8', step=12,
                  data=np.zeros(40, np.uint8))
    with pytest.raises(ImageEncodingError, match='48 expected'):
        im.to_numpy(short)
    narrow = m.new('sensor_msgs/msg/Image', height=2, width=4, encoding='rgb8', step=8,
                   data=np.zeros(16, np.uint8))
    with pytest.raises(ImageEncodingError, match='step 8 is smaller'):
        im.to_numpy(narrow)
    with pytest.raises(ImageEncodingError, match=r'H x W x 3'):
        im.from_numpy(np.zeros((4, 4), np.uint8), 'rgb8')
    with pytest.raises(ImageEncodingError, match='astype'):
        im.from_numpy(np.zeros((4, 4, 3), np.float32), 'rgb8')
    with pytest.raises(ImageEncodingError, match='generic encodings'):
        im.to_numpy(im.from_numpy(_array('16UC1'), '16UC1'), 'rgb8')


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'mono8', 'mono16', 'rgba8', 'bgra8'])
def test_png_is_lossless_and_restores_the_encoding(encoding):
    arr = _array(encoding, h=16, w=20)
    comp = im.compress(arr, encoding, fmt='png', stamp=42, frame_id='cam')
    assert comp.format.startswith(f'{encoding}; png compressed')
    assert comp.header.frame_id == 'cam' and comp.header.stamp.nanosec == 42
    wire = m.deserialize(m.serialize(comp), 'sensor_msgs/msg/CompressedImage')
    np.testing.assert_array_equal(im.to_numpy(wire, 'passthrough'), arr)


def test_jpeg_round_trip_is_close_and_converts():
    yy, xx = np.mgrid[0:48, 0:64]
    smooth = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).astype(np.uint8)
    msg = im.from_numpy(smooth, 'rgb8', stamp=7, frame_id='cam')
    comp = im.compress(msg, fmt='jpeg', quality=95)      # from an Image message
    assert comp.format == 'rgb8; jpeg compressed bgr8'
    assert comp.header.stamp.nanosec == 7 and comp.header.frame_id == 'cam'
    assert bytes(comp.data[:2]) == b'\xff\xd8'
    rgb = im.to_numpy(comp)
    assert rgb.shape == smooth.shape and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - smooth).mean() < 3
    np.testing.assert_array_equal(im.to_numpy(comp, 'bgr8'), rgb[..., ::-1])
    assert im.to_numpy(comp, 'mono8').shape == (48, 64)


def test_compressed_errors():
    with pytest.raises(ImageEncodingError, match="use fmt='png'"):
        im.compress(_array('mono16'), 'mono16', fmt='jpeg')
    with pytest.raises(ImageEncodingError, match='not supported'):
        im.compress(_array('rgb8'), 'rgb8', fmt='webp')
    junk = m.new('sensor_msgs/msg/CompressedImage', format='h264',
                 data=np.frombuffer(b'\x00\x00\x00\x01gd', np.uint8))
    with pytest.raises(ImageEncodingError, match='only jpeg and png'):
        im.to_numpy(junk)
    cut = im.compress(_array('rgb8', 32, 32), 'rgb8', fmt='png')
    cut.data = cut.data[:40]
    with pytest.raises(ImageEncodingError, match='corrupt or truncated'):
        im.to_numpy(cut)
