"""``gpustats bench``: measure the backends against the usual recipes and the hardware roofline.

The same helpers time the pytest-benchmark suites in ``bench/`` (see ``bench/README.md``), so a
figure printed by ``gpustats bench`` and one stored by ``pytest bench/`` are measured one way.

What is measured, per row (one workload = dtype x layout x size of image batches):

* **CPU** (``--device cpu``): the CPU backend (``compute_stats(device="cpu")``) against the forum
  recipe (``x.float() / 255`` then per-batch ``mean``/``std`` over dims ``(0, 2, 3)``, averaged over
  batches) and numpy float64 two-pass on the same batches, plus a ``memcpy`` reference row (a
  ``torch`` copy of the same bytes: the machine's streaming bandwidth for this process).
* **CUDA** (``--device cuda``): every registered kernel strategy x dtype x layout on device-resident
  tensors against ``torch.var_mean`` + ``torch.aminmax`` (and ``torch.bincount`` for ``hist8``),
  with a roofline measured in the same run over the same bytes (device-to-device copy, counted as
  read + write, and ``torch.sum``); the larger of the two is the roofline.

GB/s is always *input bytes read* / median time. Host timings use ``time.perf_counter`` after a
warm-up; CUDA timings use CUDA events on torch's current stream after a warm-up. Every timing
keeps its median and spread (min, max, interquartile range).

>>> from gpustats.benchmark import Timing, size_label
>>> t = Timing([0.3, 0.1, 0.2])
>>> t.median, t.min, t.max
(0.2, 0.1, 0.3)
>>> size_label(256 << 20), size_label(1 << 30), size_label(9633792), size_label(384), size_label(3072)
('256MiB', '1GiB', '9.2MiB', '384B', '3KiB')
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

__all__ = [
    "DTYPES",
    "LAYOUTS",
    "Timing",
    "add_arguments",
    "bench_id",
    "cuda_roofline",
    "forum_recipe",
    "image_batches",
    "kernel_strategies",
    "machine_info",
    "numpy_two_pass",
    "parse_sizes",
    "run",
    "run_cpu",
    "run_cuda",
    "size_label",
    "time_cuda",
    "time_host",
    "time_interleaved",
    "torch_moments",
]

MIB = 1 << 20
GIB = 1 << 30
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


# ----------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Seconds per call of repeated measurements: median and spread."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    @property
    def min(self) -> float:
        return float(min(self.samples))

    @property
    def max(self) -> float:
        return float(max(self.samples))

    @property
    def iqr(self) -> float:
        if len(self.samples) < 4:
            return self.max - self.min
        q = statistics.quantiles(self.samples, n=4)
        return float(q[2] - q[0])

    def to_dict(self) -> dict:
        return {"median_s": self.median, "min_s": self.min, "max_s": self.max, "iqr_s": self.iqr,
                "rounds": len(self.samples)}


def time_host(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5,
              sync: Callable[[], Any] | None = None) -> Timing:
    """Wall-clock seconds per ``fn()`` call after ``warmup`` calls (``sync()`` after each, if given)."""
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        samples.append(time.perf_counter() - start)
    return Timing(samples)


def time_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int = 1, repeats: int = 5,
                     repeats_for: dict[str, int] | None = None) -> dict[str, Timing]:
    """Wall-clock :class:`Timing` per named function, measured round-robin (one call of each per round).

    Interleaving keeps the ratios honest on a shared machine whose load drifts during the run:
    every method sees the same mix of quiet and busy moments. ``repeats_for`` caps the rounds of
    slow methods (they skip the later rounds).
    """
    repeats_for = repeats_for or {}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(repeats):
        for name, fn in fns.items():
            if round_index >= repeats_for.get(name, repeats):
                continue
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: Timing(values) for name, values in samples.items()}


class CudaEventTimer:
    """Call ``fn`` between two CUDA events on torch's current stream; keep each call's seconds.

    Used both directly (:func:`time_cuda`) and as the target of pytest-benchmark's pedantic mode,
    so that the host clock pytest-benchmark reads and the device clock agree on what ran.
    """

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn
        self.samples: list[float] = []

    def __call__(self) -> None:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        self.fn()
        end.record()
        end.synchronize()
        self.samples.append(start.elapsed_time(end) / 1e3)

    def timing(self) -> Timing:
        return Timing(list(self.samples))


def time_cuda(fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 10) -> Timing:
    """Device seconds per ``fn()`` call, from CUDA events, after ``warmup`` synchronized calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    timer = CudaEventTimer(fn)
    for _ in range(repeats):
        timer()
    return timer.timing()


# ----------------------------------------------------------------------------- sizes, ids, data


def size_label(nbytes: int) -> str:
    """``256MiB``, ``1GiB``, ``9.2MiB``: the size part of a bench id."""
    if nbytes >= GIB and nbytes % GIB == 0:
        return f"{nbytes // GIB}GiB"
    if nbytes < MIB:
        return f"{nbytes}B" if nbytes < 1024 else f"{nbytes / 1024:.1f}KiB".replace(".0KiB", "KiB")
    mib = nbytes / MIB
    return f"{int(mib)}MiB" if mib == int(mib) else f"{mib:.1f}MiB"


def bench_id(strategy: str, dtype: str, layout: str, nbytes: int) -> str:
    """Readable id, e.g. ``hist8-uint8-NCHW-256MiB``."""
    return f"{strategy}-{dtype}-{layout}-{size_label(nbytes)}"


def parse_sizes(text: str | None, default: Sequence[int]) -> list[int]:
    """Sizes in bytes from ``"1MiB,256MiB,1GiB"`` (a bare number means MiB); ``default`` when empty."""
    if not text:
        return list(default)
    sizes = []
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        low = item.lower()
        for suffix, mult in (("gib", GIB), ("gb", GIB), ("g", GIB), ("mib", MIB), ("mb", MIB), ("m", MIB),
                             ("kib", 1 << 10), ("kb", 1 << 10), ("k", 1 << 10)):
            if low.endswith(suffix):
                sizes.append(int(float(low[: -len(suffix)]) * mult))
                break
        else:
            try:
                sizes.append(int(float(low) * MIB))
            except ValueError:
                raise ValueError(f"cannot read size {item!r}: use e.g. 1MiB, 256MiB, 1GiB "
                                 "(a bare number is MiB)") from None
    return sizes


def _photo_pool(images: int, hw: int, seed: int = 0) -> torch.Tensor:
    """``[images, 3, hw, hw]`` uint8 photo-like images (gradients, shapes, grain; not uniform noise).

    Histogram kernels are sensitive to repeated values (atomic conflicts), so benchmarks read
    image-like data, not uniform random bytes.
    """
    from .sources.synthetic import photo_array

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


# ----------------------------------------------------------------------------- baselines


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


# ----------------------------------------------------------------------------- machine info


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
    root = Path(__file__).resolve().parent.parent
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


# ----------------------------------------------------------------------------- CPU rows


def _row(*, suite: str, method: str, dtype: str, layout: str, nbytes: int, timing: Timing, **extra) -> dict:
    gbps = nbytes / timing.median / 1e9
    return {"suite": suite, "method": method, "strategy": extra.pop("strategy", method), "dtype": dtype,
            "layout": layout, "size": size_label(nbytes), "bytes": int(nbytes), "gbps": gbps,
            **timing.to_dict(), **extra}


def cpu_methods(layout: str) -> dict[str, Callable[[Sequence[torch.Tensor]], Any]]:
    """name -> function(batches) for the CPU comparison (``gpustats-cpu`` is the CPU backend)."""
    from .api import compute_stats

    def ours(batches):
        return compute_stats(batches, device="cpu", distributed=False)

    def memcpy(batches):
        for b in batches:
            torch.empty_like(b).copy_(b)

    return {
        "gpustats-cpu": ours,
        "forum-recipe": lambda batches: forum_recipe(batches, layout),
        "numpy-f64-2pass": lambda batches: numpy_two_pass(batches, layout),
        "memcpy": memcpy,
    }


CPU_SIZES = (8 * MIB, 64 * MIB, 256 * MIB)
CPU_QUICK_SIZES = (8 * MIB,)


def run_cpu(*, quick: bool = False, sizes: Sequence[int] | None = None, repeats: int | None = None,
            hw: int = IMAGE_HW, log: Callable[[str], Any] | None = None) -> list[dict]:
    """CPU rows: the CPU backend vs the forum recipe vs numpy float64 on uint8 and float32 NCHW.

    Each row's ``speedup`` is the forum recipe's median time over its own (the forum row is 1.0).
    """
    sizes = list(sizes or (CPU_QUICK_SIZES if quick else CPU_SIZES))
    repeats = repeats or (3 if quick else 5)
    cases = [("uint8", "NCHW"), ("float32", "NCHW")]
    if not quick:
        cases.append(("uint8", "NHWC"))
    rows = []
    for dtype, layout in cases:
        for size in sizes:
            batches = image_batches(dtype, layout, size, hw=hw)
            nbytes = _nbytes(batches)
            fns = {method: (lambda fn=fn: fn(batches)) for method, fn in cpu_methods(layout).items()}
            # the slow forum recipe gets fewer rounds on big inputs
            slow = {"forum-recipe": max(3, repeats // 2)} if nbytes > 64 * MIB else {}
            times = time_interleaved(fns, warmup=1, repeats=repeats, repeats_for=slow)
            base = times["forum-recipe"]
            for method, timing in times.items():
                if log:
                    log(f"  {method:16s} {dtype:8s} {layout} {size_label(nbytes):>8s} "
                        f"{nbytes / timing.median / 1e9:7.3f} GB/s")
                rows.append(_row(suite="cpu", method=method, strategy=method,
                                 dtype=dtype, layout=layout, nbytes=nbytes, timing=timing,
                                 id=bench_id(method, dtype, layout, nbytes), baseline="forum-recipe",
                                 speedup=base.median / timing.median, speedup_of_min=base.min / timing.min,
                                 roofline_frac=None, batches=len(batches), batch_shape=list(batches[0].shape)))
    return rows


# ----------------------------------------------------------------------------- CUDA rows


def kernel_strategies() -> dict[str, Callable]:
    """Registered kernel strategies: name -> ``reduce(x, layout, dtype_tag, acc, ...)``."""
    from . import kernels

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
    from .kernels.accumulators import Accumulators

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


CUDA_SIZES = (16 * MIB, 256 * MIB)
CUDA_QUICK_SIZES = (64 * MIB,)


def _device_tensor(dtype: str, layout: str, nbytes: int) -> torch.Tensor:
    """One device-resident batch of ``nbytes`` (photo-like content)."""
    hw = 224
    per_image = 3 * hw * hw * torch.empty((), dtype=_TORCH[dtype]).element_size()
    images = max(1, round(nbytes / per_image))
    (x,) = image_batches(dtype, layout, nbytes, batch_images=images, hw=hw, device="cuda")
    return x


def run_cuda(*, quick: bool = False, sizes: Sequence[int] | None = None, repeats: int | None = None,
             log: Callable[[str], Any] | None = None) -> list[dict]:
    """CUDA rows: strategies x dtypes x layouts vs torch baselines vs the roofline (see module doc)."""
    sizes = list(sizes or (CUDA_QUICK_SIZES if quick else CUDA_SIZES))
    repeats = repeats or (5 if quick else 20)
    strategies = kernel_strategies()
    # --quick: the integer and the float32 paths only (each strategy x dtype x layout compiles once)
    dtypes = ("uint8", "float32") if quick else DTYPES
    rows = []
    for size in sizes:
        for dtype in dtypes:
            for layout in LAYOUTS:
                x = _device_tensor(dtype, layout, size)
                nbytes = x.numel() * x.element_size()
                roof = cuda_roofline(x, repeats=repeats)
                base = time_cuda(lambda: torch_moments(x, layout), repeats=repeats)
                hist_base = None
                if dtype == "uint8":
                    hist_base = time_cuda(lambda: torch_moments(x, layout, histogram=True), repeats=repeats)
                common = dict(dtype=dtype, layout=layout, nbytes=nbytes, copy_gbps=roof["copy_gbps"],
                              sum_gbps=roof["sum_gbps"], roofline_gbps=roof["roofline_gbps"])

                def add(method, strategy, timing, baseline, base_time, histogram):
                    gbps = nbytes / timing.median / 1e9
                    rows.append(_row(suite="cuda", method=method, strategy=strategy, timing=timing,
                                     id=bench_id(strategy, dtype, layout, nbytes), baseline=baseline,
                                     speedup=base_time / timing.median, roofline_frac=gbps / roof["roofline_gbps"],
                                     histogram=histogram, **common))
                    if log:
                        log(f"  {strategy:22s} {dtype:8s} {layout} {size_label(nbytes):>7s} {gbps:8.1f} GB/s "
                            f"{100 * gbps / roof['roofline_gbps']:5.1f}% of roofline")

                moments_name, hist_name = "torch-var_mean+aminmax", "torch-var_mean+aminmax+bincount"
                add("torch", moments_name, base, moments_name, base.median, False)
                if hist_base is not None:
                    add("torch", hist_name, hist_base, hist_name, hist_base.median, True)
                for name, reduce in strategies.items():
                    histogram = name == "hist8"
                    try:
                        call = kernel_call(reduce, x, dtype, layout, histogram=histogram)
                    except (ValueError, NotImplementedError, RuntimeError, TypeError) as exc:
                        if log:
                            log(f"  {name:22s} {dtype:8s} {layout}: not run ({exc})")
                        continue
                    timing = time_cuda(call, repeats=repeats)
                    if histogram:
                        add("gpustats-cuda", name, timing, hist_name, hist_base.median, True)
                    else:
                        add("gpustats-cuda", name, timing, moments_name, base.median, False)
                x = call = None  # free the device tensor before the next one
                torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------- table, CLI


def format_table(rows: Sequence[dict]) -> str:
    """The rows as a fixed-width text table."""
    header = ("strategy", "dtype", "layout", "size", "GB/s", "% roofline", "speed-up", "vs")
    lines = [header]
    for r in rows:
        frac = r.get("roofline_frac")
        gbps = f"{r['gbps']:.3f}" if r["gbps"] < 10 else f"{r['gbps']:.1f}"
        lines.append((r["strategy"], r["dtype"], r["layout"], r["size"], gbps,
                      "-" if frac is None else f"{100 * frac:.1f}%", f"{r['speedup']:.2f}x", r["baseline"]))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = (str(v).ljust(w) if i < 4 or i == 7 else str(v).rjust(w) for i, (v, w) in enumerate(zip(line, widths)))
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def summary(rows: Sequence[dict]) -> dict:
    """Headline ratios: CPU backend vs forum recipe per (dtype, layout) at the largest size."""
    out = {}
    for r in rows:
        if r["suite"] == "cpu" and r["method"] == "gpustats-cpu":
            key = f"cpu_vs_forum_{r['dtype']}_{r['layout']}"
            if key not in out or r["bytes"] >= out[key]["bytes"]:
                out[key] = {"bytes": r["bytes"], "size": r["size"], "speedup": r["speedup"], "gbps": r["gbps"]}
    return out


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``gpustats bench`` (the CLI calls this on its ``bench`` subparser)."""
    parser.description = ("Measure gpustats against the usual recipes: GB/s of input read, speed-up vs "
                          "torch / the forum recipe, and (CUDA) the fraction of a roofline measured in the same run.")
    parser.add_argument("--device", default=None, choices=("cpu", "cuda"),
                        help="backend to measure (default: cuda when usable, else cpu)")
    parser.add_argument("--quick", action="store_true", help="one small size, few repeats (< 30 s on 2 CPU cores)")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes, e.g. 8MiB,64MiB (a bare number is MiB)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per measurement (default 5, quick 3)")
    parser.add_argument("--json", metavar="FILE", default=None, help="write machine info and every row to FILE")
    return parser


def _default_device() -> str:
    from .backends import cuda_unavailable_reason

    return "cuda" if torch.cuda.is_available() and cuda_unavailable_reason() is None else "cpu"


def run(args: argparse.Namespace) -> int:
    """Run ``gpustats bench``; prints the table, writes ``--json``; returns the exit status."""
    device = getattr(args, "device", None) or _default_device()
    quick = bool(getattr(args, "quick", False))
    sizes = parse_sizes(getattr(args, "sizes", None), ()) or None
    repeats = getattr(args, "repeats", None)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if device == "cuda":
        from .backends import cuda_unavailable_reason

        reason = cuda_unavailable_reason() if torch.cuda.is_available() else "torch sees no CUDA device"
        if reason is not None or os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
            print(f"gpustats bench: --device cuda cannot run here: {reason or 'the numba simulator is on'}; "
                  "use --device cpu", file=sys.stderr)
            return 2
    started = time.perf_counter()
    info = machine_info(device)
    log(f"gpustats bench --device {device}{' --quick' if quick else ''}: "
        + (f"{info.get('gpu_name')} (driver {info.get('driver')})" if device == "cuda"
           else f"{info['cpu_model']}, {info['cpu_usable']} cores, numba {info['numba_threads']} threads"))
    rows = run_cuda(quick=quick, sizes=sizes, repeats=repeats, log=log) if device == "cuda" else \
        run_cpu(quick=quick, sizes=sizes, repeats=repeats, log=log)
    elapsed = time.perf_counter() - started
    if hasattr(os, "getloadavg"):
        info["loadavg_end"] = list(os.getloadavg())  # others' work on a shared machine skews timings
    result = {
        "schema": _SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "gpustats bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None,
        "device": device,
        "quick": quick,
        "elapsed_s": elapsed,
        "machine": info,
        "summary": summary(rows),
        "rows": rows,
    }
    print(_header(info, device))
    print(format_table(rows))
    for key, s in result["summary"].items():
        print(f"{key}: {s['speedup']:.2f}x at {s['size']} ({s['gbps']:.3f} GB/s)")
    print(f"({elapsed:.1f} s)")
    load = max((info.get("loadavg") or [0])[0], (info.get("loadavg_end") or [0])[0])
    if device == "cpu" and load > (info.get("cpu_usable") or 1):
        print(f"note: load average {load:.1f} on {info.get('cpu_usable')} usable cores: other processes shared the "
              "CPU, so absolute GB/s are low and noisy; the ratios were measured round-robin and are fairer")
    if getattr(args, "json", None):
        path = Path(args.json)
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _header(info: dict, device: str) -> str:
    commit = (info.get("commit") or "unknown")[:12] + ("+dirty" if info.get("dirty") else "")
    if device == "cuda":
        hw = f"GPU {info.get('gpu_name')} driver {info.get('driver')} CUDA {info.get('torch_cuda')}"
    else:
        hw = f"CPU {info['cpu_model']} ({info['cpu_usable']} usable cores)"
    return (f"{hw}; torch {info['torch']}, numba {info['numba']}, numba-cuda {info.get('numba_cuda')}; "
            f"commit {commit}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gpustats.benchmark`` works without the CLI."""
    parser = add_arguments(argparse.ArgumentParser(prog="gpustats bench"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
