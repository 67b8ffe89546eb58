"""``Accumulator.update`` at the batch sizes training loops use, beside torch on the same tensor (a GPU script).

What issue 24 measures per update (rows of the kit's ``calls`` section, ``bench/gpu_check.sh``):

* ``host_us``: host time for ``update`` to return, 50 back-to-back updates of the same device
  tensor (after warm-up), no synchronization inside the loop;
* ``per_update_us``: the same loop including the GPU work (one ``torch.cuda.synchronize`` after it);
* ``torch_per_update_us``: ``var_mean`` + ``amin`` + ``amax`` over the same tensor (converted to
  float32 first for uint8, as a user would), measured the same way;
* ``fast_updates`` / ``launcher_launches``: proof of which path ran (the fixed-cost path skips the
  batch adapter; the launcher skips numba's dispatcher);

and, from two fresh processes sharing an empty cubin cache (``NUMBA_CACHE_DIR``), the first
update's seconds per kernel: ``cold`` (compiles, stores) then ``warm`` (loads the cubin).

    python bench/gpu_calls.py OUT.json          # on a GPU box (the kit runs it as its calls section)
    NUMBA_ENABLE_CUDASIM=1 python bench/gpu_calls.py OUT.json --dry   # tiny shapes, simulator
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: (case, dtype, shape, layout, options): the issue's table, in the order it lists it
CASES = [
    ("uint8 128x3x32x32", "uint8", (128, 3, 32, 32), "NCHW", {}),
    ("uint8 256x3x224x224", "uint8", (256, 3, 224, 224), "NCHW", {}),
    ("float32 64x3x224x224", "float32", (64, 3, 224, 224), "NCHW", {}),
    ("float32 256x3x224x224", "float32", (256, 3, 224, 224), "NCHW", {}),
    ("uint8 256x3x224x224 histogram+covariance", "uint8", (256, 3, 224, 224), "NCHW",
     {"histogram": True, "covariance": True}),
    ("uint8 256x3x224x224 per_image", "uint8", (256, 3, 224, 224), "NCHW", {"per_image": True}),
    ("uint8 256x3x224x224 all three", "uint8", (256, 3, 224, 224), "NCHW",
     {"histogram": True, "covariance": True, "per_image": True}),
    ("uint8 NHWC 256x224x224x3 nan_policy=raise", "uint8", (256, 224, 224, 3), "NHWC", {}),
    ("uint8 NHWC 256x224x224x3 nan_policy=omit", "uint8", (256, 224, 224, 3), "NHWC", {"nan_policy": "omit"}),
]
#: the simulator runs every thread in Python: tiny shapes there
DRY_SHAPES = {"NCHW": (2, 3, 8, 8), "NHWC": (2, 8, 8, 3)}
UPDATES = 50


def _tensor(dtype: str, shape, device: str):
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    if dtype == "uint8":
        return torch.randint(0, 256, shape, dtype=torch.uint8, device=device, generator=g)
    return torch.rand(shape, dtype=getattr(torch, dtype), device=device, generator=g)


def torch_baseline(x, layout: str):
    import torch

    xf = x.float() if x.dtype == torch.uint8 else x
    dims = (0, 2, 3) if layout == "NCHW" else (0, 1, 2)
    v, m = torch.var_mean(xf, dim=dims)
    return v, m, xf.amin(dim=dims), xf.amax(dim=dims)


def _loop(fn, n: int, sync, warmup: int = 3) -> tuple[float, float]:
    """(host seconds per call, seconds per call including the GPU work) over ``n`` back-to-back calls."""
    for _ in range(warmup):
        fn()
    sync()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    host = time.perf_counter() - started
    sync()
    return host / n, (time.perf_counter() - started) / n


def measure_calls(dry: bool, left=lambda: 1e9, save=lambda rows: None, skip=lambda what, why: None) -> list[dict]:
    """One row per case (module docstring); ``left()`` seconds remain, ``save(rows)`` keeps partial results."""
    import torch

    from gpustats import Accumulator

    device = "cpu" if dry else "cuda"
    sync = (lambda: None) if dry else torch.cuda.synchronize
    n, warmup = (1, 0) if dry else (UPDATES, 3)
    driver = _simulator_driver() if dry else None
    rows: list[dict] = []
    tensors: dict = {}
    for case, dtype, shape, layout, options in CASES:
        if left() < (2 if dry else 6):
            skip(f"calls: {case}", "the calls section's time budget ran out")
            continue
        shape = DRY_SHAPES[layout] if dry else shape
        key = (dtype, shape)
        if key not in tensors:
            tensors.clear()
            if not dry:
                torch.cuda.empty_cache()
            tensors[key] = _tensor(dtype, shape, device)
        x = tensors[key]
        row = {"case": case, "dtype": dtype, "shape": list(shape), "layout": layout,
               "options": ",".join(f"{k}={v}" for k, v in options.items()) or "moments", "updates": n}
        try:
            acc = Accumulator(device="cuda", layout=layout, **options)
            if driver is not None:  # the dry run: the fixed-cost path too, its kernels run by the simulator
                acc._reducer.driver = driver
            started = time.perf_counter()
            acc.update(x)
            sync()
            row["first_update_s"] = time.perf_counter() - started
            host, wall = _loop(lambda: acc.update(x), n, sync, warmup)
            started = time.perf_counter()
            acc.result()
            row["result_ms"] = (time.perf_counter() - started) * 1e3
            reducer = acc._reducer
            row.update(host_us=host * 1e6, per_update_us=wall * 1e6, strategy=acc.strategy,
                       fast_updates=getattr(reducer, "fast_updates", None),
                       launcher_launches=getattr(reducer, "launcher_launches", None),
                       kernel_launches=getattr(reducer, "kernel_launches", None),
                       launcher_error=getattr(reducer, "launcher_error", None))
            t_host, t_wall = _loop(lambda: torch_baseline(x, layout), n, sync, warmup)
            nbytes = x.numel() * x.element_size()
            row.update(torch_host_us=t_host * 1e6, torch_per_update_us=t_wall * 1e6,
                       vs_torch=t_wall / wall, bytes=nbytes, gbps=nbytes / wall / 1e9)
        except Exception as exc:  # keep going: record it
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
        rows.append(row)
        save(rows)
        acc = None
    base = {r["case"]: r for r in rows if "per_update_us" in r}
    moments = base.get("uint8 256x3x224x224")
    for r in rows:
        if moments and "per_update_us" in r and r["dtype"] == "uint8" and r["layout"] == "NCHW":
            r["vs_moments"] = r["per_update_us"] / moments["per_update_us"]
    raise_row = base.get("uint8 NHWC 256x224x224x3 nan_policy=raise")
    omit_row = base.get("uint8 NHWC 256x224x224x3 nan_policy=omit")
    if raise_row and omit_row:
        omit_row["vs_raise"] = omit_row["per_update_us"] / raise_row["per_update_us"]
    save(rows)
    return rows


def _simulator_driver():
    """The test suite's stand-in driver that runs the launcher's kernels under the simulator, when the
    tests folder is importable (the kit's dry run puts it on the path); else None (numba's launch)."""
    try:
        from _launch_standin import SimulatorDriver
    except ImportError:
        return None
    return SimulatorDriver()


# ----------------------------------------------------------------------------- compile: cold vs warm cache

_FIRST_UPDATE = r"""
import json, sys, time
import torch
from gpustats import Accumulator
dry = globals().get("DRY", sys.argv[1:2] == ["dry"])  # DRY: set when the dry run runs this in its process
out = []
for dtype, shape in (("uint8", (2, 3, 224, 224)), ("float32", (2, 3, 224, 224))):
    x = torch.ones(shape, dtype=getattr(torch, dtype)) if dry else torch.ones(shape, dtype=getattr(torch, dtype), device="cuda")
    if dry:
        x = x[:, :, :8, :8].contiguous()
    acc = Accumulator(device="cuda")
    started = time.perf_counter()
    acc.update(x)
    if not dry:
        torch.cuda.synchronize()
    launchers = [l for l in acc._reducer._launchers.values() if l is not None]
    out.append({"dtype": dtype, "first_update_s": time.perf_counter() - started,
                "compiled": [bool(l.compiled) for l in launchers], "launcher": bool(launchers)})
print("FIRST-UPDATE " + json.dumps(out))
"""


def measure_compile(dry: bool, timeout: float = 120.0) -> dict:
    """First-update seconds per vec kernel in two fresh processes sharing an empty cache folder."""
    folder = tempfile.mkdtemp(prefix="gpustats-cubin-cache-")
    env = dict(os.environ, NUMBA_CACHE_DIR=folder, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    if dry:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    result: dict = {"cache_dir": folder}
    for run in ("cold",) if dry else ("cold", "warm"):
        started = time.perf_counter()
        if dry:  # no cubins under the simulator: the script runs here, once, to check it (a fresh process costs ~10 s)
            import contextlib
            import io

            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(_FIRST_UPDATE, "<first update>", "exec"), {"__name__": "__first_update__", "DRY": True})
            proc = subprocess.CompletedProcess([], 0, out.getvalue(), "")
        else:
            proc = subprocess.run([sys.executable, "-c", _FIRST_UPDATE, "gpu"], env=env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=timeout)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("FIRST-UPDATE ")), None)
        if proc.returncode != 0 or line is None:
            result[run] = {"error": (proc.stderr or proc.stdout)[-1500:]}
            continue
        result[run] = {"process_s": time.perf_counter() - started,
                       "kernels": json.loads(line[len("FIRST-UPDATE "):])}
    result["cached_files"] = sorted(p.name for p in Path(folder).rglob("*.cubin"))
    return result


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSON file to write")
    parser.add_argument("--dry", action="store_true", help="simulator, tiny shapes (set NUMBA_ENABLE_CUDASIM=1)")
    args = parser.parse_args(argv)
    doc = {"calls": measure_calls(args.dry), "compile": measure_compile(args.dry)}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    for r in doc["calls"]:
        print(f"{r['case']:48s} host {r.get('host_us', float('nan')):8.1f} us  per update "
              f"{r.get('per_update_us', float('nan')):9.1f} us  torch {r.get('torch_per_update_us', float('nan')):9.1f} us"
              f"  {r.get('error', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
