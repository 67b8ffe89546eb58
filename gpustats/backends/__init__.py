"""Backend registry: pick the reducer for a device, or record why the CPU is used instead.

A backend is a class implementing :class:`Reducer`: it receives canonical :class:`~gpustats.batches.Chunk`
batches and keeps a :class:`~gpustats.stats.ChannelStats`. ``update`` must leave the state unchanged
when it raises. The CPU backend (``cpu.py``) reduces each batch to a ``ChannelStats`` and merges;
the CUDA backend (``cuda.py``) keeps device-side accumulators and only synchronizes in ``state()``.

Shared numerical contract for every backend (tests hold each backend to it):

* integer data: exact integer totals per channel (``ChannelStats.from_integer_sums``), so results
  are bitwise identical across backends;
* float data: float64 ``(count, mean, M2)`` per batch (float32 only over short runs after a
  per-channel shift), merged with Chan's formula;
* float histograms: bin ``int((v - lo) * (bins / (hi - lo)))`` computed in float64, the last bin
  closed (``v == hi`` counts in it), like ``numpy.histogram``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from ..options import ReduceOptions
from ..stats import ChannelStats

if TYPE_CHECKING:  # torch loads where a device is resolved: a CPU folder run never imports it
    import torch

    from ..batches import Chunk

__all__ = ["Options", "Reducer", "MergingReducer", "BackendUnavailable", "make_reducer", "resolve_device", "cuda_unavailable_reason", "simulator_on", "BACKENDS"]

#: backend name -> "module:Class" (imported lazily)
BACKENDS = {"cpu": "gpustats.backends.cpu:CpuReducer", "cuda": "gpustats.backends.cuda:CudaReducer"}

#: the options the backends see (defined once, in gpustats.options)
Options = ReduceOptions


class BackendUnavailable(RuntimeError):
    """The requested device cannot be served; the message names the cause and the fix."""


class Reducer:
    """Interface of a backend. ``name`` ("cpu"/"cuda"), ``device`` and ``strategy`` describe it."""

    name: str
    device: torch.device
    strategy: str

    def update(self, chunk: Chunk, scale: float, batch_index: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def state(self) -> ChannelStats:  # pragma: no cover - interface
        raise NotImplementedError

    def load(self, state: ChannelStats) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def reset(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class MergingReducer(Reducer):
    """A reducer that turns each batch into a ``ChannelStats`` and merges it into a host state."""

    def __init__(self, device: torch.device, options: Options):
        self.device = device
        self.options = options
        self._state = ChannelStats.empty()
        self.batches = 0  # batches reduced by this backend (tests use it to prove the path ran)

    def reduce_chunk(self, chunk: Chunk, scale: float, batch_index: int) -> ChannelStats:  # pragma: no cover
        raise NotImplementedError

    def update(self, chunk: Chunk, scale: float, batch_index: int) -> None:
        if not chunk.parts:
            return
        batch_state = self.reduce_chunk(chunk, scale, batch_index)
        self._state = self._state.merge(batch_state)  # assigned only when everything succeeded
        self.batches += 1

    def state(self) -> ChannelStats:
        return self._state

    def load(self, state: ChannelStats) -> None:
        self._state = state

    def reset(self) -> None:
        self._state = ChannelStats.empty()


def simulator_on() -> bool:
    """numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM``): kernels run as Python, for tests."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")


#: what an NVIDIA driver puts on a Linux machine (WSL 2: /dev/dxg); without any, CUDA cannot run
_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg")


def no_driver_reason() -> str | None:
    """Why CUDA cannot run here, known without importing torch (a Linux machine with no NVIDIA driver),
    or None when only torch can tell."""
    if sys.platform != "linux" or simulator_on():
        return None
    if any(os.path.exists(path) for path in _DRIVER_PATHS):
        return None
    return ("no NVIDIA driver on this machine (no /proc/driver/nvidia, /dev/nvidiactl or /dev/dxg); install an "
            "NVIDIA driver and a CUDA build of torch, or use device='cpu'")


def cuda_unavailable_reason() -> str | None:
    """None when the CUDA backend can run; otherwise the cause and the fix, in one sentence."""
    if simulator_on():
        try:
            importlib.import_module("numba.cuda")
        except Exception as exc:  # pragma: no cover - depends on the install
            return f"NUMBA_ENABLE_CUDASIM=1 is set but numba.cuda cannot be imported ({exc}); pip install 'gpustats[cuda]'"
        return None
    import torch

    if not torch.cuda.is_available():
        return (
            "torch sees no CUDA device (torch.cuda.is_available() is False: no NVIDIA GPU/driver, or a CPU-only "
            "torch build); install a CUDA build of torch and an NVIDIA driver, or use device='cpu'"
        )
    try:
        from numba import cuda  # noqa: F401
    except Exception as exc:
        return f"numba.cuda cannot be imported ({exc}); pip install 'gpustats[cuda]' (numba-cuda)"
    try:
        if not cuda.is_available():
            return "numba.cuda finds no usable driver/GPU (numba.cuda.is_available() is False); check the NVIDIA driver and pip install 'gpustats[cuda]'"
    except Exception as exc:  # pragma: no cover - depends on the driver
        return f"numba.cuda failed to initialize ({exc}); check the NVIDIA driver and numba-cuda version"
    return None


def resolve_device(device: Any) -> tuple[str, torch.device, str | None]:
    """Map ``device`` to ``(backend name, torch.device, reason CUDA was not used or None)``.

    ``None`` picks CUDA when a GPU and the CUDA backend are usable, else the CPU (with the
    reason); an explicit CUDA device that cannot be served raises :class:`BackendUnavailable`.
    """
    import torch

    if device is None or device == "auto":
        reason = "no GPU requested" if simulator_on() else cuda_unavailable_reason()
        if simulator_on() or reason is not None:
            return "cpu", torch.device("cpu"), reason
        return "cuda", torch.device("cuda", torch.cuda.current_device()), None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise BackendUnavailable(f"unknown device {device!r} ({exc}); use None, 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cpu":
        return "cpu", dev, None
    if dev.type != "cuda":
        raise BackendUnavailable(f"device {device!r} is not supported; use None, 'cpu', 'cuda' or 'cuda:N'")
    reason = cuda_unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"device={device!r} was asked for but cannot be used: {reason}")
    if not simulator_on():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise BackendUnavailable(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        dev = torch.device("cuda", index)
    return "cuda", dev, None


def make_reducer(device: Any, options: Options) -> tuple[Reducer, str | None]:
    """Build the reducer for ``device``; returns it and the reason CUDA was not used (or None)."""
    name, dev, reason = resolve_device(device)
    module_name, cls_name = BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if name == "cuda":
            raise BackendUnavailable(f"the CUDA backend cannot be loaded ({exc}); pip install 'gpustats[cuda]'") from exc
        raise
    return getattr(module, cls_name)(dev, options), reason
