"""Tests for gpustats.sources: listing, decoding, bad files, ordered iteration, GPU routing."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gpustats.sources import (
    IMAGE_EXTENSIONS,
    BadImage,
    ImageFileDataset,
    NoImagesFoundError,
    SourceError,
    SourceNotFoundError,
    decode_image,
    iter_decoded,
    list_images,
)
from gpustats.sources import gpu, synthetic
from gpustats.sources.decode import resized_size


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return synthetic.make_demo_folder(tmp_path_factory.mktemp("demo"))


def rel(paths, root) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in paths]


def touch_image(path: Path, size=(4, 3), colour=(10, 20, 30), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt or "PNG")
    return path


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


# --------------------------------------------------------------------------- listing


def test_demo_folder_listing_order_hidden_and_extensions(demo):
    files = list_images([demo["root"]])
    assert rel(files, demo["root"]) == demo["listed"]
    listed = set(demo["listed"])
    for skipped in demo["skipped"]:
        assert skipped not in listed
    assert "nested/deep/inner.JPEG" in listed  # case-insensitive extension


def test_order_is_relative_posix_string_order(tmp_path):
    for name in ["a/b.jpg", "a.jpg", "a-x/c.jpg", "B.png", "b/z.png", "b/a/y.png"]:
        touch_image(tmp_path / name)
    # string order: '-' < '.' < '/' and upper case before lower case
    assert rel(list_images(tmp_path), tmp_path) == [
        "B.png", "a-x/c.jpg", "a.jpg", "a/b.jpg", "b/a/y.png", "b/z.png"]


def test_roots_in_given_order_and_dedupe(tmp_path):
    first = touch_image(tmp_path / "one" / "x.png")
    second = touch_image(tmp_path / "two" / "y.png")
    nested = touch_image(tmp_path / "two" / "sub" / "z.png")
    assert list_images([tmp_path / "two", tmp_path / "one"]) == [second.parent / "sub/z.png",
                                                                   second, first]
    # the same root twice, a root inside another, a file inside a listed root
    got = list_images([tmp_path / "one", tmp_path / "one", tmp_path, tmp_path / "two" / "sub",
                       nested, str(first)])
    assert got == [first, tmp_path / "two/sub/z.png", tmp_path / "two/y.png"]
    # a symlink to a listed file is the same file
    os.symlink(first, tmp_path / "one" / "alias.png")
    assert list_images([tmp_path / "one"]) == [tmp_path / "one" / "alias.png"]


def test_all_extensions_any_case(tmp_path):
    names = []
    for i, ext in enumerate(IMAGE_EXTENSIONS):
        for variant in (ext, ext.upper(), ext[:2].upper() + ext[2:]):
            name = f"f{i}_{variant.strip('.')}{variant}"
            (tmp_path / name).write_bytes(b"x")
            names.append(name)
    for other in ["a.txt", "b.jpg.bak", "c.npy", "jpg", "d.svg"]:
        (tmp_path / other).write_bytes(b"x")
    assert rel(list_images([tmp_path]), tmp_path) == sorted(names)


#: torchvision.datasets.folder.IMG_EXTENSIONS, copied from torchvision's source (torchvision is not a
#: dependency): what ImageFolder reads, and so what a folder run counts by default
TORCHVISION_IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def test_the_default_file_set_is_imagefolders(tmp_path, capsys):
    """Issue 25, item 8: gpustats read .gif and skipped .ppm/.pgm, the opposite of ImageFolder (which changed
    mean/std by 1e-3 on real data). By default exactly ImageFolder's files count; --all-extensions adds
    the wider set; the report counts what was left out by extension, and archives inside a folder."""
    import json

    from gpustats.cli import main
    from gpustats.sources.listing import EXTRA_EXTENSIONS

    assert IMAGE_EXTENSIONS == TORCHVISION_IMG_EXTENSIONS
    for i, name in enumerate(["a.png", "b.ppm", "c.PGM", "d.gif", "e.jfif"]):
        Image.new("RGB" if i != 2 else "L", (4, 3), (10 * i, 20, 30) if i != 2 else 40).save(
            tmp_path / name, format={"ppm": "PPM", "pgm": "PPM", "gif": "GIF", "jfif": "JPEG"}.get(
                name.split(".")[1].lower(), "PNG"))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "shard.tar").write_bytes(b"\0" * 1024)
    skipped = {}
    assert rel(list_images([tmp_path], skipped=skipped), tmp_path) == ["a.png", "b.ppm", "c.PGM"]
    assert skipped == {".gif": 1, ".jfif": 1, ".txt": 1, ".tar": 1}
    wide = list_images([tmp_path], extensions=IMAGE_EXTENSIONS + EXTRA_EXTENSIONS)
    assert rel(wide, tmp_path) == ["a.png", "b.ppm", "c.PGM", "d.gif", "e.jfif"]
    args = [str(tmp_path), "--device", "cpu", "--workers", "0", "-q"]
    assert main(["stats", *args, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["images"] == 3 and doc["skipped_by_extension"] == {".gif": 1, ".jfif": 1, ".tar": 1, ".txt": 1}
    assert main(["stats", *args]) == 0
    table = capsys.readouterr().out
    assert "not counted, by extension" in table and "1 .gif" in table and "--all-extensions" in table
    assert "archives inside the folders, not opened: 1 .tar" in table
    assert main(["stats", *args, "--all-extensions", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["images"] == 5 and doc["skipped_by_extension"] == {".tar": 1, ".txt": 1}


def test_explicit_files_any_extension_and_hidden(tmp_path):
    raw = tmp_path / "data.raw"
    raw.write_bytes(b"x")
    hidden = touch_image(tmp_path / ".secret.png")
    assert list_images([raw, hidden]) == [raw, hidden]
    assert list_images(str(raw)) == [raw]  # a single path is accepted too


def test_hidden_root_is_walked_but_hidden_children_are_not(tmp_path):
    root = tmp_path / ".data"
    keep = touch_image(root / "keep.png")
    touch_image(root / ".git" / "skip.png")
    touch_image(root / "sub" / ".skip.png")
    assert list_images([root]) == [keep]


def test_symlink_loop_terminates_and_symlinked_dirs_are_followed(tmp_path):
    root = tmp_path / "root"
    a = touch_image(root / "a.png")
    b = touch_image(root / "sub" / "b.png")
    os.symlink(root, root / "sub" / "loop")  # sub/loop -> root
    os.symlink(root / "sub", root / "sub" / "self")  # sub/self -> sub
    outside = touch_image(tmp_path / "elsewhere" / "c.png")
    os.symlink(tmp_path / "elsewhere", root / "linked")
    os.symlink(tmp_path / "nowhere", root / "broken.png")  # dangling: skipped
    got = list_images([root])
    assert got == [a, root / "linked" / "c.png", b]
    assert os.path.samefile(got[1], outside)


def test_missing_path_is_a_clear_file_not_found(tmp_path):
    touch_image(tmp_path / "ok.png")
    missing = tmp_path / "does-not-exist"
    with pytest.raises(SourceNotFoundError) as info:
        list_images([tmp_path, missing])
    err = info.value
    assert isinstance(err, FileNotFoundError)
    assert isinstance(err, SourceError) and isinstance(err, ValueError)
    assert str(missing) in str(err)
    assert err.filename == str(missing)


def test_no_images_found_names_paths_and_extensions(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    touch_image(tmp_path / ".hidden.png")
    with pytest.raises(NoImagesFoundError) as info:
        list_images([tmp_path])
    message = str(info.value)
    assert str(tmp_path) in message
    assert ".jpg" in message and ".webp" in message and ".tiff" in message
    assert isinstance(info.value, SourceError)


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


# --------------------------------------------------------------------------- iteration


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    files = synthetic.make_tiny_folder(root, 23, size=(5, 4))
    bad = root / "d0000" / "t0000011.png"  # replace one with a zero-byte file
    bad.write_bytes(b"")
    return root, files


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("start", [0, 7])
def test_iter_decoded_order_and_resume(tiny, workers, start):
    root, files = tiny
    assert list_images([root]) == files
    batches = list(iter_decoded(files, workers=workers, batch_size=5, start=start))
    assert [len(b) for b in batches[:-1]] == [5] * (len(batches) - 1)
    records = [r for b in batches for r in b]
    assert [r.index for r in records] == list(range(start, 23))
    for r in records:
        if r.index == 11:
            assert r.array is None and r.bad_reason == "zero-byte file" and r.nbytes == 0
        else:  # numpy arrays whichever way they travelled (workers send shared tensors)
            assert isinstance(r.array, np.ndarray) and r.array.flags.writeable
            np.testing.assert_array_equal(r.array, synthetic.tiny_array(r.index, (5, 4)))


def test_iter_decoded_stop_options_and_bounds(tiny):
    _, files = tiny
    records = [r for b in iter_decoded(files, workers=0, batch_size=4, start=3, stop=6,
                                       mode="L", center_crop=2) for r in b]
    assert [r.index for r in records] == [3, 4, 5]
    assert all(r.array.shape == (2, 2, 1) for r in records)
    assert list(iter_decoded(files, workers=0, batch_size=4, start=23)) == []
    with pytest.raises(ValueError):
        list(iter_decoded(files, workers=0, batch_size=4, start=24))
    with pytest.raises(ValueError):
        list(iter_decoded(files, workers=0, batch_size=0))
    with pytest.raises(TypeError):
        ImageFileDataset(files, resise=3)
    with pytest.raises(ValueError):
        ImageFileDataset(files, mode="CMYK")


# --------------------------------------------------------------------------- synthetic


def test_synthetic_generators_are_deterministic(tmp_path):
    first = synthetic.make_jpeg_corpus(tmp_path / "a", 4, size=(64, 48), seed=3, classes=2)
    second = synthetic.make_jpeg_corpus(tmp_path / "b", 4, size=(64, 48), seed=3, classes=2)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert list_images([tmp_path / "a"]) == first
    assert rel(first, tmp_path / "a")[:2] == ["class_000/img_0000000.jpg",
                                              "class_000/img_0000002.jpg"]
    assert decode_image(first[0]).shape == (48, 64, 3)
    other = synthetic.make_jpeg_corpus(tmp_path / "c", 1, size=(64, 48), seed=4)
    assert other[0].read_bytes() != first[0].read_bytes()
    info1 = synthetic.make_demo_folder(tmp_path / "d1")
    info2 = synthetic.make_demo_folder(tmp_path / "d2")
    assert info2["listed"] == info1["listed"]
    for name in info1["listed"]:
        assert (tmp_path / "d1" / name).read_bytes() == (tmp_path / "d2" / name).read_bytes()


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
