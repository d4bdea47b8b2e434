"""sensor_msgs Image / CompressedImage <-> numpy, without cv_bridge or OpenCV.

Covers what camera drivers publish: rgb8, bgr8, rgba8, bgra8, mono8, mono16 and the OpenCV-style
names 8UC1/8UC3/8UC4/16UC1/32FC1, honouring `step` (row padding) and `is_bigendian`; and
CompressedImage in jpeg or png (Pillow).

    from qail_ros import image
    msg = image.from_numpy(frame, 'rgb8', stamp=node.now(), frame_id='camera')
    rgb = image.to_numpy(msg)                         # H x W x 3 uint8, rgb order
    raw = image.to_numpy(msg, desired='passthrough')  # the stored layout, no conversion
    jpg = image.compress(frame, 'rgb8', fmt='jpeg', quality=90)
    rgb = image.to_numpy(jpg, desired='rgb8')

Zero copy where the layout allows: `to_numpy` of an unpadded little-endian image in its own
encoding is a read-only view of `msg.data`, and `from_numpy` of a C-contiguous array stores a
view of the array (do not modify the array while the message is in flight).

Conversions: between the colour encodings (channel order, alpha dropped or set to 255), colour
<-> mono (ITU-R BT.601 luma, as OpenCV), mono8 <-> mono16 (x257 / >>8, full range). The generic
names (8UC3, 16UC1, ...) carry no colour meaning: they convert only to themselves or to a named
encoding with the same layout (8UC3 -> bgr8 as OpenCV assumes), like cv_bridge.
"""
from __future__ import annotations

import io
import sys
from typing import Any, NamedTuple

import numpy as np

from qail_ros.errors import ImageEncodingError

__all__ = ['ENCODINGS', 'COMPRESSED_FORMATS', 'to_numpy', 'from_numpy', 'compress', 'decompress',
           'encoding_info', 'is_compressed']


class _Encoding(NamedTuple):
    dtype: np.dtype
    channels: int
    order: str | None   # 'rgb', 'bgr', 'rgba', 'bgra', 'mono' or None (generic: no colour)


ENCODINGS: dict[str, _Encoding] = {
    'rgb8': _Encoding(np.dtype(np.uint8), 3, 'rgb'),
    'bgr8': _Encoding(np.dtype(np.uint8), 3, 'bgr'),
    'rgba8': _Encoding(np.dtype(np.uint8), 4, 'rgba'),
    'bgra8': _Encoding(np.dtype(np.uint8), 4, 'bgra'),
    'mono8': _Encoding(np.dtype(np.uint8), 1, 'mono'),
    'mono16': _Encoding(np.dtype(np.uint16), 1, 'mono'),
    '8UC1': _Encoding(np.dtype(np.uint8), 1, None),
    '8UC3': _Encoding(np.dtype(np.uint8), 3, None),
    '8UC4': _Encoding(np.dtype(np.uint8), 4, None),
    '16UC1': _Encoding(np.dtype(np.uint16), 1, None),
    '32FC1': _Encoding(np.dtype(np.float32), 1, None),
}

#: What a generic encoding means when a named one is asked for (OpenCV's assumption).
_GENERIC_AS = {'8UC1': 'mono8', '8UC3': 'bgr8', '8UC4': 'bgra8', '16UC1': 'mono16'}

COMPRESSED_FORMATS = ('jpeg', 'png')

_PASSTHROUGH = (None, 'passthrough')


def _supported() -> str:
    return ', '.join(ENCODINGS)


def encoding_info(encoding: str) -> _Encoding:
    """dtype, channel count and colour order of an encoding; ImageEncodingError if unknown."""
    try:
        return ENCODINGS[encoding]
    except (KeyError, TypeError):
        raise ImageEncodingError(
            f"image encoding '{encoding}' is not supported; supported: {_supported()} "
            f'(convert on the camera driver, or publish sensor_msgs/CompressedImage jpeg/png)'
        ) from None


def is_compressed(msg: Any) -> bool:
    """True for a sensor_msgs/msg/CompressedImage."""
    return getattr(msg, '__msgtype__', '') == 'sensor_msgs/msg/CompressedImage'


# ------------------------------------------------------------------------------------------
# Image -> numpy
# ------------------------------------------------------------------------------------------
def _as_uint8(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).reshape(-1) if data.dtype != np.uint8 else data.reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8).reshape(-1)


def _raw_view(msg: Any) -> np.ndarray:
    """The image as stored: H x W (x C), native dtype, a view of msg.data when possible."""
    info = encoding_info(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * info.channels * info.dtype.itemsize
    if step < row_bytes:
        raise ImageEncodingError(
            f'image step {step} is smaller than width x bytes per pixel = {row_bytes} '
            f'({msg.encoding}, width {width}); the publisher filled `step` wrongly')
    data = _as_uint8(msg.data)
    if data.size < step * height:
        raise ImageEncodingError(
            f'image data holds {data.size} bytes, step x height = {step * height} expected '
            f'({width}x{height} {msg.encoding}); the message is truncated or mis-sized')
    rows = data[:step * height].reshape(height, step)
    if step != row_bytes:
        rows = rows[:, :row_bytes]
    big = bool(msg.is_bigendian) and info.dtype.itemsize > 1
    dtype = info.dtype.newbyteorder('>') if big else info.dtype.newbyteorder('<')
    arr = rows.view(dtype)
    if dtype.byteorder not in ('=', '|') and dtype != info.dtype:
        arr = arr.astype(info.dtype)   # non-native byte order: one copy to native
    shape = (height, width) if info.channels == 1 else (height, width, info.channels)
    return arr.reshape(shape)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an H x W x 3 uint8 rgb array (fixed point, as OpenCV)."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 4899 + g * 9617 + b * 1868 + 8192) >> 14).astype(np.uint8)


def _convert(arr: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert between two encodings (src != dst)."""
    s, d = ENCODINGS[src], ENCODINGS[dst]
    if s.order is None or d.order is None:
        # Generic encodings: only a same-layout reinterpretation, as cv_bridge allows.
        generic, named = (src, dst) if s.order is None else (dst, src)
        if s.dtype == d.dtype and s.channels == d.channels and _GENERIC_AS.get(generic) == named:
            return arr
        raise ImageEncodingError(
            f"cannot convert image encoding '{src}' to '{dst}': generic encodings "
            f'({", ".join(k for k, v in ENCODINGS.items() if v.order is None)}) carry no colour '
            f"meaning; ask for '{src}' or 'passthrough', or publish a named encoding")
    # Bring the source to 8-bit (or keep 16-bit mono for mono16 targets).
    if s.order == 'mono':
        if d.order == 'mono':
            if s.dtype == np.uint16 and d.dtype == np.uint8:
                return (arr >> 8).astype(np.uint8)
            if s.dtype == np.uint8 and d.dtype == np.uint16:
                return arr.astype(np.uint16) * np.uint16(257)
            return arr
        mono8 = (arr >> 8).astype(np.uint8) if s.dtype == np.uint16 else arr
        out = np.repeat(mono8[..., None], d.channels, axis=2)
        if d.channels == 4:
            out[..., 3] = 255
        return out
    # colour source: index of r, g, b (and a) in the source
    idx = {c: s.order.index(c) for c in s.order}
    if d.order == 'mono':
        mono8 = _luma(arr[..., [idx['r'], idx['g'], idx['b']]])
        return mono8.astype(np.uint16) * np.uint16(257) if d.dtype == np.uint16 else mono8
    if 'a' in d.order and 'a' not in s.order:
        out = np.empty(arr.shape[:2] + (4,), np.uint8)
        for j, c in enumerate(d.order):
            out[..., j] = 255 if c == 'a' else arr[..., idx[c]]
        return out
    return np.ascontiguousarray(arr[..., [idx[c] for c in d.order]])


def to_numpy(msg: Any, desired: str | None = 'rgb8') -> np.ndarray:
    """An Image or CompressedImage as a numpy array in the `desired` encoding.

    `desired=None` or `'passthrough'` returns the stored layout without conversion (a read-only
    view of msg.data when rows are unpadded and the byte order is native). Shapes are H x W for
    one channel, H x W x C otherwise. Raises ImageEncodingError for an unsupported encoding or
    a message whose data does not match its height/step.
    """
    if is_compressed(msg):
        return decompress(msg, desired)
    src = msg.encoding
    arr = _raw_view(msg)
    if desired in _PASSTHROUGH or desired == src:
        return arr
    encoding_info(desired)
    return _convert(arr, src, desired)


# ------------------------------------------------------------------------------------------
# numpy -> Image
# ------------------------------------------------------------------------------------------
def _header(stamp: Any, frame_id: str) -> Any:
    from qail_ros import messages as m
    if stamp is None:
        stamp = m.new('builtin_interfaces/msg/Time')
    elif isinstance(stamp, (int, np.integer)):
        stamp = m.time_from_ns(int(stamp))
    return m.new('std_msgs/msg/Header', stamp=stamp, frame_id=frame_id)


def _check_array(array: np.ndarray, encoding: str) -> _Encoding:
    info = encoding_info(encoding)
    expected = 2 if info.channels == 1 else 3
    ok_shape = array.ndim == expected or (array.ndim == 3 and info.channels == 1
                                          and array.shape[2] == 1)
    if not ok_shape or (array.ndim == 3 and array.shape[2] != info.channels):
        want = 'H x W' if info.channels == 1 else f'H x W x {info.channels}'
        raise ImageEncodingError(
            f"array of shape {array.shape} does not fit encoding '{encoding}' ({want} "
            f'{info.dtype}); reshape the array or pick the matching encoding')
    if array.dtype != info.dtype:
        raise ImageEncodingError(
            f"array dtype {array.dtype} does not fit encoding '{encoding}' ({info.dtype}); "
            f'convert with array.astype(np.{info.dtype})')
    return info


def from_numpy(array: np.ndarray, encoding: str = 'rgb8', stamp: Any = None,
               frame_id: str = '') -> Any:
    """A sensor_msgs/msg/Image holding `array` (H x W or H x W x C) in `encoding`.

    `stamp` is a builtin_interfaces/msg/Time or integer nanoseconds. The message's data is a
    uint8 view of the array when it is C-contiguous (no copy).
    """
    from qail_ros import messages as m
    array = np.asarray(array)
    info = _check_array(array, encoding)
    array = np.ascontiguousarray(array)
    height, width = int(array.shape[0]), int(array.shape[1])
    return m.new('sensor_msgs/msg/Image', header=_header(stamp, frame_id), height=height,
                 width=width, encoding=encoding,
                 is_bigendian=int(info.dtype.itemsize > 1 and sys.byteorder == 'big'),
                 step=width * info.channels * info.dtype.itemsize,
                 data=array.reshape(-1).view(np.uint8))


# ------------------------------------------------------------------------------------------
# CompressedImage
# ------------------------------------------------------------------------------------------
def _pillow():
    try:
        from PIL import Image as PILImage
    except ImportError:
        raise ImageEncodingError('jpeg/png needs Pillow: pip install pillow '
                                 '(pinned in requirements.txt)') from None
    return PILImage


def compress(image: Any, encoding: str | None = None, fmt: str = 'jpeg', quality: int = 90,
             stamp: Any = None, frame_id: str = '') -> Any:
    """A sensor_msgs/msg/CompressedImage (jpeg or png) from an array or an Image message.

    For an Image message, encoding/stamp/frame_id default to the message's. `format` is written
    as image_transport's compressed plugin does ('rgb8; jpeg compressed bgr8'), so
    compressed_image_transport decoders restore the original channel order. jpeg takes 8-bit
    mono or colour (alpha is dropped); png also keeps alpha and mono16.
    """
    from qail_ros import messages as m
    PILImage = _pillow()
    fmt = fmt.lower()
    if fmt == 'jpg':
        fmt = 'jpeg'
    if fmt not in COMPRESSED_FORMATS:
        raise ImageEncodingError(f"compressed format '{fmt}' is not supported; use one of "
                                 f'{", ".join(COMPRESSED_FORMATS)}')
    if hasattr(image, '__msgtype__'):
        if stamp is None:
            stamp = image.header.stamp
        frame_id = frame_id or image.header.frame_id
        encoding = encoding or image.encoding
        array = to_numpy(image, desired=encoding)
    else:
        array = np.asarray(image)
        encoding = encoding or 'rgb8'
        _check_array(array, encoding)
    info = encoding_info(encoding)
    if info.order is None:
        named = _GENERIC_AS.get(encoding)
        if named is None:
            raise ImageEncodingError(f"cannot compress encoding '{encoding}': use one of "
                                     'rgb8, bgr8, rgba8, bgra8, mono8, mono16')
        array, encoding, info = _convert(array, encoding, named), named, ENCODINGS[named]
    if info.dtype == np.uint16:
        if fmt == 'jpeg':
            raise ImageEncodingError(f"jpeg cannot hold 16-bit '{encoding}'; use fmt='png'")
        pil = PILImage.fromarray(np.ascontiguousarray(array, dtype=np.uint16))
        target = encoding
    elif info.order == 'mono':
        pil = PILImage.fromarray(np.ascontiguousarray(array))
        target = 'mono8'
    else:
        keep_alpha = fmt == 'png' and info.channels == 4
        want = 'rgba8' if keep_alpha else 'rgb8'
        rgb = array if encoding == want else _convert(array, encoding, want)
        pil = PILImage.fromarray(np.ascontiguousarray(rgb))
        target = 'bgra8' if keep_alpha else 'bgr8'   # what an OpenCV decoder would return
    buf = io.BytesIO()
    if fmt == 'jpeg':
        pil.save(buf, format='JPEG', quality=int(quality))
    else:
        pil.save(buf, format='PNG', compress_level=1)
    return m.new('sensor_msgs/msg/CompressedImage', header=_header(stamp, frame_id),
                 format=f'{encoding}; {fmt} compressed {target}',
                 data=np.frombuffer(buf.getvalue(), dtype=np.uint8))


def _original_encoding(fmt: str) -> str | None:
    head = fmt.split(';', 1)[0].strip()
    return head if head in ENCODINGS else None


def decompress(msg: Any, desired: str | None = 'rgb8') -> np.ndarray:
    """Decode a CompressedImage (jpeg or png, detected from the bytes) into `desired`.

    `desired=None`/'passthrough' returns the encoding named first in `format` (the publisher's
    original encoding) when there is one, else rgb8 / mono8 / mono16 as decoded.
    """
    PILImage = _pillow()
    data = _as_uint8(msg.data).tobytes()
    if not (data.startswith(b'\xff\xd8') or data.startswith(b'\x89PNG')):
        raise ImageEncodingError(
            f"CompressedImage format '{msg.format}' is not jpeg or png (first bytes "
            f'{data[:4]!r}); only jpeg and png are supported (theora/h264 need a video decoder)')
    try:
        pil = PILImage.open(io.BytesIO(data))
        pil.load()
    except Exception as exc:  # noqa: BLE001 - Pillow raises several types for bad data
        raise ImageEncodingError(f'could not decode CompressedImage ({msg.format}): {exc}; '
                                 'the data is corrupt or truncated') from None
    if pil.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
        arr, src = np.asarray(pil, dtype=np.uint16), 'mono16'
    elif pil.mode in ('L', '1', 'P') and not (pil.mode == 'P' and 'transparency' in pil.info):
        if pil.mode == 'P':
            pil = pil.convert('RGB')
            arr, src = np.asarray(pil), 'rgb8'
        else:
            arr, src = np.asarray(pil.convert('L')), 'mono8'
    elif pil.mode in ('RGBA', 'LA', 'P'):
        arr, src = np.asarray(pil.convert('RGBA')), 'rgba8'
    else:
        arr, src = np.asarray(pil.convert('RGB')), 'rgb8'
    if desired in _PASSTHROUGH:
        desired = _original_encoding(msg.format) or src
    encoding_info(desired)
    return arr if desired == src else _convert(arr, src, desired)
