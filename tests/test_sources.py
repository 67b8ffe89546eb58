"""Tests for gpustats.sources: listing, ordered iteration, synthetic folders. Decoding, bad files and
GPU routing: tests/test_sources_decode.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gpustats.sources import (
    IMAGE_EXTENSIONS,
    ImageFileDataset,
    NoImagesFoundError,
    SourceError,
    SourceNotFoundError,
    decode_image,
    iter_decoded,
    list_images,
)
from gpustats.sources import synthetic

import _sources_helpers
from _sources_helpers import touch_image

demo = _sources_helpers.demo  # a shared fixture (assigned: pyflakes reads an imported one as unused)


# --------------------------------------------------------------------------- helpers


def rel(paths, root) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in paths]


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
