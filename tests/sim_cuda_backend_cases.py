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
    """Counts calls of every strategy's reduce: proves the kernel path ran (not a CPU fallback)."""
    calls = {}
    depth = [0]  # only the backend's own calls count, not a strategy's fallback to another one
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
    with pytest.raises(ValueError, match="batch 1 has 1 non-finite"):
        acc.update(bad)
    assert acc.state().count.tolist() == [4, 4, 4]
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
