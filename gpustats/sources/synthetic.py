"""Deterministic synthetic image folders for tests, the ``gpustats demo`` command and benchmarks.

Only seeded numpy generators are used (``np.random.default_rng([seed, i])`` per image), so image
``i`` is the same whatever ``n`` is. Pixel content of JPEGs depends on the libjpeg build that
encodes them; compare decoded pixels against a decode of the same file, not against constants.

* :func:`make_demo_folder` -- a dozen small files covering every colour mode and bad-file kind.
* :func:`make_jpeg_corpus` -- ImageNet-like photos (gradients, shapes, texture, noise) whose
  JPEG sizes are realistic (about 90 KB at 500x375, quality 90; ImageNet averages ~110 KB).
* :func:`make_tiny_folder` -- many tiny lossless PNGs; :func:`tiny_array` gives their pixels.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["make_demo_folder", "make_jpeg_corpus", "make_tiny_folder", "tiny_array",
           "photo_array"]


def photo_array(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """An ``(height, width, 3)`` uint8 photo-like image: gradient, shapes, texture, noise."""
    corners = rng.integers(20, 236, size=(2, 2, 3), dtype=np.uint8)
    canvas = Image.fromarray(corners, "RGB").resize((width, height), Image.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 9))):
        x0, x1 = sorted(rng.integers(-width // 4, width + width // 4, size=2).tolist())
        y0, y1 = sorted(rng.integers(-height // 4, height + height // 4, size=2).tolist())
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x1 + 1, y1 + 1], fill=colour)
        else:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
    # Low-frequency texture: a coarse random grid upsampled smoothly, blended in.
    coarse = rng.integers(0, 256, size=(max(2, height // 8), max(2, width // 8), 3),
                          dtype=np.uint8)
    texture = Image.fromarray(coarse, "RGB").resize((width, height), Image.BICUBIC)
    canvas = Image.blend(canvas, texture, 0.25)
    image = np.asarray(canvas, dtype=np.int16)
    noise = rng.integers(-26, 27, size=image.shape, dtype=np.int16)  # sensor-like grain
    image = image + noise
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8)


def make_jpeg_corpus(
    root: str | os.PathLike[str],
    n: int,
    size: tuple[int, int] = (500, 375),
    quality: int = 90,
    seed: int = 0,
    classes: int = 1,
) -> list[Path]:
    """Write ``n`` photo-like RGB JPEGs under ``root`` and return their paths in listing order.

    ``size`` is ``(width, height)`` like Pillow. With ``classes > 1`` the files are spread
    round-robin over ImageNet-style class folders ``class_000/ ...``; otherwise they sit
    directly in ``root``. Existing files are overwritten.
    """
    root = Path(root)
    width, height = size
    paths = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        folder = root / f"class_{i % classes:03d}" if classes > 1 else root
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{i:07d}.jpg"
        Image.fromarray(photo_array(rng, width, height), "RGB").save(path, quality=quality)
        paths.append(path)
    return sorted(paths, key=lambda p: p.relative_to(root).as_posix())


def tiny_array(i: int, size: tuple[int, int] = (8, 8), seed: int = 0) -> np.ndarray:
    """Pixels ``(height, width, 3)`` uint8 of image ``i`` written by :func:`make_tiny_folder`."""
    width, height = size
    return np.random.default_rng([seed, i]).integers(0, 256, size=(height, width, 3),
                                                     dtype=np.uint8)


def make_tiny_folder(
    root: str | os.PathLike[str], n: int, size: tuple[int, int] = (8, 8), seed: int = 0
) -> list[Path]:
    """Write ``n`` tiny lossless RGB PNGs (1,000 per subfolder) and return them in listing order.

    ``decode_image(paths[i])`` equals ``tiny_array(i, size, seed)`` exactly.
    """
    root = Path(root)
    paths = []
    for i in range(n):
        folder = root / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"t{i:07d}.png"
        Image.fromarray(tiny_array(i, size, seed), "RGB").save(path, compress_level=1)
        paths.append(path)
    return paths


def _jpeg_bytes(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def make_demo_folder(root: str | os.PathLike[str], seed: int = 0) -> dict:
    """Write a small folder that exercises every colour mode and bad-file kind.

    Returns a dict (paths relative to ``root``, POSIX):

    * ``"root"``: the root as a ``Path``;
    * ``"listed"``: what :func:`~gpustats.sources.list_images` must return, in order;
    * ``"good"``: listed files that decode, with their colour mode ``{rel: mode}``;
    * ``"bad"``: listed files that must be reported bad, ``{rel: reason prefix}``;
    * ``"skipped"``: files present but not listed (hidden, or not an image extension).
    """
    root = Path(root)
    rng = np.random.default_rng([seed, 10_000])

    def photo(w: int, h: int) -> Image.Image:
        return Image.fromarray(photo_array(rng, w, h), "RGB")

    good: dict[str, str] = {}

    def put(rel: str, image: Image.Image, mode_note: str, **save_kw) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **save_kw)
        good[rel] = mode_note

    put("photo_a.jpg", photo(64, 48), "RGB", quality=90)
    put("photo_b.png", photo(50, 30), "RGB")
    put("wide.jpg", photo(96, 32), "RGB", quality=85)
    put("gray.png", photo(40, 40).convert("L"), "L")
    palette = photo(32, 24).convert("P", palette=Image.ADAPTIVE, colors=16)
    put("palette.png", palette, "P", transparency=0)
    rgba = photo(30, 30).convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, size=(30, 30), dtype=np.uint8), "L"))
    put("rgba.png", rgba, "RGBA")
    put("cmyk.jpg", photo(36, 28).convert("CMYK"), "CMYK", quality=90)
    put("png_named.jpg", photo(20, 20), "RGB", format="PNG")
    put("nested/icon.bmp", photo(16, 16), "RGB")
    put("nested/deep/inner.JPEG", photo(44, 33), "RGB", quality=90)
    put("nested/lossless.webp", photo(24, 24), "RGB", lossless=True)

    # Present but never listed.
    skipped = [".hidden.jpg", ".cache/skipped.png", "notes.txt"]
    photo(8, 8).save(root / ".hidden.jpg")
    (root / ".cache").mkdir(exist_ok=True)
    photo(8, 8).save(root / ".cache/skipped.png")
    (root / "notes.txt").write_text("not an image extension: never listed\n")

    # Listed but bad.
    bad = {
        "truncated.jpg": "truncated or corrupt",
        "empty.png": "zero-byte file",
        "not_an_image.jpg": "not an image",
    }
    whole = _jpeg_bytes(photo(80, 60), quality=95)
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "not_an_image.jpg").write_text("this is a text file with a .jpg name\n")

    listed = sorted(list(good) + list(bad))
    return {"root": root, "listed": listed, "good": good, "bad": bad, "skipped": skipped}
