"""Small uint8 images reduced with numpy alone (backends.cpu_small): bitwise the numba reducer's state,
and a folder run of small images does not load numba at all."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from gpustats.backends import Options
from gpustats.backends.cpu import CpuReducer, numpy_chunk
from gpustats.backends.cpu_small import is_small_u8, small_u8_state
from gpustats.batches import BatchAdapter

OPTIONS = [Options(histogram=h, covariance=c, per_image=p) for h in (False, True) for c in (False, True)
           for p in (False, True)]


@st.composite
def small_images(draw):
    channels = draw(st.sampled_from([1, 3]))
    same = draw(st.booleans())
    shape = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    count = draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shapes = [shape if same else (int(rng.integers(1, 60)), int(rng.integers(1, 60))) for _ in range(count)]
    images = [rng.integers(0, 256, (*s, channels), dtype=np.uint8) for s in shapes]
    if draw(st.booleans()):
        images[0][...] = 255  # a saturated image: min == max in it
    return images


@settings(max_examples=60, deadline=None)
@given(small_images(), st.sampled_from(OPTIONS), st.sampled_from([7, 2000, 3 << 16]))
def test_numpy_state_is_the_numba_reducers_bit_for_bit(images, options, chunk):
    """Whatever the planes the images are cut into (``_CHUNK`` values: one image each, a few, all)."""
    from unittest import mock

    from gpustats.backends import cpu_small

    assert is_small_u8(images)
    numba_state = CpuReducer(torch.device("cpu"), options, threads=1).reduce_chunk(
        BatchAdapter("HWC").adapt(images, 0), 255.0, 0)
    with mock.patch.object(cpu_small, "_CHUNK", chunk):
        got = small_u8_state(images, options, 255.0)
    assert got.to_dict() == numba_state.to_dict()
    px = np.concatenate([a.reshape(-1, a.shape[2]) for a in images]).astype(np.float64)
    s = got.finalize()
    np.testing.assert_allclose(s.mean, px.mean(0) / 255.0, rtol=1e-15)  # float64 reference
    np.testing.assert_allclose(s.std, px.std(0) / 255.0, rtol=1e-12, atol=1e-15)
    assert s.min.tolist() == (px.min(0) / 255.0).tolist() and s.max.tolist() == (px.max(0) / 255.0).tolist()


def test_only_small_uint8_images_qualify():
    small = np.zeros((4, 4, 3), np.uint8)
    assert not is_small_u8([])
    assert not is_small_u8([small, np.zeros((256, 256, 3), np.uint8)])  # one large image
    assert not is_small_u8([small, np.zeros((4, 4, 1), np.uint8)])  # channel counts differ
    assert not is_small_u8([small.astype(np.uint16)])
    assert not is_small_u8([np.zeros((4, 4), np.uint8)])


@settings(max_examples=40, deadline=None)
@given(small_images(), st.sampled_from(OPTIONS), st.booleans())
def test_numpy_chunks_reduce_as_the_adapters_tensors(images, options, with_large):
    """Decode workers give numba's reducer numpy chunks (numpy_chunk: no torch): the state is the one
    the adapter's tensors give, bit for bit, with small images joined into a strip beside a large one."""
    if with_large:
        images = images + [np.random.default_rng(1).integers(0, 256, (300, 200, images[0].shape[2]), dtype=np.uint8)]

    def state(chunk):
        return CpuReducer("cpu", options, threads=1).reduce_chunk(chunk, 255.0, 0).to_dict()

    assert state(numpy_chunk(images)) == state(BatchAdapter("HWC").adapt(images, 0))
    if all(a.shape == images[0].shape for a in images):
        stack = np.stack(images)
        assert state(numpy_chunk([stack], stacked=True)) == state(BatchAdapter("NHWC").adapt(stack, 0))


def test_numpy_chunk_takes_only_hwc_uint8_of_one_channel_count():
    rgb, grey = np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5, 1), np.uint8)
    chunk = numpy_chunk([rgb, np.zeros((0, 5, 3), np.uint8)])
    assert (chunk.layout, chunk.dtype, chunk.channels, [p.shape for p in chunk.parts]) == ("PC", "uint8", 3, [(1, 20, 3)])
    for images in ([rgb.astype(np.uint16)], [rgb[..., 0]], [rgb, grey], []):
        assert numpy_chunk(images) is None  # the adapter converts (or refuses) these


_RUN = """
import json, sys
from gpustats.sources import reduce_tasks
reduce_tasks._NUMBA_FROM_ITEMS = int(sys.argv[2])
from gpustats import compute_stats
s = compute_stats(sys.argv[1], device="cpu", workers=int(sys.argv[3]), batch_size=4, progress=False,
                  histogram=True, covariance=True, per_image=True)
print(json.dumps({"numba": "numba" in sys.modules, "torch": "torch" in sys.modules, "state": s.state.to_dict()}))
"""


@pytest.mark.parametrize("workers", ["0", "2"])
def test_folder_of_small_images_runs_without_numba_and_equals_the_numba_run(tmp_path, workers):
    rng = np.random.default_rng(3)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (8 + i % 3, 9, 3), dtype=np.uint8)).save(tmp_path / f"s{i}.png")

    def run(numba_from):
        out = subprocess.run([sys.executable, "-c", _RUN, str(tmp_path), str(numba_from), workers],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    plain, forced = run(100_000), run(0)
    assert plain["numba"] is False  # numpy alone: numba's ~0.4 s start is not paid
    assert forced["numba"] is True
    assert plain["torch"] is forced["torch"] is False  # numba's reducer takes numpy chunks: no torch either
    assert plain["state"] == forced["state"]


def test_numba_is_loaded_up_front_only_where_it_pays_and_small_images_go_in_bigger_tasks(tmp_path, monkeypatch):
    from gpustats.sources import reduce_tasks

    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("RGB", (32, 32)).save(small)
    Image.new("RGB", (300, 200)).save(large)

    def pays(files, start=0, **opts):
        return reduce_tasks._numba_pays(reduce_tasks.ReducedBatches(files, batch_size=4, start=start, **opts))

    cov = {"covariance": True}  # co-moments need arrays; without them large images come as histograms
    assert not pays([small]) and not pays([small], **cov)
    assert pays([large], **cov) and not pays([large])
    assert pays([small], resize=256, **cov)  # decoded large
    assert not pays([large], center_crop=32, **cov)
    assert not pays([large], mode="L", center_crop=(100, 200), **cov)
    assert pays([small, large], start=1, **cov)  # the run's first item decides
    monkeypatch.setattr(reduce_tasks, "_NUMBA_FROM_ITEMS", 2)
    assert pays([small, small])  # many items: numba's loops pay
    files = [small] * 300
    assert len(reduce_tasks.ReducedBatches(files, batch_size=4)) == 75  # batch_size given: kept
    assert [(t.first, t.stop) for t in reduce_tasks.ReducedBatches(files, batch_size=4, small_tasks=True).tasks] == \
        [(0, 256), (256, 300)]
    assert len(reduce_tasks.ReducedBatches([large] * 9, batch_size=4, small_tasks=True)) == 3  # large: batch_size


def test_default_tasks_of_small_images_give_the_state_of_any_batch_size(tmp_path):
    from gpustats import compute_stats

    rng = np.random.default_rng(8)
    for i in range(300):  # more than one 256-file task; sizes vary, one file is not an image
        Image.fromarray(rng.integers(0, 256, (4 + i % 5, 6, 3), dtype=np.uint8)).save(tmp_path / f"f{i:03d}.png")
    (tmp_path / "f150.png").write_bytes(b"not a png")
    kw = dict(device="cpu", workers=2, progress=False, histogram=True, covariance=True, per_image=True)
    auto, given = compute_stats(str(tmp_path), **kw), compute_stats(str(tmp_path), batch_size=7, **kw)
    assert auto.state.to_dict() == given.state.to_dict() and auto.images == given.images == 299
    assert [b["path"] for b in auto.bad_files] == [b["path"] for b in given.bad_files] == [str(tmp_path / "f150.png")]


def test_the_size_guess_reads_no_archive_member_or_parquet_row(monkeypatch):
    from gpustats.sources import reduce_tasks
    from gpustats.sources.segment import Segment

    class Members:  # an archive-like unit: three items whose bytes must not be read to guess a size
        count = 3

    reads = []
    monkeypatch.setattr(Segment, "source", lambda self, pos: reads.append(pos))
    dataset = reduce_tasks.ReducedBatches(Segment([Members()], [0]), batch_size=2, small_tasks=True, covariance=True)
    assert reads == []  # (a Parquet row would cost reading its row group's column)
    assert not dataset.small and reduce_tasks._numba_pays(dataset) and len(dataset) == 2


def test_moments_of_a_histogram_are_those_of_its_values():
    """``int_state.hist_rows``, the one rule for moments from uint8 histograms, against the values
    themselves (numpy on the expanded pixels); a row without values leaves min and max alone."""
    from gpustats.backends.int_state import EMPTY_MAX, EMPTY_MIN, hist_rows

    rng = np.random.default_rng(3)
    values = [rng.integers(lo, hi, size, dtype=np.uint8) for lo, hi, size in ((0, 256, 500), (7, 8, 3), (250, 256, 9))]
    hists = np.stack([np.bincount(v, minlength=256) for v in values] + [np.zeros(256, np.int64)])[:, None, :]
    rows = hist_rows(hists)
    wide = [v.astype(np.int64) for v in values]
    assert rows["count"][:, 0].tolist() == [v.size for v in wide] + [0]
    assert rows["total"][:, 0].tolist() == [int(v.sum()) for v in wide] + [0]
    assert rows["total_sq"][:, 0].tolist() == [int((v * v).sum()) for v in wide] + [0]
    assert rows["vmin"][:, 0].tolist() == [int(v.min()) for v in wide] + [EMPTY_MIN]
    assert rows["vmax"][:, 0].tolist() == [int(v.max()) for v in wide] + [EMPTY_MAX]
