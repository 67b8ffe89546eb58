"""The torch recipes on the same device tensors as bench_kernels.py (real GPU only).

* ``var_mean+aminmax``: ``torch.var_mean`` (uint8 via ``.float()``) + ``torch.aminmax`` per channel;
* ``std_mean``: ``torch.std_mean`` per channel;
* ``bincount`` / ``histc`` (uint8 only): 256-bin per-channel histograms, the first as one
  ``torch.bincount`` over ``value + 256 * channel``, the second one ``torch.histc`` per channel;
* ``forum-recipe``: ``x.float() / 255`` then ``mean``/``std`` over the non-channel dims.

Same timer, ids (``bincount-uint8-NCHW-256MiB``) and extra_info as bench_kernels.py.

    pytest bench/bench_baselines.py --benchmark-enable
"""

from __future__ import annotations

import pytest
import torch

from benchlib import SUITE_DTYPES, SUITE_LAYOUTS, needs_gpu, rounds, sizes, timing_info
from gpustats.benchmark import KERNEL_SIZES, MIB, CudaEventTimer, bench_id, forum_recipe, torch_moments

pytestmark = needs_gpu


def _dims(layout):
    return (0, 2, 3) if layout == "NCHW" else (0, 1, 2)


BASELINES = {
    "var_mean+aminmax": lambda x, layout: torch_moments(x, layout),
    "std_mean": lambda x, layout: torch.std_mean(x.float() if x.dtype == torch.uint8 else x, dim=_dims(layout),
                                                 correction=0),
    "bincount": lambda x, layout: torch_moments(x, layout, histogram=True)[-1],
    "histc": lambda x, layout: torch_moments(x, layout, histogram=True, histc=True)[-1],
    "forum-recipe": lambda x, layout: forum_recipe([x], layout),
}
UINT8_ONLY = {"bincount", "histc"}

SIZES = sizes(KERNEL_SIZES)
PARAMS = [pytest.param(name, dtype, layout, size, id=bench_id(name, dtype, layout, size))
          for size in SIZES for dtype in SUITE_DTYPES for layout in SUITE_LAYOUTS for name in BASELINES
          if dtype == "uint8" or name not in UINT8_ONLY]


@pytest.mark.benchmark(group="baselines", disable_gc=True)
@pytest.mark.parametrize("baseline, dtype, layout, size", PARAMS)
def test_baseline(benchmark, device_data, baseline, dtype, layout, size):
    x, roof = device_data.get(dtype, layout, size)
    nbytes = x.numel() * x.element_size()
    fn = BASELINES[baseline]
    timer = CudaEventTimer(lambda: fn(x, layout))
    for _ in range(3):
        fn(x, layout)
    torch.cuda.synchronize()
    benchmark.pedantic(timer, rounds=rounds(20), iterations=1, warmup_rounds=0)
    info = timing_info(timer.timing(), nbytes)
    info.update(baseline=baseline, dtype=dtype, layout=layout, size_mib=size / MIB, **roof,
                roofline_frac=info["gbps"] / roof["roofline_gbps"])
    benchmark.extra_info.update(info)
    assert info["gbps"] > 0
