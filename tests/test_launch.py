"""The fixed-cost launcher (gpustats.kernels._launch) and the compile cache (gpustats.kernels._cache), on the CPU.

* The parameter block is numba-cuda's ABI: its fields decode to exactly what numba-cuda's own
  ``_Kernel._prepare_args`` passes for the same arguments (run here with minimal device-array
  views, no GPU), and their sizes are numba's data model's flattened argument types.
  tests/test_kernels_ptx.py checks the same sizes against the compiled kernel's ``.param`` list,
  and tests/sim_cuda_backend_cases.py runs the kernels from decoded blocks under the simulator.
* The cache keys on everything that changes the code, round-trips, survives unwritable folders
  and never writes into the package.
"""

from __future__ import annotations

import ctypes
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
    pytest.skip("numba's data model and _prepare_args are the real CUDA target's", allow_module_level=True)

# numba.cuda's types and the kernels' modules, set by _kernels (below) for the tests of this file: imported
# at collection they cost every pytest-xdist worker about a second of its start
types = _cache = _launch = vec = None


@pytest.fixture(autouse=True)
def _kernels():
    from numba.cuda import types as numba_types

    from gpustats.kernels import _cache as cache, _launch as launch, vec as vec_module

    globals().update(types=numba_types, _cache=cache, _launch=launch, vec=vec_module)

ADDRESS = 0x7F12_3456_7800


def _arrays():
    """(argument index, (data, shape, strides, itemsize)) of the vec kernel's arrays, as a launcher writes them."""
    return {7: (ADDRESS + 0x1000, (396, 18), (144, 8), 8), 8: (ADDRESS + 0x9000, (1,), (4,), 4),
            9: (ADDRESS + 0xA000, (4, 3), (24, 8), 8), 10: (ADDRESS + 0xB000, (5, 3), (24, 8), 8),
            11: (ADDRESS + 0xC000, (8,), (8,), 8)}


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_block_decodes_to_what_numba_passes(dtype):
    argtypes = vec.kernel_argtypes(dtype)
    block = _launch.ParamBlock(argtypes)
    scalars = {0: ADDRESS, 1: ADDRESS, 2: 256, 3: 37632, 4: 3, 5: 28901376, 6: 28901376, 12: 5}
    for arg, value in scalars.items():
        block.set(arg, value)
    for arg, fields in _arrays().items():
        block.set_array(arg, *fields)
    values = [scalars.get(i, _arrays().get(i)) for i in range(len(argtypes))]
    assert block.values() == _launch.reference_params(argtypes, values)
    # what the driver copies: each kernelParams[k] points at little-endian bytes of that value
    for k, expected in enumerate(_launch.reference_params(argtypes, values)):
        assert int.from_bytes(block.raw(k), "little", signed=True) == expected
    assert _launch.read_params(argtypes, block.address) == block.values()


def test_block_sizes_are_numbas_flattened_argument_types():
    from numba.cuda.descriptor import cuda_target

    context = cuda_target.target_context
    for argtypes in (vec.kernel_argtypes("uint8"), vec.kernel_argtypes("bfloat16"),
                     (types.int32, types.Array(types.float32, 3, "A"), types.float64, types.boolean, types.uint16)):
        packed = context.get_arg_packer(argtypes).argument_types
        assert _launch.ParamBlock(argtypes).sizes() == [context.get_abi_sizeof(t) for t in packed], argtypes


def test_other_scalar_types_and_strided_arrays_match_numba():
    argtypes = (types.int32, types.Array(types.float32, 3, "A"), types.float64, types.uint16, types.boolean)
    values = [-7, (ADDRESS, (2, 3, 5), (4, 40, 8), 4), 2.5, 65535, True]
    block = _launch.ParamBlock(argtypes)
    block.set(0, -7)
    block.set_array(1, *values[1])
    block.set(2, 2.5)
    block.set(3, 65535)
    block.set(4, True)
    assert block.values() == _launch.reference_params(argtypes, values)
    assert block.sizes()[:1] == [4] and block.raw(0) == (-7).to_bytes(4, "little", signed=True)


def test_per_launch_writes_touch_only_their_slot():
    argtypes = vec.kernel_argtypes("float32")
    block = _launch.ParamBlock(argtypes)
    for arg, fields in _arrays().items():
        block.set_array(arg, *fields)
    before = block.values()
    block.slot(0).value = ADDRESS + 16
    block.slot(12).value = 9
    after = block.values()
    changed = [k for k, (a, b) in enumerate(zip(before, after)) if a != b]
    assert changed == [0, len(after) - 1]
    with pytest.raises(TypeError, match="array"):
        block.slot(9)


def test_unknown_argument_types_are_refused():
    with pytest.raises(NotImplementedError, match="numba's own launch"):
        _launch.ParamBlock((types.complex128,))


def test_recording_driver_sees_the_block_a_launch_passes():
    argtypes = vec.kernel_argtypes("uint8")
    drv = _launch.RecordingDriver(decode=True)
    function, compiled = drv.function(object(), argtypes, {"factory": "test"}, 0)
    block = _launch.ParamBlock(argtypes)
    for arg, fields in _arrays().items():
        block.set_array(arg, *fields)
    launch = _launch.Launch(drv, function, block, 128)
    block.slot(0).value = ADDRESS
    launch.launch(12, 3, stream=77)
    (fn, grid, threads, stream, params, values), = drv.launches
    assert (grid, threads, stream, params) == ((12, 3), 128, 77, block.address) and values == block.values()
    assert _launch.resident_blocks(drv, function, 128, 0) == 8 and not compiled


# ----------------------------------------------------------------------------- the compile cache


PARTS = {"factory": "vec.build_u8", "mode": "CP", "channels": 3, "threads": 256}


@pytest.fixture
def sig():
    """The vec kernel's signature for uint8, as the cache keys it."""
    return [str(t) for t in vec.kernel_argtypes("uint8")]


def test_key_changes_with_everything_that_changes_the_code(monkeypatch, sig):
    base = _cache.kernel_key(PARTS, sig, (9, 0))
    assert base == _cache.kernel_key(dict(PARTS), list(sig), (9, 0))  # deterministic
    others = {_cache.kernel_key({**PARTS, "channels": 4}, sig, (9, 0)),
              _cache.kernel_key({**PARTS, "factory": "vec.build_wide"}, sig, (9, 0)),
              _cache.kernel_key(PARTS, sig[:-1] + ["int32"], (9, 0)),
              _cache.kernel_key(PARTS, sig, (8, 0))}
    monkeypatch.setattr(_cache, "sources_digest", lambda: "another source tree")
    others.add(_cache.kernel_key(PARTS, sig, (9, 0)))
    monkeypatch.undo()
    versions = _cache._versions()
    monkeypatch.setattr(_cache, "_versions", lambda: {**versions, "numba-cuda": "0.0.1"})
    others.add(_cache.kernel_key(PARTS, sig, (9, 0)))
    assert base not in others and len(others) == 6


def test_sources_digest_covers_every_kernel_source_file():
    files = sorted(p.name for p in Path(_cache.__file__).parent.glob("*.py"))
    assert {"_vec_kernels.py", "_vector.py", "_blocks.py", "_common.py", "vec.py"} <= set(files)


def test_cache_folder_follows_the_environment(tmp_path):
    home = {"HOME": str(tmp_path / "home")}
    assert _cache.cache_dir(home) == tmp_path / "home" / ".cache" / "gpustats" / "cuda"
    assert _cache.cache_dir({**home, "XDG_CACHE_HOME": str(tmp_path / "xdg")}) == tmp_path / "xdg" / "gpustats" / "cuda"
    numba_dir = {**home, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "NUMBA_CACHE_DIR": str(tmp_path / "nb")}
    assert _cache.cache_dir(numba_dir) == tmp_path / "nb" / "gpustats" / "cuda"
    assert _cache.cache_dir({**home, "GPUSTATS_CUDA_CACHE": "0"}) is None
    package = Path(_cache.__file__).resolve().parent
    assert _cache.cache_dir({"NUMBA_CACHE_DIR": str(package / "cache")}) is None  # never inside the package
    assert _cache.cache_dir({"NUMBA_CACHE_DIR": str(package.parent)}) is None or not (package.parent / "__init__.py").exists()


def test_store_and_load_round_trip(tmp_path, sig):
    key = _cache.kernel_key(PARTS, sig, (9, 0))
    cubin = bytes(range(256)) * 40 + b"\n\x00tail"  # any bytes, newlines included
    assert _cache.load(key, tmp_path) is None
    assert _cache.store(key, "_ZN5entry6kernelE", cubin, tmp_path)
    assert _cache.load(key, tmp_path) == ("_ZN5entry6kernelE", cubin)
    assert [p.name for p in tmp_path.iterdir()] == [f"{key}.cubin"]  # no temporary file left
    other = _cache.kernel_key({**PARTS, "channels": 1}, sig, (9, 0))
    (tmp_path / f"{other}.cubin").write_bytes((tmp_path / f"{key}.cubin").read_bytes())  # a file under the wrong name
    assert _cache.load(other, tmp_path) is None
    (tmp_path / f"{key}.cubin").write_bytes(b"something else")
    assert _cache.load(key, tmp_path) is None


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder_costs_the_compile_only(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert _cache.store("k" * 40, "entry", b"cubin", folder) is False
        assert _cache.load("k" * 40, folder) is None
    finally:
        folder.chmod(stat.S_IRWXU)


def test_unwritable_folder_is_reported_not_raised(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert _cache.store("k" * 40, "entry", b"cubin", blocker / "cuda") is False  # mkdir fails (even as root)


class _Library:
    def __init__(self):
        self._entry_name = "_ZN8gpustats6kernelE"
        self.cubins = 0

    def get_cubin(self, cc=None):
        self.cubins += 1
        return b"CUBIN-for-" + repr(cc).encode()


class _Dispatcher:
    """What kernel_function needs of a numba dispatcher: compile(signature) -> overload with a code library."""

    def __init__(self):
        self.compiles = 0
        self.library = _Library()

    def compile(self, signature):
        self.compiles += 1
        return type("Overload", (), {"_codelibrary": self.library})()


def _loading_driver():
    """A recording driver that loads cubins (its class derives from _launch's, imported by the tests)."""
    class LoadingDriver(_launch.RecordingDriver):
        def __init__(self):
            super().__init__()
            self.cubins = []

        def load(self, cubin, entry):
            self.cubins.append((entry, cubin))
            return _launch.Function(len(self.cubins), None, cubin, entry)

    return LoadingDriver()


def test_second_process_loads_instead_of_compiling(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    package = Path(_cache.__file__).resolve().parent
    before = sorted(p.name for p in package.rglob("*"))
    first, second = _Dispatcher(), _Dispatcher()
    argtypes = vec.kernel_argtypes("uint8")
    drv = _loading_driver()
    fn, compiled = _launch.kernel_function(drv, first, argtypes, PARTS, device=0, cc=(9, 0))
    assert compiled and first.compiles == 1 and drv.cubins == [("_ZN8gpustats6kernelE", b"CUBIN-for-(9, 0)")]
    monkeypatch.setattr(_launch, "_FUNCTIONS", {})  # a new process: nothing loaded yet
    fn2, compiled2 = _launch.kernel_function(_loading_driver(), second, argtypes, PARTS, device=0, cc=(9, 0))
    assert not compiled2 and second.compiles == 0 and fn2.code == b"CUBIN-for-(9, 0)"
    assert list((tmp_path / "gpustats" / "cuda").glob("*.cubin"))
    assert sorted(p.name for p in package.rglob("*")) == before  # nothing written into the package
    fn3, compiled3 = _launch.kernel_function(drv, first, argtypes, {**PARTS, "channels": 4}, device=0, cc=(9, 0))
    assert compiled3 and first.compiles == 2  # another kernel: compiled, not mistaken for the cached one


class _SlowDispatcher(_Dispatcher):
    """A compile that takes a while (a real one: 0.5-4 s), so that a second process asks meanwhile."""

    def compile(self, signature):
        import time

        time.sleep(0.5)
        return super().compile(signature)


def _rank(folder: Path, barrier, out: Path) -> None:  # a forked process: the tests' imports, a fresh memo
    _launch._FUNCTIONS.clear()
    barrier.wait()
    dispatcher = _SlowDispatcher()
    fn, compiled = _launch.kernel_function(_loading_driver(), dispatcher, vec.kernel_argtypes("uint8"), PARTS,
                                           device=0, cc=(9, 0))
    out.write_text(f"{int(compiled)} {dispatcher.compiles} {fn.code.decode()}")


def test_processes_that_need_a_kernel_at_once_compile_it_once(tmp_path, monkeypatch):
    """Two processes (torchrun ranks of one machine) miss the same kernel at the same moment on a cold cache:
    one compiles while the other waits on the compile lock, then loads the stored cubin."""
    import multiprocessing

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))
    context = multiprocessing.get_context("fork")  # the children need nothing imported again
    barrier = context.Barrier(2)
    ranks = [context.Process(target=_rank, args=(tmp_path, barrier, tmp_path / f"{i}.txt")) for i in range(2)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(60)
    assert [rank.exitcode for rank in ranks] == [0, 0]
    results = sorted((tmp_path / f"{i}.txt").read_text() for i in range(2))
    assert results == ["0 0 CUBIN-for-(9, 0)", "1 1 CUBIN-for-(9, 0)"], results  # one compiled, one loaded
    assert sorted(p.suffix for p in (tmp_path / "cache" / "gpustats" / "cuda").iterdir()) == [".cubin", ".lock"]


def _hold_lock(folder: Path, held, release) -> None:  # a forked process that holds the compile lock
    with _cache.compiling("k" * 40, folder):
        held.set()
        release.wait(30)


def test_the_compile_lock_never_stops_a_compile(tmp_path):
    """No cache folder, a folder that cannot hold one, or a lock held past the wait: the caller goes on."""
    import multiprocessing
    import time

    with _cache.compiling("k" * 40, None):
        pass
    blocker = tmp_path / "file"
    blocker.write_text("")
    with _cache.compiling("k" * 40, blocker / "cuda"):  # cannot be created (even as root)
        pass
    context = multiprocessing.get_context("fork")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path, held, release))
    holder.start()
    try:
        assert held.wait(30)
        started = time.monotonic()
        with _cache.compiling("k" * 40, tmp_path, wait_s=0.3):  # another process holds it: waits 0.3 s, then goes on
            waited = time.monotonic() - started
        assert 0.3 <= waited < 5, waited
    finally:
        release.set()
        holder.join(30)
    assert holder.exitcode == 0


def test_block_buffer_is_stable_across_writes():
    """The void*[] handed to the driver points into one buffer that never moves (no reallocation per launch)."""
    block = _launch.ParamBlock(vec.kernel_argtypes("uint8"))
    pointers = (ctypes.c_void_p * len(block)).from_address(block.address)
    first = list(pointers)
    for i in range(100):
        block.slot(0).value = ADDRESS + 16 * i
    assert list(pointers) == first and np.all(np.diff(first) > 0)


# ------------------------------------------------------------------ which parts vec checks itself
class _CudaTensorStandIn:
    """What :func:`vec_reads` reads of a CUDA tensor (no GPU here): its device, layout, size and address."""

    def __init__(self, shape, itemsize, address, contiguous=True):
        self.shape, self._itemsize, self._address, self._contiguous = shape, itemsize, address, contiguous
        self.device = SimpleNamespace(type="cuda")

    def is_contiguous(self):
        return self._contiguous

    def element_size(self):
        return self._itemsize

    def data_ptr(self):
        return self._address


@pytest.mark.parametrize("address, contiguous, expected", [(1 << 20, True, True), ((1 << 20) + 4, True, False),
                                                           (1 << 20, False, False)])
def test_vec_reads_a_cuda_part_by_its_own_address_and_layout(address, contiguous, expected):
    """A CUDA tensor read in place (on_gpu=True): vec checks it for NaN/inf itself only when it is contiguous
    and 16-byte aligned (this path once raised NameError on a GPU: a leftover ``self``)."""
    from gpustats.backends._cuda_fast import vec_reads

    part = _CudaTensorStandIn((2, 3, 64), 4, address, contiguous)
    chunk = SimpleNamespace(layout="CP", dtype="float32")
    assert vec_reads(part, chunk, on_gpu=True) is expected
