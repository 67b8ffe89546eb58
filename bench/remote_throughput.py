"""Shards in an object store against the same shards on local disk, in the same run (issue 28's target).

The JPEG corpus of ``folder_throughput.py`` (500x375 q90 photo-like JPEGs) is cut, in the folder's
listing order, into uncompressed WebDataset-style tar shards of ``--per-shard`` images. The same
shards are served by moto's S3 (``s3://``, in a server process of its own on a loopback port, as
``moto_server`` runs it) and by Python's ``http.server`` with byte ranges (``http://``, the tests'
server, also in its own process). Round-robin over ``--rounds`` rounds (a load change on a shared
machine hits every source alike), each source runs as ``gpustats stats 'PREFIX/shard-{000000..N}.tar'
--workers W -q --format json --device cpu`` with the Pillow decoder; the median images/s (by the
run's own ``elapsed_s``, listing included) is compared with the local shards', as the ratio of
medians and the median of same-round ratios; the CPU seconds per image (the run, its decode workers
and the server process) say the same with less noise from other programs on a shared machine.
Every run's state must equal the local one bit for bit.

Local tars are indexed and their members read by the decode workers; remote ones are streamed
(sources.remote: ranges of 8 MiB, 4 in flight) and their members handed to the workers. The servers
run on the same 2 cores as gpustats, so this measures gpustats' own overhead over a local server
(the server's CPU included), not a network:

    python bench/remote_throughput.py --json bench/results/cpu-2core-<date>-remote.json
    python bench/remote_throughput.py --files 500 --rounds 1          # a quick look

Target (issue 28): s3:// within 0.8 of the local shards.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from folder_throughput import corpus, write_results  # noqa: E402  (same folder)

SOURCES = ("local", "s3", "http")
BUCKET = "bench-shards"


def build(files: int, per_shard: int) -> tuple[Path, int]:
    from gpustats.sources import list_images

    folder = corpus("jpeg", files)
    out = folder.parent / f"{folder.name}-shards-{per_shard}"
    listed = [(p, p.relative_to(folder).as_posix()) for p in list_images([folder])]
    shards = (len(listed) + per_shard - 1) // per_shard
    if not (out / ".complete").exists():
        out.mkdir(parents=True, exist_ok=True)
        for k in range(shards):
            with tarfile.open(out / f"shard-{k:06d}.tar", "w") as tar:
                for path, name in listed[k * per_shard:(k + 1) * per_shard]:
                    tar.add(path, arcname=name)
        (out / ".complete").write_text("ok\n")
    return out, shards


def serve(kind: str, root: Path, port_file: Path) -> None:
    """The server process: moto's S3 (the shards uploaded to BUCKET) or the tests' range HTTP server."""
    if kind == "http":
        sys.path.insert(0, str(HERE.parent / "tests"))
        from _servers import HttpServer

        server = HttpServer(root)
        server.thread.start()
        port_file.write_text(server.url)
    else:
        import threading

        import boto3
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log(self, *args) -> None:
                pass

        httpd = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=True,
                            request_handler=Quiet)
        url = f"http://127.0.0.1:{httpd.server_port}"
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench",
                              aws_secret_access_key="bench")
        client.create_bucket(Bucket=BUCKET)
        for path in sorted(root.glob("shard-*.tar")):
            client.upload_fileobj(io.BytesIO(path.read_bytes()), BUCKET, path.name)
        port_file.write_text(url)
    while True:
        time.sleep(3600)


def start(kind: str, root: Path) -> tuple[subprocess.Popen, str]:
    port_file = root / f".{kind}-url"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(root), str(port_file)])
    deadline = time.monotonic() + 300
    while not (port_file.exists() and port_file.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {kind} server did not start")
        time.sleep(0.2)
    return proc, port_file.read_text()


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gpustats_run(source: str, workers: int, env: dict, server: int | None) -> tuple[dict, str]:
    """One ``gpustats stats`` run: its figures (CPU seconds of the run and its decode workers, and of the
    server process when there is one), and its exact state (JSON text) to compare."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = _cpu_s(server) if server else 0.0
    cmd = [sys.executable, "-m", "gpustats", "stats", source, "--workers", str(workers), "-q", "--format", "json",
           "--device", "cpu", "--histogram"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    doc = json.loads(proc.stdout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run and its decode workers, reaped
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    server_cpu = _cpu_s(server) - server_before if server else 0.0
    return ({"images": doc["images"], "elapsed_s": doc["elapsed_s"], "wall_s": wall, "bytes": doc["bytes"],
             "images_per_s": doc["images"] / doc["elapsed_s"], "images_per_s_process": doc["images"] / wall,
             "cpu_s": cpu, "server_cpu_s": server_cpu}, json.dumps(doc["state"], sort_keys=True))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--per-shard", type=int, default=250)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sources", default=",".join(SOURCES), help="comma-separated; local is always run")
    parser.add_argument("--json", default=None)
    parser.add_argument("--serve", nargs=3, metavar=("KIND", "ROOT", "URL_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], Path(args.serve[1]), Path(args.serve[2]))
        return 0
    root, shards = build(args.files, args.per_shard)
    names = ["local"] + [n for n in args.sources.split(",") if n != "local"]
    servers = {name: start(name, root) for name in names if name != "local"}
    pattern = f"shard-{{000000..{shards - 1:06d}}}.tar"
    where = {"local": str(root / pattern), "s3": f"s3://{BUCKET}/{pattern}"}
    if "http" in servers:
        where["http"] = f"{servers['http'][1]}/{pattern}"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env.update(GPUSTATS_JPEG_DECODER="pillow", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
               AWS_DEFAULT_REGION="us-east-1")
    if "s3" in servers:
        env["AWS_ENDPOINT_URL_S3"] = servers["s3"][1]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    states: dict[str, list[bool]] = {name: [] for name in names}
    load_before = list(os.getloadavg())
    try:
        for r in range(args.rounds):
            reference = None
            for name in names:
                server = servers[name][0].pid if name in servers else None
                result, state = gpustats_run(where[name], args.workers, env, server)
                reference = state if name == "local" else reference
                states[name].append(state == reference)
                runs[name].append(result)
                print(f"  round {r + 1}: {name:6s} {result['images_per_s']:7.1f} images/s", file=sys.stderr, flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    medians = {name: statistics.median(x["images_per_s"] for x in runs[name]) for name in names}
    paired = {name: statistics.median(a["images_per_s"] / f["images_per_s"] for a, f in zip(runs[name], runs["local"]))
              for name in names}
    cpu = {name: statistics.median((x["cpu_s"] + x["server_cpu_s"]) / x["images"] for x in runs[name]) for name in names}
    row = {"files": args.files, "per_shard": args.per_shard, "shards": shards, "workers": args.workers,
           "rounds": args.rounds, "load_average_before": load_before, "load_average_after": list(os.getloadavg()),
           "images_per_s": medians, "vs_local": {n: medians[n] / medians["local"] for n in names},
           "vs_local_same_round": paired, "cpu_s_per_image_with_server": cpu,
           "local_cpu_over_source_cpu": {n: cpu["local"] / cpu[n] for n in names}, "state_equals_local": {n: all(states[n]) for n in names}, "runs": runs,
           "note": "servers on the same machine (loopback), sharing its 2 cores with gpustats and with other work"}
    for name in names:
        print(f"{name:6s} {medians[name]:7.1f} images/s: {row['vs_local'][name]:.2f} of the local shards (medians), "
              f"{paired[name]:.2f} (median of same-round ratios); {1000 * cpu[name]:.2f} CPU ms/image with the server "
              f"({row['local_cpu_over_source_cpu'][name]:.2f} of local's efficiency); state equal to local: "
              f"{all(states[name])}")
    write_results(args.json, "gpustats-remote-bench/1", row=row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
