"""Tests for gpustats.sources' decoding: every image mode, bad files and their reasons, max_pixels,
resize and center crop, and the GPU (nvJPEG) routing. Listing and iteration: tests/test_sources.py."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from gpustats.sources import BadImage, ImageFileDataset, decode_image
from gpustats.sources import gpu, synthetic
from gpustats.sources.decode import resized_size

import _sources_helpers
from _sources_helpers import touch_image

demo = _sources_helpers.demo  # a shared fixture (assigned: pyflakes reads an imported one as unused)


# --------------------------------------------------------------------------- helpers


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with a tiny (insufficient) IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def pil_rgb(path) -> np.ndarray:
    """The torchvision default loader, written out independently."""
    with open(path, "rb") as fh:
        return np.asarray(Image.open(fh).convert("RGB"))


# --------------------------------------------------------------------------- decoding


def test_every_demo_file_decodes_like_the_torchvision_loader(demo):
    root = demo["root"]
    for name in demo["good"]:
        arr = decode_image(root / name)
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
        assert arr.flags.c_contiguous and arr.flags.writeable
        np.testing.assert_array_equal(arr, pil_rgb(root / name), err_msg=name)


def test_grayscale_is_replicated(demo):
    path = demo["root"] / "gray.png"
    gray = np.asarray(Image.open(path))
    assert gray.ndim == 2
    arr = decode_image(path)
    for channel in range(3):
        np.testing.assert_array_equal(arr[:, :, channel], gray)


def test_rgba_alpha_is_dropped_not_composited(demo):
    path = demo["root"] / "rgba.png"
    rgba = np.asarray(Image.open(path))
    assert rgba.shape[2] == 4 and rgba[:, :, 3].min() < 255  # there is real transparency
    np.testing.assert_array_equal(decode_image(path), rgba[:, :, :3])


def test_palette_is_looked_up_transparency_dropped(demo):
    img = Image.open(demo["root"] / "palette.png")
    assert img.mode == "P" and "transparency" in img.info
    palette = np.array(img.getpalette(), dtype=np.uint8).reshape(-1, 3)
    expected = palette[np.asarray(img)]
    np.testing.assert_array_equal(decode_image(demo["root"] / "palette.png"), expected)


def test_cmyk_uses_pillow_conversion(demo):
    path = demo["root"] / "cmyk.jpg"
    img = Image.open(path)
    assert img.mode == "CMYK"
    arr = decode_image(path)
    np.testing.assert_array_equal(arr, np.asarray(img.convert("RGB")))
    # and that conversion is the naive one: (255 - C) * (255 - K) / 255, no ICC profile
    cmyk = np.asarray(img).astype(np.int32)
    naive = (255 - cmyk[:, :, :3]) * (255 - cmyk[:, :, 3:]) / 255.0
    assert np.abs(arr - naive).max() <= 1.0


def test_png_named_jpg_decodes_by_content(demo):
    path = demo["root"] / "png_named.jpg"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(decode_image(path), pil_rgb(path))


def test_mode_l_is_itu_601_luma(demo):
    for name in ["photo_a.jpg", "rgba.png", "gray.png", "palette.png", "cmyk.jpg"]:
        path = demo["root"] / name
        arr = decode_image(path, mode="L")
        assert arr.shape[2] == 1
        np.testing.assert_array_equal(arr[:, :, 0], np.asarray(Image.open(path).convert("L")))
    rgb = decode_image(demo["root"] / "photo_b.png").astype(np.float64)
    luma = rgb[:, :, 0] * 0.299 + rgb[:, :, 1] * 0.587 + rgb[:, :, 2] * 0.114
    assert np.abs(decode_image(demo["root"] / "photo_b.png", mode="L")[:, :, 0] - luma).max() <= 1


def bad_reason(path, **opts) -> str:
    with pytest.raises(BadImage) as info:
        decode_image(path, **opts)
    return info.value.reason


def test_every_bad_kind_has_a_reason_and_no_array(demo, tmp_path):
    root = demo["root"]
    for name, prefix in demo["bad"].items():
        assert bad_reason(root / name).startswith(prefix), name
    assert bad_reason(root / "truncated.jpg").startswith("truncated or corrupt: ")
    # truncated PNG too
    buf = io.BytesIO()
    Image.fromarray(synthetic.tiny_array(0, (64, 64))).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:-200])
    assert bad_reason(tmp_path / "cut.png").startswith("truncated or corrupt")
    # a file that vanished between listing and decoding
    assert bad_reason(tmp_path / "gone.png").startswith("unreadable")
    # dataset records: bad files give no array and the reason, and never raise
    files = [root / name for name in demo["listed"]]
    ds = ImageFileDataset(files)
    for i, name in enumerate(demo["listed"]):
        record = ds[i]
        assert record.index == i and record.nbytes == os.path.getsize(files[i])
        if name in demo["bad"]:
            assert record.array is None and record.bad_reason.startswith(demo["bad"][name])
        else:
            assert record.bad_reason is None and record.array.shape[2] == 3


def test_max_pixels_is_checked_from_the_header(tmp_path):
    path = touch_image(tmp_path / "16.png", size=(16, 16))
    assert bad_reason(path, max_pixels=255) == "too large: 16x16 > max_pixels=255"
    assert decode_image(path, max_pixels=256).shape == (16, 16, 3)
    assert decode_image(path, max_pixels=None).shape == (16, 16, 3)
    # a header-only bomb: refused by our check before any pixel is decoded
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(12_000, 12_000))
    assert bad_reason(bomb, max_pixels=10**8) == "too large: 12000x12000 > max_pixels=100000000"
    # under our limit but the data is not there: truncated, not a crash or a warning
    assert bad_reason(bomb).startswith("truncated or corrupt")
    # beyond Pillow's own hard limit: Pillow's DecompressionBombError becomes a reason
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header_only(40_000, 40_000))
    assert bad_reason(huge).startswith("too large")
    assert bad_reason(huge, max_pixels=None).startswith("too large")


def test_invalid_options_are_value_errors(tmp_path):
    path = touch_image(tmp_path / "x.png")
    for opts in [{"mode": "RGBA"}, {"resize": 0}, {"resize": 2.5}, {"center_crop": 0},
                 {"center_crop": (1, 2, 3)}]:
        with pytest.raises(ValueError):
            decode_image(path, **opts)


@pytest.mark.parametrize("size,n,expected", [
    ((500, 375), 256, (341, 256)), ((375, 500), 256, (256, 341)), ((300, 300), 224, (224, 224)),
    ((33, 100), 10, (10, 30)), ((7, 5), 5, (7, 5)), ((3, 2), 8, (12, 8)),
])
def test_resize_size_like_torchvision(size, n, expected):
    assert resized_size(*size, n) == expected


def test_resize_and_center_crop_equal_a_direct_pil_reference(demo):
    path = demo["root"] / "wide.jpg"  # 96x32
    img = Image.open(path).convert("RGB")
    resized = decode_image(path, resize=16)
    assert resized.shape == (16, 48, 3)
    np.testing.assert_array_equal(resized, np.asarray(img.resize((48, 16), Image.BILINEAR)))
    # Resize(16) then CenterCrop(15): top = round(0.5) = 0 (banker's), left = round(16.5) = 16
    both = decode_image(path, resize=16, center_crop=15)
    ref = np.asarray(img.resize((48, 16), Image.BILINEAR).crop((16, 0, 31, 15)))
    np.testing.assert_array_equal(both, ref)
    # no-op resize returns the same pixels
    np.testing.assert_array_equal(decode_image(path, resize=32), np.asarray(img))
    # mode L goes through the same geometry
    assert decode_image(path, mode="L", resize=16, center_crop=(8, 10)).shape == (8, 10, 1)


def test_center_crop_rounding_and_zero_padding(tmp_path):
    pixels = synthetic.tiny_array(3, size=(10, 7))  # 7 rows, 10 columns
    path = tmp_path / "p.png"
    Image.fromarray(pixels).save(path)
    # top = round(3 / 2) = 2, left = round(6 / 2) = 3
    np.testing.assert_array_equal(decode_image(path, center_crop=4), pixels[2:6, 3:7])
    # top = round(2 / 2) = 1, left = round(5 / 2) = 2 (round half to even)
    np.testing.assert_array_equal(decode_image(path, center_crop=(5, 5)), pixels[1:6, 2:7])
    # larger than the image: zero padding like torchvision (left/top (d)//2, right/bottom rest)
    padded = decode_image(path, center_crop=(10, 13))
    assert padded.shape == (10, 13, 3)
    expected = np.zeros((10, 13, 3), np.uint8)
    expected[1:8, 1:11] = pixels
    np.testing.assert_array_equal(padded, expected)
    # larger in one direction only: pad rows, crop columns (left = round((10 - 4) / 2) = 3)
    mixed = decode_image(path, center_crop=(9, 4))
    expected = np.zeros((9, 4, 3), np.uint8)
    expected[1:8] = pixels[:, 3:7]
    np.testing.assert_array_equal(mixed, expected)


# --------------------------------------------------------------------------- GPU routing


def test_gpu_decode_not_available_here_says_why():
    ok, why = gpu.gpu_decode_available()
    if ok:
        pytest.skip("a GPU with torchvision is present")
    assert why
    with pytest.raises(RuntimeError, match="unavailable"):
        gpu.decode_files_gpu([], device="cuda")


@pytest.mark.gpu
def test_nvjpeg_decodes_like_pillow_within_a_few_levels(demo, tmp_path):
    """Real nvJPEG (torchvision) on the GPU against Pillow: same shapes, close pixels, close means.

    nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's, so single pixels can differ by
    tens of levels at sharp colour edges (seen on an H200: 3.2 levels on average, 50 at most, on a
    160x120 q90 photo-like image); what the statistics see, the per-channel mean, stays within a
    level.
    """
    ok, why = gpu.gpu_decode_available()
    if not ok:
        pytest.skip(f"nvJPEG through torchvision is not usable here: {why}")
    from gpustats.sources.synthetic import make_jpeg_corpus

    files = make_jpeg_corpus(tmp_path / "corpus", 6, size=(160, 120), quality=90) + [demo["root"] / "photo_a.jpg"]
    got = gpu.decode_files_gpu(files, device="cuda")
    assert [r.decoded_on for r in got] == ["gpu"] * len(files)
    for record, path in zip(got, files):
        assert record.tensor.is_cuda and record.bad_reason is None
        cpu = decode_image(path).transpose(2, 0, 1).astype(np.int16)
        on_gpu = record.tensor.cpu().numpy().astype(np.int16)
        assert on_gpu.shape == cpu.shape, path.name
        diff = np.abs(on_gpu - cpu)
        channel_means = np.abs(on_gpu.reshape(3, -1).mean(axis=1) - cpu.reshape(3, -1).mean(axis=1))
        assert diff.mean() < 8 and channel_means.max() < 1.0, (path.name, diff.mean(), diff.max(), channel_means)


def test_is_complete_jpeg(demo):
    data = (demo["root"] / "photo_a.jpg").read_bytes()
    assert gpu.is_complete_jpeg(data) and gpu.is_complete_jpeg(data + b"\x00\x00")
    assert not gpu.is_complete_jpeg(data[: len(data) // 2])
    assert not gpu.is_complete_jpeg((demo["root"] / "png_named.jpg").read_bytes())


class FakeNvJpeg:
    """Decodes with Pillow, records batch sizes, refuses progressive JPEGs like a picky nvJPEG."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, datas, mode, device):
        self.calls.append(len(datas))
        out = []
        for data in datas:
            img = Image.open(io.BytesIO(data.numpy().tobytes()))
            if img.info.get("progressive"):
                raise RuntimeError("nvjpeg: unsupported progressive JPEG")
            out.append(torch.from_numpy(np.array(img.convert(mode))).reshape(
                img.height, img.width, -1).permute(2, 0, 1).to(device))
        return out


def test_gpu_routing_with_a_fake_decoder(demo, tmp_path):
    root = demo["root"]
    progressive = tmp_path / "progressive.jpg"
    Image.open(root / "photo_a.jpg").save(progressive, quality=90, progressive=True)
    gray_jpeg = tmp_path / "gray.jpg"
    Image.open(root / "gray.png").save(gray_jpeg, quality=90)
    files = [root / "photo_a.jpg", root / "png_named.jpg", root / "cmyk.jpg",
             root / "truncated.jpg", progressive, root / "wide.jpg", root / "empty.png",
             gray_jpeg, root / "rgba.png"]
    expected_on = ["gpu", "cpu", "cpu", "cpu", "cpu", "gpu", "cpu", "gpu", "cpu"]
    fake = FakeNvJpeg()
    indices = [100 + i for i in range(len(files))]
    got = gpu.decode_files_gpu(files, indices=indices, device="cpu", decoder=fake)
    # one batch of the 4 eligible JPEGs failed (progressive), then one retry per file
    assert fake.calls == [4, 1, 1, 1, 1]
    assert [r.index for r in got] == indices
    assert [r.decoded_on for r in got] == expected_on
    for record, path in zip(got, files):
        assert record.nbytes == os.path.getsize(path)
        if path.name in demo["bad"]:
            assert record.tensor is None
            assert record.bad_reason.startswith(demo["bad"][path.name])
        else:
            assert record.bad_reason is None
            chw = decode_image(path).transpose(2, 0, 1)
            np.testing.assert_array_equal(record.tensor.numpy(), chw, err_msg=path.name)


def test_gpu_routing_all_good_is_one_batch_and_respects_max_pixels(demo):
    root = demo["root"]
    files = [root / "photo_a.jpg", root / "wide.jpg"]
    fake = FakeNvJpeg()
    got = gpu.decode_files_gpu(files, device="cpu", decoder=fake, mode="L")
    assert fake.calls == [2] and [r.decoded_on for r in got] == ["gpu", "gpu"]
    assert got[0].tensor.shape == (1, 48, 64)
    fake = FakeNvJpeg()
    files = [root / "photo_a.jpg", root / "nested/deep/inner.JPEG"]  # 64x48, 44x33
    got = gpu.decode_files_gpu(files, device="cpu", decoder=fake, max_pixels=64 * 48 - 1)
    assert fake.calls == [1]  # photo_a.jpg is over the limit: never sent to the GPU
    assert got[0].bad_reason == "too large: 64x48 > max_pixels=3071"
    assert got[1].decoded_on == "gpu"
