"""gpustats: exact, fast per-channel statistics of image datasets, on GPU and CPU.

Public surface only. The names load on first use (PEP 562), so ``import gpustats`` alone, and the
``gpustats`` command's argument parsing and ``--help``, import neither torch nor numba;
``from gpustats import compute_stats`` imports numpy, never torch, numba or CUDA: torch loads with the
first batch of arrays or tensors (``Accumulator``), and ``compute_stats`` over image files (the folder
engine) never needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Accumulator", "BackendUnavailable", "ChannelStats", "InputError", "SampleSpec", "SampledStats", "Stats",
           "StatsError", "compute_stats", "estimate_stats"]
__version__ = "0.1.0"

#: public name -> the module that defines it
_WHERE = {"Accumulator": ".accumulator", "compute_stats": ".api", "BackendUnavailable": ".backends",
          "InputError": ".batches", "SampledStats": ".sampling", "SampleSpec": ".sampling",
          "estimate_stats": ".sampling", "ChannelStats": ".stats", "Stats": ".stats", "StatsError": ".stats"}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .api import Accumulator, compute_stats
    from .backends import BackendUnavailable
    from .batches import InputError
    from .sampling import SampledStats, SampleSpec, estimate_stats
    from .stats import ChannelStats, Stats, StatsError


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'gpustats' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value  # found once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
