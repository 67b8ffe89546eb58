"""Every strategy's kernels compile for a real GPU (sm_90, H100/H200), checked without a GPU.

The simulator runs kernels as Python and so cannot see what only the CUDA compiler rejects (it
once missed that ``cuda.local.array(2 * C, ...)`` does not compile: numba-cuda does not fold
``2 * C``). Here ``numba.cuda.compile_ptx`` lowers each kernel through NVVM to PTX and, when the
CUDA toolkit's ``ptxas`` is present, assembles it for sm_90 and checks for register spills.
Needs libNVVM (CUDA toolkit) and NVRTC (the ``nvidia-cuda-nvrtc`` wheel of the ``test`` extra);
skips with the reason where they are missing. It cannot run under the simulator.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
    pytest.skip("compile_ptx needs the real CUDA target, not the simulator", allow_module_level=True)

CC = (9, 0)
THREADS = 256
PTXAS = shutil.which("ptxas") or ("/usr/local/cuda/bin/ptxas" if os.path.exists("/usr/local/cuda/bin/ptxas") else None)
# numba.cuda and the kernels are imported by the tests, not at collection (a pytest-xdist worker that
# runs none of these tests does not pay for them)


class _Sm90:
    compute_capability = CC


@functools.lru_cache(maxsize=None)
def _toolchain_reason() -> str | None:
    from numba import cuda, types

    def probe(out):
        out[0] = 1

    try:
        cuda.compile_ptx(probe, (types.int64[:],), cc=CC)
    except Exception as exc:  # NVVM/NVRTC missing or unusable
        return f"numba.cuda.compile_ptx is unavailable here ({type(exc).__name__}: {str(exc)[:200]})"
    return None


@pytest.fixture(autouse=True)
def _device_functions_compile_for_sm90(monkeypatch):
    """Skips where NVVM/NVRTC are missing. Device functions (``forceinline``) are compiled for the current
    device's compute capability; without a GPU there is none, so they are compiled for sm_90 like the kernels."""
    reason = _toolchain_reason()
    if reason is not None:
        pytest.skip(reason)
    import numba.cuda.dispatcher as dispatcher
    from numba import cuda

    try:
        usable = cuda.is_available()
    except Exception:
        usable = False
    if not usable:
        monkeypatch.setattr(dispatcher, "get_current_device", lambda: _Sm90())


def _bank(dtype):  # exact int64 sums for integer input, float64 otherwise
    from numba import types

    t = types.int64 if dtype.startswith("uint") else types.float64
    return types.Array(t, 1, "A"), types.Array(t, 2, "A")


def kernels(strategy: str, dtype: str, layout: str, channels: int):
    """(name, kernel, signature) of every kernel the strategy launches for these inputs."""
    from numba import types

    from gpustats.kernels import atomic, hist8, tree, vec, warp, welford

    X = {"uint8": types.uint8, "uint16": types.uint16, "float16": types.float16, "bfloat16": types.uint16,
         "float32": types.float32, "float64": types.float64}
    F1, I1, I2, F2 = types.float64[:], types.int64[:], types.int64[:, :], types.float64[:, :]
    x = types.Array(X[dtype], 3, "A")
    b1, b2 = _bank(dtype)
    tag = f"{strategy}-{dtype}-{layout}-C{channels}"
    if strategy == "tree":
        part, merge = tree._build(dtype, layout, channels, THREADS)
        return [(tag + "-partial", part, (x, F1, I2, b2, F2)),
                (tag + "-merge", merge, (types.int64, I2, b2, F2, I1, I1, b1, b1, F1, F1))]
    if strategy == "warp":
        return [(tag, warp._build(dtype, layout, channels, THREADS), (x, F1, I1, I1, b1, b1, F1, F1))]
    if strategy == "welford":
        part, merge = welford._build(dtype, layout, channels, THREADS)
        return [(tag + "-partial", part, (x, F1, I2, F2, F2)),
                (tag + "-merge", merge, (types.int64, I2, F2, F2, I1, I1, F1, F1, F1, F1, I1, F1, F1))]
    if strategy == "vec":
        # the signature the fixed-cost launcher compiles (on a GPU the kernels load through the input's address):
        # address x2, 5 sizes, partials, ticket, itotals, ftotals, status row, check
        signature = vec.kernel_argtypes(dtype)
        if dtype == "uint8":
            return [(tag, vec.build_u8(layout, channels, THREADS), signature)]
        return [(tag, vec.build_wide(dtype, layout, channels, THREADS, 256), signature)]
    if strategy == "hist8":
        hist, finish = hist8._build(layout, channels, THREADS)
        return [(tag + "-hist", hist, (x, I2)),
                (tag + "-finish", finish, (I2, types.boolean, I2, I1, I1, I1, F1, F1))]
    histogram, cross, per_image = {"atomic": (False, False, False), "atomic+all": (dtype == "uint8", True, True)}[strategy]
    k = atomic._build(dtype, layout, channels, THREADS, histogram, cross, per_image)
    sums = I2 if per_image and dtype in ("uint8", "uint16") else F2  # per-image sums: int64 for integer input
    return [(tag, k, (x, F1, I1, I1, b1, b1, F1, F1, I2, b2, I2, sums, sums))]


CASES = [
    ("atomic", "uint8", "CP", 3), ("atomic", "float32", "PC", 3), ("atomic", "float16", "CP", 1),
    ("atomic+all", "uint8", "PC", 3), ("atomic+all", "uint16", "CP", 3), ("atomic+all", "float32", "CP", 4),
    ("tree", "uint8", "CP", 3), ("tree", "bfloat16", "PC", 3),
    ("warp", "float32", "CP", 3), ("warp", "uint16", "PC", 4),
    ("welford", "float32", "PC", 3), ("welford", "float64", "CP", 1),
    ("hist8", "uint8", "CP", 3), ("hist8", "uint8", "PC", 4),
    ("vec", "uint8", "CP", 3), ("vec", "uint8", "PC", 3), ("vec", "uint8", "PC", 4), ("vec", "uint16", "PC", 3),
    ("vec", "float16", "CP", 3), ("vec", "float16", "PC", 3), ("vec", "bfloat16", "PC", 3),
    ("vec", "float32", "CP", 3), ("vec", "float32", "PC", 3), ("vec", "float32", "PC", 16),
]


def group_of(case: tuple) -> str:
    """The cases that share device functions (helpers typed alike) compile in one test, so in one
    process: numba compiles a device function once per process and argument types. All 24 cases one
    by one in fresh processes took 100 s on the 2-core VM; in these four groups, 64 s."""
    strategy, dtype = case[0], case[1]
    if strategy == "vec":
        return "vec-uint8" if dtype == "uint8" else "vec-wide"
    return "atomic" if strategy.startswith("atomic") else "tree-warp-welford-hist8"


GROUPS = {group: [case for case in CASES if group_of(case) == group] for group in dict.fromkeys(map(group_of, CASES))}


def problems_of(strategy: str, name: str, kernel, signature, folder) -> list[str]:
    """What is wrong with one kernel's PTX and, with ptxas, its sm_90 code (empty: nothing)."""
    from numba import cuda

    try:
        ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=CC)
    except Exception as exc:  # every kernel of the group is still tried
        return [f"{name}: does not compile: {type(exc).__name__}: {str(exc)[-2000:]}"]
    found = [] if ".entry" in ptx else [f"{name}: no .entry in the PTX"]
    if strategy == "vec":  # the point of the strategy: 16-byte loads in the hot loop
        if "ld.global.nc.v4.u32" not in ptx:
            found.append(f"{name}: no 16-byte loads (ld.global.nc.v4.u32) in the PTX")
        # the launcher's parameter block has the kernel's parameters, in order, with their sizes
        from gpustats.kernels._launch import ParamBlock

        entry = ptx.split(".entry", 1)[1].split(")", 1)[0]
        declared = [int(bits) // 8 for bits in re.findall(r"\.param \.[a-z](\d+) ", entry)]
        if declared != ParamBlock(signature).sizes():
            found.append(f"{name}: .param sizes {declared} are not the launcher's {ParamBlock(signature).sizes()}")
    if PTXAS is None:
        return found
    path = folder / f"{name}.ptx"
    path.write_text(ptx)
    out = subprocess.run([PTXAS, f"-arch=sm_{CC[0]}{CC[1]}", "-v", str(path), "-o", os.devnull],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return found + [f"{name}: ptxas failed:\n{out.stderr[-2000:]}"]
    if any(int(v) for v in re.findall(r"(\d+) bytes spill stores", out.stderr)):
        found.append(f"{name} spills registers:\n{out.stderr[-1000:]}")
    return found


@pytest.mark.parametrize("group", list(GROUPS))
def test_kernels_compile_for_sm90(group, tmp_path):
    """Every kernel of every case of the group; a failure names each kernel that failed and why."""
    problems = []
    for strategy, dtype, layout, channels in GROUPS[group]:
        for name, kernel, signature in kernels(strategy, dtype, layout, channels):
            problems += problems_of(strategy, name, kernel, signature, tmp_path)
    assert not problems, "\n\n".join(problems)

