"""The ranks of a multi-process test, forked from one process that imported torch once.

A rank of the distributed tests is a Python process that imports torch (about 2.5 s of CPU on the
2-core VM) and then works for a fraction of a second; the suite started a dozen of them. Here one
coordinator process imports torch, ``torch.distributed`` and gpustats, then forks the ranks. Each rank
is still its own process, with its own process group over TCP (gloo) and its own output, started
from a state in which nothing has run (no thread, no process group, numba not imported); only the
launch differs from ``torchrun``'s (test_distributed.py keeps one real ``torchrun`` launch).

Test side: :func:`run_forked`. Coordinator: ``python tests/_fork_ranks.py SPEC.json``.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

#: seconds the other ranks have to exit once one rank failed (a rank that then still waits is killed: -9)
GRACE_S = float(os.environ.get("GPUSTATS_RANK_GRACE_S", "20"))
#: what every rank uses, imported once by the coordinator
PRELOAD = ("torch", "torch.distributed", "numpy", "gpustats", "gpustats.cli", "gpustats.distributed", "gpustats.api")


def run_forked(jobs: list[dict], env: dict[str, str], cwd: Path, timeout: float,
               preload: tuple[str, ...] = PRELOAD) -> list[tuple[int | None, str, str]]:
    """Run each job ``{"call": "module:function", "argv": [...], "env": {...}}`` as a rank forked from one
    coordinator started with ``env`` in ``cwd``; a rank adds its job's ``env`` (e.g. ``RANK``) to it and
    returns ``function(argv)`` as its exit status. Returns each rank's ``(returncode, stdout, stderr)``;
    returncode None: the coordinator and its ranks were killed at ``timeout`` seconds (a hang); -9: the rank
    was killed :data:`GRACE_S` seconds after another rank failed."""
    folder = Path(tempfile.mkdtemp(prefix="gpustats-ranks-"))
    try:
        spec = folder / "spec.json"
        spec.write_text(json.dumps({"jobs": jobs, "folder": str(folder), "preload": list(preload)}))
        proc = subprocess.Popen([sys.executable, __file__, str(spec)], env=env, cwd=cwd, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        timed_out = False
        try:
            own, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the ranks too: they share the coordinator's session
            own, _ = proc.communicate()
            timed_out = True
        codes_file = folder / "codes.json"
        if not timed_out and not codes_file.exists():
            raise RuntimeError(f"the rank coordinator failed (exit {proc.returncode}):\n{own[-3000:]}")
        codes = json.loads(codes_file.read_text()) if codes_file.exists() else [None] * len(jobs)
        return [(code, _read(folder / f"{i}.out"), _read(folder / f"{i}.err")) for i, code in enumerate(codes)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _rank(job: dict, out: str, err: str) -> None:
    """In the forked child: its own stdout/stderr files and environment, the call, then exit with its status."""
    code = 1
    try:
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        os.environ.update(job["env"])
        module, name = job["call"].split(":")
        code = int(getattr(importlib.import_module(module), name)(job["argv"]) or 0)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    folder = Path(spec["folder"])
    for module in spec["preload"]:
        importlib.import_module(module)
    sys.stdout.flush()
    sys.stderr.flush()
    pending: dict[int, int] = {}
    for i, job in enumerate(spec["jobs"]):
        pid = os.fork()
        if pid == 0:
            _rank(job, str(folder / f"{i}.out"), str(folder / f"{i}.err"))
        pending[pid] = i
    codes: list[int | None] = [None] * len(pending)
    kill_at = None  # once a rank failed, the others have GRACE_S to finish (or fail) on their own
    while pending:
        pid, status = os.waitpid(-1, 0 if kill_at is None else os.WNOHANG)
        if pid == 0:
            if time.monotonic() > kill_at:
                for other in pending:
                    os.kill(other, signal.SIGKILL)
            time.sleep(0.05)
            continue
        i = pending.pop(pid)
        codes[i] = os.waitstatus_to_exitcode(status)
        if codes[i] != 0 and kill_at is None:
            kill_at = time.monotonic() + GRACE_S
    (folder / "codes.json").write_text(json.dumps(codes))
    return 0


def sleep_then_exit(argv: list[str]) -> int:
    """A rank for the launcher's own tests: sleeps ``argv[0]`` seconds, then exits with status ``argv[1]``."""
    time.sleep(float(argv[0]))
    return int(argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
