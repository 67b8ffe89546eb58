"""Issue 29, the first call: the CPU backend runs numpy twins until numba's compile pays for itself
(gpustats/backends/cpu_loops.py), and which of them ran never changes a bit of the result.

The cold-cache test runs in subprocesses with their own per-user cache folder and a timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gpustats import compute_stats
from gpustats.backends import cpu_loops, cpu_numpy_loops
from gpustats.batches import InputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_tiers(monkeypatch):
    """This process's loop history emptied for the test (and put back after)."""
    monkeypatch.setattr(cpu_loops, "_TIERS", {name: cpu_loops._Tier() for name in cpu_loops.LOOPS})
    return cpu_loops._TIERS


def _batches(dtype: str, layout: str) -> list:
    g = torch.Generator().manual_seed(5)
    shape = (3, 3, 17, 9) if layout == "NCHW" else (3, 17, 9, 3)
    if dtype == "uint8":
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    elif dtype == "int16":
        x = torch.randint(-32768, 32768, shape, dtype=torch.int16, generator=g)
    else:
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * 1e3 + 1e6).to(getattr(torch, dtype))
        x[0, 0, 0, 0] = float("nan")
    return [x, x[:1].clone()]


OPTION_SETS = [{}, {"histogram": True}, {"covariance": True}, {"per_image": True},
               {"histogram": True, "covariance": True, "per_image": True}]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32", "float16"])
def test_every_mode_gives_the_same_state_bit_for_bit(monkeypatch, fresh_tiers, dtype, layout):
    results = {}
    for mode in cpu_loops.MODES:
        monkeypatch.setenv(cpu_loops.ENV, mode)
        for i, options in enumerate(OPTION_SETS):
            kw = dict(options)
            if kw.get("histogram") and dtype != "uint8":
                kw.update(hist_bins=64, hist_range=(-40000.0, 2e6) if dtype != "int16" else (-32768.0, 32768.0))
            policy = "propagate" if kw.get("covariance") else "omit"  # co-moments need every channel
            r = compute_stats(_batches(dtype, layout), device="cpu", layout=layout, nan_policy=policy, **kw)
            results[mode, i] = json.dumps(r.state.to_dict(), sort_keys=True)
    for i in range(len(OPTION_SETS)):
        assert results["auto", i] == results["numba", i] == results["numpy", i], (dtype, layout, OPTION_SETS[i])


def test_the_mode_is_checked(monkeypatch):
    monkeypatch.setenv(cpu_loops.ENV, "fast")
    with pytest.raises(InputError, match="GPUSTATS_CPU_LOOPS='fast' is not a CPU loop mode: use one of auto, numba"):
        cpu_loops.Loops()
    with pytest.raises(ValueError, match="loops='jit'"):
        cpu_loops.Loops("jit")


def test_auto_runs_numpy_until_the_compile_budget_then_numba_for_good(monkeypatch, fresh_tiers):
    monkeypatch.setattr(cpu_loops, "_compiled_on_disk", lambda loop: False)
    loops = cpu_loops.Loops("auto")
    first = loops.get("float_rows", 1000)
    assert first.__name__ == "run"  # the timed twin
    tier = fresh_tiers["float_rows"]
    assert tier.values == 1000 and not tier.numba
    x = np.ones((1, 1, 1000))
    outs = [np.zeros((1, 1), np.int64 if i in (0, 6, 7, 8) else np.float64) for i in range(9)] + [np.zeros((1, 1, 1))]
    first(x, True, False, *outs, 0, 1)
    assert tier.spent > 0
    # a call whose estimated numpy time would pass the budget compiles the loop, and numba stays
    huge = int(cpu_loops.LOOP_COMPILE_BUDGET_S / cpu_loops.NUMPY_LOOP_S_PER_VALUE["float_rows"]) + 1
    assert loops.get("float_rows", huge) is cpu_loops._numba_loop("float_rows")
    assert tier.numba and loops.get("float_rows", 1) is cpu_loops._numba_loop("float_rows")
    # the history is per loop: the histogram loop is still numpy's
    assert loops.get("hist_float", 10).__name__ == "run"


def test_auto_compiles_once_the_numpy_time_spent_reaches_the_budget(monkeypatch, fresh_tiers):
    monkeypatch.setattr(cpu_loops, "_compiled_on_disk", lambda loop: False)
    fresh_tiers["u8_sums"].spent = cpu_loops.LOOP_COMPILE_BUDGET_S
    assert cpu_loops.Loops("auto").get("u8_sums", 1) is cpu_loops._numba_loop("u8_sums")


def test_auto_loads_a_loop_compiled_on_this_machine_once_past_the_load_budget(monkeypatch, fresh_tiers):
    monkeypatch.setattr(cpu_loops, "_compiled_on_disk", lambda loop: True)
    loops, rate = cpu_loops.Loops("auto"), cpu_loops.NUMPY_LOOP_S_PER_VALUE["int_rows"]
    assert loops.get("int_rows", 10).__name__ == "run"  # numpy: cheaper than even loading numba
    over = int(cpu_loops.LOOP_LOAD_BUDGET_S / rate) + 10
    assert over * rate < cpu_loops.LOOP_COMPILE_BUDGET_S
    assert loops.get("int_rows", over) is cpu_loops._numba_loop("int_rows")  # loaded, not compiled


def test_numpy_mode_never_loads_numba_loops(fresh_tiers):
    assert cpu_loops.Loops("numpy").get("int_rows", 10**12) is cpu_numpy_loops.int_rows


_CALLS = """
import json, os, sys
import numpy as np
from gpustats import compute_stats
from gpustats.backends import cpu_loops
x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # float_rows: the cheapest loop to compile
for mode, load_budget in json.loads(sys.argv[1]):  # one call per step, in this process
    os.environ["GPUSTATS_CPU_LOOPS"] = mode
    cpu_loops.LOOP_LOAD_BUDGET_S = float(load_budget)
    r = compute_stats([x], device="cpu", layout="NCHW")
    out = {"numba_imported": "numba" in sys.modules, "state": r.state.to_dict()}
    if out["numba_imported"]:
        from gpustats.backends import cpu_float_loops
        loop = cpu_float_loops.float_rows
        out.update(signatures=len(loop.signatures), hits=sum(loop.stats.cache_hits.values()),
                   misses=sum(loop.stats.cache_misses.values()), path=loop.stats.cache_path)
    print(json.dumps(out))
"""


def test_a_small_first_call_loads_no_numba_and_a_compiled_loop_is_loaded_not_compiled(tmp_path):
    """auto on a small batch with an empty per-user cache: numpy, numba not even imported; then mode numba in
    the same process compiles the loop, and a new auto process past the load budget (0 here) loads it from
    the disk cache: all three states equal. (That a call under the load budget runs numpy whatever the cache
    holds is the first check of test_auto_loads_a_loop_compiled_on_this_machine_once_past_the_load_budget.)
    The cache is the per-user folder (XDG_CACHE_HOME), and nothing is written next to the sources (pip
    uninstall would leave it behind, and the leftover folder once shadowed a later editable install)."""
    started = time.time()
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    for name in ("NUMBA_ENABLE_CUDASIM", "WORLD_SIZE", "NUMBA_CACHE_DIR", "GPUSTATS_CPU_LOOPS"):
        env.pop(name, None)
    runs = []
    for steps in ([("auto", "0.3"), ("numba", "0.3")], [("auto", "0")]):  # two processes
        proc = subprocess.run([sys.executable, "-c", _CALLS, json.dumps(steps)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
        runs += [json.loads(line) for line in proc.stdout.splitlines()]
    cold, compiled, loaded = runs
    assert not cold["numba_imported"]  # numpy ran: numba never loaded
    assert (compiled["signatures"], compiled["misses"]) == (1, 1)
    assert (loaded["signatures"], loaded["hits"], loaded["misses"]) == (1, 1, 0)  # from the disk cache
    assert Path(compiled["path"]).is_relative_to(tmp_path / "xdg" / "gpustats" / "numba")
    assert compiled["path"] == loaded["path"]
    fresh = [p for folder in (ROOT / "gpustats", ROOT / "kernels") for p in folder.rglob("*.nb[ic]")
             if p.stat().st_mtime >= started]
    assert fresh == []
    assert cold["state"] == compiled["state"] == loaded["state"]


_ONE_LOOP = """
import json, os, sys, time
import numpy as np
from gpustats.backends import cpu_float_loops
from gpustats.backends.cpu import readonly
x = readonly(np.linspace(-1, 2, 3 * 50, dtype=np.float32).reshape(1, 3, 50))
hist, ends = np.zeros((3, 8), np.int64), np.zeros((3, 2), np.int64)
open(os.path.join(sys.argv[1], str(os.getpid())), "w").close()  # a barrier: both ask for the loop at once
deadline = time.monotonic() + 60
while len(os.listdir(sys.argv[1])) < 2 and time.monotonic() < deadline:
    time.sleep(0.002)
cpu_float_loops.hist_float(x, True, 0.0, 1.0, 8, True, hist, 0.0, 1.0, ends)  # the cheapest loop to compile
loop = cpu_float_loops.hist_float
print(json.dumps({"hits": sum(loop.stats.cache_hits.values()), "misses": sum(loop.stats.cache_misses.values()),
                  "hist": hist.tolist(), "ends": ends.tolist()}))
"""


def test_processes_that_need_a_loop_at_once_compile_it_once(tmp_path):
    """Two processes (ranks, test workers, independent scripts) that need the same loop with an empty cache,
    at the same moment: one compiles it and the other waits and loads what it saved (without the compile
    lock of gpustats.backends._cpu_jit both compile it), and both count the same."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    for name in ("NUMBA_ENABLE_CUDASIM", "NUMBA_CACHE_DIR"):
        env.pop(name, None)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _ONE_LOOP, str(barrier)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    runs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=300)
        finally:
            proc.kill()
        assert proc.returncode == 0 and err == "", err[-3000:]
        runs.append(json.loads(out))
    assert sorted((r["misses"], r["hits"]) for r in runs) == [(0, 1), (1, 0)], runs
    assert runs[0]["hist"] == runs[1]["hist"] and runs[0]["ends"] == runs[1]["ends"]
    hist = np.array(runs[0]["hist"])  # clip on: channel 0 (all below 0) in the first bin, channel 2 (above 1) in the last
    assert hist.sum(axis=1).tolist() == [50, 50, 50] and hist[0, 0] == 50 and hist[2, -1] == 50
