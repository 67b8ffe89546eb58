"""GPU JPEG decoding in batches with nvJPEG via ``torchvision.io.decode_jpeg(device="cuda")``.

torchvision is an optional extra: it is imported lazily, only by the functions here.
:func:`gpu_decode_available` says whether this path can run and, if not, why.

:func:`decode_files_gpu` returns **CHW** uint8 tensors on ``device`` (the layout torchvision
decoders produce), one :class:`GpuDecoded` record per file, in the order given. Files are routed:

* to nvJPEG: files whose *content* is a JPEG (magic ``FF D8 FF``) that ends with an EOI marker
  (so truncated files are never half-decoded on the GPU), whose header Pillow reads as ``RGB``
  or ``L`` and whose size is within ``max_pixels``;
* to the CPU (:func:`~gpustats.sources.decode.decode_image`, then copied to ``device``):
  everything else -- PNG and other formats (also a PNG named ``.jpg``), CMYK/YCCK JPEGs (so the
  colour conversion stays Pillow's), and any file nvJPEG refuses (a failed batch is retried one
  file at a time; files that still fail go to the CPU, which reports them bad if they are).

Note: nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's, so GPU-decoded pixels can
differ from Pillow's by a few levels; statistics differ accordingly (typically in the 4th
decimal of the mean). Use the CPU path when bit-exact agreement with a PIL pipeline matters.
Resizing and cropping are not done here: use the CPU path (``iter_decoded``) for those.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from PIL import Image

from .decode import DEFAULT_MAX_PIXELS, _check_options, decode_bytes
from .errors import BadImage

__all__ = ["GpuDecoded", "gpu_decode_available", "decode_files_gpu", "decode_sources_gpu", "gpu_batches", "gpu_strip",
           "is_complete_jpeg"]

#: ``decoder(list_of_uint8_cpu_tensors, mode, device) -> list of CHW uint8 tensors``.
JpegBatchDecoder = Callable[[list[torch.Tensor], str, str], list[torch.Tensor]]


class GpuDecoded(NamedTuple):
    """One file's outcome: ``tensor`` is ``(C, H, W)`` uint8 on the device, or ``None`` when
    ``bad_reason`` says why not. ``decoded_on`` is ``"gpu"`` or ``"cpu"`` (the fallback)."""

    index: int
    tensor: torch.Tensor | None
    bad_reason: str | None
    nbytes: int
    decoded_on: str


def gpu_decode_available(device: str | torch.device = "cuda") -> tuple[bool, str]:
    """``(True, "")`` when nvJPEG decoding through torchvision can run, else ``(False, why)``."""
    if not torch.cuda.is_available():
        return False, "CUDA is not available to torch"
    try:
        import torchvision.io  # noqa: F401  (optional extra)
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        return False, (f"torchvision is not importable ({type(exc).__name__}: {exc}); "
                       "install the 'vision' extra: pip install 'gpustats[vision]'")
    if not hasattr(torchvision.io, "decode_jpeg"):
        return False, "this torchvision has no torchvision.io.decode_jpeg"
    if torch.device(device).type != "cuda":
        return False, f"device {str(device)!r} is not a CUDA device"
    return True, ""


def _torchvision_decoder(datas: list[torch.Tensor], mode: str, device: str) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    read_mode = ImageReadMode.RGB if mode == "RGB" else ImageReadMode.GRAY
    out = decode_jpeg(datas, mode=read_mode, device=device)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def is_complete_jpeg(data: bytes) -> bool:
    """JPEG magic at the start and an EOI marker at the end (trailing NUL padding allowed)."""
    return data[:3] == b"\xff\xd8\xff" and data.rstrip(b"\x00").endswith(b"\xff\xd9")


def _gpu_eligible(data: bytes, max_pixels: int | None) -> bool:
    if not is_complete_jpeg(data):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:  # header only, no pixels decoded
                width, height = img.size
                return (img.format == "JPEG" and img.mode in ("RGB", "L")
                        and (max_pixels is None or width * height <= max_pixels))
    except Exception:
        return False  # the CPU path will name the problem


def decode_sources_gpu(
    sources: Sequence[str | os.PathLike[str] | bytes | BadImage],
    *,
    indices: Sequence[int] | None = None,
    device: str | torch.device = "cuda",
    mode: str = "RGB",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    decoder: JpegBatchDecoder | None = None,
) -> list[GpuDecoded]:
    """Decode one batch to CHW uint8 tensors on ``device``; never raises per item. Items are file paths
    (``str`` or ``os.PathLike``), encoded images held in memory (``bytes``: archive members, Parquet
    values) or :class:`BadImage` (could not be read). Also named :func:`decode_files_gpu`.

    ``indices`` (default ``0..len-1``) become the records' ``index`` (pass global file indices).
    ``decoder`` replaces torchvision's nvJPEG call (tests inject a fake one); without it,
    :func:`gpu_decode_available` must be true or ``RuntimeError`` says why.
    """
    _check_options(mode, None, None)
    device = str(device)
    if decoder is None:
        ok, why = gpu_decode_available(device)
        if not ok:
            raise RuntimeError(f"GPU JPEG decoding is unavailable: {why}")
        decoder = _torchvision_decoder
    if indices is None:
        indices = range(len(sources))
    if len(indices) != len(sources):
        raise ValueError(f"{len(indices)} indices for {len(sources)} files")

    results: list[GpuDecoded | None] = [None] * len(sources)
    datas: list[bytes] = [b""] * len(sources)
    gpu_slots: list[int] = []
    gpu_datas: list[torch.Tensor] = []
    cpu_slots: list[int] = []
    for slot, source in enumerate(sources):
        if isinstance(source, BadImage):
            results[slot] = GpuDecoded(int(indices[slot]), None, source.reason, 0, "cpu")
            continue
        if isinstance(source, (str, os.PathLike)):
            try:
                with open(source, "rb") as fh:
                    source = fh.read()
            except OSError as exc:
                results[slot] = GpuDecoded(int(indices[slot]), None, f"unreadable: {exc.strerror or exc}", 0, "cpu")
                continue
        datas[slot] = source
        if _gpu_eligible(source, max_pixels):
            gpu_slots.append(slot)
            gpu_datas.append(torch.frombuffer(bytearray(source), dtype=torch.uint8))
        else:
            cpu_slots.append(slot)

    if gpu_slots:
        try:
            decoded = decoder(gpu_datas, mode, device)
            if len(decoded) != len(gpu_datas):
                raise RuntimeError("decoder returned a different number of images")
        except Exception:
            decoded = []
            for data in gpu_datas:  # find the file(s) nvJPEG refuses
                try:
                    decoded.append(decoder([data], mode, device)[0])
                except Exception:
                    decoded.append(None)
        for slot, tensor in zip(gpu_slots, decoded):
            if tensor is None:
                cpu_slots.append(slot)
            else:
                results[slot] = GpuDecoded(int(indices[slot]), tensor, None, len(datas[slot]), "gpu")

    for slot in sorted(cpu_slots):
        try:
            array = decode_bytes(datas[slot], mode=mode, max_pixels=max_pixels)[0]
        except BadImage as exc:
            results[slot] = GpuDecoded(int(indices[slot]), None, exc.reason, len(datas[slot]), "cpu")
            continue
        tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous().to(device)
        results[slot] = GpuDecoded(int(indices[slot]), tensor, None, len(datas[slot]), "cpu")
    return results  # type: ignore[return-value]


#: the same function, under the name it had when only files were decoded
decode_files_gpu = decode_sources_gpu


def gpu_batches(plan: Any, start: int, batch_size: int, device: str, decode_opts: dict) -> Iterator:
    """A folder run's nvJPEG batches of ``batch_size`` items from ``start`` (:meth:`.plan.Plan.byte_batches`):
    ``(first, stop, good CHW tensors on the device, bad [BadItem], nbytes)``."""
    from .reduce_tasks import BadItem

    for first, stop, items in plan.byte_batches(start, batch_size):
        records = decode_sources_gpu([item[3] for item in items], indices=[item[0] for item in items], device=device,
                                     mode=decode_opts["mode"], max_pixels=decode_opts["max_pixels"])
        good = [r.tensor for r in records if r.tensor is not None]
        bad = [BadItem(r.index, str(r.bad_reason), item[1], item[2]) for r, item in zip(records, items)
               if r.tensor is None]
        yield first, stop, good, bad, sum(r.nbytes for r in records)


def gpu_strip(images: list) -> Any:
    """A batch of variable-size CHW images as one 1-pixel-high image: one reduction per batch."""
    if len(images) == 1:
        return images[0]
    return torch.cat([t.reshape(t.shape[0], -1) for t in images], dim=1)[:, None, :]
