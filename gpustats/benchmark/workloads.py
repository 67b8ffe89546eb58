"""Workloads and baselines of the benchmarks: photo-like image batches, the torch and forum recipes,
numpy float64, the kernel calls and the same-run roofline, and the machine description."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .timing import GIB, MIB, time_cuda

#: dtypes the kernel suites cover (bench ids use these names; bf16 reaches the kernels as int16 bits)
DTYPES = ("uint8", "float16", "bfloat16", "float32")
_TORCH = {"uint8": torch.uint8, "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
#: user-facing layout -> kernel layout of the canonical [N, C, L] / [N, L, C] view
LAYOUTS = {"NCHW": "CP", "NHWC": "PC"}
#: kernel suite sizes (bytes of input per measured call), 1 MiB to 1 GiB
KERNEL_SIZES = tuple(s * MIB for s in (1, 16, 256, 1024))
#: images per batch in the host-side suites (the 64x3x224x224 batch of the usual DataLoader)
BATCH_IMAGES = 64
IMAGE_HW = 224
_SCHEMA = "gpustats-bench/1"


def reduce_all(acc, batches: Sequence[torch.Tensor]) -> Callable[[], Any]:
    """The host pipeline's unit of work: reset ``acc``, feed it every batch, read its state."""

    def work():
        acc.reset()
        for b in batches:
            acc.update(b)
        return acc.state()

    return work


def copy_all(batches: Sequence[torch.Tensor], *, non_blocking: bool) -> Callable[[], None]:
    """The pipeline's copy baseline: every batch into one device buffer (the H2D copy alone)."""
    dst = torch.empty_like(batches[0], device="cuda")

    def work():
        for b in batches:
            dst[: b.shape[0]].copy_(b, non_blocking=non_blocking)

    return work


def _photo_pool(images: int, hw: int, seed: int = 0) -> torch.Tensor:
    """``[images, 3, hw, hw]`` uint8 photo-like images (gradients, shapes, grain; not uniform noise).

    Histogram kernels are sensitive to repeated values (atomic conflicts), so benchmarks read
    image-like data, not uniform random bytes.
    """
    from ..sources.synthetic import photo_array

    arrays = [photo_array(np.random.default_rng([seed, i]), hw, hw) for i in range(images)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def image_batches(dtype: str, layout: str, nbytes: int, *, batch_images: int = BATCH_IMAGES, hw: int = IMAGE_HW,
                  device: str | torch.device = "cpu", seed: int = 0, pool: int = 16) -> list[torch.Tensor]:
    """Batches of ``hw x hw`` 3-channel images holding about ``nbytes`` of ``dtype`` in ``layout``.

    Every batch is its own memory (no batch is re-read from cache). uint8 values are photo-like;
    float values are those divided by 255 (what ``ToTensor`` gives). At least one image.
    """
    itemsize = torch.empty((), dtype=_TORCH[dtype]).element_size()
    per_image = 3 * hw * hw * itemsize
    total = max(1, round(nbytes / per_image))
    base = _photo_pool(min(pool, total), hw, seed).to(device)
    batches = []
    for first in range(0, total, batch_images):
        index = torch.arange(first, min(total, first + batch_images), device=base.device) % base.shape[0]
        x = base.index_select(0, index)
        if dtype != "uint8":
            x = (x.float() / 255).to(_TORCH[dtype])
        if layout == "NHWC":
            x = x.permute(0, 2, 3, 1).contiguous()
        batches.append(x)
    return batches


def _nbytes(batches: Iterable[torch.Tensor]) -> int:
    return sum(b.numel() * b.element_size() for b in batches)


def _channel_dim(layout: str) -> int:
    return 1 if layout == "NCHW" else 3


def _other_dims(layout: str) -> tuple[int, ...]:
    return (0, 2, 3) if layout == "NCHW" else (0, 1, 2)


def forum_recipe(batches: Sequence[torch.Tensor], layout: str = "NCHW") -> tuple[torch.Tensor, torch.Tensor]:
    """The snippet people paste: per-batch float mean/std over the non-channel dims, averaged.

    It is subtly wrong (averages per-batch std, weights a short last batch like a full one) and is
    here only as the speed baseline, written the way it is usually written.
    """
    dims = _other_dims(layout)
    mean = 0.0
    std = 0.0
    for images in batches:
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        mean += x.mean(dim=dims)
        std += x.std(dim=dims)
    return mean / len(batches), std / len(batches)


def numpy_two_pass(batches: Sequence[torch.Tensor], layout: str = "NCHW") -> tuple[np.ndarray, np.ndarray]:
    """The float64 reference: exact mean, then the mean squared deviation, over all batches (two passes)."""
    dims = _other_dims(layout)
    count = 0
    total = 0.0
    for b in batches:
        a = b.float().numpy() if b.dtype in (torch.float16, torch.bfloat16) else b.numpy()
        total = total + a.sum(axis=dims, dtype=np.float64)
        count += a.size // a.shape[_channel_dim(layout)]
    mean = total / count
    shape = (1, -1, 1, 1) if layout == "NCHW" else (1, 1, 1, -1)
    m2 = 0.0
    for b in batches:
        a = b.float().numpy() if b.dtype in (torch.float16, torch.bfloat16) else b.numpy()
        d = a.astype(np.float64) - mean.reshape(shape)
        m2 = m2 + np.einsum("nchw,nchw->c" if layout == "NCHW" else "nhwc,nhwc->c", d, d)
    return mean, np.sqrt(m2 / count)


def torch_moments(x: torch.Tensor, layout: str, histogram: bool = False, histc: bool = False) -> tuple:
    """``torch.var_mean`` + ``torch.aminmax`` per channel (+ a 256-bin histogram when asked).

    uint8 is converted with ``.float()`` first (``var_mean`` needs floats); 16-bit floats are read
    as they are. The histogram is ``torch.bincount`` over ``value + 256 * channel``
    (``histc=False``) or one ``torch.histc`` per channel (``histc=True``).
    """
    dims = _other_dims(layout)
    xf = x.float() if x.dtype == torch.uint8 else x
    var, mean = torch.var_mean(xf, dim=dims, correction=0)
    if layout == "NCHW":
        lo, hi = torch.aminmax(x.flatten(2), dim=2)  # [N, C] then over images
        lo, hi = lo.amin(0), hi.amax(0)
    else:
        lo, hi = torch.aminmax(x.reshape(-1, x.shape[-1]), dim=0)
    out = (mean, var, lo, hi)
    if histogram:
        channels = x.shape[_channel_dim(layout)]
        if histc:
            hist = torch.stack([torch.histc(x.select(_channel_dim(layout), c).float(), bins=256, min=0, max=255)
                                for c in range(channels)])
        else:
            offsets = torch.arange(channels, device=x.device) * 256
            shape = (1, -1, 1, 1) if layout == "NCHW" else (1, 1, 1, -1)
            hist = torch.bincount((x.long() + offsets.view(shape)).flatten(), minlength=256 * channels)
        out = out + (hist,)
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> dict:
    root = Path(__file__).resolve().parents[2]  # the repository (gpustats/benchmark/workloads.py)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def machine_info(device: str = "cpu") -> dict:
    """CPU model and cores, GPU name and driver (CUDA), library versions and the git commit."""
    import numba

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        **_git_commit(),
    }
    try:
        from importlib.metadata import version

        info["numba_cuda"] = version("numba-cuda")
    except Exception:
        info["numba_cuda"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu_name"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / GIB, 1)
        info["gpu_sm_count"] = props.multi_processor_count
        info["torch_cuda"] = torch.version.cuda
        info["driver"] = _driver_version()
    return info


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from numba import cuda

        major, minor = cuda.cudadrv.driver.driver.get_version()
        return f"CUDA driver API {major}.{minor}"
    except Exception:
        return None


def kernel_strategies() -> dict[str, Callable]:
    """Registered kernel strategies: name -> ``reduce(x, layout, dtype_tag, acc, ...)``."""
    from .. import kernels

    registry = getattr(kernels, "STRATEGIES", None)
    if registry is None:  # registry not there: import the strategy modules by name
        import importlib

        registry = {}
        for name in ("atomic", "tree", "warp", "welford", "hist8", "vec"):
            try:
                registry[name] = importlib.import_module(f"gpustats.kernels.{name}")
            except ImportError:
                continue
    out = {}
    for name, entry in dict(registry).items():
        out[name] = entry.reduce if hasattr(entry, "reduce") else entry
    return out


def _accumulators(channels: int, integer: bool, histogram: bool, stream):
    from ..kernels.accumulators import Accumulators

    return Accumulators.zeros(channels, integer=integer, histogram=histogram, stream=stream)


def kernel_view(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The 3-D canonical view the kernels take (``[N, C, L]`` / ``[N, L, C]``); bf16 as int16 bits."""
    if x.dtype == torch.bfloat16:
        x = x.view(torch.int16)  # __cuda_array_interface__ has no bfloat16
    return x.flatten(2) if layout == "NCHW" else x.flatten(1, 2)


def kernel_call(reduce: Callable, x: torch.Tensor, dtype: str, layout: str, *,
                histogram: bool = False) -> Callable[[], None]:
    """A no-argument callable that reduces ``x`` with ``reduce`` on torch's current stream.

    Raises ``ValueError``/``NotImplementedError``/``RuntimeError`` at once when the strategy does
    not handle this dtype or option (callers record it as unsupported).
    """
    from numba import cuda

    stream = cuda.external_stream(torch.cuda.current_stream().cuda_stream)
    view = kernel_view(x, layout)
    # histogram accumulators exist for uint8 only; a histogram strategy refuses other dtypes itself
    acc = _accumulators(3, dtype == "uint8", histogram and dtype == "uint8", stream)
    klayout = LAYOUTS[layout]

    def call():
        reduce(view, klayout, dtype, acc, histogram=histogram, stream=stream)

    call()  # compile + validate now
    torch.cuda.synchronize()
    acc.reset()
    call.acc = acc  # the totals the calls add into (callers check results with it)
    return call


def cuda_roofline(x: torch.Tensor, *, warmup: int = 3, repeats: int = 10) -> dict:
    """Roofline over the bytes of ``x``, measured now: D2D copy (read + write) and ``torch.sum``."""
    nbytes = x.numel() * x.element_size()
    dst = torch.empty_like(x)
    copy = time_cuda(lambda: dst.copy_(x), warmup=warmup, repeats=repeats)
    total = time_cuda(lambda: x.sum(), warmup=warmup, repeats=repeats)
    copy_gbps = 2 * nbytes / copy.median / 1e9
    sum_gbps = nbytes / total.median / 1e9
    return {"copy_gbps": copy_gbps, "sum_gbps": sum_gbps, "roofline_gbps": max(copy_gbps, sum_gbps)}
