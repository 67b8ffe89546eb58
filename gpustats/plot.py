"""Per-channel histogram plots (``gpustats stats --plot FILE.png``); matplotlib is the optional ``plot`` extra.

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

import os
from typing import Any, Sequence

__all__ = ["PlotUnavailable", "plot_histograms", "require_matplotlib"]

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


def plot_histograms(stats: Any, path: str | os.PathLike[str], *, channel_names: Sequence[str] | None = None,
                    images: int | None = None, dpi: int = 100) -> None:
    """Draw one histogram panel per channel of ``stats`` (needs ``histogram=True``) to ``path`` (PNG).

    Each panel shows the exact histogram in the channel's colour, the mean as a solid line with
    mean ± std shaded, and the 1st and 99th percentiles as dashed lines; the title gives the
    image and pixel counts.
    """
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
    fig.savefig(os.fspath(path), format="png")
