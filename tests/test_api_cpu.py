"""compute_stats / Accumulator on the CPU backend against the numpy float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpustats import Accumulator, BackendUnavailable, InputError, compute_stats
from gpustats.backends.cpu import NonFiniteError

from reference import assert_matches, moments, pixels, rtol

RAGGED = (11, 20, 37, 1)


def ragged(x: np.ndarray, sizes=RAGGED) -> list[np.ndarray]:
    edges = np.cumsum(sizes)[:-1]
    return np.split(x, edges)


@pytest.fixture(scope="module")
def u8():
    return np.random.default_rng(0).integers(0, 256, size=(sum(RAGGED), 3, 7, 5), dtype=np.uint8)


# --------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_uint8_ragged_batches_match_reference_and_any_split_is_bitwise(u8, layout):
    x = u8 if layout == "NCHW" else np.ascontiguousarray(u8.transpose(0, 2, 3, 1))
    r = compute_stats(ragged(x), device="cpu")
    assert_matches(r, moments(pixels([x], layout), scale=255), rtol=rtol("uint8"))
    assert r.scale == 255.0
    whole = compute_stats([x], device="cpu")
    singles = compute_stats(list(x), device="cpu")  # CHW / HWC images one by one
    assert whole.state == r.state == singles.state


@pytest.mark.parametrize("dtype", ["int8", "int16", "uint16"])
def test_other_integers_exact(dtype):
    info = np.iinfo(dtype)
    x = np.random.default_rng(1).integers(info.min, info.max, size=(9, 3, 5, 5), endpoint=True).astype(dtype)
    r = compute_stats(ragged(x, (2, 3, 4)), device="cpu", scale=1.0)
    assert_matches(r, moments(pixels([x], "NCHW")), rtol=rtol("uint8"))
    assert r.state.family == "int"


def test_uint16_auto_scale_is_65535():
    x = torch.from_numpy(np.full((1, 1, 2, 2), 65535, dtype=np.uint16))
    r = compute_stats([x], device="cpu")
    assert r.scale == 65535.0 and r.mean.tolist() == [1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_float_dtypes_ragged(dtype):
    x = torch.randn(sum(RAGGED), 3, 6, 6, generator=torch.Generator().manual_seed(2)).to(dtype)
    r = compute_stats(ragged(x.numpy() if dtype != torch.bfloat16 else x, RAGGED) if dtype != torch.bfloat16
                      else list(torch.split(x, list(RAGGED))), device="cpu")
    ref = moments(pixels([x.double().numpy()], "NCHW"))
    assert_matches(r, ref, rtol=rtol(str(dtype)))


def test_float32_large_offset_small_std():
    rng = np.random.default_rng(3)
    x = (1e4 + 1e-2 * rng.standard_normal(size=(50, 3, 16, 16))).astype(np.float32)
    r = compute_stats(ragged(x, (11, 20, 18, 1)), device="cpu")
    ref = moments(pixels([x], "NCHW"))
    np.testing.assert_allclose(r.std, ref["std"], rtol=rtol("float32", "cpu", "std"))
    np.testing.assert_allclose(r.mean, ref["mean"], rtol=1e-12)


def test_float64_offset_1e8_stays_accurate():
    rng = np.random.default_rng(4)
    x = 1e8 + rng.standard_normal(size=(30, 1, 10, 10))
    r = compute_stats(ragged(x, (7, 13, 10)), device="cpu")
    np.testing.assert_allclose(r.std, moments(pixels([x], "NCHW"))["std"], rtol=1e-8)


def test_2_pow_25_ones_give_mean_exactly_one():
    ones = torch.ones(32, 1, 1024, 1024)  # 2**25 float32 ones
    r = compute_stats([ones], device="cpu")
    assert r.mean.tolist() == [1.0] and r.std.tolist() == [0.0] and r.count.tolist() == [2**25]
    r8 = compute_stats([ones.to(torch.uint8)], device="cpu", scale=1.0)
    assert r8.mean.tolist() == [1.0] and r8.std.tolist() == [0.0]


def test_counts_are_int64_and_do_not_wrap():
    from gpustats import ChannelStats

    big = ChannelStats.from_integer_sums([2**31 + 5], [2**31 + 5], [2**31 + 5], [1], [1], dtype="uint8", scale=1.0)
    merged = big.merge(big)
    assert merged.count.dtype == np.int64 and int(merged.count[0]) == 2 * (2**31 + 5)
    assert merged.finalize().mean.tolist() == [1.0]


def test_single_pixel_and_constant_data():
    r = compute_stats([np.array([[[7.5]]], dtype=np.float32)], device="cpu", layout="HWC")
    assert r.mean.tolist() == [7.5] and r.std.tolist() == [0.0] and r.count.tolist() == [1]
    c = compute_stats([np.full((3, 3, 5, 5), 0.3, np.float32)], device="cpu")
    assert c.std.tolist() == [0.0] * 3


def test_last_short_batch_is_weighted_by_its_size():
    # forum recipe averages per-batch means; a 1-image last batch would count as much as 10 images
    big = np.zeros((10, 1, 2, 2), np.uint8)
    small = np.full((1, 1, 2, 2), 255, np.uint8)
    r = compute_stats([big, small], device="cpu")
    assert r.mean[0] == pytest.approx(1 / 11, rel=1e-15)


# --------------------------------------------------------------------------- NaN policies
def test_nan_policy_raise_names_batch_and_count():
    x = np.zeros((2, 3, 5, 5), np.float32)
    bad = x.copy()
    bad[0, 1, 0, 0] = np.nan
    bad[1, 2, 1, 1] = np.inf
    acc = Accumulator(device="cpu")
    acc.update(x)
    before = acc.state()
    with pytest.raises(NonFiniteError, match=r"batch 1 has 2 non-finite values .*channel\(s\) \[1, 2\]"):
        acc.update(bad)
    assert acc.state() == before  # the failed batch left nothing behind
    assert acc.batches == 1


def test_nan_policy_omit_and_propagate():
    x = np.random.default_rng(5).normal(size=(4, 2, 3, 3))
    x[0, 0, 0, 0] = np.nan
    omit = compute_stats([x], device="cpu", nan_policy="omit", layout="NCHW")
    finite = x[:, 0][np.isfinite(x[:, 0])]
    assert omit.count.tolist() == [35, 36]
    assert omit.mean[0] == pytest.approx(finite.mean(), rel=1e-13)
    assert omit.state.nonfinite.tolist() == [1, 0]
    prop = compute_stats([x], device="cpu", nan_policy="propagate", layout="NCHW")
    assert np.isnan(prop.mean[0]) and np.isnan(prop.std[0]) and np.isfinite(prop.mean[1])
    with pytest.raises(InputError, match="nan_policy"):
        compute_stats([x], device="cpu", nan_policy="ignore", layout="NCHW")


# --------------------------------------------------------------------------- input forms
def test_every_input_form_gives_the_same_state(u8):
    x = u8[:6]
    ref = compute_stats([x], device="cpu").state
    t = torch.from_numpy(x)
    forms = {
        "torch NCHW": [t],
        "torch NHWC": [t.permute(0, 2, 3, 1).contiguous()],
        "channels_last": [t.contiguous(memory_format=torch.channels_last)],
        "CHW images": list(t),
        "HWC numpy": [np.ascontiguousarray(im.transpose(1, 2, 0)) for im in x],
        "(x, y)": [(t[:3], torch.arange(3)), [t[3:], torch.arange(3)]],
        "dict image": [{"image": t, "label": torch.arange(6)}],
        "dict key": [{"pix": t, "lbl": torch.zeros(6)}],
        "list of images": [[im for im in t[:4]], [im for im in t[4:]]],
        "generator": (b for b in [t[:2], t[2:]]),
        "DataLoader": torch.utils.data.DataLoader(torch.utils.data.TensorDataset(t), batch_size=4),
        "read-only numpy": [np.frombuffer(x.tobytes(), np.uint8).reshape(x.shape)],
    }
    for name, loader in forms.items():
        assert compute_stats(loader, device="cpu", key="pix" if name == "dict key" else None).state == ref, name


def test_variable_size_images_are_concatenated_not_resized():
    rng = np.random.default_rng(6)
    ims = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in [(5, 7), (9, 2), (1, 1), (16, 16)]]
    r = compute_stats([ims[:2], ims[2:]], device="cpu")
    px = np.concatenate([im.reshape(-1, 3) for im in ims]).astype(np.float64)
    assert_matches(r, moments(px, scale=255), rtol=rtol("uint8"))


def test_channels_drops_alpha_and_layout_resolves_ambiguity():
    rgba = np.random.default_rng(7).integers(0, 256, size=(2, 5, 5, 4), dtype=np.uint8)
    r = compute_stats([rgba], device="cpu", channels=3, layout="NHWC")
    assert_matches(r, moments(rgba[..., :3].reshape(-1, 3).astype(float), scale=255), rtol=rtol("uint8"))
    amb = np.zeros((3, 3, 3, 3), np.uint8)
    with pytest.raises(InputError, match="pass layout='NCHW' or layout='NHWC'"):
        compute_stats([amb], device="cpu")
    assert compute_stats([amb], device="cpu", layout="NCHW").channels == 3
    gray = np.zeros((4, 6, 6), np.uint8)
    assert compute_stats([gray], device="cpu", layout="NHW").channels == 1


def test_ambiguous_last_batch_reuses_the_first_batches_layout():
    first = np.zeros((8, 3, 5, 5), np.uint8)
    last = np.full((3, 3, 3, 3), 255, np.uint8)  # both axes would fit
    r = compute_stats([first, last], device="cpu")
    assert r.count.tolist() == [8 * 25 + 27] * 3


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("batches, match", [
    ([], "yielded no batches"),
    ([np.zeros((2, 3, 5, 5), np.uint8), np.zeros((2, 4, 5, 5), np.uint8)], "batch 1 has 4 channels, earlier batches had 3.*channels=3"),
    ([np.zeros((2, 3, 5, 5), np.uint8), np.zeros((2, 3, 5, 5), np.float32)], "batch 1 is float32 but earlier batches were uint8"),
    ([np.zeros((2, 3, 5, 5, 1), np.uint8)], "has 5 dimensions"),
    ([np.zeros((4, 4), np.uint8)], "layout='NHW' or layout='HW'"),
    ([np.zeros((2, 3, 5, 5), np.int64)], "unsupported dtype int64"),
    ([np.zeros((2, 3, 5, 5), bool)], "unsupported numpy dtype bool"),
    ([np.zeros((2, 7, 7, 7), np.uint8)], "cannot tell the channel axis"),
    ([["hello"]], "expected a torch tensor or numpy array"),  # (a plain list of str is a list of paths)
    ([{"a": np.zeros((1, 3, 2, 2)), "b": np.zeros((1, 3, 2, 2))}], "pass key="),
    ([np.zeros((2, 3, 5, 5), np.uint8), np.zeros((2, 3, 5, 5), np.uint16)], "convert every batch to one dtype"),
])
def test_errors_say_what_to_do(batches, match):
    with pytest.raises(InputError, match=match):
        compute_stats(batches, device="cpu")


def test_failed_batch_leaves_state_untouched_for_every_error():
    acc = Accumulator(device="cpu")
    acc.update(np.ones((2, 3, 5, 5), np.uint8))
    before = acc.state()
    for bad in (np.zeros((2, 4, 5, 5), np.uint8), np.zeros((2, 3, 5, 5), np.float32), "x"):
        with pytest.raises(InputError):
            acc.update(bad)
        assert acc.state() == before and acc.batches == 1
    acc.update(np.ones((1, 3, 5, 5), np.uint8))
    assert acc.result().count.tolist() == [75] * 3


@pytest.mark.parametrize("first, second, common", [("int8", "uint8", "int16"), ("uint8", "uint16", "uint16"),
                                                    ("int16", "uint16", "float32")])
def test_mixed_integer_dtypes_are_refused_with_what_to_do(first, second, common):
    """Issue 25, item 4: int8 then uint8 (with an explicit scale) gave percentile(50) = 0.5 with an error
    bound of 0, and uint8 then uint16 a uint8 state with max 60000. One Accumulator takes one integer dtype."""
    from gpustats import StatsError

    acc = Accumulator(device="cpu", scale=1.0, layout="NCHW", histogram=True, hist_bins=16, hist_range=(-128, 65536))
    acc.update(np.zeros((1, 1, 4, 4), first))
    before = acc.state()
    with pytest.raises(InputError, match=f"batch 1 is {second} but earlier batches were {first}.*one dtype .*{common}"):
        acc.update(np.full((1, 1, 4, 4), 100, second))
    assert acc.state() == before and acc.batches == 1
    other = Accumulator(device="cpu", scale=1.0, layout="NCHW", histogram=True, hist_bins=16, hist_range=(-128, 65536))
    other.update(np.full((1, 1, 4, 4), 100, second))
    with pytest.raises(StatsError, match=f"cannot merge {first} data with {second} data"):
        before.merge(other.state())


def test_device_selection():
    """device=None takes the GPU where one is usable and the CPU (with the reason) elsewhere."""
    import torch

    from gpustats.backends import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    acc = Accumulator()
    if reason is None:  # a usable GPU (or the simulator, where None means the CPU by design)
        assert acc.backend == ("cpu" if _simulator_on() else "cuda")
        assert Accumulator(device="cuda").backend == "cuda"
    else:
        assert acc.backend == "cpu" and acc.cpu_reason == reason
        with pytest.raises(BackendUnavailable, match="cannot be used"):
            Accumulator(device="cuda")
    beyond = torch.cuda.device_count() if reason is None and not _simulator_on() else 0
    if beyond:
        with pytest.raises(BackendUnavailable, match="visible"):
            Accumulator(device=f"cuda:{beyond}")
    with pytest.raises(BackendUnavailable, match="not supported"):
        Accumulator(device="mps")


def _simulator_on() -> bool:
    import os

    return os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")


def test_accumulator_reset_and_load():
    acc = Accumulator(device="cpu")
    acc.update(np.ones((2, 3, 5, 5), np.uint8))
    saved = acc.state()
    acc.reset()
    assert acc.state().is_empty and acc.batches == 0
    acc.update(np.zeros((2, 3, 5, 5), np.float32))  # after reset a new dtype is fine
    acc2 = Accumulator(device="cpu")
    acc2.load(saved)
    acc2.update(np.ones((2, 3, 5, 5), np.uint8))
    assert acc2.result().count.tolist() == [100] * 3
    with pytest.raises(InputError, match="earlier batches were uint8"):
        acc2.update(np.zeros((1, 3, 5, 5), np.float32))


def test_progress_bar_runs():
    r = compute_stats([np.zeros((1, 3, 2, 2), np.uint8)] * 3, device="cpu", progress=True)
    assert r.count.tolist() == [12] * 3


def test_many_small_images_in_one_batch_equal_one_by_one():
    rng = np.random.default_rng(8)
    ims = [rng.integers(0, 256, size=(int(h), int(w), 3), dtype=np.uint8) for h, w in rng.integers(1, 9, size=(300, 2))]
    big = rng.integers(0, 256, size=(300, 300, 3), dtype=np.uint8)
    together = compute_stats([ims[:150] + [big] + ims[150:]], device="cpu", layout="HWC")
    apart = compute_stats([[im] for im in ims + [big]], device="cpu", layout="HWC")
    assert together.state == apart.state
    floats = [im.astype(np.float32) for im in ims]
    f_together = compute_stats([floats], device="cpu", layout="HWC", covariance=True)
    px = np.concatenate([im.reshape(-1, 3) for im in floats]).astype(np.float64)
    np.testing.assert_allclose(f_together.std, px.std(0), rtol=1e-12)
    np.testing.assert_allclose(f_together.cov, np.cov(px, rowvar=False, ddof=0), rtol=1e-10)
