"""One rank of the multi-process tests in ``test_distributed.py`` (run as a script, one process per rank).

Usage: ``python tests/_dist_worker.py OUT_DIR SCENARIO...`` with ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT`` in the environment (and ``GPUSTATS_TEST_BACKEND`` = gloo | nccl).
Runs every scenario in one process group and writes ``OUT_DIR/rank{RANK}.json``:
``{scenario: {"state": <ChannelStats JSON> | null, "error": "<Type>: <message>" | null}}``.

The data of each scenario is made by :func:`scenario_batches` from a fixed seed, so the test
process builds the identical global batch list for its single-process reference.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import numpy as np
import torch

#: scenario -> compute_stats options
SCENARIOS = {
    "uint8": dict(histogram=True, covariance=True),
    "uint8_per_image": dict(histogram=True, per_image=True),
    "float": dict(histogram=True, hist_bins=64, hist_range=(990.0, 1010.0), clip=True, covariance=True, per_image=True),
    "empty_rank": dict(histogram=True),
    "all_empty": dict(),
    "channels_mismatch": dict(),
    "accumulator": dict(covariance=True),
}


def scenario_batches(name: str, world: int) -> tuple[list, list[int]]:
    """The global batch list of ``name`` and the rank each batch goes to (uneven shards)."""
    rng = np.random.default_rng(sum(map(ord, name)))
    sizes = [3, 1, 5, 2, 4, 1, 1, 6, 2, 3, 2]  # ragged batch sizes, 11 batches
    batches: list = []
    if name in ("uint8", "empty_rank", "channels_mismatch"):
        batches = [torch.from_numpy(rng.integers(0, 256, (n, 3, 7, 9), dtype=np.uint8)) for n in sizes]
    elif name == "uint8_per_image":  # lists of variable-size HWC images
        batches = [[rng.integers(0, 256, (int(rng.integers(5, 12)), int(rng.integers(5, 12)), 3), dtype=np.uint8)
                    for _ in range(n)] for n in sizes]
    elif name in ("float", "accumulator"):  # a large offset: the merge must not cancel
        batches = [torch.from_numpy((1000.0 + 3.0 * rng.standard_normal((n, 3, 6, 5))).astype(np.float32)) for n in sizes]
    elif name == "all_empty":
        batches = []
    else:
        raise KeyError(name)
    # uneven shards: rank 0 gets the first 6 batches, the other ranks share the last 5 in turn
    owners = [0] * 6 + [1 + i % (world - 1) if world > 1 else 0 for i in range(5)]
    owners = owners[: len(batches)]
    if name == "empty_rank":
        owners = [0 if o == 1 else o for o in owners]  # rank 1 sees no batch at all
    return batches, owners


def _run(name: str, rank: int, world: int) -> dict:
    from gpustats import Accumulator, compute_stats

    batches, owners = scenario_batches(name, world)
    mine = [b for b, owner in zip(batches, owners) if owner == rank]
    options = SCENARIOS[name]
    if name == "channels_mismatch" and rank == 1:
        mine = [torch.cat([b, b[:, :1]], dim=1) for b in mine]  # 4 channels on rank 1
    try:
        if name == "accumulator":
            acc = Accumulator(device="cpu", **options)
            for b in mine:
                acc.update(b)
            result = acc.result(distributed=True)
        else:
            result = compute_stats(mine, device="cpu", distributed="auto", **options)
        per_image = result.to_dict().get("per_image")  # Stats-level view: needs [3, C] image aggregates
        return {"state": result.state.to_json(), "per_image": per_image, "error": None}
    except Exception as exc:  # reported to the test, which checks every rank
        return {"state": None, "error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str]) -> int:
    import torch.distributed as dist

    out_dir, names = argv[0], argv[1:]
    backend = os.environ.get("GPUSTATS_TEST_BACKEND", "gloo")
    from gpustats.distributed import init_from_env, shutdown

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        rank, world = init_from_env(backend=backend, timeout=timedelta(seconds=60))
    else:  # one rank (the NCCL smoke test): init_from_env leaves a single process alone, make a group anyway
        if backend == "nccl":
            torch.cuda.set_device(0)
        dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=60))
        rank, world = dist.get_rank(), dist.get_world_size()
    results = {name: _run(name, rank, world) for name in names}
    tmp = os.path.join(out_dir, f"rank{rank}.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(results, fh)
    os.replace(tmp, os.path.join(out_dir, f"rank{rank}.json"))
    shutdown()
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
