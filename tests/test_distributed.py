"""Merging states across torch.distributed ranks: gloo on the CPU with 2 and 3 real processes.

Every rank is a separate Python process (``tests/_dist_worker.py``) on 127.0.0.1 with a free
port; a launch that does not finish within its deadline is killed and FAILS the test (a hang
never blocks the suite). One launch per world size runs every scenario in one process group.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import _dist_worker as worker
from _fork_ranks import run_forked
from _once import shared_folder
from gpustats import ChannelStats, compute_stats
from gpustats import distributed as gdist

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: a launch still running after this many seconds is killed and fails (normally ~3 s; generous for loaded CI)
LAUNCH_TIMEOUT_S = float(os.environ.get("GPUSTATS_DIST_TEST_TIMEOUT", "90"))
SCENARIOS = list(worker.SCENARIOS)


# ---------------------------------------------------------------------------------- launching
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # stay on loopback whatever the hostname resolves to
    env.update(extra or {})
    return env


class Launch:
    """Processes started together; :meth:`wait` kills them all on a deadline or on the first failure."""

    def __init__(self, procs: list[subprocess.Popen], what: str):
        self.procs, self.what = procs, what
        self.deadline = time.monotonic() + LAUNCH_TIMEOUT_S

    def wait(self) -> list[tuple[int, str, str]]:
        failed = None
        while any(p.poll() is None for p in self.procs):
            bad = [p for p in self.procs if p.poll() not in (None, 0)]
            if bad or time.monotonic() > self.deadline:
                failed = "a process failed" if bad else f"timed out after {LAUNCH_TIMEOUT_S:.0f} s (hang)"
                for p in self.procs:
                    if p.poll() is None:
                        p.kill()
                break
            time.sleep(0.05)
        outs = []
        for p in self.procs:
            out, err = p.communicate(timeout=10)
            outs.append((p.returncode, out, err))
        if failed or any(rc != 0 for rc, _, _ in outs):
            detail = "\n".join(f"--- process {i} rc={rc}\n{out[-3000:]}\n{err[-3000:]}" for i, (rc, out, err) in enumerate(outs))
            pytest.fail(f"{self.what}: {failed or 'a process failed'}\n{detail}")
        return outs


def run_ranks(args: list[str], env: dict[str, str], cwd: Path, world: int = 2) -> list[tuple[int | None, str, str]]:
    """``gpustats ARGS`` once per rank (``RANK``/``LOCAL_RANK`` set), forked from one process that imported
    torch once (tests/_fork_ranks.py); each rank's ``(returncode, stdout, stderr)``. Every rank is killed if
    the run outlives the launch timeout (returncode None)."""
    jobs = [{"call": "gpustats.cli:main", "argv": args, "env": {"RANK": str(r), "LOCAL_RANK": str(r)}}
            for r in range(world)]
    return run_forked(jobs, env, cwd, LAUNCH_TIMEOUT_S)


def start_workers(world: int, out_dir: Path, scenarios: list[str], backend: str = "gloo") -> Launch:
    env = _env({"WORLD_SIZE": str(world), "GPUSTATS_TEST_BACKEND": backend})
    procs = []
    for rank in range(world):
        env_r = dict(env, RANK=str(rank), LOCAL_RANK=str(rank))
        procs.append(subprocess.Popen([sys.executable, str(HERE / "_dist_worker.py"), str(out_dir), *scenarios],
                                      env=env_r, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return Launch(procs, f"{world} {backend} ranks")


def read_results(out_dir: Path, world: int) -> list[dict]:
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world)]


def _launch_worlds(folder: Path) -> None:
    """Worlds 2 and 3 side by side: five ranks forked from one process (tests/_fork_ranks.py)."""
    jobs = []
    for world in (2, 3):
        (folder / f"world{world}").mkdir()
        port = str(_free_port())
        jobs += [{"call": "_dist_worker:main", "argv": [str(folder / f"world{world}"), *SCENARIOS],
                  "env": {"WORLD_SIZE": str(world), "RANK": str(r), "LOCAL_RANK": str(r), "MASTER_PORT": port,
                          "GPUSTATS_TEST_BACKEND": "gloo"}} for r in range(world)]
    outs = run_forked(jobs, _env(), REPO, LAUNCH_TIMEOUT_S)
    if any(rc != 0 for rc, _, _ in outs):
        detail = "\n".join(f"--- {job['env']} rc={rc}\n{out[-3000:]}\n{err[-3000:]}" for job, (rc, out, err) in zip(jobs, outs))
        pytest.fail(f"the ranks of worlds 2 and 3 failed or hung (rc None: killed at {LAUNCH_TIMEOUT_S:.0f} s)\n{detail}")


@pytest.fixture(scope="module")
def runs(request) -> dict[int, list[dict]]:
    """{world: [rank 0 results, rank 1 results, ...]} for worlds 2 and 3, launched side by side, once per
    session (tests/_once.py)."""
    folder = shared_folder(request, "distributed_worlds", _launch_worlds)
    return {world: read_results(folder / f"world{world}", world) for world in (2, 3)}


# ---------------------------------------------------------------------------------- references
def reference_state(name: str) -> ChannelStats:
    batches, _ = worker.scenario_batches(name, 1)
    return compute_stats(batches, device="cpu", distributed=False, **worker.SCENARIOS[name]).state


def assert_close_states(got: ChannelStats, want: ChannelStats, rtol: float = 1e-12) -> None:
    """Counts and histograms exactly; float fields within ``rtol`` (relative to each array's magnitude)."""
    assert (got.dtype, got.scale, got.channels) == (want.dtype, want.scale, want.channels)
    np.testing.assert_array_equal(got.count, want.count)
    np.testing.assert_array_equal(got.nonfinite, want.nonfinite)
    assert got.isum == want.isum and got.isumsq == want.isumsq and got.icross == want.icross
    assert (got.hist is None) == (want.hist is None)
    if want.hist is not None:
        np.testing.assert_array_equal(got.hist, want.hist)
        assert got.hist_range == want.hist_range
    pairs = [("mean", got.mean, want.mean), ("m2", got.m2, want.m2), ("min", got.min, want.min), ("max", got.max, want.max)]
    if want.comoment is not None:
        pairs.append(("comoment", got.comoment, want.comoment))
    assert (got.images is None) == (want.images is None)
    if want.images is not None:
        assert got.images.images == want.images.images
        pairs += [("images.mean", got.images.mean.reshape(3, -1), want.images.mean.reshape(3, -1)),
                  ("images.m2", got.images.m2.reshape(3, -1), want.images.m2.reshape(3, -1))]
    for label, g, w in pairs:
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * float(np.max(np.abs(w), initial=0.0)), err_msg=label)


def assert_per_image_matches(results: list[dict], name: str) -> None:
    """The merged result's ``Stats.per_image`` (rows per statistic, one value per channel) on every rank."""
    batches, _ = worker.scenario_batches(name, 1)
    want = compute_stats(batches, device="cpu", distributed=False, **worker.SCENARIOS[name]).to_dict()["per_image"]
    for r in results:
        got = r[name]["per_image"]
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-14, err_msg=key)


def states_of(results: list[dict], name: str) -> list[ChannelStats]:
    errors = [r[name]["error"] for r in results if r[name]["error"]]
    assert not errors, errors
    return [ChannelStats.from_json(r[name]["state"]) for r in results]


# ---------------------------------------------------------------------------------- multi-process
@pytest.mark.parametrize("world", [2, 3])
def test_uint8_is_bitwise_equal_to_one_process(runs, world):
    """Histogram + covariance on uneven shards: every rank holds exactly the single-process state."""
    want = reference_state("uint8").to_json()
    for rank, r in enumerate(runs[world]):
        assert r["uint8"]["state"] == want, f"rank {rank}"


@pytest.mark.parametrize("world", [2, 3])
def test_uint8_per_image_exact_except_image_aggregates(runs, world):
    """Integer fields bitwise; the per-image aggregates are float Chan merges, so within 1e-12."""
    want = reference_state("uint8_per_image")
    states = states_of(runs[world], "uint8_per_image")
    for state in states:
        got_d, want_d = state.to_dict(), want.to_dict()
        got_d.pop("images"), want_d.pop("images")
        assert got_d == want_d
        assert_close_states(state, want)
    assert len({s.to_json() for s in states}) == 1  # all ranks bitwise identical to each other
    assert_per_image_matches(runs[world], "uint8_per_image")


@pytest.mark.parametrize("world", [2, 3])
def test_float_matches_one_process_within_1e12(runs, world):
    want = reference_state("float")
    states = states_of(runs[world], "float")
    for state in states:
        assert_close_states(state, want)
    assert want.hist is not None and want.comoment is not None and want.images is not None
    assert len({s.to_json() for s in states}) == 1
    assert_per_image_matches(runs[world], "float")


@pytest.mark.parametrize("world", [2, 3])
def test_accumulator_result_distributed_true(runs, world):
    want = reference_state("accumulator")
    for state in states_of(runs[world], "accumulator"):
        assert_close_states(state, want)


@pytest.mark.parametrize("world", [2, 3])
def test_rank_with_zero_batches(runs, world):
    """compute_stats(distributed="auto") on a rank whose shard is empty still gets the full result."""
    assert worker.scenario_batches("empty_rank", world)[1].count(1) == 0
    want = reference_state("empty_rank").to_json()
    assert [r["empty_rank"]["state"] for r in runs[world]] == [want] * world


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_empty_raises_on_every_rank(runs, world):
    errors = [r["all_empty"]["error"] for r in runs[world]]
    assert all(e and e.startswith("InputError") and "no data" in e for e in errors), errors


@pytest.mark.parametrize("world", [2, 3])
def test_channel_mismatch_raises_on_every_rank(runs, world):
    errors = [r["channels_mismatch"]["error"] for r in runs[world]]
    assert all(e and e.startswith("StatsError") and "rank 1 has 4 channels, rank 0 has 3" in e for e in errors), errors
    assert len(set(errors)) == 1  # the same message everywhere


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and torch.distributed.is_nccl_available()),
                    reason="needs CUDA and NCCL")
def test_nccl_one_gpu(tmp_path):
    """One rank on NCCL: header and payload travel as CUDA tensors and come back intact."""
    start_workers(1, tmp_path, ["uint8", "float"], backend="nccl").wait()
    (result,) = read_results(tmp_path, 1)
    assert result["uint8"]["state"] == reference_state("uint8").to_json()
    assert_close_states(ChannelStats.from_json(result["float"]["state"]), reference_state("float"))


def test_forked_ranks_are_killed_when_one_fails_and_the_others_wait_or_at_the_timeout(tmp_path):
    """The launcher of the forked ranks cannot hang the suite: a rank still waiting GRACE_S after another
    failed is killed (-9), and everything is killed at the timeout (None)."""
    def rank(seconds, status):
        return {"call": "_fork_ranks:sleep_then_exit", "argv": [str(seconds), str(status)], "env": {}}

    env = dict(_env(), GPUSTATS_RANK_GRACE_S="0.5")
    started = time.monotonic()
    outs = run_forked([rank(0, 3), rank(600, 0), rank(0, 0)], env, tmp_path, 60, preload=())
    assert [rc for rc, _, _ in outs] == [3, -9, 0]
    outs = run_forked([rank(600, 0), rank(600, 0)], env, tmp_path, 1.5, preload=())
    assert [rc for rc, _, _ in outs] == [None, None]
    assert time.monotonic() - started < 30


# ---------------------------------------------------------------------------------- CLI under torchrun
def test_cli_under_torchrun_matches_single_process(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(7)
    data = tmp_path / "imgs"
    (data / "sub").mkdir(parents=True)
    for i in range(7):  # 7 files over 2 ranks: uneven shards, variable sizes
        h, w = int(rng.integers(5, 20)), int(rng.integers(5, 20))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(data / ("sub" if i % 2 else "") / f"im{i}.png")
    (data / "broken.png").write_bytes(b"not an image")  # skipped and reported, by whichever rank owns it
    base = [sys.executable]
    cmd = ["-m", "gpustats", "stats", str(data), "--format", "json", "--device", "cpu", "--histogram", "--covariance"]
    env = _env()
    single = subprocess.run(base + cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert single.returncode == 0, single.stderr
    torchrun = base + ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                       "--master-port", env["MASTER_PORT"]] + cmd
    launch = Launch([subprocess.Popen(torchrun, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)], "torchrun --nproc-per-node 2")
    ((rc, out, err),) = launch.wait()
    one, two = json.loads(single.stdout), json.loads(out)  # only rank 0 prints: one JSON document
    assert two["state"] == one["state"]  # the exact state: bitwise for 8-bit images
    assert two["stats"] == one["stats"]
    for key in ("images", "pixels", "files", "bytes", "bad_files"):
        assert two[key] == one[key], key
    assert two["images"] == 7 and len(two["bad_files"]) == 1


def test_cli_rank_failure_reaches_every_rank_instead_of_a_hang(tmp_path):
    """--strict on a bad file that only rank 1 owns: both ranks exit 1 promptly, rank 0 names rank 1 (and only
    rank 0 prints: rank 1 printed the same error too)."""
    from PIL import Image

    data = tmp_path / "imgs"
    data.mkdir()
    for name in ("a.png", "c.png"):  # sorted: a (rank 0), b (rank 1), c (rank 0)
        Image.new("RGB", (4, 4), (10, 20, 30)).save(data / name)
    (data / "b.png").write_bytes(b"not an image")
    env = _env({"WORLD_SIZE": "2"})
    outs = run_ranks(["stats", str(data), "--device", "cpu", "--strict", "--quiet"], env, tmp_path)
    assert [rc for rc, _, _ in outs] == [1, 1], outs
    assert "rank 1 failed: bad file" in outs[0][2] and "b.png" in outs[0][2]
    assert outs[0][2].count("gpustats: error:") == 1 and "error" not in outs[1][2], outs


# ---------------------------------------------------------------------------------- in-process units
def test_without_process_group_returns_state_unchanged():
    state = ChannelStats.from_integer_sums([4], [10], [30], [1], [4], dtype="uint8", scale=255.0)
    assert gdist.all_reduce_stats(state) is state
    assert gdist.rank_and_world() == (0, 1) and gdist.is_main_process()


def test_init_from_env_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert gdist.init_from_env() == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert gdist.init_from_env() == (0, 1)
    assert not torch.distributed.is_initialized()


def _headers(*states: ChannelStats) -> list[dict]:
    return [dict(zip(gdist.HEADER_FIELDS, gdist._header(s, 1))) for s in states]


def _u8(channels=3, scale=255.0, **kw) -> ChannelStats:
    return ChannelStats.from_integer_sums([4] * channels, [10] * channels, [30] * channels, [1] * channels,
                                          [4] * channels, dtype="uint8", scale=scale, **kw)


def _f32(channels=3, **kw) -> ChannelStats:
    return ChannelStats.from_moments([4] * channels, [1.0] * channels, [2.0] * channels, [0.0] * channels,
                                     [3.0] * channels, dtype="float32", **kw)


@pytest.mark.parametrize("states, message", [
    ((_u8(), _u8(4)), "rank 1 has 4 channels, rank 0 has 3"),
    ((ChannelStats.empty(), _u8(), _u8(1)), "rank 2 has 1 channels, rank 1 has 3"),  # empty rank 0 skipped
    ((_u8(), _f32()), "rank 1 has float data (float32), rank 0 has integer data (uint8)"),
    ((_u8(), _u8(scale=1.0)), "rank 1 uses scale 1, rank 0 uses scale 255"),
    ((_u8(), _u8(hist=np.zeros((3, 256)), hist_range=(0, 256))), "rank 1 has a histogram, rank 0 has none"),
    ((_f32(hist=np.zeros((3, 8)), hist_range=(0, 1)), _f32(hist=np.zeros((3, 16)), hist_range=(0, 1))),
     "rank 1 has 16 histogram bins, rank 0 has 8"),
    ((_f32(hist=np.zeros((3, 8)), hist_range=(0, 1)), _f32(hist=np.zeros((3, 8)), hist_range=(0, 2))),
     "rank 1 has histogram range [0, 2], rank 0 has [0, 1]"),
    ((_f32(comoment=np.eye(3)), _f32()), "rank 0 has covariance, rank 1 has none"),
])
def test_header_disagreements_are_named(states, message):
    problems = gdist._disagreements(_headers(*states))
    assert message in problems, problems


def test_header_agreement_and_empty_ranks():
    assert gdist._disagreements(_headers(_u8(), ChannelStats.empty(), _u8())) == []
    assert gdist._disagreements(_headers(ChannelStats.empty(), ChannelStats.empty())) == []
    # uint8 and uint16 are both exact integer states with the same scale: merge allows it
    assert gdist._disagreements(_headers(_u8(), ChannelStats.from_integer_sums(
        [1] * 3, [1] * 3, [1] * 3, [1] * 3, [1] * 3, dtype="uint16", scale=255.0))) == []


def test_foreign_header_is_rejected():
    headers = _headers(_u8(), _u8())
    headers[1]["magic"] = 0
    assert "rank 1 sent a header of another gpustats version" in gdist._disagreements(headers)[0]

