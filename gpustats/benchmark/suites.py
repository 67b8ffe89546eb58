"""The ``gpustats bench`` suites: CPU and CUDA rows, the table, the summary and the command."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from typing import Any, Callable, Sequence

import torch

from .timing import MIB, Timing, bench_id, parse_sizes, size_label, time_cuda, time_interleaved
from .workloads import (_TORCH, DTYPES, IMAGE_HW, LAYOUTS, _nbytes, _SCHEMA, cuda_roofline, forum_recipe, image_batches,
                        kernel_call, kernel_strategies, machine_info, numpy_two_pass, torch_moments)

def _row(*, suite: str, method: str, dtype: str, layout: str, nbytes: int, timing: Timing, **extra) -> dict:
    gbps = nbytes / timing.median / 1e9
    return {"suite": suite, "method": method, "strategy": extra.pop("strategy", method), "dtype": dtype,
            "layout": layout, "size": size_label(nbytes), "bytes": int(nbytes), "gbps": gbps,
            **timing.to_dict(), **extra}


def cpu_methods(layout: str) -> dict[str, Callable[[Sequence[torch.Tensor]], Any]]:
    """name -> function(batches) for the CPU comparison (``gpustats-cpu`` is the CPU backend)."""
    from ..api import compute_stats

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


def format_table(rows: Sequence[dict]) -> str:
    """The rows as a fixed-width text table."""
    header = ("strategy", "dtype", "layout", "size", "GB/s", "% roofline", "speed-up", "vs")
    lines = [header]
    for r in rows:
        frac = r.get("roofline_frac")
        gbps = f"{r['gbps']:.3f}" if r["gbps"] < 10 else f"{r['gbps']:.1f}"
        reference = r.get("method") == "memcpy"  # the machine's bandwidth, not a method: no speed-up
        lines.append((r["strategy"], r["dtype"], r["layout"], r["size"], gbps,
                      "-" if frac is None else f"{100 * frac:.1f}%", "-" if reference else f"{r['speedup']:.2f}x",
                      r["baseline"]))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = (str(v).ljust(w) if i < 4 or i == 7 else str(v).rjust(w) for i, (v, w) in enumerate(zip(line, widths)))
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    notes = []
    if any(r.get("method") == "memcpy" for r in rows):
        notes.append("memcpy: a torch copy of the same bytes, this machine's streaming bandwidth (a reference "
                     "for GB/s, so no speed-up)")
    if any(r.get("roofline_frac") is None for r in rows):
        notes.append("% roofline: measured on CUDA only, against a device-to-device copy in the same run ('-' here)")
    return "\n".join(out + notes)


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
    parser.add_argument("--sizes", type=_sizes, default=None,
                        help=f"comma-separated sizes, e.g. 8MiB,64MiB (a bare number is MiB; each from "
                             f"{MIN_SIZE >> 20} MiB to a quarter of this machine's memory)")
    parser.add_argument("--repeats", type=_repeats, default=None,
                        help="timed rounds per measurement, 1 or more (default 5, quick 3)")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="write machine info and every row to FILE (its folder must exist)")
    return parser


#: the smallest workload size ``--sizes`` accepts (smaller ones would round to one image: another size)
MIN_SIZE = 1 << 20


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes, or None when it cannot be read."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _sizes(text: str) -> list[int]:
    """argparse type of ``--sizes``: sizes in bytes, each from :data:`MIN_SIZE` to a quarter of the memory (a
    workload is held whole, beside its float copies)."""
    try:
        sizes = parse_sizes(text, ())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not sizes:
        raise argparse.ArgumentTypeError(f"expected sizes such as 8MiB,64MiB, got {text!r}")
    memory = memory_bytes()
    most = memory // 4 if memory else None
    for size in sizes:
        if size < MIN_SIZE or (most is not None and size > most):
            limit = f" and at most {size_label(most)} (a quarter of this machine's memory)" if most else ""
            raise argparse.ArgumentTypeError(f"size {size_label(size) if size > 0 else size} is out of range: each "
                                             f"size must be at least {size_label(MIN_SIZE)}{limit}")
    return sizes


def _repeats(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of rounds >= 1, got {text!r}")
    return value


def _default_device() -> str:
    from ..backends import cuda_unavailable_reason

    return "cuda" if torch.cuda.is_available() and cuda_unavailable_reason() is None else "cpu"


def run(args: argparse.Namespace) -> int:
    """Run ``gpustats bench``; prints the table, writes ``--json``; returns the exit status."""
    device = getattr(args, "device", None) or _default_device()
    quick = bool(getattr(args, "quick", False))
    sizes = getattr(args, "sizes", None)
    sizes = (_sizes(sizes) if isinstance(sizes, str) else list(sizes)) if sizes else None
    repeats = getattr(args, "repeats", None)
    json_path = getattr(args, "json", None)
    if json_path:  # before the run, not after it: the very write it will do is tried now
        from ..checkpoint import write_problem

        problem = write_problem(json_path, "--json")
        if problem is not None:
            print(f"gpustats bench: error: {problem}", file=sys.stderr)
            return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if device == "cuda":
        from ..backends import cuda_unavailable_reason

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
    if json_path:
        from ..checkpoint import atomic_target, atomic_write_bytes

        data = (json.dumps(result, indent=1) + "\n").encode("utf-8")
        target = atomic_target(json_path)
        if target is None:  # /dev/null, a pipe
            with open(json_path, "wb") as fh:
                fh.write(data)
        else:
            atomic_write_bytes(target, data)
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
