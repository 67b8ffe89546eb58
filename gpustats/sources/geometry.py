"""The geometry of ``--resize``/``--center-crop`` (torchvision ``Resize(N)`` then ``CenterCrop``), computed from
an image's size alone, and the pixel limit that holds before and after it: what the decoder, the decode
workers' size guess and the run's early checks share.

>>> resized_size(500, 375, 256), crop_hw(224), crop_box(500, 375, 224)
((341, 256), (224, 224), ((138, 76, 362, 300), 0))
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from .errors import BadImage

__all__ = ["resized_size", "crop_hw", "center_crop_array", "crop_box", "pixel_limit", "check_output_size"]


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_width, new_height) of torchvision ``Resize(size)`` for an int ``size``.

    >>> resized_size(500, 375, 256)
    (341, 256)
    """
    if size <= 0:
        raise ValueError(f"resize must be a positive int, got {size!r}")
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def crop_hw(center_crop: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(center_crop, (int, np.integer)):
        crop_h = crop_w = int(center_crop)
    else:
        dims = [int(v) for v in center_crop]
        if len(dims) == 1:
            dims = dims * 2
        if len(dims) != 2:
            raise ValueError(f"center_crop must be an int or (height, width), got {center_crop!r}")
        crop_h, crop_w = dims
    if crop_h <= 0 or crop_w <= 0:
        raise ValueError(f"center_crop must be positive, got {center_crop!r}")
    return crop_h, crop_w


def center_crop_array(array: np.ndarray, center_crop: int | Sequence[int]) -> np.ndarray:
    """torchvision ``CenterCrop`` on an ``(H, W, C)`` array, zero padding included."""
    crop_h, crop_w = crop_hw(center_crop)
    height, width = array.shape[:2]
    if crop_w > width or crop_h > height:
        pad_left = (crop_w - width) // 2 if crop_w > width else 0
        pad_top = (crop_h - height) // 2 if crop_h > height else 0
        pad_right = (crop_w - width + 1) // 2 if crop_w > width else 0
        pad_bottom = (crop_h - height + 1) // 2 if crop_h > height else 0
        array = np.pad(array, ((pad_top, pad_bottom), (pad_left, pad_right), (0, 0)))
        height, width = array.shape[:2]
        if (crop_h, crop_w) == (height, width):
            return array
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return np.ascontiguousarray(array[top:top + crop_h, left:left + crop_w])


def crop_box(width: int, height: int, center_crop: int | Sequence[int]) -> tuple[tuple[int, int, int, int], int]:
    """Where :func:`center_crop_array` takes its pixels from a ``width`` x ``height`` image: the box
    (left, upper, right, lower) in the image, and the number of zero pixels its padding adds."""
    crop_h, crop_w = crop_hw(center_crop)
    # in padded coordinates (a dimension smaller than the crop is padded to the crop's size, the
    # image then at offset (crop - size) // 2), the crop starts at round((padded - crop) / 2)
    pad_left = (crop_w - width) // 2 if crop_w > width else 0
    pad_top = (crop_h - height) // 2 if crop_h > height else 0
    left = int(round((max(width, crop_w) - crop_w) / 2.0)) - pad_left
    top = int(round((max(height, crop_h) - crop_h) / 2.0)) - pad_top
    box = (max(left, 0), max(top, 0), min(left + crop_w, width), min(top + crop_h, height))
    return box, crop_h * crop_w - (box[2] - box[0]) * (box[3] - box[1])


def pixel_limit(max_pixels: int | None) -> int | None:
    """The pixel limit in force: ``max_pixels``, or (None) Pillow's own bomb limit, twice
    ``Image.MAX_IMAGE_PIXELS`` (None when that is None too)."""
    if max_pixels is not None:
        return int(max_pixels)
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * int(Image.MAX_IMAGE_PIXELS)


def check_output_size(width: int, height: int, resize: int | None, center_crop, max_pixels: int | None,
                       path) -> None:
    """:class:`BadImage` when resizing or cropping a ``width`` x ``height`` image would make more pixels than
    the limit (:func:`pixel_limit`), before anything is decoded or allocated."""
    limit = pixel_limit(max_pixels)
    if limit is None:
        return
    if resize is not None and width > 0 and height > 0:
        new_w, new_h = resized_size(width, height, int(resize))
        if new_w * new_h > limit:
            raise BadImage(f"too large after resize: {width}x{height} -> {new_w}x{new_h} > max_pixels={limit}", path)
    if center_crop is not None:
        crop_h, crop_w = crop_hw(center_crop)
        if crop_h * crop_w > limit:
            raise BadImage(f"too large after center crop: {crop_w}x{crop_h} > max_pixels={limit}", path)
