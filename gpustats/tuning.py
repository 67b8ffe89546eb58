"""Every tuning constant in one place, each with the measurement that chose it and the machine.

None of these changes a result: states are exact integers for 8-bit data and merged in file
order, so any batch size, worker count or chunk size gives the same numbers bit for bit (the tests
split the work every way). They change only speed and memory.

Unless a constant says otherwise it was measured on the project's development machine: a 2-core
AMD EPYC VM, no GPU, shared with other jobs (see ``bench/results/cpu-2core-2026-11-28-folder*.json``
for its folder runs). On another machine -- a 64-core box, a fast NVMe, a GPU -- rerun
``python bench/folder_throughput.py --workers N`` (folder runs, against plain Pillow processes, in
the same run) and ``python -m pytest bench/bench_cpu.py --benchmark-enable`` (the CPU reductions),
and change the value here.

>>> DEFAULT_BATCH_SIZE, SMALL_TASK, default_workers() <= MAX_DEFAULT_WORKERS
(64, 256, True)
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_BATCH_SIZE", "SMALL_TASK", "MAX_DEFAULT_WORKERS", "MIN_FILES_FOR_WORKERS", "default_workers",
           "NUMBA_FROM_ITEMS", "DEFAULT_WORKER_MEMORY_MB", "REMOTE_CHUNK", "REMOTE_AHEAD", "SMALL_PART", "PER_THREAD",
           "HIST_BLOCK", "PLANE_VALUES", "EXACT_VECTOR_FROM", "AUTO_STRATEGY", "AUTO_HISTOGRAM_STRATEGY",
           "LOOP_COMPILE_BUDGET_S", "LOOP_LOAD_BUDGET_S", "NUMPY_LOOP_S_PER_VALUE"]

# ============================================================================ folder runs (sources/)

#: files per batch when ``batch_size`` is None. Not chosen by a recorded measurement: the value of
#: the first command (2026-11-25). It bounds what a decode worker holds (64 decoded images) and how
#: much work a checkpoint can lose; large images gain nothing from larger batches (a batch costs
#: one IPC round trip and one merge, ~1 ms, against ~1 ms to decode one 500x375 JPEG).
DEFAULT_BATCH_SIZE = 64

#: files per task when the run's images are small (at most 64 K values each, CIFAR-like) and the
#: user gave no ``batch_size``: a task's fixed costs (IPC, the merge, numpy's per-call costs) then
#: spread over more images. Chosen with the 32x32 PNG corpus of ``bench/folder_throughput.py``
#: (2026-11-28, 2-core VM: ``bench/results/cpu-2core-2026-11-28-folder-*.json``).
SMALL_TASK = 256

#: most decode worker processes started when ``workers`` is None: ``min(MAX_DEFAULT_WORKERS,
#: cores)``. Not measured beyond 2 cores: 8 was chosen (2026-11-25) so that a shared machine is
#: not taken over by default. A decode-bound run scales with the cores it is given; on a 64-core
#: box pass ``--workers`` (``workers=``) or raise this, and measure with ``folder_throughput.py``.
MAX_DEFAULT_WORKERS = 8

#: runs of fewer files than this decode in the calling process when ``workers`` is None: starting a
#: worker process (fork, imports: ~0.2-0.5 s on the 2-core VM) costs more than decoding a few files.
MIN_FILES_FOR_WORKERS = 64


def default_workers() -> int:
    """Decode processes when ``workers`` is None: ``min(MAX_DEFAULT_WORKERS, os.cpu_count())``."""
    return min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)


#: items from which a CPU run loads numba even when its images are small: numpy costs ~4 us more
#: per small image than numba's loops, loading numba ~0.4 s once per process (first result of a
#: 20,000-PNG run after 0.16 s instead of 0.70 s without numba; 2-core VM, 2026-11-28).
NUMBA_FROM_ITEMS = 100_000

#: encoded bytes (archive members, Parquet values) a decode worker holds at once, in MiB, unless
#: the environment variable ``GPUSTATS_WORKER_MEMORY_MB`` says otherwise
#: (:func:`gpustats.sources.tarindex.worker_memory`). A memory bound, not a speed choice: two
#: batches of half of it are in flight per worker, so 8 workers hold at most 4 GiB of encoded bytes.
DEFAULT_WORKER_MEMORY_MB = 512

#: bytes one request of a sequential read of a remote object (s3://, gs://, https://) asks for, and
#: requests in flight per stream (``sources/remote.py``; ``GPUSTATS_REMOTE_CHUNK`` overrides the
#: size). Not tuned: with these values a folder of 3,000 JPEGs in 12 shards read 0.76-0.81x as fast
#: from a local S3 server and 0.93-1.05x from a local HTTP server as from the disk (2-core VM, busy:
#: load ~9-11; ``bench/results/cpu-2core-2026-12-04-remote.json``). A real store's latency may want more
#: requests in flight.
REMOTE_CHUNK = 8 << 20
REMOTE_AHEAD = 4

# ============================================================================ CPU reductions (backends/)

#: values under which an image is "small": the parts of a CPU batch under it are joined into one strip
#: before the numba loops (a numba call costs ~0.1-2 ms whatever its size; 2-core VM, 2026-11-25), small
#: uint8 images are reduced with numpy alone (``backends/cpu_small.py``), and a folder run whose first
#: image is small hands :data:`SMALL_TASK` files to a worker at a time.
SMALL_PART = 1 << 16

#: values per thread from which a CPU loop runs in several threads: starting and joining a Python
#: thread costs ~0.1 ms, the time the loops take for ~0.3 M values (2-core VM, 2026-12-04).
PER_THREAD = 1 << 19

#: pixels per work item of the numba uint8 histogram loop (a work item is one (row, pixel-block)). Not
#: chosen by a recorded measurement (2026-11-25): 64 K pixels keep a work item's reads in cache and
#: give a thread enough items to balance a batch of a few large images.
HIST_BLOCK = 1 << 16

#: values per plane when small uint8 images are reduced with numpy (``backends/cpu_small.py``): its
#: arrays (a few times its size) stay in a core's cache and below the sizes malloc hands to mmap.
#: 256 CIFAR images took 2.2-2.8 ms in one plane and 1.2 ms in planes of this size; 4x larger planes
#: ran 2x slower (2-core VM, 2026-11-28).
PLANE_VALUES = 3 << 16

#: elements from which exact moments (``numerics.exact_moments``) take the vectorized int64 path
#: instead of a Python loop: that path's ~25 numpy calls cost ~60 us (2-core VM, 2026-11-28).
EXACT_VECTOR_FROM = 24

# ============================================================================ CUDA (backends/cuda.py)

#: ``strategy="auto"`` per dtype for moments (histograms: :data:`AUTO_HISTOGRAM_STRATEGY`; co-moments,
#: per-image sums: atomic). Measured: ``bench/results/h200-2026-11-27-gpu_check.json`` (NVIDIA H200,
#: commit 22c3409): vec is the fastest per call in both layouts at 8 MiB, 256 MiB and 1 GiB for uint8,
#: float16, bfloat16 and float32 (except bfloat16 NHWC at 8 MiB, where warp is 1.0x), e.g. uint8 NCHW
#: 1 GiB: vec 2785 GB/s per call vs hist8 934, warp 542. Not measured: uint16 and float64 (design
#: choices). On another GPU, ``gpustats bench`` compares the strategies.
AUTO_STRATEGY = {"uint8": "vec", "uint16": "atomic", "float16": "vec", "bfloat16": "vec",
                 "float32": "vec", "float64": "tree"}
#: ``strategy="auto"`` for uint8 with histograms: hist8 (kernel 0.26-0.34 of the roofline at 1 GiB,
#: vs atomic 0.11-0.14, same results file)
AUTO_HISTOGRAM_STRATEGY = "hist8"

#: seconds of numpy time per loop and process after which the CPU backend compiles the numba loop
#: (:mod:`gpustats.backends.cpu_loops`): about what one loop's first compile costs on the 2-core VM
#: (2026-12-05, cold cache: u8_sums 2.5 s, float_rows 0.9 s, each plus ~0.4 s to import numba), so a
#: process never loses more than about one compile to the numpy twins and a short one compiles nothing.
LOOP_COMPILE_BUDGET_S = 1.0

#: the same for a loop this machine compiled before (numba's per-user disk cache holds it): about what
#: importing numba and loading the loop costs a process (2-core VM, 2026-12-05: the first call of a
#: process with a warm cache took 0.80 s against 0.51 s in numpy, both with torch's import left out).
LOOP_LOAD_BUDGET_S = 0.3

#: the numpy twins' seconds per value before a process has timed its own (then its own rate is used):
#: the slowest of three shapes (64x3x50176 and 64x50176x3, 1024x3x1024) measured on the 2-core VM
#: (2026-12-05, quiet; the numba loops: 0.4-4.5 ns per value), rounded up.
NUMPY_LOOP_S_PER_VALUE = {"u8_sums": 3e-9, "u8_sum_rows": 3e-9, "int_rows": 18e-9, "hist_u8": 10e-9,
                          "float_rows": 40e-9, "hist_float": 26e-9}
