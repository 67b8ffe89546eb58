"""`gpustats stats` / `demo` end to end, against an independent Pillow + numpy float64 reference.

Most runs call ``gpustats.cli.main`` in-process (the same code path as the command, without
paying torch's import per test); the exit-code, entry-point and demo tests run real
subprocesses. Folders are tiny so the file runs in well under a minute on two cores.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gpustats import ChannelStats
from gpustats.cli import JSON_SCHEMA, main
from gpustats.sources import list_images
from gpustats.sources.synthetic import make_demo_folder, make_tiny_folder, tiny_array

ROOT = Path(__file__).resolve().parent.parent
TOP_KEYS = {"schema", "channels", "stats", "normalize", "images", "pixels", "files", "bytes", "bad_files", "warnings", "decoders",
            "skipped_by_extension",
            "elapsed_s", "images_per_s", "mb_per_s", "device", "backend", "strategy", "cpu_reason", "decode",
            "decode_reason", "workers", "resumed_from", "options", "state"}


def _env() -> dict:
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env.pop("WORLD_SIZE", None)
    return env


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpustats", *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys, *args: str) -> dict:
    rc, out, err = run_main(capsys, "stats", *args, "--format", "json", "--quiet")
    assert rc == 0, err
    return json.loads(out)


def reference_pixels(paths, mode: str = "RGB") -> np.ndarray:
    """[P, C] uint8 pixels of every good file, decoded independently with Pillow."""
    rows = []
    for path in paths:
        with Image.open(path) as img:
            arr = np.asarray(img.convert(mode))
        rows.append(arr.reshape(-1, 1 if mode == "L" else 3))
    return np.concatenate(rows)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_folder(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Lossless RGB PNGs of very different sizes (1x1 up to 23x17), plus one grayscale."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(1, 1), (3, 7), (17, 23), (8, 8), (2, 13)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"m{i}.png")
    Image.fromarray(rng.integers(0, 256, (5, 4), dtype=np.uint8), "L").save(root / "gray.png")
    return root


def _good_paths(demo) -> list[Path]:
    return [demo["root"] / rel for rel in demo["listed"] if rel in demo["good"]]


# ---------------------------------------------------------------------------------- values
def test_json_matches_pillow_float64_reference(capsys, demo):
    doc = run_json(capsys, str(demo["root"]), "--device", "cpu", "--workers", "0", "--batch-size", "3")
    pixels = reference_pixels(_good_paths(demo)).astype(np.float64) / 255.0
    stats = doc["stats"]
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats["std"], pixels.std(axis=0), rtol=0, atol=1e-12)
    assert stats["min"] == pixels.min(axis=0).tolist() and stats["max"] == pixels.max(axis=0).tolist()
    assert doc["images"] == len(demo["good"]) and doc["pixels"] == pixels.shape[0]
    assert doc["files"] == len(demo["listed"])
    # every bad-file kind is listed with its reason, none counted
    bad = {os.path.relpath(b["path"], demo["root"]): b["reason"] for b in doc["bad_files"]}
    assert set(bad) == set(demo["bad"])
    for rel, prefix in demo["bad"].items():
        assert bad[rel].startswith(prefix), (rel, bad[rel])


def test_json_schema_is_complete_and_state_is_exact(capsys, demo):
    doc = run_json(capsys, str(demo["root"]), "--device", "cpu", "--workers", "0")
    assert set(doc) == TOP_KEYS
    assert doc["schema"] == JSON_SCHEMA == "gpustats.stats/1"
    assert doc["channels"] == ["R", "G", "B"]
    assert {"mean", "std", "var", "min", "max", "count", "scale", "ddof", "dtype"} <= set(doc["stats"])
    assert doc["device"] == "cpu" and doc["backend"] == "cpu" and doc["strategy"]
    assert doc["decode"] == "cpu" and doc["resumed_from"] is None
    assert {"mode", "resize", "center_crop", "max_pixels", "histogram", "covariance", "per_image", "ddof",
            "paths", "batch_size", "workers"} <= set(doc["options"])
    state = ChannelStats.from_dict(doc["state"])
    assert ChannelStats.from_dict(json.loads(state.to_json())) == state
    assert doc["normalize"] == {"mean": doc["stats"]["mean"], "std": doc["stats"]["std"]}
    assert doc["elapsed_s"] > 0 and doc["images_per_s"] > 0


def test_batch_split_and_workers_do_not_change_the_state(capsys, demo):
    one = run_json(capsys, str(demo["root"]), "--device", "cpu", "--workers", "0", "--batch-size", "1")
    two = run_json(capsys, str(demo["root"]), "--device", "cpu", "--workers", "2", "--batch-size", "5")
    assert one["state"] == two["state"] and one["bad_files"] == two["bad_files"]


def test_compute_stats_of_a_folder_equals_the_command_bit_for_bit(capsys, demo):
    from gpustats import compute_stats

    flags = ["--histogram", "--covariance", "--per-image", "--batch-size", "3"]
    doc = run_json(capsys, str(demo["root"]), "--device", "cpu", "--workers", "2", *flags)
    got = compute_stats(str(demo["root"]), device="cpu", workers=0, batch_size=5, histogram=True, covariance=True,
                        per_image=True, progress=False)
    assert json.loads(json.dumps(got.state.to_dict())) == doc["state"]
    assert [b["path"] for b in got.bad_files] == [b["path"] for b in doc["bad_files"]]
    assert got.images == doc["images"] and got.to_dict()["mean"] == doc["stats"]["mean"]


@pytest.mark.parametrize("extra", [[], ["--histogram"], ["--per-image"], ["--covariance"],
                                   ["--histogram", "--covariance", "--per-image"]])
def test_large_images_reduced_as_decoded_equal_the_in_memory_reduction(capsys, tmp_path, extra):
    # images of 90,000+ values are reduced one by one as they are decoded, small ones per batch
    rng = np.random.default_rng(12)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in
              [(150, 200, 3), (9, 7, 3), (160, 190, 3), (5, 5, 3), (151, 200, 3), (149, 201, 3)]]
    images[2][:20] = 255  # a saturated band
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / f"i{i}.png")
    docs = [run_json(capsys, str(tmp_path), "--device", "cpu", "--workers", w, "--batch-size", b, *extra)
            for w, b in (("0", "4"), ("2", "2"), ("0", "1"))]
    from gpustats import compute_stats

    memory = compute_stats([images], device="cpu", layout="HWC", histogram="--histogram" in extra,
                           covariance="--covariance" in extra, per_image="--per-image" in extra)
    assert docs[0]["state"] == docs[1]["state"] == docs[2]["state"] == json.loads(json.dumps(memory.state.to_dict()))
    px = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.int64)
    exact_mean = [int(t) / (len(px) * 255) for t in px.sum(0)]  # int / int: correctly rounded
    np.testing.assert_allclose(docs[0]["stats"]["mean"], exact_mean, rtol=1e-15)


def test_mixed_sizes_and_grayscale_conversion(capsys, mixed):
    files = list_images([mixed])
    for extra in ([], ["--per-image"]):  # one strip per batch, and the list of images
        doc = run_json(capsys, str(mixed), "--device", "cpu", "--workers", "0", "--batch-size", "4", *extra)
        pixels = reference_pixels(files).astype(np.float64) / 255.0
        np.testing.assert_allclose(doc["stats"]["mean"], pixels.mean(axis=0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(doc["stats"]["std"], pixels.std(axis=0), rtol=0, atol=1e-12)
        assert doc["images"] == 6


def test_per_image_of_equal_sizes_one_block_equals_one_image_per_batch(capsys, tmp_path):
    # CIFAR-like: small images of one size are reduced as one [N, H, W, C] block per batch
    rng = np.random.default_rng(11)
    images = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(7)]
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / f"e{i}.png")
    block = run_json(capsys, str(tmp_path), "--device", "cpu", "--workers", "0", "--batch-size", "4", "--per-image")
    single = run_json(capsys, str(tmp_path), "--device", "cpu", "--workers", "0", "--batch-size", "1", "--per-image")
    assert block["state"] == single["state"]
    rows = [im.reshape(-1, 3).T.astype(np.float64) / 255 for im in images]
    per = block["stats"]["per_image"]
    np.testing.assert_allclose(per["mean_of_means"], np.mean([r.mean(1) for r in rows], 0), rtol=1e-15)
    np.testing.assert_allclose(per["mean_of_stds"], np.mean([r.std(1) for r in rows], 0), rtol=1e-14)


def test_mode_L(capsys, mixed):
    doc = run_json(capsys, str(mixed), "--device", "cpu", "--workers", "0", "--mode", "L")
    pixels = reference_pixels(list_images([mixed]), mode="L").astype(np.float64) / 255.0
    assert doc["channels"] == ["L"] and doc["stats"]["channels"] == 1
    np.testing.assert_allclose(doc["stats"]["mean"], pixels.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(doc["stats"]["std"], pixels.std(axis=0), rtol=0, atol=1e-12)


def test_ddof1(capsys, mixed):
    doc = run_json(capsys, str(mixed), "--device", "cpu", "--workers", "0", "--ddof", "1")
    pixels = reference_pixels(list_images([mixed])).astype(np.float64) / 255.0
    np.testing.assert_allclose(doc["stats"]["std"], pixels.std(axis=0, ddof=1), rtol=0, atol=1e-12)
    assert doc["stats"]["ddof"] == 1


def test_histogram_covariance_per_image_match_numpy(capsys, mixed):
    files = list_images([mixed])
    args = (str(mixed), "--device", "cpu", "--workers", "0", "--batch-size", "4", "--histogram", "--covariance",
            "--per-image")
    doc = run_json(capsys, *args)
    raw = reference_pixels(files)
    pixels = raw.astype(np.float64) / 255.0
    hist = doc["stats"]["histogram"]
    assert hist["counts"] == [np.bincount(raw[:, c], minlength=256).tolist() for c in range(3)]
    for q in ("1", "50", "99"):
        np.testing.assert_allclose(hist["percentiles"][q], np.percentile(pixels, float(q), axis=0), atol=1e-12)
    assert hist["saturated_low"] == (raw == 0).mean(axis=0).tolist()
    cov = doc["stats"]["covariance"]
    np.testing.assert_allclose(cov["cov"], np.cov(pixels.T, ddof=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov["corr"], np.corrcoef(pixels.T), rtol=0, atol=1e-12)
    per_image = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255.0 for p in files]
    per = doc["stats"]["per_image"]
    assert per["images"] == len(files)
    np.testing.assert_allclose(per["mean_of_means"], np.mean([a.mean(0) for a in per_image], axis=0), atol=1e-12)
    np.testing.assert_allclose(per["mean_of_stds_ddof1"],  # a 1-pixel image has no ddof-1 std: left out
                               np.mean([a.std(0, ddof=1) for a in per_image if len(a) > 1], axis=0), atol=1e-12)
    assert per["images_per_channel_ddof1"] == [sum(len(a) > 1 for a in per_image)] * 3
    rc, table, err = run_main(capsys, "stats", *args, "--quiet")
    assert rc == 0, err
    for word in ("percentiles", "p99", "saturated at 255", "covariance", "correlation", "PCA eigenvalues",
                 "per image", "mean of stds dd1", "transforms.Normalize("):
        assert word in table, word


def test_resize_and_center_crop_are_applied(capsys, mixed):
    from gpustats.sources import decode_image

    doc = run_json(capsys, str(mixed), "--device", "cpu", "--workers", "0", "--resize", "6", "--center-crop", "5")
    arrays = [decode_image(p, resize=6, center_crop=5) for p in list_images([mixed])]
    pixels = np.concatenate([a.reshape(-1, 3) for a in arrays]).astype(np.float64) / 255.0
    assert doc["pixels"] == 6 * 25
    np.testing.assert_allclose(doc["stats"]["mean"], pixels.mean(axis=0), rtol=0, atol=1e-12)


def test_max_pixels_reports_large_files_bad(capsys, mixed):
    doc = run_json(capsys, str(mixed), "--device", "cpu", "--workers", "0", "--max-pixels", "60")
    bad = {Path(b["path"]).name: b["reason"] for b in doc["bad_files"]}
    assert set(bad) == {"m2.png", "m3.png"}  # 17x23 and 8x8 pixels are more than 60
    assert all(r.startswith("too large") for r in bad.values())


def test_many_tiny_images(capsys, tmp_path):
    paths = make_tiny_folder(tmp_path / "tiny", 3000)
    doc = run_json(capsys, str(tmp_path / "tiny"), "--device", "cpu", "--workers", "2", "--batch-size", "256")
    pixels = np.concatenate([tiny_array(i).reshape(-1, 3) for i in range(len(paths))]).astype(np.float64) / 255.0
    assert doc["images"] == 3000 and doc["pixels"] == 3000 * 64 and doc["bad_files"] == []
    np.testing.assert_allclose(doc["stats"]["mean"], pixels.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(doc["stats"]["std"], pixels.std(axis=0), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------- formats
def test_python_format_parses_and_matches(capsys, demo):
    doc = run_json(capsys, str(demo["root"]), "--device", "cpu", "--workers", "0")
    rc, out, err = run_main(capsys, "stats", str(demo["root"]), "--device", "cpu", "--workers", "0",
                            "--format", "python", "--quiet")
    assert rc == 0, err
    line = out.strip()
    assert "\n" not in line and line.startswith("transforms.Normalize(")
    call = ast.parse(line, mode="eval").body
    assert isinstance(call, ast.Call) and ast.unparse(call.func) == "transforms.Normalize"
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    assert kw["mean"] == doc["stats"]["mean"] and kw["std"] == doc["stats"]["std"]  # full precision


def test_output_file(capsys, tmp_path, mixed):
    target = tmp_path / "out.json"
    rc, out, err = run_main(capsys, "stats", str(mixed), "--device", "cpu", "--workers", "0", "--format", "json",
                            "--output", str(target), "--quiet")
    assert rc == 0 and out == ""
    assert json.loads(target.read_text())["schema"] == JSON_SCHEMA


def test_output_to_a_device_writes_through_it(capsys, mixed):
    import stat

    rc, out, err = run_main(capsys, "stats", str(mixed), "--workers", "0", "--output", os.devnull, "--quiet")
    assert rc == 0 and out == ""
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)  # still the device, not replaced by a file


def test_table_shows_counts_bad_files_speed_and_device(capsys, demo):
    rc, out, err = run_main(capsys, "stats", str(demo["root"]), "--workers", "0", "--quiet")
    assert rc == 0, err
    assert f"{len(demo['good'])} images" in out and "pixels per channel" in out
    assert "bad files (3" in out and "not_an_image.jpg: not an image" in out
    assert "images/s" in out and "MB/s" in out
    from gpustats.backends import cuda_unavailable_reason

    if cuda_unavailable_reason() is None:  # a usable GPU: device auto chose it
        assert "device: cuda" in out and "GPU not used:" not in out
    else:  # device auto chose the CPU: the reason is shown
        assert "device: cpu" in out and "GPU not used:" in out
    for name in ("mean", "std (ddof=0)", "min", "max"):
        assert name in out


# ---------------------------------------------------------------------------------- failures
def test_no_images_and_all_bad(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, err = run_main(capsys, "stats", str(empty))
    assert rc == 1 and "no images found" in err and out == ""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_text("no")
    (bad / "b.png").write_bytes(b"")
    rc, out, err = run_main(capsys, "stats", str(bad), "--quiet")
    assert rc == 1 and "none of the 2 files could be decoded" in err and err.count("\n") == 1
    rc, out, err = run_main(capsys, "stats", str(tmp_path / "missing"))
    assert rc == 1 and err.strip() == f"gpustats: error: path does not exist: {str(tmp_path / 'missing')!r}"


def test_unusable_device_is_one_line(capsys, mixed):
    import torch

    # no GPU: cuda itself; with GPUs: the first index past the last one
    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    rc, out, err = run_main(capsys, "stats", str(mixed), "--device", device)
    assert rc == 1 and err.startswith(f"gpustats: error: device={device!r}") and err.count("\n") == 1


def test_strict_exits_1_naming_the_first_bad_file(demo):
    proc = run_cli("stats", str(demo["root"]), "--strict", "--workers", "0", "--device", "cpu")
    first_bad = sorted(demo["bad"])[0]
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.strip().endswith("(strict)") and first_bad in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_usage_errors_exit_2(capsys, demo):
    proc = run_cli("stats", str(demo["root"]), "--batch-size", "0")
    assert proc.returncode == 2, proc.stderr
    assert "usage:" in proc.stderr and "--batch-size" in proc.stderr and "Traceback" not in proc.stderr
    for args in (["stats"], ["stats", "x", "--device", "gpu"], ["nonsense"], ["stats", "x", "--format", "csv"],
                 ["stats", "x", "--checkpoint-every", "-1"], ["stats", "x", "--mode", "RGBA"]):
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 2, args
        assert "usage:" in capsys.readouterr().err


def test_entry_point_script(mixed):
    script = shutil.which("gpustats", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the gpustats console script is not installed next to this python")
    proc = subprocess.run([script, "stats", str(mixed), "--format", "python", "--quiet"], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("transforms.Normalize(mean=[")


def test_demo_runs_and_prints_normalize_and_forum_comparison():
    """On a core install (the README's first command installs no extras)."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "_core_only.py"), "demo"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "transforms.Normalize(mean=[" in out and "forum recipe" in out and "why they differ" in out
    assert "bad files (3" in out
    # it ends with gpustats' own paste-ready line (not the forum recipe's) and the command for your folder
    last = [line for line in out.splitlines() if line.strip()][-2:]
    table_line = [line for line in out.splitlines() if line.startswith("transforms.Normalize(")][0]
    assert last[0] == table_line and "<-" not in last[0]
    assert last[1].strip() == "on your own images:  gpustats stats /path/to/train --format python"


def test_per_image_recipe_is_the_per_image_average(demo):
    from gpustats.demo import per_image_recipe

    mean, std, images = per_image_recipe(_good_paths(demo))
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255.0
              for p in _good_paths(demo)]
    assert images == len(arrays)
    np.testing.assert_allclose(mean, np.mean([a.mean(0) for a in arrays], axis=0), atol=1e-6)
    np.testing.assert_allclose(std, np.mean([a.std(0, ddof=1) for a in arrays], axis=0), atol=1e-6)


def test_bench_is_registered_and_imported_lazily():
    from gpustats.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"stats", "demo", "bench"} <= set(sub.choices)
    code = ("import sys, contextlib, io; from gpustats.cli import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()): main(['--help'])\n"
            "print(sorted(m for m in ('gpustats.benchmark', 'torch', 'numba', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    # --help (and parsing) imports neither the benchmarks nor torch, numba or numpy: it answers at once
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
