"""``gpustats demo``'s computation: the folder engine and the often-pasted recipe on a built-in sample.

:func:`run_demo` writes :func:`~gpustats.sources.synthetic.make_demo_folder` into a temporary
folder, runs :func:`~gpustats.sources.engine.run_folder` on it and :func:`per_image_recipe` on the
same files; :func:`gpustats.report.format_demo` prints the comparison.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["Demo", "run_demo", "per_image_recipe"]


@dataclasses.dataclass
class Demo:
    """What ``gpustats demo`` shows: the run (bad files relative to the sample folder), the files
    made, and the recipe's per-image averages (``recipe_images`` images)."""

    run: Any
    files: int
    bad: int
    recipe_mean: list[float]
    recipe_std: list[float]
    recipe_images: int


def per_image_recipe(files: Sequence[Path]) -> tuple[list[float], list[float], int]:
    """The often-pasted recipe, as written: per image ``ToTensor()`` (float32 / 255), then
    ``x.view(C, -1).mean(1)`` and ``.std(1)`` (unbiased, ddof=1), summed and divided by the
    number of images. Returns ``(mean, std, images)``; bad files are skipped.

    (:func:`gpustats.benchmark.forum_recipe` is the per-batch variant, timed as a speed baseline.)
    """
    import torch

    from .sources import BadImage, decode_image

    mean_sum = std_sum = None
    images = 0
    for path in files:
        try:
            array = decode_image(path)
        except BadImage:
            continue
        x = torch.from_numpy(array).permute(2, 0, 1).float().div(255)  # ToTensor
        flat = x.reshape(x.shape[0], -1)
        m, s = flat.mean(1), flat.std(1)
        mean_sum = m if mean_sum is None else mean_sum + m
        std_sum = s if std_sum is None else std_sum + s
        images += 1
    return (mean_sum / images).tolist(), (std_sum / images).tolist(), images


def run_demo(device: str = "auto", progress: bool = False) -> Demo:
    """The engine (histograms and per-image statistics on, decoding in this process) and
    :func:`per_image_recipe` on a freshly written sample folder, removed afterwards."""
    import tempfile

    from .sources import list_images
    from .sources.engine import run_folder
    from .sources.synthetic import make_demo_folder

    with tempfile.TemporaryDirectory(prefix="gpustats-demo-") as tmp:
        info = make_demo_folder(tmp)
        root = str(info["root"])
        run = run_folder([root], device=device, workers=0, histogram=True, per_image=True, progress=progress)
        run.bad_files = [{"path": os.path.relpath(b["path"], root), "reason": b["reason"]} for b in run.bad_files]
        mean, std, images = per_image_recipe(list_images([root]))
    return Demo(run=run, files=len(info["listed"]), bad=len(info["bad"]), recipe_mean=mean, recipe_std=std,
                recipe_images=images)
