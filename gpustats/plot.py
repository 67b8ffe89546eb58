"""Per-channel histogram plots (``gpustats stats --plot FILE.png``, or ``.pdf``, ``.svg``, ...); matplotlib is the
optional ``plot`` extra.

matplotlib is imported only here, only when a plot is drawn, and through its object-oriented
API with the Agg canvas (no ``pyplot``, no GUI, no change to the caller's global backend).

>>> import numpy as np, tempfile, os
>>> from gpustats import compute_stats
>>> stats = compute_stats([np.arange(256, dtype=np.uint8).reshape(16, 16, 1)], device="cpu",
...                       layout="HWC", histogram=True)
>>> path = os.path.join(tempfile.mkdtemp(), "h.png")
>>> plot_histograms(stats, path, channel_names=("L",), images=1)
>>> os.path.getsize(path) > 1000
True
"""

from __future__ import annotations

import io
import os
from typing import Any, Sequence

__all__ = ["PLOT_FORMATS", "PlotUnavailable", "plot_format", "plot_histograms", "require_matplotlib"]

_INSTALL = "pip install 'gpustats[plot]'"
_COLOURS = {"R": "#d62728", "G": "#2ca02c", "B": "#1f77b4", "L": "#555555"}


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed (or broken); the message says how to install it."""


def require_matplotlib() -> None:
    """Raise :class:`PlotUnavailable` unless matplotlib's Agg canvas can be imported."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        raise PlotUnavailable(f"plotting needs matplotlib ({type(exc).__name__}: {exc}); {_INSTALL}") from None


#: formats a plot is written in, by file-name extension (matplotlib's Agg canvas and its vector backends;
#: a name without an extension gets PNG)
PLOT_FORMATS = {"png": "png", "pdf": "pdf", "svg": "svg", "svgz": "svgz", "eps": "eps", "ps": "ps", "jpg": "jpeg",
                "jpeg": "jpeg", "tif": "tiff", "tiff": "tiff", "webp": "webp"}


def plot_format(path: str | os.PathLike[str]) -> str:
    """The format ``path``'s extension asks for (:data:`PLOT_FORMATS`; none: ``"png"``), or ``ValueError``.

    >>> plot_format("h.PDF"), plot_format("hist")
    ('pdf', 'png')
    """
    ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if not ext:
        return "png"
    if ext not in PLOT_FORMATS:
        raise ValueError(f"cannot write a plot as .{ext}; name it .png, .pdf, .svg, .jpg, .tif, .webp, .eps or .ps")
    return PLOT_FORMATS[ext]


def plot_histograms(stats: Any, path: str | os.PathLike[str], *, channel_names: Sequence[str] | None = None,
                    images: int | None = None, dpi: int = 100) -> None:
    """Draw one histogram panel per channel of ``stats`` (needs ``histogram=True``) to ``path``, in the format
    its extension asks for (:func:`plot_format`: PNG, PDF, SVG, ...).

    Each panel shows the exact histogram in the channel's colour, the mean as a solid line with
    mean ± std shaded, and the 1st and 99th percentiles as dashed lines; the title gives the
    image and pixel counts.
    """
    fmt = plot_format(path)
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    hist = stats.histogram
    if hist is None:
        from .stats import StatsError

        raise StatsError("no histogram was accumulated; pass histogram=True (CLI: --histogram or --plot)")
    channels = hist.shape[0]
    names = list(channel_names) if channel_names is not None and len(channel_names) == channels \
        else [f"channel {c}" for c in range(channels)]
    edges = stats.bin_edges()
    if stats.state.family == "int":  # one integer value per bin: centre the bar on k/255
        width = edges[1] - edges[0]
        lefts = edges[:-1] - width / 2
    else:
        width = edges[1] - edges[0]
        lefts = edges[:-1]
    p1, p99 = stats.percentile([1, 99])
    fig = Figure(figsize=(7.5, 2.2 * channels + 0.6), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(channels, 1, squeeze=False, sharex=True)[:, 0]
    for c, ax in enumerate(axes):
        colour = _COLOURS.get(names[c], f"C{c}")
        total = max(int(hist[c].sum()), 1)
        ax.bar(lefts, hist[c] / total, width=width, align="edge", color=colour, alpha=0.75, linewidth=0)
        mean, std = float(stats.mean[c]), float(stats.std[c])
        ax.axvspan(mean - std, mean + std, color=colour, alpha=0.12, label=f"mean ± std = {mean:.4f} ± {std:.4f}")
        ax.axvline(mean, color="black", linewidth=1.2)
        ax.axvline(float(p1[c]), color="black", linestyle="--", linewidth=0.9,
                   label=f"p1 / p99 = {float(p1[c]):.3f} / {float(p99[c]):.3f}")
        ax.axvline(float(p99[c]), color="black", linestyle="--", linewidth=0.9)
        ax.set_ylabel(f"{names[c]}  fraction")
        ax.legend(loc="upper right", fontsize=8, frameon=False)
        ax.margins(x=0.01)
    axes[-1].set_xlabel(f"value (0–1 scale, raw / {stats.scale:g})" if stats.scale != 1 else "value")
    count = f"{images:,} images, " if images is not None else ""
    fig.suptitle(f"gpustats: per-channel histograms ({count}{int(stats.count[0]):,} pixels per channel)", fontsize=10)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format=fmt)
    from .checkpoint import atomic_target, atomic_write_bytes

    target = atomic_target(path)
    if target is None:  # /dev/null, a pipe: written through
        with open(path, "wb") as fh:
            fh.write(image.getvalue())
    else:  # a reader never sees half a plot; a symlink stays a link
        atomic_write_bytes(target, image.getvalue())
