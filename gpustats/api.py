"""The public entry points: :func:`compute_stats` over any iterable of batches, and the streaming
:class:`Accumulator` for training code.

>>> import torch
>>> from gpustats import compute_stats
>>> batches = [torch.full((2, 3, 5, 5), 51, dtype=torch.uint8), torch.full((1, 3, 5, 5), 102, dtype=torch.uint8)]
>>> r = compute_stats(batches, device="cpu")
>>> [round(v, 4) for v in r.mean.tolist()]  # (2*25*51 + 25*102) / 75 / 255: each pixel counts once
[0.2667, 0.2667, 0.2667]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from .batches import InputError
from .options import StatsOptions, default_scale
from .stats import Stats

if TYPE_CHECKING:  # pragma: no cover
    from .accumulator import Accumulator

__all__ = ["Accumulator", "compute_stats", "default_scale"]


def __getattr__(name: str) -> Any:
    """``Accumulator`` loads torch, so it is imported when first asked for: ``compute_stats`` over image files
    (the folder engine) never imports torch."""
    if name == "Accumulator":
        from .accumulator import Accumulator

        return Accumulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _paths(source: Any) -> list | None:
    """``source`` as a list of paths when it is a path or a list/tuple of paths, else None."""
    import os

    if isinstance(source, (str, os.PathLike)):
        return [source]
    if isinstance(source, (list, tuple)) and source and all(isinstance(p, (str, os.PathLike)) for p in source):
        return list(source)
    return None


def compute_stats(
    loader: Iterable[Any],
    device: Any = None,
    *,
    ddof: int = 0,
    progress: bool = False,
    distributed: Any = "auto",
    sample: Any = None,
    **options: Any,
) -> Stats:
    """Per-channel statistics of every batch ``loader`` yields, or of the image files under a path.

    ``loader``: any iterable (DataLoader, generator, list) of tensors/arrays (NCHW, NHWC, CHW,
    HWC), ``(x, y)`` pairs, dicts (``key=``) or lists of variable-size images. ``ddof=0`` gives the
    population std over all pixels (what ``Normalize`` wants). ``distributed="auto"`` merges across
    ``torch.distributed`` ranks when a process group is initialized (each rank must see its own
    shard, e.g. with ``DistributedSampler``); it is then a collective: when only some ranks call
    it, pass ``distributed=False``. ``sample=SampleSpec(tolerance=...)`` (:mod:`gpustats.sampling`)
    estimates mean/std from a random subset of images instead and returns a ``SampledStats`` with
    confidence intervals.

    ``options`` (:class:`~gpustats.options.StatsOptions`, defined once there): ``layout`` /
    ``channels`` settle an ambiguous channel axis (``channels=3`` also drops alpha); ``key``: the
    dict entry holding images; ``scale``: divisor of the reported values (``"auto"``: 255 for
    uint8, 65535 for uint16, else 1); ``nan_policy``: ``"raise"`` | ``"omit"`` | ``"propagate"``
    (on a GPU, ``"raise"`` may surface at the next batch or at the end: the CUDA backend's module
    docstring says exactly when; the bad batch is never counted);
    ``strategy``: the CUDA kernel (``"auto"``); ``histogram`` (with ``hist_bins``/``hist_range``/
    ``clip`` for non-uint8 data), ``covariance`` and ``per_image`` add exact histograms and
    percentiles, covariance/PCA and per-image statistics in the same pass.

    ``loader`` may also be a folder or image file (``str`` or ``os.PathLike``) or a list of them,
    an archive read in place (``.tar`` with tars inside it as ILSVRC2012 ships, ``.tar.gz``,
    ``.zip``, ``.parquet``) or a brace pattern of shards (``"train-{000000..001023}.tar"``): the
    folder engine then runs, exactly as ``gpustats stats`` does (same numbers, bit for bit),
    with its options as keywords: ``workers``, ``batch_size``, ``decode``, ``mode``, ``resize``,
    ``center_crop``, ``max_pixels``, ``strict``, ``checkpoint``, ``checkpoint_every``, ``column``
    (the image column of Parquet files; found when not given), ``rendezvous_timeout`` (under
    ``torchrun``), besides
    ``strategy``, ``histogram``, ``covariance`` and ``per_image`` (see
    :func:`gpustats.sources.engine.run_folder`). The result is then a ``FolderStats``: the Stats
    plus ``images``, ``files``, ``bad_files`` and ``warnings``. Paths may be remote: ``s3://``,
    ``gs://``, ``https://`` (:mod:`gpustats.sources.remote`), and TFRecord shards are read too.

    ``loader`` may also be an iterable of samples holding images -- a Hugging Face dataset (streaming
    or not) with ``key="image"``, or any iterable of dicts whose ``key`` entry is a PIL image, encoded
    bytes, ``{"bytes": ..., "path": ...}`` or a path: the same engine then decodes them, exactly as the
    same images in a folder (:mod:`gpustats.sources.samples`), with the same options.

    >>> import numpy as np
    >>> compute_stats([np.zeros((2, 3, 5, 5), np.uint8)], device="cpu", covariance=True).cov.shape
    (3, 3)
    """
    paths = _paths(loader) if sample is None else None
    if paths is not None:
        from .sources.engine import ENGINE_OPTIONS, run_folder

        loader_only = sorted(set(options) & (set(StatsOptions.names()) - set(ENGINE_OPTIONS)))
        if loader_only:
            raise InputError(f"{', '.join(loader_only)} apply to batches from a loader, not to image files (decoded "
                             "to uint8 RGB or L, scale 1/255); drop them")
        return run_folder(paths, device="auto" if device is None else device, ddof=ddof, progress=progress,
                          **options).stats
    if sample is None:  # an iterable of samples holding images (PIL, bytes, paths): the folder engine too
        from .sources.samples import sample_stream

        stream, loader = sample_stream(loader, options.get("key"))
        if stream is not None:
            from .sources.engine import ENGINE_OPTIONS, run_folder

            engine = {k: v for k, v in options.items() if k != "key"}
            loader_only = sorted(set(engine) & (set(StatsOptions.names()) - set(ENGINE_OPTIONS)))
            if loader_only:
                raise InputError(f"{', '.join(loader_only)} apply to batches of arrays, not to samples holding "
                                 "images (decoded to uint8 RGB or L, scale 1/255); drop them")
            return run_folder(stream, device="auto" if device is None else device, ddof=ddof, progress=progress,
                              **engine).stats
    settings = _loader_options(options)
    if sample is not None:
        from .sampling import sample_for_compute_stats

        return sample_for_compute_stats(loader, sample, device=device, options=settings, ddof=ddof,
                                        progress=progress, distributed=distributed)
    from .accumulator import Accumulator

    acc = Accumulator(device, **options)
    iterable = loader
    if progress:
        from tqdm.auto import tqdm

        iterable = tqdm(loader, desc="gpustats", unit="batch")
    for batch in iterable:
        acc.update(batch)
    if acc.batches == 0 and not distributed:
        raise InputError("the loader yielded no batches: nothing to compute (check the dataset path and sampler)")
    return acc.result(ddof=ddof, distributed=distributed)


def _loader_options(options: dict[str, Any]) -> StatsOptions:
    unknown = set(options) - set(StatsOptions.names())
    if unknown:
        raise TypeError(f"compute_stats() got unexpected keyword argument(s) {', '.join(sorted(unknown))}; "
                        f"options of a loader: {', '.join(StatsOptions.names())} (the folder engine's options "
                        "apply when the source is a folder or files)")
    try:
        return StatsOptions(**options)
    except ValueError as exc:
        raise InputError(str(exc)) from None
