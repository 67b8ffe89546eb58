"""gpustats: exact, fast per-channel statistics of image datasets, on GPU and CPU.

Public surface only; ``import gpustats`` imports torch and numpy, never numba or CUDA.
"""

from .api import Accumulator, compute_stats
from .backends import BackendUnavailable
from .batches import InputError
from .sampling import SampledStats, SampleSpec, estimate_stats
from .stats import ChannelStats, Stats, StatsError

__all__ = ["Accumulator", "BackendUnavailable", "ChannelStats", "InputError", "SampleSpec", "SampledStats", "Stats",
           "StatsError", "compute_stats", "estimate_stats"]
__version__ = "0.1.0"
