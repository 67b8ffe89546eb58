"""Archives against the same files in a folder, in the same run: the archive sources' speed target.

The JPEG corpus of ``folder_throughput.py`` (500x375 q90 photo-like JPEGs) is written, in the
folder's listing order, into an uncompressed tar, a Parquet file in the Hugging Face layout (a
struct column ``image`` of ``bytes`` and ``path``, row groups of 100 rows, as ``datasets``
writes image data), and for information a ``.tar.gz`` and a zip. Round-robin over ``--rounds``
rounds (a load change on a shared machine hits every source alike), each source runs as
``gpustats stats SRC --workers N -q --format json --device cpu`` with the Pillow decoder; the
median images/s (by the run's own ``elapsed_s``, listing included) is compared with the folder's,
as the ratio of medians and as the median of the same-round ratios; the CPU seconds per image
(the run and its decode workers, from ``getrusage``) say the same with less noise from other
programs on a shared machine:

    python bench/archive_throughput.py --json bench/results/cpu-2core-<date>-archives.json
    python bench/archive_throughput.py --files 300 --rounds 1          # a quick look

Target (issue 18): tar and Parquet each within 0.9 of the folder.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tarfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from folder_throughput import corpus, gpustats_run, write_results  # noqa: E402  (same folder)

SOURCES = ("folder", "tar", "parquet", "tar.gz", "zip")


def build(files: int) -> dict[str, Path]:
    from gpustats.sources import list_images

    folder = corpus("jpeg", files)
    out = folder.parent / f"{folder.name}-archives"
    done = out / ".complete"
    paths = {"folder": folder, "tar": out / "corpus.tar", "parquet": out / "corpus.parquet",
             "tar.gz": out / "corpus.tar.gz", "zip": out / "corpus.zip"}
    if done.exists():
        return paths
    out.mkdir(parents=True, exist_ok=True)
    listed = [(p, p.relative_to(folder).as_posix()) for p in list_images([folder])]
    for kind, mode in (("tar", "w"), ("tar.gz", "w:gz")):
        with tarfile.open(paths[kind], mode) as tar:
            for path, name in listed:
                tar.add(path, arcname=name)
    with zipfile.ZipFile(paths["zip"], "w") as archive:  # JPEGs: stored, as zip tools leave them
        for path, name in listed:
            archive.write(path, name)
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.array([{"bytes": path.read_bytes(), "path": name} for path, name in listed],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": image, "label": list(range(len(listed)))}), paths["parquet"], row_group_size=100)
    done.write_text("ok\n")
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sources", default=",".join(SOURCES), help="comma-separated; folder is always run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    paths = build(args.files)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["GPUSTATS_JPEG_DECODER"] = "pillow"
    names = ["folder"] + [n for n in args.sources.split(",") if n != "folder"]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    load_before = list(os.getloadavg())
    for r in range(args.rounds):
        for name in names:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            result = gpustats_run(paths[name], args.workers, [], env)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run and its decode workers, reaped
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            result["cpu_s_per_image"] = cpu / result["images"]
            runs[name].append(result)
            print(f"  round {r + 1}: {name:8s} {result['images_per_s']:7.1f} images/s, "
                  f"{1000 * result['cpu_s_per_image']:.2f} CPU ms/image", file=sys.stderr, flush=True)
    medians = {name: statistics.median(x["images_per_s"] for x in runs[name]) for name in names}
    paired = {name: statistics.median(a["images_per_s"] / f["images_per_s"] for a, f in zip(runs[name], runs["folder"]))
              for name in names}
    cpu = {name: statistics.median(x["cpu_s_per_image"] for x in runs[name]) for name in names}
    row = {"files": args.files, "workers": args.workers, "rounds": args.rounds, "load_average_before": load_before,
           "load_average_after": list(os.getloadavg()), "images_per_s": medians,
           "vs_folder": {n: medians[n] / medians["folder"] for n in names},
           "vs_folder_same_round": paired, "cpu_s_per_image": cpu,
           "folder_cpu_over_source_cpu": {n: cpu["folder"] / cpu[n] for n in names}, "runs": runs}
    for name in names:
        print(f"{name:8s} {medians[name]:7.1f} images/s: {row['vs_folder'][name]:.2f} of the folder (medians), "
              f"{paired[name]:.2f} (median of same-round ratios); {1000 * cpu[name]:.2f} CPU ms/image "
              f"({row['folder_cpu_over_source_cpu'][name]:.2f} of the folder's efficiency)")
    write_results(args.json, "gpustats-archive-bench/1", row=row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
