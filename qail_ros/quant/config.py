"""Quantization configs: one dataclass per scheme, validated on construction, YAML round-trip.

Each config says *what* to do to a model; `quantize_(model, config)` does it. A config turns into
a plain dict (`to_dict()`, with a 'scheme' key naming the class) that YAML and JSON can hold, and
`config_from_dict()` turns it back. Nothing here imports torch, so nodes and the CLI can read and
check a quantization config without loading a model.

Layer selection (every scheme): a layer is quantized when it is a supported type (nn.Linear,
nn.Conv2d; weight-only schemes: nn.Linear only) and its dotted module name matches one of
`include` (fnmatch patterns; empty = every layer) and none of `exclude`. `keep_first_last_fp`
keeps the first and the last selected layer (in module order) in full precision, as many QAT
papers do; the default (False) quantizes every layer, as the QAIL paper's per-tensor W4A4 does.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from qail_ros.errors import QailRosError, check_known_keys

__all__ = ['QuantConfigError', 'QuantConfig', 'WeightOnlyRTN', 'WeightActivationRTN',
           'Int4WeightOnlyAWQ', 'LSQ', 'W4A4LSQ', 'W8A8LSQ', 'W3A3LSQ', 'config_from_dict',
           'rtn_config', 'lsq_config', 'SCHEMES']

GRANULARITIES = ('per_tensor', 'per_channel', 'group')


class QuantConfigError(QailRosError, ValueError):
    """A quantization config that makes no sense (the message says which field and why)."""


def _check_bits(name: str, bits: int | None, *, optional: bool = False) -> None:
    if bits is None and optional:
        return
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise QuantConfigError(f'{name}={bits!r}: bit widths must be integers in 2..8 (integer '
                               'kernels hold at most int8); use None to leave it in float')


def _check_granularity(name: str, value: str, group_size: int | None,
                       allowed: tuple[str, ...] = GRANULARITIES) -> None:
    if value not in allowed:
        raise QuantConfigError(f'{name}={value!r}: choose one of {", ".join(allowed)}')
    if value == 'group':
        if (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2
                or group_size & (group_size - 1)):
            raise QuantConfigError(f'group_size={group_size!r}: group-wise quantization needs a '
                                   'power of two >= 2 (e.g. 32, 64, 128)')


@dataclass(kw_only=True)
class QuantConfig:
    """Fields every scheme has: which layers to quantize."""

    scheme: ClassVar[str] = ''
    #: fnmatch patterns of module names to quantize; empty = every supported layer.
    include: tuple[str, ...] = ()
    #: fnmatch patterns of module names to leave in float.
    exclude: tuple[str, ...] = ()
    #: keep the first and last selected layer in float (default False: quantize all).
    keep_first_last_fp: bool = False

    def __post_init__(self) -> None:
        for name in ('include', 'exclude'):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            value = tuple(value)
            if not all(isinstance(p, str) and p for p in value):
                raise QuantConfigError(f'{name}={value!r}: expected a list of non-empty module '
                                       'name patterns (fnmatch, e.g. "net.0" or "*.proj")')
            setattr(self, name, value)
        if not isinstance(self.keep_first_last_fp, bool):
            raise QuantConfigError(f'keep_first_last_fp={self.keep_first_last_fp!r}: expected '
                                   'true or false')
        self.validate()

    def validate(self) -> None:
        """Scheme-specific checks; raise QuantConfigError naming the field."""

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (lists, not tuples) with a 'scheme' key; `config_from_dict` inverts it."""
        out: dict[str, Any] = {'scheme': self.scheme}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def quantizes_activations(self) -> bool:
        return False


@dataclass(kw_only=True)
class WeightOnlyRTN(QuantConfig):
    """Post-training round-to-nearest of weights only (min-max ranges; no calibration needed).

    symmetric: scale = max|w| / qmax, zero point 0; asymmetric: scale = (max - min) / (2^b - 1)
    and an integer zero point, so the range [min, max] maps onto [0, 2^b - 1].
    """

    scheme: ClassVar[str] = 'weight_only_rtn'
    bits: int = 4
    granularity: str = 'per_channel'
    group_size: int = 128
    symmetric: bool = True

    def validate(self) -> None:
        _check_bits('bits', self.bits)
        _check_granularity('granularity', self.granularity, self.group_size)


@dataclass(kw_only=True)
class WeightActivationRTN(QuantConfig):
    """Post-training round-to-nearest of weights AND layer inputs (static activation ranges).

    Weights as in WeightOnlyRTN (per tensor by default: the paper's 'RTN W4A4' baseline).
    Activation ranges come from calibration data (required): symmetric max|x| per tensor, the
    input treated as unsigned [0, 2^b - 1] when every calibration value is >= 0 (after a ReLU)
    and `a_signed` is None; `a_symmetric=False` uses min/max with a zero point instead.
    `w_bits=None` leaves weights in float (activation-only).
    """

    scheme: ClassVar[str] = 'weight_activation_rtn'
    w_bits: int | None = 4
    a_bits: int | None = 4
    w_granularity: str = 'per_tensor'
    group_size: int = 128
    w_symmetric: bool = True
    a_symmetric: bool = True
    #: None: decide per layer from calibration (unsigned if all inputs >= 0); True/False: force.
    a_signed: bool | None = None

    def validate(self) -> None:
        _check_bits('w_bits', self.w_bits, optional=True)
        _check_bits('a_bits', self.a_bits, optional=True)
        if self.w_bits is None and self.a_bits is None:
            raise QuantConfigError('w_bits and a_bits are both None: nothing to quantize')
        _check_granularity('w_granularity', self.w_granularity, self.group_size)
        if self.a_bits is not None and self.w_granularity == 'group':
            raise QuantConfigError('w_granularity="group" with quantized activations: integer '
                                   'kernels need one scale per output channel; use per_channel')

    @property
    def quantizes_activations(self) -> bool:
        return self.a_bits is not None


@dataclass(kw_only=True)
class Int4WeightOnlyAWQ(QuantConfig):
    """Activation-aware weight quantization (AWQ, Lin et al. 2024), INT4 weights, float inputs.

    `bits` (default 4; 2..8) sets the weight code width: the name keeps the usual INT4 setting,
    harsher widths (INT3 / INT2) use the same search with fewer levels.

    Per input channel j a scale s_j = mean|x_j|^alpha (normalised), alpha chosen per layer on a
    grid of `alpha_grid` points in [0, 1] to minimise || x W^T - (x / s) Q(W s)^T ||^2 on the
    calibration inputs (required). W s and x / s give the same product before quantization; the
    salient input channels get finer weight steps. Asymmetric (zero point) by default, as AWQ.
    """

    scheme: ClassVar[str] = 'int4_weight_only_awq'
    bits: int = 4
    granularity: str = 'group'
    group_size: int = 128
    symmetric: bool = False
    alpha_grid: int = 20
    #: at most this many calibration rows (tokens) per layer are kept for the search.
    max_samples: int = 4096

    def validate(self) -> None:
        _check_bits('bits', self.bits)
        _check_granularity('granularity', self.granularity, self.group_size,
                           ('per_channel', 'group'))
        if isinstance(self.alpha_grid, bool) or not isinstance(self.alpha_grid, int) \
                or self.alpha_grid < 1:
            raise QuantConfigError(f'alpha_grid={self.alpha_grid!r}: need >= 1 grid points')
        if isinstance(self.max_samples, bool) or not isinstance(self.max_samples, int) \
                or self.max_samples < 1:
            raise QuantConfigError(f'max_samples={self.max_samples!r}: need >= 1')


@dataclass(kw_only=True)
class LSQ(QuantConfig):
    """Learned step size quantization (Esser et al. 2020) of weights and layer inputs, for QAT.

    Forward: v_hat = round(clip(v / s, -Qn, Qp)) * s, straight-through round; the step s is a
    parameter with gradient scaled by g = 1 / sqrt(N * Qp) (N = weights in the layer, or
    features per activation sample); init s = 2 mean|v| / sqrt(Qp) from the weights at quantize
    time and from the calibration batch(es) for activations (or the first forward pass if no
    calibration is given). Symmetric signed weights [-2^(b-1), 2^(b-1) - 1]; activations signed
    likewise or unsigned [0, 2^b - 1] (a_signed=None: unsigned when calibration inputs are all
    >= 0, e.g. after a ReLU). `a_bits=None`: weight-only QAT; `w_bits=None`: activation-only.
    """

    scheme: ClassVar[str] = 'lsq'
    w_bits: int | None = 4
    a_bits: int | None = 4
    w_granularity: str = 'per_tensor'
    a_signed: bool | None = None
    #: False: the steps stay at their initial value (a static fake quantizer).
    learn_steps: bool = True

    def validate(self) -> None:
        _check_bits('w_bits', self.w_bits, optional=True)
        _check_bits('a_bits', self.a_bits, optional=True)
        if self.w_bits is None and self.a_bits is None:
            raise QuantConfigError('w_bits and a_bits are both None: nothing to quantize')
        _check_granularity('w_granularity', self.w_granularity, None,
                           ('per_tensor', 'per_channel'))

    @property
    def quantizes_activations(self) -> bool:
        return self.a_bits is not None


def W4A4LSQ(**kwargs: Any) -> LSQ:  # noqa: N802 - a preset named like the configs
    """LSQ with 4-bit weights and activations, per tensor (the QAIL paper's CILRS/MLP setting)."""
    return LSQ(w_bits=4, a_bits=4, **kwargs)


def W8A8LSQ(**kwargs: Any) -> LSQ:  # noqa: N802
    """LSQ with 8-bit weights and activations, per tensor."""
    return LSQ(w_bits=8, a_bits=8, **kwargs)


def W3A3LSQ(**kwargs: Any) -> LSQ:  # noqa: N802
    """LSQ with 3-bit weights and activations, per tensor (the stretch row)."""
    return LSQ(w_bits=3, a_bits=3, **kwargs)


SCHEMES: dict[str, type[QuantConfig]] = {
    c.scheme: c for c in (WeightOnlyRTN, WeightActivationRTN, Int4WeightOnlyAWQ, LSQ)}


def config_from_dict(data: dict[str, Any]) -> QuantConfig:
    """Rebuild a config from `to_dict()` output (or a YAML mapping with a 'scheme' key)."""
    if not isinstance(data, dict) or 'scheme' not in data:
        raise QuantConfigError(f'quantization config {data!r} has no "scheme" key: expected one '
                               f'of {", ".join(SCHEMES)}')
    data = dict(data)
    scheme = data.pop('scheme')
    cls = SCHEMES.get(scheme)
    if cls is None:
        raise QuantConfigError(f'unknown quantization scheme {scheme!r}: expected one of '
                               f'{", ".join(SCHEMES)}')
    check_known_keys(data, cls, f'{scheme} config', QuantConfigError)
    return cls(**data)


def _bits_or_none(bits: int) -> int | None:
    return None if bits >= 16 else bits


def rtn_config(w_bits: int, a_bits: int, **kwargs: Any) -> QuantConfig:
    """The PTQ round-to-nearest baseline for 'wNaM' bit widths (>= 16 = leave in float).

    Activations quantized -> WeightActivationRTN (per tensor, the paper's RTN W4A4);
    weight-only -> WeightOnlyRTN (per channel unless `granularity` is given).
    """
    w, a = _bits_or_none(w_bits), _bits_or_none(a_bits)
    if a is None:
        if w is None:
            raise QuantConfigError(f'w{w_bits}a{a_bits}: nothing to quantize')
        return WeightOnlyRTN(bits=w, **kwargs)
    return WeightActivationRTN(w_bits=w, a_bits=a, **kwargs)


def lsq_config(w_bits: int, a_bits: int, **kwargs: Any) -> LSQ:
    """LSQ for 'wNaM' bit widths (>= 16 = leave that side in float)."""
    return LSQ(w_bits=_bits_or_none(w_bits), a_bits=_bits_or_none(a_bits), **kwargs)
