"""ChannelStats: merge identity, Chan merge against numpy, exact integer state, JSON, results."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpustats import ChannelStats, StatsError, compute_stats
from gpustats.stats import ImageMoments

from reference import moments


def float_state(x: np.ndarray) -> ChannelStats:
    """State of [P, C] float data built directly from numpy (independent of the backends)."""
    mean = x.mean(axis=0)
    return ChannelStats.from_moments([len(x)] * x.shape[1], mean, ((x - mean) ** 2).sum(axis=0), x.min(0), x.max(0),
                                     dtype="float64", scale=1.0)


def int_state(x: np.ndarray) -> ChannelStats:
    xi = x.astype(object)
    return ChannelStats.from_integer_sums([len(x)] * x.shape[1], xi.sum(0), (xi * xi).sum(0), x.min(0), x.max(0),
                                          dtype="uint8", scale=255.0)


def test_empty_is_identity_both_sides():
    rng = np.random.default_rng(0)
    a = float_state(rng.normal(size=(50, 3)))
    e = ChannelStats.empty()
    assert e.merge(a) == a and a.merge(e) == a
    assert e.merge(e).is_empty


def test_empty_finalize_is_a_clear_error():
    with pytest.raises(StatsError, match="no data"):
        ChannelStats.empty().finalize()


def test_float_merge_matches_numpy_two_pass():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=(1000, 3))
    parts = np.split(x, [11, 31, 68, 600])
    merged = ChannelStats.empty()
    for p in parts:
        merged = merged.merge(float_state(p))
    r = merged.finalize()
    ref = moments(x)
    np.testing.assert_allclose(r.mean, ref["mean"], rtol=1e-14)
    np.testing.assert_allclose(r.std, ref["std"], rtol=1e-13)
    np.testing.assert_array_equal(r.min, ref["min"])


def test_integer_state_is_exactly_rounded():
    # 1, 2 with 255 scale: mean 1.5/255 exactly rounded, var 0.25/255**2
    s = ChannelStats.from_integer_sums([2], [3], [5], [1], [2], dtype="uint8", scale=255.0)
    r = s.finalize()
    assert r.mean[0] == 1.5 / 255
    assert r.var[0] == float(0.25 / 65025)
    r1 = s.finalize(ddof=1)
    assert r1.var[0] == 0.5 / 65025


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=1, max_size=200), st.lists(st.integers(1, 50), min_size=1, max_size=6),
       st.randoms(use_true_random=False))
def test_uint8_any_split_any_order_is_bitwise_identical(values, cuts, rnd):
    x = np.array(values, dtype=np.uint8).reshape(-1, 1)
    edges = np.cumsum(cuts)
    parts = [p for p in np.split(x, edges[edges < len(x)]) if len(p)]
    whole = int_state(x)
    states = [int_state(p) for p in parts]
    rnd.shuffle(states)
    merged = ChannelStats.empty()
    for s in states:
        merged = s.merge(merged) if rnd.random() < 0.5 else merged.merge(s)
    assert merged == whole
    assert merged.to_json() == whole.to_json()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=200), st.lists(st.integers(1, 50), min_size=1, max_size=6))
def test_float_any_split_matches_reference(values, cuts):
    x = np.array(values, dtype=np.float64).reshape(-1, 1)
    edges = np.cumsum(cuts)
    parts = [p for p in np.split(x, edges[edges < len(x)]) if len(p)]
    merged = ChannelStats.empty()
    for p in reversed(parts):
        merged = merged.merge(float_state(p))
    r = merged.finalize()
    ref = moments(x)
    scale = max(1.0, float(np.abs(x).max()))
    np.testing.assert_allclose(r.mean, ref["mean"], rtol=1e-12, atol=1e-12 * scale)
    np.testing.assert_allclose(r.var, ref["var"], rtol=1e-9, atol=1e-9 * scale**2)


def test_json_roundtrip_is_bitwise_and_has_no_pickle():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(77, 3)) * 1e-3 + 1e4
    s = float_state(x)
    s2 = ChannelStats.from_json(s.to_json())
    for name in ("mean", "m2", "min", "max"):
        assert getattr(s2, name).tobytes() == getattr(s, name).tobytes()
    json.loads(s.to_json())  # plain JSON text
    big = ChannelStats.from_integer_sums([1 << 50], [255 * (1 << 50)], [65025 * (1 << 50)], [255], [255],
                                         dtype="uint8", scale=255.0)
    assert big.isumsq[0] > 2**63  # beyond int64
    assert ChannelStats.from_json(big.to_json()).isumsq == big.isumsq


def test_json_roundtrip_with_every_option():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(4, 3, 5, 5), dtype=np.uint8)
    r = compute_stats([x], device="cpu", histogram=True, covariance=True, per_image=True)
    s = r.state
    assert ChannelStats.from_json(s.to_json()) == s
    back = ChannelStats.from_json(s.to_json())
    assert back.hist.tolist() == s.hist.tolist()
    assert back.images.mean.shape == (3, 3) and back.images.mean.tobytes() == s.images.mean.tobytes()
    assert back.finalize().per_image["mean_of_stds"].shape == (3,)


def _doctored(state: ChannelStats, change) -> str:
    d = json.loads(state.to_json())
    change(d)
    return json.dumps(d)


@pytest.mark.parametrize("change, entry", [
    (lambda d: d.update(count=[-v for v in d["count"]]), r"state\.count\[0\] is -"),
    (lambda d: d.update(isum=[v + "0" for v in d["isum"]]), "sums .* do not fit"),  # one digit more: mean 3.098
    (lambda d: d.update(mean=[(float.fromhex(v) + 1).hex() for v in d["mean"]]), "mean/m2 disagree"),
    (lambda d: d.update(max=[float(0).hex()] * 3), "min <= max"),
    (lambda d: d["hist"][0].__setitem__(0, d["hist"][0][0] + 1), r"state\.hist\[0\] holds"),
])
def test_from_json_refuses_self_contradictory_integer_states(change, entry):
    """from_json checks what the checkpoint reader checks (issue 25, item 3): no state whose fields
    contradict each other is accepted (before, a digit added to an exact sum gave a mean of 3.098)."""
    x = np.random.default_rng(5).integers(0, 256, size=(2, 3, 4, 4), dtype=np.uint8)
    state = compute_stats([x], device="cpu", histogram=True, layout="NCHW").state
    assert ChannelStats.from_json(_doctored(state, lambda d: None)) == state  # the untouched text is accepted
    with pytest.raises(StatsError, match=entry):
        ChannelStats.from_json(_doctored(state, change))


@pytest.mark.parametrize("change, entry", [
    (lambda d: d.update(count=[-1] * len(d["count"])), r"state\.count\[0\] is -1"),
    (lambda d: d.update(mean=[(float.fromhex(v) * 1e3).hex() for v in d["mean"]]), "do not fit min"),
    (lambda d: d.update(m2=[(-1.0).hex()] * len(d["m2"])), "do not fit min"),
])
def test_from_dict_refuses_self_contradictory_float_states(change, entry):
    state = float_state(np.random.default_rng(6).normal(size=(20, 3)) + 5.0)
    with pytest.raises(StatsError, match=entry):
        ChannelStats.from_dict(json.loads(_doctored(state, change)))


def test_from_json_rejects_foreign_text():
    with pytest.raises(StatsError):
        ChannelStats.from_json('{"format": "something else"}')
    with pytest.raises(StatsError):
        ChannelStats.from_json("not json")


def test_merge_refuses_mismatched_states():
    a = float_state(np.zeros((3, 3)))
    b = float_state(np.zeros((3, 4)))
    with pytest.raises(StatsError, match="3 and 4 channels"):
        a.merge(b)
    i = int_state(np.zeros((3, 3), np.uint8))
    with pytest.raises(StatsError, match="integer and float"):
        a.merge(i)


def test_state_is_immutable():
    s = float_state(np.ones((3, 2)))
    with pytest.raises(ValueError, match="read-only"):
        s.mean[0] = 5.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.count = None


def test_image_moments_merge_matches_direct():
    rng = np.random.default_rng(4)
    cnt = rng.integers(1, 100, size=(9, 2))
    mean = rng.normal(size=(9, 2))
    m2 = rng.random(size=(9, 2)) * cnt
    whole = ImageMoments.from_images(cnt, mean, m2)
    parts = ImageMoments.from_images(cnt[:4], mean[:4], m2[:4]).merge(ImageMoments.from_images(cnt[4:], mean[4:], m2[4:]))
    np.testing.assert_allclose(parts.mean, whole.mean, rtol=1e-13)
    np.testing.assert_allclose(parts.m2, whole.m2, rtol=1e-12)
    assert parts.images == 9


def test_normalize_equivalent_to_manual():
    import torch

    r = compute_stats([np.array([[[[0, 255]]], [[[51, 102]]]], dtype=np.uint8)], device="cpu", layout="NCHW")
    mean, std = r.normalize_args()
    assert isinstance(mean, list) and isinstance(mean[0], float)
    t = torch.rand(1, 4, 4)
    out = r.normalize()(t)
    torch.testing.assert_close(out, (t - mean[0]) / std[0])


def test_known_answer_by_hand():
    # channel 0: values {0, 255} half each -> mean 0.5, std 0.5; channel 1: all 51 -> 0.2, std 0
    x = np.zeros((2, 2, 1, 2), dtype=np.uint8)
    x[:, 0, 0, :] = [[0, 255], [255, 0]]
    x[:, 1] = 51
    r = compute_stats([x], device="cpu", layout="NCHW")
    assert r.mean.tolist() == [0.5, 0.2]
    assert r.std.tolist() == [0.5, 0.0]
    assert r.min.tolist() == [0.0, 0.2] and r.max.tolist() == [1.0, 0.2]
    assert r.count.tolist() == [4, 4]
    assert math.isclose(compute_stats([x], device="cpu", layout="NCHW", ddof=1).var[0], 1 / 3, rel_tol=1e-15)


# ---------------------------------------------------------------------- issue 17: clear errors
def test_percentile_of_nan_is_a_clear_error():
    r = compute_stats([np.arange(12, dtype=np.uint8).reshape(1, 3, 2, 2)], device="cpu", histogram=True, layout="NCHW")
    for bad in (float("nan"), [50, float("nan")], float("inf"), -1):
        with pytest.raises(StatsError, match=r"numbers in \[0, 100\]"):
            r.percentile(bad)


@pytest.mark.parametrize("text", ["[]", "3", "null", '"state"', '{"format": "gpustats.ChannelStats/1"}',
                                  '{"format": "gpustats.ChannelStats/1", "dtype": "uint8", "count": [1]}',
                                  '{"format": "gpustats.ChannelStats/1", "dtype": "complex64"}'])
def test_from_json_of_anything_else_is_a_clear_error(text):
    with pytest.raises(StatsError, match="gpustats state|ChannelStats.to_json"):
        ChannelStats.from_json(text)
    with pytest.raises(StatsError):
        ChannelStats.from_json(None)


def test_states_saved_before_per_channel_image_counts_still_load():
    """Older per-image states (no counts, no exact sums) load; merging one into an exact integer
    state is refused with a message saying what to do, not silently inexact."""
    x = np.random.default_rng(10).integers(0, 256, size=(4, 3, 5, 5), dtype=np.uint8)
    new = compute_stats([x], device="cpu", per_image=True).state
    d = new.to_dict()
    d["images"] = {"images": 4, "mean": [float(v).hex() for v in new.images.mean.reshape(-1)],
                   "m2": [float(v).hex() for v in new.images.m2.reshape(-1)]}
    old = ChannelStats.from_dict(d)
    assert old.images.counts.tolist() == [4, 4, 4] and not old.images.exact
    np.testing.assert_allclose(old.finalize().per_image["mean_of_means"], new.finalize().per_image["mean_of_means"],
                               rtol=1e-15)
    with pytest.raises(StatsError, match="older gpustats.*recompute"):
        old.merge(new)
