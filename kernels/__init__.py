"""CUDA reduction kernels for gpustats (installed as ``gpustats.kernels``; numba.cuda, no torch).

One module per strategy, each exposing the same function::

    reduce(x, layout, dtype_tag, acc, *, histogram=False, cross=False, per_image=None,
           stream=0, launch=None, run=None)

``x`` is a 3-D device array (numba device array or anything with ``__cuda_array_interface__``;
any strides) in layout ``"CP"`` ([N, C, L]) or ``"PC"`` ([N, L, C]); ``dtype_tag`` is one of
uint8, uint16, float16, bfloat16 (16-bit patterns), float32, float64. One fused pass adds the
statistics into :class:`Accumulators` on ``stream`` without synchronizing. ``launch=(blocks,
threads)`` and ``run`` (float run length) override the defaults; tests use them to reach block,
grid and flush edges.

==========  ==========================================================  ==========
strategy    how blocks combine                                          extras
==========  ==========================================================  ==========
atomic      shared-memory tree, one atomic per block per quantity       histogram, cross, per_image
tree        shared-memory tree, per-block partials, fixed-order merge   (bitwise reproducible)
warp        warp shuffles (real GPU only)                               -
welford     per-thread Welford, Chan merge of threads/blocks            (bitwise reproducible)
hist8       privatized shared-memory 256-bin histograms (uint8 only)    histogram
vec         16-byte loads, dp4a/narrow registers, per-block partials    (bitwise reproducible)
==========  ==========================================================  ==========

Example::

    >>> import numpy as np
    >>> from gpustats.kernels import Accumulators, get_strategy
    >>> acc = Accumulators.zeros(3, integer=True)
    >>> x = np.full((1, 3, 5), 2, dtype=np.uint8)      # host arrays are copied for convenience
    >>> get_strategy("tree").reduce(x, "CP", "uint8", acc)
    >>> acc.to_host()["isum"].tolist()
    [10, 10, 10]
"""

from __future__ import annotations

from . import atomic, hist8, tree, vec, warp, welford
from ._common import (
    DTYPE_TAGS,
    INTEGER_TAGS,
    LAYOUTS,
    MAX_CHANNELS,
    is_integer,
    max_elements_before_flush,
    simulator_enabled,
)
from .accumulators import Accumulators, PerImage

STRATEGIES = {module.NAME: module for module in (atomic, tree, warp, welford, hist8, vec)}

SIMULATOR_STRATEGIES = tuple(name for name, module in STRATEGIES.items() if module.SUPPORTS_SIMULATOR)


def get_strategy(name: str):
    """The strategy module registered as ``name`` (its ``reduce`` is the entry point)."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown kernel strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None


def strategy_supports(name: str, feature: str) -> bool:
    """Whether strategy ``name`` computes ``feature`` ("histogram", "cross" or "per_image")."""
    return feature in get_strategy(name).SUPPORTS


__all__ = [
    "STRATEGIES",
    "SIMULATOR_STRATEGIES",
    "Accumulators",
    "PerImage",
    "get_strategy",
    "strategy_supports",
    "max_elements_before_flush",
    "is_integer",
    "simulator_enabled",
    "DTYPE_TAGS",
    "INTEGER_TAGS",
    "LAYOUTS",
    "MAX_CHANNELS",
]
