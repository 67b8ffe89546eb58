"""Every kernel strategy x dtype x layout x size on device-resident tensors (real GPU only).

Ids read ``hist8-uint8-NCHW-256MiB``. Each benchmark warms up, then pytest-benchmark's pedantic
mode calls a :class:`~gpustats.benchmark.CudaEventTimer`: the kernel runs between two CUDA events
on torch's current stream and the call waits for the end event, so pytest-benchmark's own host
figures include launch overhead and one synchronization, while ``extra_info`` carries the device
time from the events (median, min, max, IQR), bytes read, GB/s and the fraction of a roofline
measured in this session over the same tensor (D2D copy counted as read + write, and
``torch.sum``; the larger is the roofline). Unsupported strategy/dtype pairs skip with the reason.

    pytest bench/bench_kernels.py --benchmark-enable
    GPUSTATS_BENCH_SIZES=256MiB pytest bench/bench_kernels.py --benchmark-enable -k uint8
"""

from __future__ import annotations

import pytest

from benchlib import SUITE_DTYPES, SUITE_LAYOUTS, needs_gpu, rounds, sizes, timing_info
from gpustats.benchmark import KERNEL_SIZES, MIB, CudaEventTimer, bench_id

pytestmark = needs_gpu

try:
    from gpustats.kernels import STRATEGIES

    NAMES = tuple(STRATEGIES)
except Exception:  # numba-cuda missing: the suite skips anyway, keep the ids stable
    NAMES = ("atomic", "tree", "warp", "welford", "hist8", "vec")

SIZES = sizes(KERNEL_SIZES)
# size, dtype, layout outside and the strategy inside: one device tensor serves consecutive tests
PARAMS = [pytest.param(name, dtype, layout, size, id=bench_id(name, dtype, layout, size))
          for size in SIZES for dtype in SUITE_DTYPES for layout in SUITE_LAYOUTS for name in NAMES]


@pytest.mark.benchmark(group="kernels", disable_gc=True)
@pytest.mark.parametrize("strategy, dtype, layout, size", PARAMS)
def test_kernel(benchmark, device_data, strategy, dtype, layout, size):
    from gpustats.benchmark import kernel_call, kernel_strategies

    x, roof = device_data.get(dtype, layout, size)
    nbytes = x.numel() * x.element_size()
    histogram = strategy == "hist8"
    try:
        call = kernel_call(kernel_strategies()[strategy], x, dtype, layout, histogram=histogram)
    except (ValueError, NotImplementedError) as exc:
        pytest.skip(f"{strategy} does not handle {dtype}: {exc}")
    timer = CudaEventTimer(call)
    for _ in range(3):
        call()
    benchmark.pedantic(timer, rounds=rounds(20), iterations=1, warmup_rounds=0)
    info = timing_info(timer.timing(), nbytes)
    info.update(strategy=strategy, dtype=dtype, layout=layout, histogram=histogram, size_mib=size / MIB, **roof,
                roofline_frac=info["gbps"] / roof["roofline_gbps"])
    benchmark.extra_info.update(info)
    assert info["gbps"] > 0
