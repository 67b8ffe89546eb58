"""Batch forms from issue 17: (input, target) tuples, zero-image batches, numpy arrays with negative strides.

References are numpy float64 over exactly the pixels that must count; 8-bit data makes the
expected values exact (sums of integers), so the tolerance is a few float64 ulps (rtol 1e-12).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpustats import Accumulator, InputError, compute_stats
from gpustats.batches import BatchAdapter

from reference import rtol

RTOL = rtol("uint8")  # float64 rounding of exact integer moments (tests/reference.py's one table)


def _u8(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _check(stats, pixels_c_last: np.ndarray) -> None:
    """Compare count/mean/std/min/max with numpy float64 over ``[P, C]`` uint8 pixels (scale 255)."""
    ref = pixels_c_last.reshape(-1, pixels_c_last.shape[-1]).astype(np.float64) / 255.0
    assert stats.count.tolist() == [ref.shape[0]] * ref.shape[1]
    np.testing.assert_allclose(stats.mean, ref.mean(axis=0), rtol=RTOL)
    np.testing.assert_allclose(stats.std, ref.std(axis=0), rtol=RTOL)
    np.testing.assert_array_equal(stats.min, ref.min(axis=0))
    np.testing.assert_array_equal(stats.max, ref.max(axis=0))


# ------------------------------------------------------------------------- item 1: tuples
@pytest.mark.parametrize("target_of", [
    lambda x: np.full_like(x, 255),  # same shape and rank as the input (a mask, a target image)
    lambda x: np.zeros(x.shape[1:], x.dtype),  # a lower-rank target
    lambda x: 7,  # a plain label
])
def test_unbatched_input_target_tuple_counts_only_the_input(target_of):
    x = _u8((3, 8, 5), 1)  # CHW
    stats = compute_stats([(torch.from_numpy(x), torch.as_tensor(target_of(x)))], device="cpu")
    _check(stats, x.transpose(1, 2, 0))


def test_batched_tuple_with_extra_elements_counts_only_the_input():
    x = _u8((2, 8, 5, 3), 2)  # NHWC
    y = _u8((2, 8, 5, 3), 3)
    stats = compute_stats([(x, y, "meta"), (x[:1], y[:1], "meta")], device="cpu")
    _check(stats, np.concatenate([x, x[:1]]))


def test_list_still_means_images_of_different_sizes():
    a, b = _u8((8, 5, 3), 4), _u8((6, 7, 3), 5)  # HWC images of different sizes
    stats = compute_stats([[a, b]], device="cpu")
    _check(stats, np.concatenate([a.reshape(-1, 3), b.reshape(-1, 3)]))


def test_default_collate_list_of_batch_and_labels_counts_the_batch():
    x = _u8((4, 3, 8, 5), 6)  # NCHW; DataLoader's default collate yields [x, y] lists
    stats = compute_stats([[torch.from_numpy(x), torch.arange(4)]], device="cpu")
    _check(stats, x.transpose(0, 2, 3, 1))


def test_nesting_too_deep_is_an_input_error():
    batch = (_u8((3, 8, 5), 0),)
    for _ in range(5000):
        batch = (batch, 0)
    with pytest.raises(InputError, match="more than 16 levels"):
        compute_stats([batch], device="cpu")


# ------------------------------------------------------------------------- item 2: zero images
@pytest.mark.parametrize("empty", [
    torch.zeros(0, 3, 8, 5, dtype=torch.uint8),  # NCHW of the same dtype
    np.zeros((0, 8, 5, 3), np.uint8),  # NHWC while the others are NCHW
    torch.zeros(0, 3, 8, 5),  # float32 between uint8 batches
    torch.zeros(0, 4, 4, 4, dtype=torch.uint8),  # 4 channels, ambiguous layout
    (torch.zeros(0, 3, 8, 5, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)),  # an empty (x, y) pair
])
def test_zero_image_batch_contributes_nothing(empty):
    b1, b2 = _u8((2, 3, 8, 5), 7), _u8((3, 3, 8, 5), 8)
    plain = Accumulator("cpu", histogram=True, per_image=True)
    with_empty = Accumulator("cpu", histogram=True, per_image=True)
    plain.update(b1)
    with_empty.update(b1)
    before = with_empty.state()
    with_empty.update(empty)  # no error ...
    assert with_empty.state() == before  # ... and the state is unchanged, bit for bit
    plain.update(b2)
    with_empty.update(b2)
    assert with_empty.state() == plain.state()
    _check(with_empty.result(), np.concatenate([b1, b2]).transpose(0, 2, 3, 1))


def test_zero_image_first_batch_settles_nothing():
    x = _u8((2, 8, 5, 4), 9)  # NHWC with 4 channels
    # an empty NCHW-looking batch of 3 channels first: neither its layout nor its channels stick
    stats = compute_stats([np.zeros((0, 3, 8, 5), np.uint8), x], device="cpu")
    _check(stats, x)
    with pytest.raises(InputError, match="no data was reduced"):
        compute_stats([torch.zeros(0, 3, 8, 5, dtype=torch.uint8)], device="cpu")


def test_failed_batch_then_empty_batch_does_not_commit_the_failed_layout():
    acc = Accumulator("cpu")
    bad = torch.rand(1, 4, 8, 5)
    bad[0, 0, 0, 0] = float("nan")  # nan_policy="raise": refused after it was adapted
    with pytest.raises(InputError, match="non-finite"):
        acc.update(bad)
    acc.update(torch.zeros(0, 4, 8, 5))
    good = torch.rand(2, 3, 8, 5, dtype=torch.float64)
    acc.update(good)  # 3 channels: the refused 4-channel batch set nothing
    ref = good.permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    np.testing.assert_allclose(acc.result().mean, ref.mean(axis=0), rtol=1e-12)


def test_empty_list_is_a_clear_error():
    with pytest.raises(InputError, match="empty list.*x\\[:0\\]"):
        BatchAdapter().adapt([], 0)


# ------------------------------------------------------------------------- item 2: negative strides
@pytest.mark.parametrize("view", [
    lambda a: a[:, ::-1],  # W reversed (HWC)
    lambda a: a[::-1],  # H reversed
    lambda a: a[..., ::-1],  # channels reversed (RGB -> BGR)
    lambda a: a[::-2, ::-1],  # negative and non-unit strides together
])
def test_numpy_negative_strides_are_read(view):
    image = view(_u8((9, 7, 3), 10))
    assert any(s < 0 for s in image.strides)
    _check(compute_stats([image], device="cpu"), np.ascontiguousarray(image))


def test_numpy_negative_strides_in_a_batch_and_a_list():
    batch = _u8((2, 9, 7, 3), 11)[:, :, ::-1]
    _check(compute_stats([batch], device="cpu"), np.ascontiguousarray(batch))
    a, b = _u8((9, 7, 3), 12)[::-1], _u8((5, 6, 3), 13)[:, ::-1]
    _check(compute_stats([[a, b]], device="cpu"), np.concatenate([a.reshape(-1, 3), b.reshape(-1, 3)]))
