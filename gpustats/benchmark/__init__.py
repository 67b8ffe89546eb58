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

Three modules: :mod:`.timing` (timers, sizes, ids), :mod:`.workloads` (batches, baselines, kernel
calls, roofline, machine info) and :mod:`.suites` (the rows, the table, the command); this
package re-exports their public names.
"""

from .suites import add_arguments, cpu_methods, format_table, main, run, run_cpu, run_cuda, summary
from .timing import GIB, MIB, CudaEventTimer, Timing, bench_id, parse_sizes, size_label, time_cuda, time_host, time_interleaved
from .workloads import (BATCH_IMAGES, DTYPES, IMAGE_HW, KERNEL_SIZES, LAYOUTS, copy_all, cuda_roofline, forum_recipe,
                        image_batches, kernel_call, kernel_strategies, kernel_view, machine_info, numpy_two_pass,
                        reduce_all, torch_moments)

__all__ = [
    "DTYPES", "LAYOUTS", "KERNEL_SIZES", "BATCH_IMAGES", "IMAGE_HW", "MIB", "GIB", "Timing", "CudaEventTimer",
    "add_arguments", "bench_id", "copy_all", "reduce_all", "cpu_methods", "cuda_roofline", "forum_recipe", "format_table", "image_batches", "kernel_call",
    "kernel_strategies", "kernel_view", "machine_info", "main", "numpy_two_pass", "parse_sizes", "run", "run_cpu",
    "run_cuda", "size_label", "summary", "time_cuda", "time_host", "time_interleaved", "torch_moments",
]
