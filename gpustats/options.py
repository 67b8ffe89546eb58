"""What a reduction computes, defined once: :class:`StatsOptions` (for ``compute_stats``,
``Accumulator``, sampling and the command) and the subset the backends see, :class:`ReduceOptions`.

Both validate on construction and raise ``ValueError`` naming the option and what to pass.

>>> StatsOptions(histogram=True).changed()
{'histogram': True}
>>> default_scale("uint8"), default_scale("float32")
(255.0, 1.0)
>>> StatsOptions(scale=float("inf"))
Traceback (most recent call last):
...
ValueError: scale must be 'auto' or a number from 1e-30 to 1e+30 (e.g. 255.0), got inf
>>> import numpy as np
>>> StatsOptions(channels=np.int64(3), scale=np.int64(2), layout="nchw").changed()
{'layout': 'NCHW', 'channels': 3, 'scale': 2.0}
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

__all__ = ["StatsOptions", "ReduceOptions", "NAN_POLICIES", "LAYOUT_NAMES", "SCALE_RANGE", "STRATEGY_NAMES",
           "default_scale", "scale_conflict"]

NAN_POLICIES = ("raise", "omit", "propagate")
#: the CUDA reduction strategies (``strategy=``; "auto" picks per dtype): the names of
#: :data:`gpustats.kernels.STRATEGIES`, listed here so that checking one does not import numba
STRATEGY_NAMES = ("auto", "atomic", "tree", "warp", "welford", "hist8", "vec")
#: the layouts ``layout=`` accepts (any case); :data:`gpustats.batches.LAYOUTS` maps each to its channel axis
LAYOUT_NAMES = ("NCHW", "NHWC", "CHW", "HWC", "NHW", "HW")
#: the scales accepted: every mean, variance and std of 8/16-bit or float32 data divided by one of
#: them (or its square) stays a normal float64 (a scale of 1e308 would make a variance underflow to 0,
#: one of 1e-200 overflow to inf)
SCALE_RANGE = (1e-30, 1e30)

#: scale="auto": what ToTensor / ToDtype(float32, scale=True) divide by
_AUTO_SCALE = {"uint8": 255.0, "uint16": 65535.0}


def default_scale(dtype: str) -> float:
    """The divisor ``scale="auto"`` uses: 255 for uint8, 65535 for uint16, 1 for everything else."""
    return _AUTO_SCALE.get(dtype, 1.0)


def scale_conflict(dtype: str, scale: float, first_dtype: str, first_scale: float, *, item: str, earlier: str,
                   every: str) -> str | None:
    """The one rule for data joining a reduction (an :class:`~gpustats.Accumulator`, a sampled run):
    integer and float data never mix (integers are reduced exactly) and the scale stays the first
    data's. Returns the error (``item``: what joins, ``earlier``: what came before, ``every``: what to
    convert), or None when data of ``dtype`` on ``scale`` may join.

    >>> scale_conflict("uint8", 255.0, "uint8", 255.0, item="batch 1", earlier="batches", every="batch") is None
    True
    >>> scale_conflict("float32", 1.0, "uint8", 255.0, item="item 4", earlier="items", every="image")
    'item 4 is float32 (scale 1) but earlier items were uint8 (scale 255); convert every image to one dtype or pass scale=...'
    """
    from .numerics import INTEGER_DTYPES

    if (dtype in INTEGER_DTYPES) == (first_dtype in INTEGER_DTYPES) and scale == first_scale:
        return None
    return (f"{item} is {dtype} (scale {scale:g}) but earlier {earlier} were {first_dtype} (scale {first_scale:g}); "
            f"convert every {every} to one dtype or pass scale=...")


def _np_bool() -> type:
    """numpy's bool scalar type (not an ``int``, but ``numbers.Integral`` must not accept it either)."""
    import numpy as np

    return np.bool_


@dataclass(frozen=True)
class ReduceOptions:
    """Options that change what a backend computes (and so must agree across merged states)."""

    nan_policy: str = "raise"
    histogram: bool = False
    hist_bins: int | None = None  # non-uint8 data: number of bins
    hist_range: tuple[float, float] | None = None  # non-uint8 data: [lo, hi] in raw input units
    clip: bool = False  # count out-of-range values in the edge bins instead of raising
    covariance: bool = False
    per_image: bool = False
    strategy: str = "auto"

    def __post_init__(self) -> None:
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {self.nan_policy!r}")
        if self.strategy not in STRATEGY_NAMES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGY_NAMES)} (the CUDA reduction; the CPU "
                             f"ignores it), got {self.strategy!r}")
        if self.hist_range is not None:
            try:
                lo, hi = (float(v) for v in self.hist_range)
            except (TypeError, ValueError):
                raise ValueError(f"hist_range must be (lo, hi) numbers, got {self.hist_range!r}") from None
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"hist_range must be (lo, hi) with finite lo < hi, got {self.hist_range!r}")
            object.__setattr__(self, "hist_range", (lo, hi))
        if self.hist_bins is not None and (isinstance(self.hist_bins, bool) or int(self.hist_bins) != self.hist_bins
                                           or self.hist_bins < 1):
            raise ValueError(f"hist_bins must be a positive int, got {self.hist_bins!r}")
        if self.covariance and self.nan_policy == "omit":
            raise ValueError("covariance=True needs every channel of a pixel: it cannot be combined with nan_policy='omit'")


@dataclass(frozen=True)
class StatsOptions:
    """Every option of a reduction over batches, with its default (see :func:`gpustats.compute_stats`).

    ``layout``/``channels``/``key`` read the batches (:mod:`gpustats.batches`); ``scale`` divides
    the reported values (``"auto"``: :func:`default_scale`); the rest is :class:`ReduceOptions`.
    """

    layout: str | None = None
    channels: int | None = None
    key: str | None = None
    scale: float | str = "auto"
    nan_policy: str = "raise"
    strategy: str = "auto"
    histogram: bool = False
    hist_bins: int | None = None
    hist_range: tuple[float, float] | None = None
    clip: bool = False
    covariance: bool = False
    per_image: bool = False

    def __post_init__(self) -> None:
        scale = self.scale
        if not isinstance(scale, str):  # numpy scalars count like Python numbers
            if isinstance(scale, numbers.Real) and not isinstance(scale, (bool, _np_bool())):
                scale = float(scale)
                object.__setattr__(self, "scale", scale)
        if not (scale == "auto" or (isinstance(scale, float) and SCALE_RANGE[0] <= scale <= SCALE_RANGE[1])):
            raise ValueError(f"scale must be 'auto' or a number from {SCALE_RANGE[0]:g} to {SCALE_RANGE[1]:g} (e.g. "
                             f"255.0), got {self.scale!r}")
        layout = self.layout
        if layout is not None:
            if not isinstance(layout, str) or layout.upper() not in LAYOUT_NAMES:
                raise ValueError(f"layout must be one of {', '.join(LAYOUT_NAMES)} (or None: inferred), got {layout!r}")
            object.__setattr__(self, "layout", layout.upper())
        channels = self.channels
        if channels is not None:
            if (not isinstance(channels, numbers.Integral) or isinstance(channels, (bool, _np_bool()))
                    or int(channels) < 1):
                raise ValueError(f"channels must be a positive int (e.g. 3 to drop alpha) or None, got {channels!r}")
            object.__setattr__(self, "channels", int(channels))
        object.__setattr__(self, "reduce", ReduceOptions(
            nan_policy=self.nan_policy, histogram=self.histogram, hist_bins=self.hist_bins,
            hist_range=None if self.hist_range is None else tuple(self.hist_range), clip=self.clip,
            covariance=self.covariance, per_image=self.per_image, strategy=self.strategy))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def scale_for(self, dtype: str) -> float:
        """The divisor for data of ``dtype``."""
        return default_scale(dtype) if self.scale == "auto" else float(self.scale)

    def changed(self) -> dict[str, Any]:
        """The options that differ from their defaults."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default}
