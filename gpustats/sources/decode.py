"""Decode one image file to a ``(H, W, C)`` uint8 numpy array, or raise :class:`BadImage`.

Colour conversion is exactly torchvision's default loader
(``torchvision.datasets.folder.pil_loader``: ``Image.open(f).convert("RGB")``), so the
statistics describe what a standard ``ImageFolder`` pipeline feeds the model:

* grayscale (``L``, ``I``, ``I;16``, ``1``) -> the gray value replicated in R, G and B;
* palette (``P``/``PA``) -> colours looked up in the palette; transparency is dropped;
* ``CMYK`` (e.g. Adobe JPEGs) -> Pillow's own CMYK->RGB conversion (no ICC profile applied);
* ``RGBA``/``LA`` -> the alpha channel is dropped, *not* composited onto a background;
* multi-frame files (GIF, TIFF, WebP) -> the first frame.

``mode="L"`` gives one channel with ``.convert("L")`` (ITU-R 601-2 luma,
``L = R*299/1000 + G*587/1000 + B*114/1000``), shape ``(H, W, 1)``.

Bad files never crash and are never partially counted:

* zero-byte file -> ``"zero-byte file"``;
* not an image -> ``"not an image"``; a file in a format Pillow knows but cannot read (a TIFF with
  12-bit samples, ...) -> ``"unsupported TIFF file: unknown pixel mode"``;
* header larger than ``max_pixels`` -> ``"too large: WxH > max_pixels=N"``, checked from the
  header *before* any pixel is decoded (guards against decompression bombs). The limit also holds
  after ``resize`` and ``center_crop`` (``"too large after resize: ..."``), checked from the header
  too, so that a large ``resize`` never allocates a huge image (:func:`check_geometry` refuses
  values that would make every image too large before a run). ``max_pixels``
  replaces Pillow's own limit (``Image.MAX_IMAGE_PIXELS``, lifted while the file is opened), so
  it can also allow larger images than Pillow would; ``max_pixels=None`` sets no limit of ours
  and leaves Pillow's (its ``DecompressionBombError`` is then reported as "too large").
  Pillow's ``DecompressionBombWarning`` is silenced: ``max_pixels`` is the limit that decides;
* images of more than 8 bits are converted as torchvision's loader converts them, and a file whose
  values that changes raises a ``UserWarning`` saying what happened (a folder run reports each kind
  once, with the number of files): 16-bit grayscale (``I;16``) values above 255 are clipped to 255;
  32-bit integer (``I``) values outside 0..255 are clipped; 32-bit float (``F``) values are clipped to
  0..255 and truncated to integers; 16-bit-per-channel colour (48-bit RGB, 64-bit RGBA PNGs) is read by
  Pillow as 8 bits per channel, the high byte kept (``value // 256``). A 16-bit scan whose values all
  lie in 0..255 is read unchanged and raises nothing;
* truncated or corrupt data -> ``"truncated or corrupt: <Pillow's message>"``; the pixels are
  decoded with ``.load()`` inside the ``try``, and Pillow's ``LOAD_TRUNCATED_IMAGES`` is never
  enabled by gpustats (if *your* code enables it globally, truncated files decode with grey
  fill; gpustats warns once when it sees that).

The file format is sniffed from content, so a PNG named ``.jpg`` decodes fine.
:func:`decode_bytes` decodes an image held in memory (an archive member, a Parquet value) by the
same core, with the same rules, reasons and decoders.

With ``simplejpeg`` installed (``pip install 'gpustats[fast]'``), JPEGs that libjpeg-turbo decodes
to Pillow's exact pixels are decoded by it directly when an array is asked for (1.1-1.4x faster
than Pillow's decode plus its copy into an array); every other file, and any JPEG that makes
libjpeg-turbo warn, goes through Pillow. ``GPUSTATS_JPEG_DECODER=pillow`` turns it off.
:func:`decode_with_info` says which decoder ran; never does the choice change a number. A folder
run's workers ask larger images for their histogram or a view of Pillow's memory instead of an
array (:func:`_decode`'s ``out``): Pillow then decodes, as that costs less than simplejpeg's decode.

Optional geometry, equal to torchvision's ``Resize(N)`` then ``CenterCrop(M)`` on the PIL
image (applied after colour conversion, in that order):

* ``resize=N``: shorter side to ``N``, longer side ``int(N * long / short)``, Pillow
  ``BILINEAR`` (antialiased, as torchvision does on PIL images); same size -> unchanged.
* ``center_crop=M`` (int or ``(h, w)``): top ``int(round((H - h) / 2.0))``, left likewise.
  If the image is smaller than the crop it is **padded with zeros** first, exactly like
  torchvision (left/top pad ``(h - H) // 2``, right/bottom the rest), so black borders are
  counted, as they are in what the model sees.

>>> import io, tempfile, os
>>> from PIL import Image
>>> path = os.path.join(tempfile.mkdtemp(), "gray.png")
>>> Image.new("L", (4, 3), 7).save(path)
>>> arr = decode_image(path)
>>> arr.shape, arr.dtype, int(arr[0, 0, 2])
((3, 4, 3), dtype('uint8'), 7)
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from .errors import BadImage
from .geometry import center_crop_array, check_output_size, crop_box, crop_hw, pixel_limit, resized_size

__all__ = ["DEFAULT_MAX_PIXELS", "decode_bytes", "decode_image", "decode_pil", "decode_with_info", "resized_size",
           "center_crop_array", "check_geometry", "pixel_limit", "DECODE_OPTIONS", "check_decode_names"]

#: Default pixel limit: Pillow's own hard decompression-bomb limit (2 x 89,478,485 pixels,
#: e.g. 13,000 x 13,000). Typical ImageNet photos have about 0.2 M pixels.
DEFAULT_MAX_PIXELS = 2 * 89_478_485

_MODES = ("RGB", "L")
#: the options :func:`decode_image` takes besides the file (``decode_opts`` of datasets and workers)
DECODE_OPTIONS = ("mode", "max_pixels", "resize", "center_crop")
_OUTS = ("array", "readonly", "view", "histogram")  # what _decode returns
_SIMPLEJPEG = None  # simplejpeg.decode_jpeg, False when unavailable (see _fast_jpeg)
#: What converting an image of more than 8 bits did to its values, by Pillow mode (one text per kind:
#: a folder run counts the files of each); raised only for a file whose values it changed
_CHANGED = {
    "I;16": "16-bit grayscale image with values above 255: converted as torchvision's loader does, they were "
            "clipped to 255 (the statistics describe the clipped pixels)",
    "I": "32-bit integer image with values outside 0..255: converted as torchvision's loader does, they were "
         "clipped to 0..255 (the statistics describe the clipped pixels)",
    "F": "32-bit float image with values that are not integers in 0..255: converted as torchvision's loader "
         "does, they were clipped to 0..255 and truncated to integers (the statistics describe the result)",
    "deep": "16-bit-per-channel colour image: Pillow reads it as 8 bits per channel, keeping the high byte "
            "(value // 256), as torchvision's loader does (the statistics describe those 8-bit values)",
}
_CLIPPED_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_warned_truncated = False


def _histogram(image: Image.Image, center_crop: int | Sequence[int] | None) -> np.ndarray:
    """Exact ``[C, 256]`` int64 counts of a decoded RGB or L Pillow image after ``center_crop``: the
    histogram of the pixels :func:`_decode` would otherwise return as an array."""
    channels = len(image.getbands())
    if center_crop is None:
        return np.array(image.histogram(), np.int64).reshape(channels, 256)
    box, zeros = crop_box(image.width, image.height, center_crop)
    inside = image if box == (0, 0, image.width, image.height) else image.crop(box)
    counts = np.array(inside.histogram(), np.int64).reshape(channels, 256)
    counts[:, 0] += zeros
    return counts


def check_geometry(resize: int | None, center_crop, max_pixels: int | None) -> None:
    """Raise ``ValueError`` when ``resize``/``center_crop`` would make *every* image larger than the pixel
    limit (:func:`pixel_limit`): ``resize=N`` gives at least N x N pixels, a crop exactly its size. Each
    image is also checked from its header before it is decoded (the limit applies after resizing and
    cropping as well as to the file), so nothing absurd is ever allocated."""
    _check_options("RGB", resize, center_crop)
    limit = pixel_limit(max_pixels)
    if limit is None:
        return
    if resize is not None and int(resize) ** 2 > limit:
        raise ValueError(f"resize={resize} makes every image at least {resize}x{resize} = {int(resize) ** 2:,} "
                         f"pixels, over the limit of {limit:,} (max_pixels, --max-pixels); use a smaller resize "
                         "or raise the limit")
    if center_crop is not None:
        crop_h, crop_w = crop_hw(center_crop)
        if crop_h * crop_w > limit:
            raise ValueError(f"center_crop={center_crop} makes every image {crop_h}x{crop_w} = {crop_h * crop_w:,} "
                             f"pixels, over the limit of {limit:,} (max_pixels, --max-pixels); use a smaller crop or "
                             "raise the limit")


def _check_options(mode: str, resize: int | None, center_crop) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if resize is not None and (not isinstance(resize, (int, np.integer)) or resize <= 0):
        raise ValueError(f"resize must be a positive int (shorter side), got {resize!r}")
    if center_crop is not None:
        crop_hw(center_crop)


def check_decode_names(decode_opts: dict) -> None:
    """``TypeError`` naming the options in ``decode_opts`` that are not :data:`DECODE_OPTIONS`."""
    unknown = set(decode_opts) - set(DECODE_OPTIONS)
    if unknown:
        raise TypeError(f"unknown decode option(s): {', '.join(sorted(unknown))}")


def _fast_jpeg():
    """simplejpeg's ``decode_jpeg`` when installed (``pip install 'gpustats[fast]'``) and not turned
    off with ``GPUSTATS_JPEG_DECODER=pillow``; else None."""
    global _SIMPLEJPEG
    if _SIMPLEJPEG is None:
        _SIMPLEJPEG = False
        if os.environ.get("GPUSTATS_JPEG_DECODER", "").lower() != "pillow":
            try:
                from simplejpeg import decode_jpeg

                _SIMPLEJPEG = decode_jpeg
            except ImportError:
                pass
    return _SIMPLEJPEG or None


def _libjpeg_turbo(fh, img) -> np.ndarray | None:
    """RGB pixels of a JPEG by libjpeg-turbo (simplejpeg), or None to let Pillow decode.

    Only where the result is Pillow's, bit for bit (tests/test_fast_jpeg.py proves it on baseline,
    progressive, 4:4:4/4:2:2/4:2:0, grayscale, restart-marker and EXIF files): JPEGs whose header
    Pillow reads as RGB or L, accurate IDCT and fancy upsampling (Pillow's defaults), and strict
    mode, so any decoder warning (truncated or corrupt data) hands the file to Pillow, whose verdict
    then stands. CMYK/YCCK JPEGs and everything else go to Pillow.
    """
    decode = _fast_jpeg()
    if decode is None or img.format != "JPEG" or img.mode not in ("RGB", "L"):
        return None
    try:
        fh.seek(0)
        return decode(fh.read(), colorspace="RGB", fastdct=False, fastupsample=False, strict=True)
    except Exception:  # ValueError on any libjpeg warning: Pillow decides
        return None


def decode_image(
    path: str | os.PathLike[str],
    *,
    mode: str = "RGB",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    resize: int | None = None,
    center_crop: int | Sequence[int] | None = None,
) -> np.ndarray:
    """Decode ``path`` to a writable C-contiguous ``(H, W, C)`` uint8 array (C = 3 or 1).

    Raises :class:`BadImage` (with ``.reason``) for any file that cannot be fully decoded;
    raises ``ValueError`` only for invalid options. See the module docstring for the rules.
    """
    return decode_with_info(path, mode=mode, max_pixels=max_pixels, resize=resize, center_crop=center_crop)[0]


def decode_with_info(
    path: str | os.PathLike[str],
    *,
    mode: str = "RGB",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    resize: int | None = None,
    center_crop: int | Sequence[int] | None = None,
) -> tuple[np.ndarray, str]:
    """:func:`decode_image` and the decoder that ran: ``"pillow"`` or ``"libjpeg-turbo"`` (simplejpeg)."""
    _check_options(mode, resize, center_crop)
    return decode_file(path, mode, max_pixels, resize, center_crop)[:2]


def decode_file(path: str | os.PathLike[str], mode: str = "RGB", max_pixels: int | None = DEFAULT_MAX_PIXELS,
                resize: int | None = None, center_crop: int | Sequence[int] | None = None,
                out: str = "array") -> tuple[np.ndarray, str, int]:
    """:func:`decode_with_info` for callers that checked the options, plus the file's size in bytes
    (one ``open`` and one ``fstat``). ``out``: see :func:`_decode` ("array", "readonly", "view", "histogram")."""
    _warn_if_truncated_allowed()
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise BadImage(f"unreadable: {exc.strerror or exc}", path) from None
    with fh:
        try:
            size = os.fstat(fh.fileno()).st_size
        except OSError as exc:
            raise BadImage(f"unreadable: {exc.strerror or exc}", path) from None
        if size == 0:
            raise BadImage("zero-byte file", path)
        return (*_decode(lambda: fh, path, mode, max_pixels, resize, center_crop, out), size)


def decode_bytes(
    data: bytes,
    *,
    name: str | None = None,
    mode: str = "RGB",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    resize: int | None = None,
    center_crop: int | Sequence[int] | None = None,
    out: str = "array",
) -> tuple[np.ndarray, str]:
    """:func:`decode_with_info` of an image held in memory (an archive member, a Parquet value).

    The same rules, reasons and decoders as for a file; ``name`` only labels :class:`BadImage`;
    ``out``: see :func:`_decode`.

    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.new("L", (2, 1), 9).save(buf, format="PNG")
    >>> array, decoder = decode_bytes(buf.getvalue())
    >>> array.shape, int(array[0, 1, 0]), decoder
    ((1, 2, 3), 9, 'pillow')
    >>> decode_bytes(b"")
    Traceback (most recent call last):
    ...
    gpustats.sources.errors.BadImage: zero-byte file
    """
    _check_options(mode, resize, center_crop)
    _warn_if_truncated_allowed()
    if len(data) == 0:
        raise BadImage("zero-byte file", name)
    return _decode(lambda: io.BytesIO(data), name, mode, max_pixels, resize, center_crop, out)


@contextlib.contextmanager
def _no_bomb_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _warn_if_truncated_allowed() -> None:
    global _warned_truncated
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _warned_truncated:
        _warned_truncated = True
        warnings.warn("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is enabled by the calling program: "
                      "truncated images will be decoded with filler pixels and counted",
                      stacklevel=3)


def _decode(opener: Callable[[], BinaryIO], path: str | os.PathLike[str] | None, mode: str,
            max_pixels: int | None, resize: int | None,
            center_crop: int | Sequence[int] | None, out: str = "array") -> tuple[np.ndarray, str]:
    """The one decoding core of files and bytes: sniff, check the size, decode, convert, resize, crop.

    ``out``: "array" (a writable ``(H, W, C)`` array), "readonly" (possibly read-only: one copy
    fewer), "view" (read-only, possibly strided over Pillow's own memory: no copy at all, see
    :mod:`.pixelview`) or "histogram": the exact ``[C, 256]`` int64 counts of the pixels (Pillow's own
    ``histogram()`` over the decoded image, :func:`_histogram`), without making an array at all.
    For "view" and "histogram" Pillow decodes (simplejpeg's decode costs more than Pillow's without
    its copy into an array, which is most of what ``np.asarray(Image.open(f))`` adds to a JPEG's decode)."""
    if out not in _OUTS:
        raise ValueError(f"out must be one of {_OUTS}, got {out!r}")
    pillow_limit = Image.MAX_IMAGE_PIXELS
    # max_pixels decides alone when set (Pillow's limit is lifted: no bomb warning can come); Pillow's
    # own limit applies without it, and its warning is dropped (the error above twice the limit stays)
    with _no_bomb_warning() if max_pixels is None else contextlib.nullcontext():
        if max_pixels is not None:
            Image.MAX_IMAGE_PIXELS = None  # max_pixels decides (checked below from the header)
        try:
            with opener() as fh:
                try:
                    img = Image.open(fh)
                except UnidentifiedImageError:
                    raise BadImage(_unsupported(fh) or "not an image", path) from None
                except Image.DecompressionBombError as exc:
                    raise BadImage(f"too large: {exc}", path) from None
                with img:
                    width, height = img.size
                    if max_pixels is not None and width * height > max_pixels:
                        raise BadImage(f"too large: {width}x{height} > max_pixels={max_pixels}",
                                       path)
                    check_output_size(width, height, resize, center_crop, max_pixels, path)
                    deep = _deep_colour(img)  # from the header: load() forgets how the data was stored
                    fast = _libjpeg_turbo(fh, img) if mode == "RGB" and out in ("array", "readonly") else None
                    decoder = "pillow" if fast is None else "libjpeg-turbo"
                    try:
                        if fast is not None:
                            converted = Image.fromarray(fast, "RGB") if resize is not None else fast
                        else:
                            img.load()
                            _warn_if_changed(img, deep)
                            if img.mode == mode and resize is None:  # no convert: it would only copy
                                # (taken before the with block closes img, which frees its pixels)
                                converted = (_histogram(img, center_crop) if out == "histogram"
                                             else _array_of(img, out))
                            else:
                                converted = img.convert(mode)
                    except Image.DecompressionBombError as exc:
                        raise BadImage(f"too large: {exc}", path) from None
                    except Exception as exc:  # OSError, SyntaxError, EOFError, zlib.error, ...
                        msg = str(exc) or type(exc).__name__
                        raise BadImage(f"truncated or corrupt: {msg}", path) from None
        except BadImage:
            raise
        except OSError as exc:
            raise BadImage(f"unreadable: {exc.strerror or exc}", path) from None
        except Exception as exc:  # Image.open can raise odd errors on odd headers
            msg = str(exc) or type(exc).__name__
            raise BadImage(f"truncated or corrupt: {msg}", path) from None
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit
    return _finish(converted, decoder, resize, center_crop, out)


def _finish(converted: Any, decoder: str, resize: int | None, center_crop: int | Sequence[int] | None,
            out: str) -> tuple[np.ndarray, str]:
    """The geometry and the output of :func:`_decode` (and :func:`decode_pil`) once the pixels are converted:
    ``converted`` is a PIL image in the asked mode, or already an array or a histogram."""
    if resize is not None:
        new_size = resized_size(converted.width, converted.height, int(resize))
        if new_size != converted.size:
            converted = converted.resize(new_size, Image.BILINEAR)
    if out == "histogram":
        return (converted if isinstance(converted, np.ndarray) else _histogram(converted, center_crop)), decoder
    # simplejpeg's own writable array, or Pillow's pixels taken as they were
    array = converted if isinstance(converted, np.ndarray) else _array_of(converted, out)
    if array.ndim == 2:
        array = array[:, :, None]
    if center_crop is not None:
        array = center_crop_array(array, center_crop)
    return (array if out == "view" else np.ascontiguousarray(array)), decoder


def _unsupported(fh: BinaryIO) -> str | None:
    """``"unsupported <FORMAT> file: <why>"`` when a format Pillow knows claims the first bytes of ``fh``
    but cannot open it (a TIFF with 12-bit samples, an odd pixel layout); None when nothing does (then it
    is not an image at all). Only formats that check a signature are asked."""
    try:
        fh.seek(0)
        prefix = fh.read(16)
        Image.init()
        for name in Image.ID:
            factory, accept = Image.OPEN[name]
            if accept is None or accept(prefix) is not True:
                continue
            fh.seek(0)
            try:
                factory(fh, "").close()
            except Exception as exc:  # what Image.open swallowed
                return f"unsupported {name} file: {str(exc) or type(exc).__name__}"
            return f"unsupported {name} file"
    except Exception:  # the probe must never fail the run: the file is just reported as not an image
        return None
    return None
def _deep_colour(img: Image.Image) -> bool:
    """True for colour stored with 16 bits per channel, which Pillow opens as 8-bit RGB/RGBA (its raw
    mode, e.g. ``RGB;16B``, says so until the pixels are loaded)."""
    if img.mode in _CLIPPED_MODES or not getattr(img, "tile", None):
        return False
    args = img.tile[0].args
    raw = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else ""
    return isinstance(raw, str) and ";16" in raw


def _warn_if_changed(img: Image.Image, deep: bool) -> None:
    """Warn (:data:`_CHANGED`) when converting ``img``'s loaded pixels to 8 bits changes values."""
    if deep:
        warnings.warn(_CHANGED["deep"], UserWarning, stacklevel=3)
    elif img.mode in _CLIPPED_MODES:
        kind = "I;16" if img.mode.startswith("I;16") else img.mode
        low, high = img.getextrema()
        changed = low < 0 or high > 255
        if kind == "F" and not changed:
            values = np.asarray(img)
            changed = bool(np.any(values != np.floor(values)))
        if changed:
            warnings.warn(_CHANGED[kind], UserWarning, stacklevel=3)


def decode_pil(image: Image.Image, *, name: str | None = None, mode: str = "RGB",
               max_pixels: int | None = DEFAULT_MAX_PIXELS, resize: int | None = None,
               center_crop: int | Sequence[int] | None = None, out: str = "array") -> tuple[np.ndarray, str]:
    """:func:`decode_bytes` for an image a dataset already opened (a Hugging Face ``Image`` feature's PIL
    image): the same conversion, checks and geometry, on the pixels Pillow decodes from it.

    >>> array, decoder = decode_pil(Image.new("P", (2, 1)))
    >>> array.shape, decoder
    ((1, 2, 3), 'pillow')
    """
    _check_options(mode, resize, center_crop)
    if out not in _OUTS:
        raise ValueError(f"out must be one of {_OUTS}, got {out!r}")
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise BadImage(f"too large: {width}x{height} > max_pixels={max_pixels}", name)
    check_output_size(width, height, resize, center_crop, max_pixels, name)
    deep = _deep_colour(image)  # before load(), which forgets how the data was stored
    try:
        image.load()
        _warn_if_changed(image, deep)
        if image.mode == mode and resize is None:
            converted = _histogram(image, center_crop) if out == "histogram" else _array_of(image, out)
        else:
            converted = image.convert(mode)
    except Exception as exc:  # OSError, SyntaxError, EOFError, zlib.error, ...
        raise BadImage(f"truncated or corrupt: {str(exc) or type(exc).__name__}", name) from None
    return _finish(converted, "pillow", resize, center_crop, out)


def _array_of(image: Image.Image, out: str) -> np.ndarray:
    """``image``'s pixels: a writable copy ("array"), or read-only over Pillow's bytes ("readonly"), or
    over Pillow's own memory without a copy where it can ("view": :func:`.pixelview.image_view`)."""
    if out == "view":
        from .pixelview import image_view

        view = image_view(image)
        if view is not None:
            return view
    return np.array(image, dtype=np.uint8) if out == "array" else np.asarray(image, dtype=np.uint8)
