"""CUDA backend cases, run by tests/test_cuda_backend.py under numba's CUDA simulator (child pytest
with NUMBA_ENABLE_CUDASIM=1) or in-process on a real GPU. Inputs stay tiny for the simulator."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from gpustats import Accumulator, BackendUnavailable, compute_stats
from gpustats import kernels as K

from reference import rtol

SIM = K.simulator_enabled()
if SIM:
    sys.setswitchinterval(1e-4)

pytestmark = pytest.mark.cudasim

SIM_STRATEGIES = list(K.SIMULATOR_STRATEGIES)


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of every strategy's reduce: proves the kernel path ran (not a CPU fallback). A launch
    of the vec kernel through the fixed-cost launcher (a GPU, or a stand-in driver) counts as a vec call."""
    calls = {}
    depth = [0]  # only the backend's own calls count, not a strategy's fallback to another one
    launcher_call = K.vec.Launcher.__call__

    def counting_launcher(self, *args, **kwargs):
        launched = launcher_call(self, *args, **kwargs)
        if launched:
            calls["vec"] = calls.get("vec", 0) + 1
        return launched

    monkeypatch.setattr(K.vec.Launcher, "__call__", counting_launcher)
    for name, module in K.STRATEGIES.items():
        original = module.reduce

        def counting(*args, _original=original, _name=name, **kwargs):
            if depth[0] == 0:
                calls[_name] = calls.get(_name, 0) + 1
            depth[0] += 1
            try:
                return _original(*args, **kwargs)
            finally:
                depth[0] -= 1

        monkeypatch.setattr(module, "reduce", counting)
    return calls


def _state(batches, device, **options):
    acc = Accumulator(device=device, **options)
    for b in batches:
        acc.update(b)
    return acc, acc.state()


def _uint8_batches(seed=0, layout="NCHW"):
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, 3, 5, 7), (1, 3, 5, 7), (3, 3, 2, 3)]
    out = [torch.randint(0, 256, s, generator=g, dtype=torch.uint8) for s in shapes]
    return out if layout == "NCHW" else [b.permute(0, 2, 3, 1).contiguous() for b in out]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("strategy", ["auto", *SIM_STRATEGIES])
def test_uint8_bitwise_identical_to_cpu_and_kernels_ran(strategy, layout, spy):
    batches = _uint8_batches(1, layout)
    acc, gpu = _state(batches, "cuda", strategy=strategy)
    _, cpu = _state(batches, "cpu")
    assert gpu == cpu  # ChannelStats equality is bitwise on every field
    assert acc._reducer.name == "cuda" and acc._reducer.kernel_launches == len(batches)
    assert acc._reducer.fallback_batches == 0
    from gpustats.backends.cuda import AUTO_STRATEGY

    expected = AUTO_STRATEGY["uint8"] if strategy == "auto" else strategy
    assert spy.get(expected, 0) == len(batches) and acc.strategy == expected


@pytest.mark.parametrize("options", [{"histogram": True}, {"covariance": True}, {"per_image": True}],
                         ids=["histogram", "covariance", "per_image"])
def test_uint8_extras_bitwise_identical_to_cpu(options, spy):
    batches = _uint8_batches(2)
    acc, gpu = _state(batches, "cuda", **options)
    _, cpu = _state(batches, "cpu", **options)
    assert gpu == cpu
    assert sum(spy.values()) == len(batches) and acc._reducer.fallback_batches == 0
    r = compute_stats(batches, device="cuda", **options)
    np.testing.assert_array_equal(r.mean, compute_stats(batches, device="cpu", **options).mean)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("strategy", ["auto", "atomic", "tree", "welford"])
def test_float_matches_cpu(strategy, dtype, spy):
    g = torch.Generator().manual_seed(3)
    batches = [(1e4 + 1e-2 * torch.randn(n, 3, 4, 5, generator=g)).to(dtype) for n in (2, 1, 3)]
    if dtype in (torch.float16, torch.bfloat16):
        batches = [(0.5 + 0.2 * torch.randn(n, 3, 4, 5, generator=g)).to(dtype) for n in (2, 1, 3)]
    gpu = compute_stats(batches, device="cuda", strategy=strategy)
    cpu = compute_stats(batches, device="cpu")
    np.testing.assert_allclose(gpu.mean, cpu.mean, rtol=rtol(str(dtype), "cuda_vs_cpu"))
    np.testing.assert_allclose(gpu.std, cpu.std, rtol=rtol(str(dtype), "cuda_vs_cpu", "std"))
    np.testing.assert_array_equal(gpu.min, cpu.min)
    np.testing.assert_array_equal(gpu.max, cpu.max)
    assert sum(spy.values()) == len(batches)


def test_float_covariance_and_per_image_match_cpu():
    g = torch.Generator().manual_seed(4)
    batches = [torch.randn(n, 3, 5, 6, generator=g) * 2 + 7 for n in (2, 3)]
    for opts in ({"covariance": True}, {"per_image": True}):
        _, gpu = _state(batches, "cuda", **opts)
        _, cpu = _state(batches, "cpu", **opts)
        gpu_r, cpu_r = gpu.finalize(), cpu.finalize()
        # float32 short runs (spread 2 around the shift): ~1e-8 relative is the expected rounding
        np.testing.assert_allclose(gpu_r.mean, cpu_r.mean, rtol=1e-7)
        np.testing.assert_allclose(gpu_r.std, cpu_r.std, rtol=1e-6)
        if "covariance" in opts:
            np.testing.assert_allclose(gpu_r.cov, cpu_r.cov, rtol=1e-5, atol=1e-9)
        else:
            np.testing.assert_allclose(gpu.images.mean, cpu.images.mean, rtol=1e-6)
            np.testing.assert_allclose(gpu.images.m2, cpu.images.m2, rtol=1e-4, atol=1e-9)


def test_welford_summaries_are_chan_merged_across_flushes(spy):
    """The welford strategy's device (n, mean, M2) is Chan-merged on the host at every flush
    (``state()`` mid-stream): float64 at a 1e4 offset matches the CPU backend to ~1e-12."""
    g = torch.Generator().manual_seed(21)
    batches = [1e4 + 1e-2 * torch.randn(n, 3, 4, 5, generator=g, dtype=torch.float64) for n in (2, 1, 3)]
    acc = Accumulator(device="cuda", strategy="welford")
    acc.update(batches[0])
    first = acc.state()
    for b in batches[1:]:
        acc.update(b)
    gpu = acc.result()
    cpu = compute_stats(batches, device="cpu")
    assert first.count.tolist() == [40] * 3 and spy.get("welford") == len(batches)
    np.testing.assert_allclose(gpu.mean, cpu.mean, rtol=1e-15)
    np.testing.assert_allclose(gpu.std, cpu.std, rtol=1e-10)
    assert gpu.count.tolist() == cpu.count.tolist() == [120] * 3


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_per_image_counts_each_channel_and_matches_cpu(dtype):
    """Per-image figures per channel (an all-NaN channel of an image leaves the other channels
    alone); uint8 per-image states are bitwise equal to the CPU backend's for any batch split."""
    g = torch.Generator().manual_seed(22)
    if dtype == torch.uint8:
        x = torch.randint(0, 256, (5, 3, 3, 5), generator=g, dtype=torch.uint8)
        splits = ([x], [x[:2], x[2:]], [x[i:i + 1] for i in range(5)])
        states = [_state(b, "cuda", per_image=True)[1] for b in splits]
        assert all(s == states[0] for s in states) and states[0] == _state([x], "cpu", per_image=True)[1]
        return
    x = torch.randn(5, 3, 3, 5, generator=g)
    x[1, 0] = float("nan")
    x[3, 2, 0, 0] = float("nan")
    gpu = compute_stats([x[:2], x[2:]], device="cuda", per_image=True, nan_policy="omit").per_image
    cpu = compute_stats([x[:2], x[2:]], device="cpu", per_image=True, nan_policy="omit").per_image
    assert gpu["images_per_channel"].tolist() == cpu["images_per_channel"].tolist() == [4, 5, 5]
    for key in ("mean_of_means", "mean_of_stds", "mean_of_stds_ddof1"):
        assert np.isfinite(gpu[key]).all()
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=1e-6, err_msg=key)


def test_nan_policy_raise_leaves_state_unchanged_and_omit_counts():
    good = torch.ones(1, 3, 2, 2)
    bad = good.clone()
    bad[0, 1, 0, 0] = float("nan")
    acc = Accumulator(device="cuda")
    acc.update(good)
    acc.update(bad)  # the vec kernel leaves it out on the device; the error comes at the next call
    with pytest.raises(ValueError, match="batch 1 has 1 non-finite"):
        acc.state()
    assert acc.state().count.tolist() == [4, 4, 4]
    ragged = Accumulator(device="cuda", layout="NCHW")  # rows of 3 floats: not read by vec, checked before reducing
    ragged.update(torch.ones(1, 3, 1, 3))
    bad_row = torch.ones(1, 3, 1, 3)
    bad_row[0, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="batch 1 has 1 non-finite"):
        ragged.update(bad_row)
    assert ragged.state().count.tolist() == [3, 3, 3]
    omit = compute_stats([good, bad], device="cuda", nan_policy="omit")
    cpu = compute_stats([good, bad], device="cpu", nan_policy="omit")
    np.testing.assert_array_equal(omit.count, cpu.count)


def test_uncovered_requests_fall_back_per_batch_and_say_so(spy):
    x = torch.randint(-100, 100, (2, 3, 5, 6), dtype=torch.int16)
    acc, gpu = _state([x], "cuda")
    _, cpu = _state([x], "cpu")
    assert gpu == cpu and acc._reducer.fallback_batches == 1 and not spy


def test_state_can_be_read_mid_stream_and_reset():
    batches = _uint8_batches(5)
    acc = Accumulator(device="cuda")
    acc.update(batches[0])
    first = acc.state()
    acc.update(batches[1])
    acc.update(batches[2])
    _, cpu = _state(batches, "cpu")
    assert acc.state() == cpu and first != cpu
    acc.reset()
    assert acc.state().is_empty


@pytest.mark.parametrize("layout", ["CHW", "HWC"])
def test_variable_size_images_are_one_launch_per_batch(layout, spy):
    """A list of images of different sizes is joined on the device and reduced in one launch."""
    g = torch.Generator().manual_seed(11)
    sizes = [(5, 7), (3, 4), (6, 2), (1, 1)]
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in sizes]
    if layout == "HWC":
        images = [im.permute(1, 2, 0).contiguous() for im in images]
    batches = [images, images[:2]]
    acc, gpu = _state(batches, "cuda", layout=layout)
    _, cpu = _state(batches, "cpu", layout=layout)
    assert gpu == cpu  # bitwise, as for any uint8 split
    assert acc._reducer.kernel_launches == len(batches) and sum(spy.values()) == len(batches)
    acc, with_images = _state(batches, "cuda", layout=layout, per_image=True)  # images kept apart
    assert with_images == _state(batches, "cpu", layout=layout, per_image=True)[1]


def test_explicit_strategy_without_histograms_is_refused_for_them():
    from gpustats import InputError

    with pytest.raises(InputError, match="cannot compute histograms"):
        Accumulator(device="cuda", strategy="vec", histogram=True).update(torch.zeros(1, 3, 5, 5, dtype=torch.uint8))


def test_warp_strategy_is_refused_clearly_under_the_simulator():
    if not SIM:
        pytest.skip("simulator-only behaviour")
    with pytest.raises(BackendUnavailable, match="real GPU"):
        Accumulator(device="cuda", strategy="warp")


def test_explicit_strategy_that_cannot_serve_the_request_is_an_error():
    from gpustats import InputError

    batch = torch.zeros(1, 3, 2, 2)
    with pytest.raises(InputError, match="strategy='hist8' reduces uint8 data only"):
        Accumulator(device="cuda", strategy="hist8").update(batch)
    with pytest.raises(InputError, match="cannot compute covariance"):
        Accumulator(device="cuda", strategy="tree", covariance=True).update(batch)
    acc = Accumulator(device="cuda", strategy="atomic", covariance=True)
    acc.update(batch)
    assert acc.result().cov.shape == (3, 3)


@pytest.mark.gpu
def test_gpu_tensors_reduced_in_place_on_torch_stream():
    if SIM or not torch.cuda.is_available():
        pytest.skip("needs a real NVIDIA GPU and a CUDA build of torch")
    batches = [b.cuda() for b in _uint8_batches(6)]
    for strategy in sorted(K.STRATEGIES):
        acc, gpu = _state(batches, "cuda", strategy=strategy)
        _, cpu = _state([b.cpu() for b in batches], "cpu")
        assert gpu == cpu and acc._reducer.fallback_batches == 0


@pytest.mark.gpu
def test_batch_on_another_gpu_is_a_clear_error():
    if SIM or torch.cuda.device_count() < 2:
        pytest.skip("needs two NVIDIA GPUs")
    from gpustats import InputError

    with pytest.raises(InputError, match="pass device='cuda:1'"):
        Accumulator(device="cuda:0").update(torch.zeros(1, 3, 4, 4, dtype=torch.uint8, device="cuda:1"))


@pytest.mark.gpu
def test_gpu_cpu_tensors_staged_and_device_index_honoured():
    if SIM or not torch.cuda.is_available():
        pytest.skip("needs a real NVIDIA GPU and a CUDA build of torch")
    batches = [torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8) for _ in range(5)]
    acc, gpu = _state(batches, f"cuda:{torch.cuda.device_count() - 1}")
    _, cpu = _state(batches, "cpu")
    assert gpu == cpu and acc._reducer.kernel_launches == 5


# ----------------------------------------------------------------------------- nan_policy="raise" without a sync

_FLOATS = [torch.float16, torch.bfloat16, torch.float32]


def _float_batches(dtype, layout, seed, n=5, bad=2):
    """``n`` float batches of 2 images (8x8 pixels, 3 channels), batch ``bad`` with 2 NaN and 1 inf in channels 0, 2."""
    g = torch.Generator().manual_seed(seed)
    batches = [(0.5 + 0.25 * torch.randn(2, 3, 8, 8, generator=g)).to(dtype) for _ in range(n)]
    if bad is not None:
        batches[bad][0, 0, 1, 1] = float("nan")
        batches[bad][1, 0, 2, 3] = float("nan")
        batches[bad][1, 2, 0, 0] = float("inf")
    return batches if layout == "NCHW" else [b.permute(0, 2, 3, 1).contiguous() for b in batches]


def _on_device(batches):
    """The batches where a training loop has them: on the GPU (the simulator reads host tensors)."""
    return batches if SIM else [b.cuda() for b in batches]


def _reference(batches, layout):
    """numpy float64 two-pass statistics of the batches' values (as the dtype holds them), per channel."""
    axis = 1 if layout == "NCHW" else 3
    values = np.concatenate([np.moveaxis(b.double().numpy(), axis, 0).reshape(3, -1) for b in batches], axis=1)
    mean = values.mean(axis=1)
    return {"count": values.shape[1], "mean": mean, "m2": ((values - mean[:, None]) ** 2).sum(axis=1),
            "min": values.min(axis=1), "max": values.max(axis=1)}


def _feed(acc, batches):
    """Update with every batch; an update that raises did not add its batch, so it is passed again.
    Returns [(index of the call that raised, or 'state'), message] and the final state."""
    from gpustats.backends.cpu import NonFiniteError

    errors = []
    for i, b in enumerate(batches):
        try:
            acc.update(b)
        except NonFiniteError as exc:
            errors.append((i, str(exc)))
            acc.update(b)
    try:
        state = acc.state()
    except NonFiniteError as exc:
        errors.append(("state", str(exc)))
        state = acc.state()
    return errors, state


def _check_state_is(state, ref, dtype):
    assert state.count.tolist() == [ref["count"]] * 3 and state.nonfinite.tolist() == [0, 0, 0]
    # float32 short runs of x - shift (spread 0.25): ~1e-8 absolute is their rounding; a batch too many or
    # too few moves the mean by ~1e-2
    np.testing.assert_allclose(state.mean, ref["mean"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(state.m2, ref["m2"], rtol=1e-6)
    np.testing.assert_array_equal(state.min, ref["min"])
    np.testing.assert_array_equal(state.max, ref["max"])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", _FLOATS, ids=["float16", "bfloat16", "float32"])
def test_raise_leaves_the_bad_batch_out_and_names_it_later(dtype, layout, spy):
    """Bad batch 2 of 5: no update waits for the device; the error names batch 2 and its 3 values
    (channels 0 and 2) at the next call that sees the kernel's record (under the simulator the very
    next update, 3, which then did not add batch 3: it is passed again); the state is the 4 good
    batches, against numpy float64."""
    batches = _float_batches(dtype, layout, seed=31)
    acc = Accumulator(device="cuda", layout=layout)
    errors, state = _feed(acc, _on_device(batches))
    assert len(errors) == 1, errors
    where, message = errors[0]
    assert "batch 2 has 3 non-finite values (NaN or inf) in channel(s) [0, 2]" in message
    assert "left out" in message and "nan_policy='omit'" in message
    if SIM:
        assert where == 3  # the kernel ran before update(2) returned: the next update sees its record
    else:
        assert where == "state" or where >= 3
    _check_state_is(state, _reference([b for i, b in enumerate(batches) if i != 2], layout), dtype)
    assert spy == {"vec": len(batches)}  # one launch per batch; the update that raised launched nothing
    assert acc.state() == state  # reported once


def test_raise_reports_every_bad_batch_once():
    """Two bad batches in a row (1, 2): the first error names batch 1; batch 2 (also left out) is
    reported by a later call; the state is the good batches."""
    batches = _float_batches(torch.float32, "NCHW", seed=32, n=4, bad=1)
    batches[2] = batches[1].clone()
    acc = Accumulator(device="cuda")
    errors, state = _feed(acc, _on_device(batches))
    messages = " | ".join(m for _, m in errors)
    assert "batch 1 has 3 non-finite" in errors[0][1], messages
    if SIM or len(errors) == 2:  # the simulator reports each at the next update; a GPU may find both at one check
        assert len(errors) == 2 and "batch 2 has 3 non-finite" in errors[1][1], messages
    else:
        assert len(errors) == 1 and "1 later batch(es) with non-finite values were left out too (the last: batch 2)" \
            in messages, messages
    _check_state_is(state, _reference([batches[0], batches[3]], "NCHW"), torch.float32)


def _sync_spies(monkeypatch):
    """Count every call that would wait for the device on a GPU (or that did so before: the
    synchronizing non-finite check and the host copy of the first batch's shift)."""
    from gpustats.backends import cuda as backend
    from gpustats.kernels import accumulators

    calls = {}

    def spy_on(owner, name):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    spy_on(backend.CudaReducer, "_raise_on_nonfinite")
    spy_on(accumulators.Accumulators, "to_host")
    spy_on(torch.Tensor, "cpu")
    spy_on(torch.Tensor, "item")
    spy_on(torch.Tensor, "tolist")
    from numba import cuda

    spy_on(cuda, "synchronize")
    probe = accumulators.Accumulators.zeros(1, integer=True)
    spy_on(type(probe.itotals), "copy_to_host")
    return calls


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bfloat16, torch.float32], ids=["uint8", "bfloat16", "float32"])
def test_updates_do_not_synchronize(dtype, monkeypatch):
    """No update -- the first (accumulators, shift) included, under the default nan_policy -- calls
    anything that waits for the device; state() does (it must)."""
    g = torch.Generator().manual_seed(33)
    if dtype == torch.uint8:
        batches = [torch.randint(0, 256, (2, 3, 8, 8), generator=g, dtype=dtype) for _ in range(3)]
    else:
        batches = _float_batches(dtype, "NCHW", seed=33, n=3, bad=None)
    acc = Accumulator(device="cuda")
    batches = _on_device(batches)
    calls = _sync_spies(monkeypatch)
    for b in batches:
        acc.update(b)
    assert calls == {}, calls
    acc.state()
    assert calls.get("to_host") == 1


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_fixed_cost_launcher_end_to_end(dtype, layout):
    """The fixed-cost path (under the simulator: a stand-in driver that decodes the parameter block and
    runs the kernel from what it finds there; on a GPU: the real driver): every update goes through the
    launcher, all but the first straight from Accumulator.update (no adapter); the statistics equal the
    CPU backend's (uint8: bitwise) and a bad float batch is left out and reported like on the numba path."""
    from _launch_standin import SimulatorDriver

    g = torch.Generator().manual_seed(34)
    shape = (2, 3, 4, 8) if layout == "NCHW" else (2, 4, 8, 3)
    if dtype == torch.uint8:
        batches = [torch.randint(0, 256, shape, generator=g, dtype=dtype) for _ in range(4)]
    else:
        batches = _float_batches(dtype, layout, seed=34, n=4, bad=1)
    acc = Accumulator(device="cuda", layout=layout)
    if SIM:
        driver = acc._reducer.driver = SimulatorDriver()
    errors, state = _feed(acc, _on_device(batches))
    reducer = acc._reducer
    assert reducer.launcher_error is None and reducer.launcher_launches == reducer.kernel_launches
    assert reducer.fast_updates == reducer.kernel_launches - 1  # the first update sets things up
    if dtype == torch.uint8:
        assert errors == [] and state == _state(batches, "cpu", layout=layout)[1]
        return
    assert len(errors) == 1 and "batch 1 has 3 non-finite" in errors[0][1]
    _check_state_is(state, _reference([b for i, b in enumerate(batches) if i != 1], layout), dtype)
    if not SIM:
        return
    assert [w for w, _ in errors] == [2] and reducer.launcher_launches == len(driver.launches)
    # simulator: 8 threads a block, the stand-in's 2 SMs x 1 block cap the grid. NCHW: a grid row per channel,
    # one block a row (grid-stride). NHWC: 3 blocks; the block count is a multiple of 3
    # (C / gcd(C, threads x 4 lanes)) so that each thread keeps one channel per lane
    grids = {launch[1] for launch in driver.launches}
    assert grids == {(1, 3) if layout == "NCHW" else (3, 1)}, grids


def test_bench_kernel_views_feed_every_strategy():
    """The views the CUDA benchmarks hand the kernels (bf16 as int16 bits, NCHW/NHWC) are read right: the
    integer path and the one dtype passed as other bits, one layout each (gpustats bench --device cuda)."""
    from gpustats.benchmark import LAYOUTS, image_batches, kernel_strategies, kernel_view
    from gpustats.kernels.accumulators import Accumulators

    ran = 0
    for dtype, layout in (("uint8", "NCHW"), ("bfloat16", "NHWC")):
        (x,) = image_batches(dtype, layout, 1, batch_images=2, hw=4, pool=2)
        ref = x.float().numpy().sum(axis=(0, 2, 3) if layout == "NCHW" else (0, 1, 2))
        for name, reduce in kernel_strategies().items():
            if name == "warp" or (name == "hist8" and dtype != "uint8"):
                continue  # warp: not under the simulator (its own cases on a GPU); hist8: uint8 only
            acc = Accumulators.zeros(3, integer=dtype == "uint8", histogram=name == "hist8")
            reduce(np.ascontiguousarray(kernel_view(x, layout).numpy()), LAYOUTS[layout], dtype, acc,
                   histogram=name == "hist8")
            host = acc.to_host()
            total = host["isum"] if dtype == "uint8" else host["fsum"]
            np.testing.assert_allclose(total, ref, rtol=1e-3, err_msg=f"{name} {dtype} {layout}")
            ran += 1
    assert ran == 9  # uint8: 5 strategies (all but warp), bfloat16: 4 (not hist8)
