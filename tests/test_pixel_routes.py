"""What decoding hands the reduction (reduce_tasks._pixels): images decoded to their histograms (Pillow's
``histogram()`` over the decoded image, no array made) and views of Pillow's own memory (RGB at 4
bytes a pixel, no copy) give exactly the pixels/counts of the array route and bitwise its state, for
every colour mode, geometry option, bad-file kind and statistic."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gpustats.sources import synthetic
from gpustats.sources.decode import BadImage, decode_bytes, decode_file
from gpustats.sources.reduce_tasks import _Decoded, _Reduce, reduce_records
from gpustats.sources.pixelview import image_view, rgbx_base

pytestmark = pytest.mark.filterwarnings("ignore:16-bit grayscale image:UserWarning")  # deep16.png, expected


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The demo folder's modes and bad kinds, and the modes it lacks (16-bit, bilevel, LA, progressive)."""
    demo = synthetic.make_demo_folder(tmp_path_factory.mktemp("demo"))
    root = demo["root"]
    rng = np.random.default_rng(5)
    photo = Image.fromarray(synthetic.photo_array(rng, 57, 41))
    Image.fromarray(rng.integers(0, 65536, (23, 31), dtype=np.uint16)).save(root / "deep16.png")
    photo.convert("1").save(root / "bilevel.png")
    photo.convert("LA").save(root / "gray_alpha.png")
    photo.save(root / "progressive.jpg", quality=80, progressive=True)
    return [root / name for name in demo["listed"]] + [root / n for n in
                                                       ("deep16.png", "bilevel.png", "gray_alpha.png", "progressive.jpg")]


GEOMETRY = [{}, {"resize": 19}, {"center_crop": 16}, {"center_crop": (70, 12)}, {"center_crop": 90},
            {"resize": 30, "center_crop": (31, 29)}, {"mode": "L"}, {"mode": "L", "center_crop": (9, 100)}]


def _counts(array: np.ndarray) -> np.ndarray:
    """Independent reference: ``np.bincount`` of each channel of the decoded array."""
    return np.stack([np.bincount(array[..., c].ravel(), minlength=256) for c in range(array.shape[2])])


@pytest.mark.parametrize("geometry", GEOMETRY, ids=[json.dumps(g) for g in GEOMETRY])
def test_histogram_is_the_bincount_of_the_array_or_the_same_bad_reason(corpus, geometry):
    opts = {"mode": "RGB", "max_pixels": 10**8, "resize": None, "center_crop": None, **geometry}
    for path in corpus:
        try:
            array = decode_file(path, **opts)[0]
        except BadImage as exc:
            with pytest.raises(BadImage) as info:
                decode_file(path, out="histogram", **opts)
            assert info.value.reason == exc.reason, path.name
            continue
        hist, decoder, size = decode_file(path, out="histogram", **opts)
        assert decoder == "pillow" and size == path.stat().st_size
        assert hist.dtype == np.int64 and hist.tolist() == _counts(array).tolist(), path.name
        from_bytes = decode_bytes(path.read_bytes(), name=path.name, out="histogram", **opts)[0]
        assert from_bytes.tolist() == hist.tolist(), path.name
        view, decoder, _ = decode_file(path, out="view", **opts)
        assert decoder == "pillow" and view.shape == array.shape and np.array_equal(view, array), path.name
        assert rgbx_base(view) is not None or view.flags.c_contiguous, path.name  # never a strided copy


EXTRAS = [dict(histogram=h, per_image=p) for h in (False, True) for p in (False, True)]
BAD = ("truncated.jpg", "empty.png", "not_an_image.jpg")  # the demo folder's bad files


def _routes(corpus, extras, geometry, pixels):
    """The batch result of ``corpus`` decoded as ``pixels`` and as arrays, the first one's finalized
    statistics, and the good images' pixels in float64 (the independent reference)."""
    from gpustats.stats import ChannelStats

    opts = {"mode": "RGB", "max_pixels": 10**8, "resize": None, "center_crop": None, **geometry}
    records = [(i, str(p), [0, i], str(p)) for i, p in enumerate(corpus)]
    got = reduce_records(0, len(records), records, extras, opts, pixels=pixels)
    by_array = reduce_records(0, len(records), records, extras, opts, pixels="readonly")
    channels = 1 if opts["mode"] == "L" else 3
    px = np.concatenate([decode_file(p, **opts)[0].reshape(-1, channels) for p in corpus
                         if p.name not in BAD]).astype(np.float64)
    return got, by_array, ChannelStats.from_dict(got.state).finalize(), px


@pytest.mark.parametrize("extras", EXTRAS, ids=lambda e: f"hist={e['histogram']}-per_image={e['per_image']}")
@pytest.mark.parametrize("geometry", [{}, {"resize": 21, "center_crop": 25}, {"mode": "L"}], ids=["raw", "crop", "L"])
def test_histogram_route_state_is_the_array_routes_bit_for_bit(corpus, extras, geometry):
    by_hist, by_array, got, px = _routes(corpus, dict(extras, covariance=False), geometry, "histogram")
    assert by_hist.state == by_array.state
    assert by_hist.images == by_array.images == len(corpus) - len(BAD)
    assert by_hist.bad == by_array.bad and by_hist.warnings == by_array.warnings
    assert by_hist.nbytes == by_array.nbytes and by_hist.decoders == {"pillow": by_hist.images}
    np.testing.assert_allclose(got.mean, px.mean(0) / 255, rtol=1e-15)  # against numpy float64
    np.testing.assert_allclose(got.std, px.std(0) / 255, rtol=1e-12)


@pytest.mark.parametrize("extras", EXTRAS, ids=lambda e: f"hist={e['histogram']}-per_image={e['per_image']}")
@pytest.mark.parametrize("geometry", [{}, {"resize": 21, "center_crop": 25}, {"mode": "L"}], ids=["raw", "crop", "L"])
def test_view_route_state_is_the_array_routes_bit_for_bit(corpus, extras, geometry):
    by_view, by_array, got, px = _routes(corpus, dict(extras, covariance=True), geometry, "view")
    assert by_view.state == by_array.state and by_view.bad == by_array.bad
    assert by_view.images == by_array.images == len(corpus) - len(BAD)
    if px.shape[1] == 3:
        np.testing.assert_allclose(got.cov, np.cov(px.T, bias=True) / 255**2, rtol=1e-12, atol=1e-17)
    np.testing.assert_allclose(got.mean, px.mean(0) / 255, rtol=1e-15)  # against numpy float64


def test_a_batch_of_views_and_arrays_reduces_like_arrays_alone():
    """Views reduced as they come and ordinary arrays in one batch (an image too large for Pillow's
    one-block export comes as an array among views): the state of the arrays alone."""
    rng = np.random.default_rng(2)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 30), (9, 70), (33, 33))]
    views = [image_view(im) for im in images]
    assert all(rgbx_base(v) is not None for v in views)
    arrays = [np.asarray(im) for im in images]
    for extras in ({"histogram": True, "covariance": True, "per_image": True},
                   {"histogram": False, "covariance": True, "per_image": False}):
        reduce = _Reduce.get(extras)
        done = _Decoded(reduce.sink("view"))
        done.sink.add(rgbx_base(views[0]))
        done.sink.add(rgbx_base(views[2]))
        done.arrays = [arrays[1]]
        assert reduce.decoded(done, 0).to_dict() == reduce(arrays, 0).to_dict()
    plain = _Reduce.get({"histogram": True, "covariance": False, "per_image": True})  # no sink: views copied
    assert plain.sink("view") is None and plain(views, 0).to_dict() == plain(arrays, 0).to_dict()


def test_which_pixels_a_run_asks_for(tmp_path):
    from gpustats.sources import reduce_tasks

    Image.new("RGB", (400, 300)).save(tmp_path / "large.png")  # large also as L (> 65,536 values)
    Image.new("RGB", (30, 20)).save(tmp_path / "small.png")

    def pixels(name, count=1, **extras):  # (decided from the first image; ``mode`` is a decode option)
        return reduce_tasks.ReducedBatches([tmp_path / name] * count, batch_size=4, **extras).pixels

    assert pixels("small.png") == pixels("small.png", covariance=True) == "readonly"
    assert pixels("large.png") == pixels("large.png", histogram=True, per_image=True) == "histogram"
    assert pixels("large.png", covariance=True) == pixels("large.png", 3, covariance=True, histogram=True) == "view"
    assert pixels("large.png", 3, mode="L", covariance=True) == "view"  # (L views are plain arrays)


def test_an_unknown_output_is_refused(corpus):
    with pytest.raises(ValueError, match="out must be one of"):
        decode_file(corpus[0], out="pixels")


def test_covariance_refuses_histograms():
    from gpustats.backends import Options
    from gpustats.backends.cpu_small import hist_u8_state

    with pytest.raises(ValueError, match="co-moments need the pixels"):
        hist_u8_state(np.ones((1, 3, 256), np.int64), Options(covariance=True), 255.0)


_RUN = """
import json, sys
from gpustats import compute_stats
s = compute_stats(sys.argv[1], device="cpu", workers=int(sys.argv[2]), progress=False,
                  histogram=True, per_image=True, covariance=sys.argv[3] == "1")
print(json.dumps({"numba": "numba" in sys.modules, "torch": "torch" in sys.modules, "images": s.images}))
"""


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_folder_of_large_images_runs_without_numba_unless_it_needs_co_moments(tmp_path, workers):
    synthetic.make_jpeg_corpus(tmp_path, 70, size=(300, 220), quality=85)

    def run(covariance):
        out = subprocess.run([sys.executable, "-c", _RUN, str(tmp_path), workers, covariance],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    # nor torch: compute_stats over image files is the folder engine, numpy and Pillow only
    assert run("0") == {"numba": False, "torch": False, "images": 70}
    assert run("1") == {"numba": True, "torch": False, "images": 70}


@pytest.mark.parametrize("why", ["older Pillow", "several blocks"])
def test_without_pillows_export_the_view_route_copies_and_gives_the_same_state(corpus, monkeypatch, why):
    """Pillow < 11.2 has no Arrow export; an image in several of Pillow's memory blocks cannot be
    exported ("Image rows are not contiguous"): the pixels are then copied as before."""
    from PIL import Image as PILImage

    extras = {"histogram": True, "covariance": True, "per_image": True}
    opts = {"mode": "RGB", "max_pixels": 10**8, "resize": None, "center_crop": None}
    records = [(i, str(p), [0, i], str(p)) for i, p in enumerate(corpus)]
    expected = reduce_records(0, len(records), records, extras, opts, pixels="readonly")
    if why == "older Pillow":
        monkeypatch.delattr(PILImage.Image, "__arrow_c_array__")
    else:
        size = PILImage.core.get_block_size()
        PILImage.core.set_block_size(4096)  # every image here spans several blocks
    try:
        assert image_view(PILImage.new("RGB", (64, 64))) is None
        got = reduce_records(0, len(records), records, extras, opts, pixels="view")
    finally:
        if why == "several blocks":
            PILImage.core.set_block_size(size)
    assert got.state == expected.state and got.images == expected.images
