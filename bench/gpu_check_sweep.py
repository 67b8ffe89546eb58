"""The ``sweep`` section of ``bench/gpu_check.sh`` (what a section is: gpu_check_sections.py): every strategy
x dtype x layout x size, the torch baselines and the roofline, measured on the same tensors.

GPU timings are CUDA events on torch's current stream (``gpustats.benchmark.time_cuda``: warm-up,
then the median of the timed calls); under the simulator the same calls are timed with the host
clock. GB/s is input bytes read / median seconds, and every kernel row carries the fraction of the
roofline measured in the same process over the same tensor (device-to-device copy counted as read
+ write, and ``torch.sum``; the larger).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gpustats.benchmark import (
    DTYPES,
    GIB,
    LAYOUTS,
    MIB,
    Timing,
    bench_id,
    forum_recipe,
    image_batches,
    size_label,
    time_host,
    torch_moments,
)

#: sweep sizes in the order they are measured (the targets are at >= 256 MiB)
SWEEP_SIZES = (256 * MIB, GIB, 8 * MIB)
DRY_SWEEP_BYTES = 3 * 8 * 8 * 2  # two 8x8 RGB images of uint8 under the simulator
REPEATS = 10


def _dims(layout):
    return (0, 2, 3) if layout == "NCHW" else (0, 1, 2)


def _timer(ctx, fn, repeats=REPEATS, warmup=3) -> Timing:
    if ctx.dry:  # simulator timings mean nothing: run the code once, keep CI quick
        return time_host(fn, warmup=0, repeats=1)
    from gpustats.benchmark import time_cuda

    return time_cuda(fn, warmup=warmup, repeats=repeats)


# ----------------------------------------------------------------------------- strategy sweep


def _device_tensor(ctx, dtype, layout, nbytes):
    if ctx.dry:
        (x,) = image_batches(dtype, layout, nbytes, batch_images=64, hw=8, pool=2)
        return x
    per_image = 3 * 224 * 224 * torch.empty((), dtype=getattr(torch, dtype)).element_size()
    (x,) = image_batches(dtype, layout, nbytes, batch_images=max(1, round(nbytes / per_image)), hw=224,
                         device="cuda")
    return x


def _strategy_call(ctx, name, x, dtype, layout):
    """A no-argument call reducing ``x`` with strategy ``name`` (compiled now); ``call.acc`` its totals."""
    from gpustats import kernels
    from gpustats.benchmark import kernel_call, kernel_view

    histogram = name == "hist8"
    module = kernels.get_strategy(name)
    if not ctx.dry:
        return kernel_call(module.reduce, x, dtype, layout, histogram=histogram)
    view = np.ascontiguousarray(kernel_view(x, layout).numpy())
    acc = kernels.Accumulators.zeros(3, integer=dtype == "uint8", histogram=histogram and dtype == "uint8")

    def call():
        module.reduce(view, LAYOUTS[layout], dtype, acc, histogram=histogram)

    call()
    acc.reset()
    call.acc = acc
    call.x = x
    return call


def _check(call, x, layout, dtype) -> dict:
    """One call on a fresh total, compared with torch in float64 (uint8: the exact integer sum)."""
    call.acc.reset()
    call()
    host = call.acc.to_host()
    dims = _dims(layout)
    if dtype == "uint8":
        want = x.sum(dim=dims, dtype=torch.int64).cpu().tolist()
        got = [int(v) for v in host["isum"]]
        count_ok = [int(v) for v in host["count"]] == [x.numel() // 3] * 3
        return {"exact_sum": got == want and count_ok}
    ref = (x.sum(dim=dims, dtype=torch.float64) / (x.numel() // 3)).cpu().numpy()
    n = host["count"].astype(np.float64)
    mean = host["shift"] + host["fsum"] / np.maximum(n, 1)
    err = float(np.max(np.abs(mean - ref) / np.maximum(np.abs(ref), 1e-30)))
    return {"mean_rel_err": err, "mean_ok": err < 1e-6 and bool(np.all(n == x.numel() // 3))}


BASELINES = {
    "torch-var_mean+aminmax": lambda x, layout: torch_moments(x, layout),
    "torch-std_mean": lambda x, layout: torch.std_mean(x.float() if x.dtype == torch.uint8 else x,
                                                       dim=_dims(layout), correction=0),
    "torch-bincount": lambda x, layout: torch_moments(x, layout, histogram=True)[-1],
    "forum-recipe": lambda x, layout: forum_recipe([x], layout),
}


def _device_seconds(calls: dict, repeats: int = 3) -> dict:
    """Kernel time per call of each named callable, from the CUDA profiler (CUPTI), launch overhead excluded.

    Each callable runs ``repeats`` times inside a ``record_function`` range; every kernel is assigned
    to the range holding the host call that launched it (matched by correlation id), so the sums are
    device time only. Returns name -> seconds per call (missing when no kernel was seen).
    """
    import json as _json

    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for name, call in calls.items():
            with record_function(f"gpustats-sweep:{name}"):
                for _ in range(repeats):
                    call()
            torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = _json.loads(path.read_text()).get("traceEvents", [])
    ranges = [(e["ts"], e["ts"] + e.get("dur", 0), e["name"].split(":", 1)[1]) for e in events
              if e.get("cat") == "user_annotation" and str(e.get("name", "")).startswith("gpustats-sweep:")]
    launched = {e["args"]["correlation"]: e["ts"] for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    totals: dict = {}
    for e in events:
        if e.get("cat") != "kernel":
            continue
        ts = launched.get(e.get("args", {}).get("correlation"))
        for start, end, name in ranges:
            if ts is not None and start <= ts <= end:
                totals[name] = totals.get(name, 0.0) + e.get("dur", 0.0) * 1e-6
                break
    return {name: total / repeats for name, total in totals.items()}


def _roofline(ctx, x) -> dict:
    nbytes = x.numel() * x.element_size()
    dst = torch.empty_like(x)
    copy = _timer(ctx, lambda: dst.copy_(x))
    total = _timer(ctx, lambda: x.sum())
    copy_gbps = 2 * nbytes / copy.median / 1e9
    sum_gbps = nbytes / total.median / 1e9
    return {"copy_gbps": copy_gbps, "sum_gbps": sum_gbps, "roofline_gbps": max(copy_gbps, sum_gbps)}


def _sweep_plan(names, dry: bool) -> dict:
    """(dtype, layout) -> the strategies measured there: all of them on a GPU; in the dry run one each,
    rotating, so that every strategy, dtype and layout runs at least once (the simulator is slow)."""
    combos = [(dtype, layout) for dtype in DTYPES for layout in LAYOUTS]
    if not dry:
        return {combo: list(names) for combo in combos}
    plan, pending = {}, list(names)
    for dtype, layout in combos:
        fits = [n for n in names if n != "hist8" or dtype == "uint8"]
        waiting = [n for n in pending if n in fits]
        if dtype == "uint8" and "hist8" in waiting:
            waiting.insert(0, waiting.pop(waiting.index("hist8")))
        pick = waiting[0] if waiting else fits[len(plan) % len(fits)]
        if pick in pending:
            pending.remove(pick)
        plan[(dtype, layout)] = [pick]
    return plan


def sweep(ctx) -> dict:
    """Every strategy x dtype x layout x size, the torch baselines and the roofline (same tensors)."""
    from gpustats import kernels

    names = [n for n in kernels.STRATEGIES if not (ctx.dry and not kernels.STRATEGIES[n].SUPPORTS_SIMULATOR)]
    if ctx.dry:
        ctx.skip("sweep: strategy warp", "the numba simulator has no warp shuffles (real GPU only)")
    sizes = [DRY_SWEEP_BYTES] if ctx.dry else list(SWEEP_SIZES)
    result = {"rows": [], "baselines": [], "roofline": [], "compile_s": {}, "checks": [], "unsupported": [],
              "repeats": 1 if ctx.dry else REPEATS, "timer": "host perf_counter (simulator)" if ctx.dry else
              "CUDA events, median"}
    plan = _sweep_plan(names, ctx.dry)
    # 1. compile every kernel on small tensors of the same dtype/layout (while the tests run)
    calls_small = {}
    for dtype in DTYPES:
        for layout in LAYOUTS:
            small = _device_tensor(ctx, dtype, layout, DRY_SWEEP_BYTES if ctx.dry else 2 * 3 * 224 * 224)
            for name in plan[(dtype, layout)]:
                started = time.perf_counter()
                try:
                    calls_small[(name, dtype, layout)] = _strategy_call(ctx, name, small, dtype, layout)
                except (ValueError, NotImplementedError, RuntimeError, TypeError) as exc:
                    result["unsupported"].append({"strategy": name, "dtype": dtype, "layout": layout,
                                                  "reason": str(exc)[:200]})
                    continue
                result["compile_s"][f"{name}-{dtype}-{layout}"] = round(time.perf_counter() - started, 2)
    ctx.save(result)
    ctx.wait_for_go()
    # 2. measure, 256 MiB first
    for size in sizes:
        for dtype in DTYPES:
            for layout in LAYOUTS:
                label = bench_id("*", dtype, layout, size)
                if ctx.left() < (3 if ctx.dry else 8):
                    ctx.skip(f"sweep: {label}", "the sweep's time budget ran out")
                    continue
                x = _device_tensor(ctx, dtype, layout, size)
                nbytes = x.numel() * x.element_size()
                roof = _roofline(ctx, x)
                result["roofline"].append({"dtype": dtype, "layout": layout, "bytes": nbytes, **roof})
                base_time = None
                profiled: dict = {}
                first_baseline = len(result["baselines"])
                for base, fn in BASELINES.items():
                    if base == "torch-bincount" and dtype != "uint8":
                        continue
                    timing = _timer(ctx, lambda fn=fn: fn(x, layout))
                    gbps = nbytes / timing.median / 1e9
                    if base == "torch-var_mean+aminmax":
                        base_time = timing.median
                    profiled[f"baseline:{base}"] = lambda fn=fn: fn(x, layout)
                    result["baselines"].append({"baseline": base, "dtype": dtype, "layout": layout, "bytes": nbytes,
                                                "gbps": gbps, "roofline_frac": gbps / roof["roofline_gbps"],
                                                **timing.to_dict()})
                first_row = len(result["rows"])
                for name in plan[(dtype, layout)]:
                    if (name, dtype, layout) not in calls_small:
                        continue
                    # the dry run measures on the tensor it compiled with (the same tiny size): one run less
                    call = calls_small[(name, dtype, layout)] if ctx.dry else _strategy_call(ctx, name, x, dtype, layout)
                    if ctx.dry:
                        x = call.x
                    timing = _timer(ctx, call)
                    gbps = nbytes / timing.median / 1e9
                    # back to back, as a training loop calls it: host work overlaps the previous kernels
                    loops = 10
                    loop = timing if ctx.dry else _timer(ctx, lambda call=call: [call() for _ in range(loops)],
                                                         repeats=3, warmup=1)
                    if ctx.dry:
                        loops = 1  # the simulator is slow and its timings mean nothing: the single call stands in
                    result["rows"].append({"strategy": name, "dtype": dtype, "layout": layout, "bytes": nbytes,
                                           "size": size_label(nbytes), "gbps": gbps,
                                           "roofline_frac": gbps / roof["roofline_gbps"],
                                           "vs_torch_var_mean_aminmax": base_time / timing.median,
                                           "gbps_loop": loops * nbytes / loop.median / 1e9,
                                           "histogram": name == "hist8", **timing.to_dict()})
                    result["checks"].append({"id": bench_id(name, dtype, layout, nbytes), **_check(call, x, layout, dtype)})
                    profiled[name] = call
                    call = None
                if not ctx.dry:  # kernel (device) time, launch overhead excluded
                    try:
                        device = _device_seconds(profiled)
                    except Exception as exc:
                        device = {}
                        ctx.skip(f"sweep: kernel times {label}", f"profiler failed: {type(exc).__name__}: {exc}"[:300])
                    for row in result["rows"][first_row:]:
                        seconds = device.get(row["strategy"])
                        if seconds:
                            row["kernel_s"] = seconds
                            row["kernel_gbps"] = nbytes / seconds / 1e9
                            row["kernel_roofline_frac"] = row["kernel_gbps"] / roof["roofline_gbps"]
                    for row in result["baselines"][first_baseline:]:
                        seconds = device.get(f"baseline:{row['baseline']}")
                        if seconds:
                            row["kernel_s"] = seconds
                            row["kernel_gbps"] = nbytes / seconds / 1e9
                    torch_kernel = next((r.get("kernel_s") for r in result["baselines"][first_baseline:]
                                         if r["baseline"] == "torch-var_mean+aminmax"), None)
                    for row in result["rows"][first_row:]:
                        if torch_kernel and row.get("kernel_s"):
                            row["kernel_vs_torch_var_mean_aminmax"] = torch_kernel / row["kernel_s"]
                profiled = None
                x = None
                if not ctx.dry:
                    torch.cuda.empty_cache()
                ctx.save(result)
    return result
