"""Packing of integer codes for storage: two 4-bit codes per byte, or one int8/uint8 per byte.

Layout of `pack_int4`: codes are taken as unsigned nibbles (signed codes are offset by +8 first
when `signed=True`), along the last dimension, element 2i in the low nibble and 2i+1 in the high
nibble of byte i. An odd last dimension is padded with one zero nibble; `unpack_int4` needs the
original length to drop it.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ['pack_int4', 'unpack_int4', 'pack_codes', 'unpack_codes']


def pack_int4(codes: Tensor, *, signed: bool) -> Tensor:
    """Integer codes in [-8, 7] (signed) or [0, 15] -> uint8, last dim halved (rounded up)."""
    c = codes.to(torch.int16) + (8 if signed else 0)
    if int(c.min()) < 0 or int(c.max()) > 15:
        raise ValueError(f'codes outside the {"signed" if signed else "unsigned"} 4-bit range')
    if c.shape[-1] % 2:
        c = torch.nn.functional.pad(c, (0, 1))
    c = c.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_int4(packed: Tensor, length: int, *, signed: bool) -> Tensor:
    """Inverse of pack_int4: uint8 (..., ceil(length / 2)) -> int8 codes (..., length)."""
    low = (packed & 0x0F).to(torch.int8)
    high = (packed >> 4).to(torch.int8)
    out = torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], -1)[..., :length]
    return out - 8 if signed else out


def pack_codes(codes: Tensor, bits: int, *, signed: bool) -> Tensor:
    """Storage form of b-bit codes: packed nibbles for b <= 4, int8 / uint8 bytes otherwise."""
    if bits <= 4:
        return pack_int4(codes, signed=signed)
    return codes.to(torch.int8 if signed else torch.uint8)


def unpack_codes(stored: Tensor, bits: int, length: int, *, signed: bool) -> Tensor:
    """Inverse of pack_codes -> int32 codes (last dim `length`)."""
    if bits <= 4:
        return unpack_int4(stored, length, signed=signed).to(torch.int32)
    return stored.to(torch.int32)
