"""`--plot FILE.png`: a real, non-blank PNG of the per-channel histograms; clear error without matplotlib."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
from PIL import Image

from gpustats.cli import main
from gpustats.sources.synthetic import make_demo_folder

if importlib.util.find_spec("matplotlib") is None:  # looked up, not imported: it loads with the first plot
    pytest.skip("needs matplotlib (pip install -e '.[plot]')", allow_module_level=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_folder(tmp_path_factory.mktemp("plot"))["root"]


def test_plot_renders_a_png_and_implies_histogram(capsys, tmp_path, demo):
    png = tmp_path / "hist.png"
    rc = main(["stats", str(demo), "--device", "cpu", "--workers", "0", "--plot", str(png), "--format", "json",
               "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "histogram" in json.loads(out)["stats"]  # --plot implies --histogram
    assert png.stat().st_size > 5_000
    with Image.open(png) as img:
        assert img.format == "PNG"
        assert img.size == (750, 720)  # 7.5 x (2.2 * 3 + 0.6) inches at 100 dpi
        pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
    assert pixels.var() > 0
    # the channel colours are there (red bars for R, green for G, blue for B)
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 120) & (pixels[..., 2] < 120)
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 120)
    assert red.sum() > 100 and blue.sum() > 100


def test_plot_of_a_single_channel(tmp_path):
    from gpustats import compute_stats
    from gpustats.plot import plot_histograms

    stats = compute_stats([np.arange(256, dtype=np.uint8).reshape(16, 16, 1)], device="cpu", layout="HWC",
                          histogram=True)
    png = tmp_path / "l.png"
    plot_histograms(stats, png, channel_names=("L",), images=1)
    with Image.open(png) as img:
        assert img.size == (750, 280) and np.asarray(img).var() > 0


def test_plot_without_histogram_is_a_clear_error(tmp_path):
    from gpustats import StatsError, compute_stats
    from gpustats.plot import plot_histograms

    stats = compute_stats([np.zeros((2, 2, 3), np.uint8)], device="cpu", layout="HWC")
    with pytest.raises(StatsError, match="histogram=True"):
        plot_histograms(stats, tmp_path / "x.png")


def test_missing_matplotlib_names_the_extra_before_running(capsys, monkeypatch, tmp_path, demo):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rc = main(["stats", str(demo), "--device", "cpu", "--workers", "0", "--plot", str(tmp_path / "p.png")])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert "pip install 'gpustats[plot]'" in err and err.count("\n") == 1
    assert not (tmp_path / "p.png").exists()
