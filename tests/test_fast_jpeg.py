"""The optional libjpeg-turbo decoder (simplejpeg) never changes a number.

On a varied corpus (baseline and progressive, 4:4:4 / 4:2:2 / 4:2:0 chroma, grayscale, restart
markers, EXIF, CMYK, truncated and corrupt files, a PNG named .jpg) every file decodes to exactly
Pillow's pixels or to exactly Pillow's bad-file reason, whichever decoder ran, and the files
libjpeg-turbo is meant for really went through it (a decoder that never ran proves nothing).
"""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from gpustats.sources import decode
from gpustats.sources.decode import BadImage, decode_with_info
from gpustats.sources.synthetic import photo_array

simplejpeg = pytest.importorskip("simplejpeg", reason="the optional decoder (pip install 'gpustats[fast]')")

FAST_KINDS = ("baseline-444", "baseline-422", "baseline-420", "progressive-444", "progressive-420", "gray",
              "restart", "exif", "odd-size")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    image = Image.fromarray(photo_array(np.random.default_rng(3), 157, 101))
    files = {}

    def save(name, img, **kw):
        path = root / f"{name}.jpg"
        img.save(path, "JPEG", **kw)
        files[name] = path

    for sub, label in ((0, "444"), (1, "422"), (2, "420")):
        save(f"baseline-{label}", image, quality=90, subsampling=sub)
    save("progressive-444", image, quality=85, subsampling=0, progressive=True)
    save("progressive-420", image, quality=70, subsampling=2, progressive=True)
    save("gray", image.convert("L"), quality=90)
    save("restart", image, quality=75, restart_marker_blocks=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: neither decoder applies the orientation (torchvision's loader does not)
    save("exif", image, quality=90, exif=exif.tobytes())
    save("odd-size", image.resize((33, 17)), quality=95)
    save("cmyk", image.convert("CMYK"), quality=90)
    whole = files["baseline-420"].read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    files["truncated"] = root / "truncated.jpg"
    corrupt = bytearray(whole)
    corrupt[len(corrupt) // 2: len(corrupt) // 2 + 40] = b"\xff\x00" * 20
    (root / "corrupt.jpg").write_bytes(bytes(corrupt))
    files["corrupt"] = root / "corrupt.jpg"
    png = root / "png_named.jpg"
    image.save(png, "PNG")
    files["png_named"] = png
    return files


def _pillow(path):
    with decode_disabled():
        try:
            return decode_with_info(path)
        except BadImage as exc:
            return exc.reason


class decode_disabled:
    """Force Pillow for the duration (as GPUSTATS_JPEG_DECODER=pillow does)."""

    def __enter__(self):
        self.saved = decode._SIMPLEJPEG
        decode._SIMPLEJPEG = False

    def __exit__(self, *exc):
        decode._SIMPLEJPEG = self.saved


def test_every_file_decodes_to_pillows_pixels_or_pillows_verdict(corpus):
    decode._SIMPLEJPEG = None  # rediscover simplejpeg
    used = {}
    for name, path in corpus.items():
        reference = _pillow(path)
        try:
            array, decoder = decode_with_info(path)
        except BadImage as exc:
            assert isinstance(reference, str) and exc.reason == reference, name
            used[name] = "bad"
            continue
        assert not isinstance(reference, str), (name, reference)
        assert reference[1] == "pillow"
        np.testing.assert_array_equal(array, reference[0], err_msg=name)
        assert array.flags.writeable and array.flags.c_contiguous
        used[name] = decoder
    for name in FAST_KINDS:
        assert used[name] == "libjpeg-turbo", (name, used[name])
    assert used["cmyk"] == "pillow" and used["png_named"] == "pillow"
    assert used["truncated"] == "bad"


def test_geometry_and_luma_follow_pillow(corpus):
    decode._SIMPLEJPEG = None
    path = corpus["baseline-420"]
    for opts in ({"resize": 40}, {"resize": 40, "center_crop": 32}, {"center_crop": (50, 60)}, {"mode": "L"}):
        with decode_disabled():
            expected = decode_with_info(path, **opts)[0]
        got, decoder = decode_with_info(path, **opts)
        np.testing.assert_array_equal(got, expected, err_msg=str(opts))
        assert decoder == ("pillow" if opts.get("mode") == "L" else "libjpeg-turbo")


def test_the_environment_variable_turns_it_off(monkeypatch, corpus):
    monkeypatch.setenv("GPUSTATS_JPEG_DECODER", "pillow")
    monkeypatch.setattr(decode, "_SIMPLEJPEG", None)
    assert decode_with_info(corpus["gray"])[1] == "pillow"


def test_the_report_says_which_decoder_ran(capsys, corpus):
    import json

    from gpustats.cli import main

    decode._SIMPLEJPEG = None
    folder = corpus["gray"].parent
    assert main(["stats", str(folder), "--device", "cpu", "--workers", "0", "-q", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    good_by_pillow = [n for n, p in corpus.items() if n not in FAST_KINDS and not isinstance(_pillow(p), str)]
    assert {"cmyk", "png_named"} <= set(good_by_pillow)
    assert doc["decoders"] == {"libjpeg-turbo": len(FAST_KINDS), "pillow": len(good_by_pillow)}
    assert doc["images"] == len(FAST_KINDS) + len(good_by_pillow)
