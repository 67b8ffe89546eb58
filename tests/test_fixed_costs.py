"""Issue 29, fixed costs: numba's compiled loops are cached in a per-user folder (never in the package)
and loaded by the next process and by decode workers; the loops run in Python threads, so numba's
threading layer never starts and decode workers can always be forked; a script without
``if __name__ == "__main__":`` works, or is told at once what to add where workers must be spawned.

The process tests run in subprocesses with a timeout (a fresh numba, a script's ``__main__``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gpustats.backends import Options
from gpustats.backends import cpu as cpu_backend
from gpustats.batches import BatchAdapter
from gpustats.stats import ChannelStats

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path | None = None) -> dict:
    """A child's environment: no simulator, one rank; with ``tmp_path``, its own (cold) per-user cache folder
    (XDG_CACHE_HOME), else this user's (usually warm: the loops compile once per machine). The CPU loops
    are numba's (what these tests are about; in "auto" small inputs would not compile them)."""
    env = dict(os.environ, GPUSTATS_CPU_LOOPS="numba")
    if tmp_path is not None:
        env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    for name in ("NUMBA_ENABLE_CUDASIM", "WORLD_SIZE", "NUMBA_CACHE_DIR", "NUMBA_CACHE_LOCATOR_CLASSES"):
        env.pop(name, None)
    return env


def _python(code_or_script: str | Path, *args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [str(code_or_script)] if isinstance(code_or_script, Path) else ["-c", code_or_script]
    return subprocess.run([sys.executable, *command, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------ the compile cache
# A second process loads what the first compiled, from the per-user folder and not next to the sources:
# tests/test_cpu_loops.py (test_a_small_first_call_loads_no_numba_and_a_compiled_loop_is_loaded_not_compiled).


def test_numba_cache_dir_is_respected(tmp_path, monkeypatch):
    from numba.core import config

    from gpustats.backends import _cpu_jit

    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "mine"))  # what numba reads from NUMBA_CACHE_DIR
    assert _cpu_jit.cache_dir() == str(tmp_path / "mine")
    assert (tmp_path / "mine").is_dir()


def test_cache_folder_fallbacks(tmp_path, monkeypatch):
    from numba.core import config

    from gpustats.backends import _cpu_jit

    monkeypatch.setattr(config, "CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(_cpu_jit.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert _cpu_jit.cache_dir() == str(tmp_path / "xdg" / "gpustats" / "numba")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # cannot hold a folder: the private temp one
    assert _cpu_jit.cache_dir() == str(tmp_path / "tmp" / f"gpustats-{os.getuid()}" / "numba")
    assert os.stat(tmp_path / "tmp" / f"gpustats-{os.getuid()}").st_mode & 0o777 == 0o700
    os.chmod(tmp_path / "tmp" / f"gpustats-{os.getuid()}", 0o777)  # others could plant code there: not used
    assert _cpu_jit.cache_dir() is None


# ------------------------------------------------------------------ the loops in Python threads
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("extras", [{}, {"histogram": True}, {"per_image": True, "covariance": True}])
def test_loops_split_over_threads_give_the_one_thread_state(monkeypatch, dtype, extras):
    """Every loop's work split over 3 threads (rows; for uint8 also the pixel blocks of one large image)
    gives the same state, bit for bit, as one thread, and numpy float64's moments."""
    rng = np.random.default_rng(7)
    batches = [rng.integers(0, 256, size=(5, 3, 7, 9))]
    if dtype == "uint8":  # 3 pixel blocks (of 65,536) per channel in one image
        batches.append(rng.integers(0, 256, size=(1, 3, 400, 400)))
    batches = [b.astype(np.float32) / np.float32(7) if dtype == "float32" else b.astype(dtype) for b in batches]
    if dtype != "uint8" and extras.get("histogram"):
        extras = dict(extras, hist_bins=16, hist_range=(0.0, 256.0))
    monkeypatch.setattr(cpu_backend, "_PER_THREAD", 8)  # tiny inputs split too
    states = []
    for threads in (1, 3):
        reducer = cpu_backend.CpuReducer(torch.device("cpu"), Options(**extras), threads=threads)
        for b, x in enumerate(batches):
            reducer.update(BatchAdapter("NCHW").adapt(torch.from_numpy(x), b), 1.0, b)
        states.append(reducer.state().to_dict())
    assert states[0] == states[1]
    ref = np.concatenate([x.astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1) for x in batches], axis=1)
    got = ChannelStats.from_dict(states[1]).finalize(ddof=0)
    np.testing.assert_allclose(got.mean, ref.mean(1), rtol=1e-12)
    np.testing.assert_allclose(got.std, ref.std(1), rtol=1e-10)
    np.testing.assert_array_equal(got.min, ref.min(1))
    np.testing.assert_array_equal(got.max, ref.max(1))


def test_in_threads_runs_every_share_once_and_joins():
    seen = []
    cpu_backend.in_threads(lambda t, m: seen.append((t, m)), 4)
    assert sorted(seen) == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert not [t for t in __import__("threading").enumerate() if t.name.startswith("gpustats-cpu-")]


# ------------------------------------------------------------------ scripts without a main guard
_NO_GUARD = """
import json, sys
import numpy as np
import torch
from gpustats import compute_stats

with open(sys.argv[2], "a") as log:  # how many times this body runs (once: the workers are forked)
    log.write("body\\n")
x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 3, 256, 256), dtype=np.uint8))
on_tensors = compute_stats([x], device="cpu")  # 1.5 M values: loops in two threads where there are two CPUs
on_floats = compute_stats([x.float()], device="cpu", per_image=True)
on_files = compute_stats(sys.argv[1], workers=2, device="cpu", covariance=True, batch_size=2)
import numba
try:
    layer = numba.threading_layer()
except ValueError:
    layer = None
print(json.dumps({"tensors": on_tensors.mean.tolist(), "floats": on_floats.mean.tolist(),
                  "files": on_files.mean.tolist(), "images": on_files.images, "layer": layer}))
"""


def _images(folder: Path, n: int = 4, size: int = 160) -> np.ndarray:
    """``n`` RGB PNGs of ``size`` x ``size`` (large enough for numba's loops); their pixels [n*size*size, 3]."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    pixels = []
    for i in range(n):
        image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{i}.png")
        pixels.append(image.reshape(-1, 3))
    return np.concatenate(pixels).astype(np.float64)


def test_a_script_without_a_main_guard_runs_once_with_forked_workers(tmp_path):
    """Before: numba's OpenMP threads had started (the tensors' parallel loops), so the workers were
    spawned, re-ran the script and died ("out of memory?")."""
    pixels = _images(tmp_path / "imgs")
    script = tmp_path / "no_guard.py"
    script.write_text(_NO_GUARD)
    log = tmp_path / "body.log"
    proc = _python(script, str(tmp_path / "imgs"), str(log), env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert log.read_text() == "body\n"
    out = json.loads(proc.stdout)
    x = np.random.default_rng(0).integers(0, 256, (8, 3, 256, 256), dtype=np.uint8).astype(np.float64)
    np.testing.assert_allclose(out["tensors"], x.mean(axis=(0, 2, 3)) / 255, rtol=1e-12)
    np.testing.assert_allclose(out["floats"], x.mean(axis=(0, 2, 3)), rtol=1e-12)
    assert out["images"] == 4
    np.testing.assert_allclose(out["files"], pixels.mean(0) / 255, rtol=1e-12)
    assert out["layer"] is None  # numba's threading layer never started


_WORKERS = """
import os, sys
from gpustats.sources import reduce_tasks
from gpustats.backends import cpu_int_loops, cpu_float_loops

LOOPS = [cpu_int_loops.hist_u8, cpu_int_loops.u8_sums, cpu_int_loops.u8_sum_rows, cpu_int_loops.int_rows,
         cpu_int_loops.rgbx_rows_here, cpu_float_loops.float_rows, cpu_float_loops.hist_float]


def compiled():  # loops compiled by this process (and, forked, by its parent before the fork)
    return sum(sum(loop.stats.cache_misses.values()) for loop in LOOPS)


def loaded():
    return sum(sum(loop.stats.cache_hits.values()) for loop in LOOPS)


if sys.argv[3] == "spawn":
    reduce_tasks._threads_started = lambda: "omp"  # as if this script's own numba code had run OpenMP threads
real = reduce_tasks.ReducedBatches.__getitem__


def counted(self, b):  # in each worker, after its batch: what it compiled and loaded
    result = real(self, b)
    with open(os.path.join(sys.argv[2], f"{os.getpid()}.txt"), "w") as fh:
        fh.write(f"{compiled()} {loaded()}")
    return result


reduce_tasks.ReducedBatches.__getitem__ = counted
from gpustats import compute_stats

GUARD
    r = compute_stats(sys.argv[1], workers=2, device="cpu", covariance=True, batch_size=2)
    print(r.images, compiled(), loaded(), r.mean.tolist())
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_run_the_loops_the_parent_compiled(tmp_path, method):
    """The run compiles its loop once, before the workers start: forked workers inherit it (before, the parent
    warmed up a writable-array loop and every worker compiled the read-only one its pixels need); spawned ones
    (where numba's OpenMP threads run here) load it from the per-user cache."""
    pixels = _images(tmp_path / "imgs")
    (tmp_path / "logs").mkdir()
    script = tmp_path / "guarded.py"
    script.write_text(_WORKERS.replace("GUARD", 'if __name__ == "__main__":'))
    proc = _python(script, str(tmp_path / "imgs"), str(tmp_path / "logs"), method, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    images, parent_compiled, parent_loaded, mean = proc.stdout.split(" ", 3)
    assert images == "4" and int(parent_compiled) + int(parent_loaded) == 1  # RgbxSink's one loop, once
    np.testing.assert_allclose(json.loads(mean), pixels.mean(0) / 255, rtol=1e-12)
    workers = [(tmp_path / "logs" / name).read_text().split() for name in os.listdir(tmp_path / "logs")]
    assert workers
    for compiled, loaded in workers:
        if method == "fork":
            assert (compiled, loaded) == (parent_compiled, parent_loaded)  # inherited; nothing more
        else:
            assert (compiled, loaded) == ("0", "1")  # loaded from the cache the parent wrote (or read)


def test_an_unguarded_script_that_must_spawn_workers_is_told_at_once(tmp_path):
    _images(tmp_path / "imgs")
    (tmp_path / "logs").mkdir()
    script = tmp_path / "unguarded.py"
    script.write_text(_WORKERS.replace("GUARD", "if True:"))
    proc = _python(script, str(tmp_path / "imgs"), str(tmp_path / "logs"), "spawn", env=_env(), timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("gpustats.sources.mainguard.UnguardedMain: ") and str(script) in last, proc.stderr
    assert 'if __name__ == "__main__":' in last
    assert os.listdir(tmp_path / "logs") == []  # no worker started


# ------------------------------------------------------------------ start-up of the command
_CPU_RUNS = """
import contextlib, io, json, sys
from gpustats.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    codes = [main(["stats", folder, "--workers", "2", "-q", "--format", "json", "--device", device, *extra])
             for folder, device, extra in json.loads(sys.argv[1])]
print(codes, sorted(m for m in ("torch", "numba") if m in sys.modules))
"""


def test_cpu_folder_runs_import_neither_torch_nor_numba(tmp_path):
    """Small images (numpy's route) and large ones (Pillow's histograms), in decode workers: ~1 s of torch's
    import and ~0.4 s of numba's saved at every start (DataLoader replaced by a plain process pool)."""
    from gpustats.backends import _DRIVER_PATHS
    from gpustats.sources.synthetic import make_jpeg_corpus, make_tiny_folder

    make_tiny_folder(tmp_path / "small", 6)
    make_jpeg_corpus(tmp_path / "large", 4, size=(300, 250))
    runs = [[str(tmp_path / "small"), "cpu", []], [str(tmp_path / "large"), "cpu", ["--histogram", "--per-image"]]]
    if not any(os.path.exists(path) for path in _DRIVER_PATHS):  # no NVIDIA driver: "auto" needs no torch either
        runs.append([str(tmp_path / "small"), "auto", []])
    proc = _python(_CPU_RUNS, json.dumps(runs), env=_env(), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"{[0] * len(runs)} []", proc.stdout + proc.stderr[-3000:]
    # "auto" under numba's simulator (the GPU kit's dry run) means the CPU, also told without torch
    sim = _python(_CPU_RUNS, json.dumps(runs[:1]).replace('"cpu"', '"auto"'), env=dict(_env(), NUMBA_ENABLE_CUDASIM="1"),
                  timeout=180)
    assert sim.stdout.strip() == "[0] []", sim.stdout + sim.stderr[-3000:]
