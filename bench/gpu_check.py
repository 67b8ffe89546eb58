"""``bash bench/gpu_check.sh OUTDIR``: validate and measure the whole GPU path in one call, on a budget.

Run by gpu_check.sh after the install (see bench/README.md, "The GPU check"). Order and budget
(``GPUSTATS_GPU_CHECK_BUDGET_S``, default 540 s, so that the whole kit -- install, machine probe,
and the budget -- fits a 15-minute GPU lease with the machine's start-up; shared as below; time a
section leaves unused passes to the next ones):

1. ``machine``: GPU, driver, CUDA, torch, numba, numba-cuda; a probe kernel compiles and runs.
2. ``tests`` (24%): the test suite on the GPU (pytest-xdist where installed): every CUDA case file
   in process on the device, the ``gpu``-marked tests (NCCL with one rank, nvJPEG), and the rest,
   which must not fail merely because a GPU is present. Meanwhile the ``sweep`` process compiles
   its kernels on small tensors, so the sweep's budget goes to measuring.
3. ``sweep`` (16%): strategies x uint8/float16/bfloat16/float32 x NCHW/NHWC x 256 MiB, 1 GiB,
   8 MiB, with the torch baselines and the roofline measured on the same tensors.
4. ``calls`` (12%): ``Accumulator.update`` at training-batch sizes beside torch on the same tensor,
   and compile time with a cold and a warm cubin cache (bench/gpu_calls.py).
5. ``engine`` (28%): ``gpustats stats`` on 30,000 generated JPEGs, CPU workers and nvJPEG, cold and
   warm compile cache, beside plain Pillow processes and nvJPEG alone.
6. ``pipeline`` (7%), ``decode`` (5%), ``sync`` (5%): see gpu_check_sections.py, the sections'
   registry (the sweep is in gpu_check_sweep.py, decode and engine in gpu_check_decode.py).

Each section runs in its own process with a hard timeout and saves as it goes, so a crash or a
hang loses only that section's unsaved part; whatever does not fit is listed under ``skipped``
with the reason. Output (at most 8 files): gpu_check.json, gpu_check.md, tests.log, tests.jsonl,
sections.log, sweep.log (+ install.log from the shell script).

``GPUSTATS_GPU_CHECK_TESTS`` replaces the pytest arguments of the tests section (e.g. only the CUDA
test files) and ``GPUSTATS_GPU_CHECK_SECTIONS`` (e.g. ``sweep,sync``) picks the measuring sections;
what is left out is listed as skipped. Both are for reruns on a short lease.

``GPUSTATS_GPU_CHECK_DRY_RUN=1`` runs the same sequence on a CPU-only machine under the numba
simulator with tiny sizes, two quick tests and a sweep that covers every strategy, dtype and
layout once (not every combination); sections 4-6 share one process there (on a GPU each has its
own, so a crash loses one section). GPU-only measurements are skipped with the reason.
tests/test_gpu_check.py runs it so that it cannot rot.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCHEMA = "gpustats-gpu-check/1"
SHARES = {"tests": 0.24, "sweep": 0.16, "calls": 0.12, "engine": 0.28, "pipeline": 0.07, "decode": 0.05,
          "sync": 0.05}
ORDER = ("calls", "engine", "pipeline", "decode", "sync")
DEFAULT_BUDGET_S = 540
#: the tests the dry run takes: its tests section checks the plumbing (plugin, report), not the code
#: (the full set runs in CI anyway)
DRY_TESTS = ["tests/test_readme.py"]


def wanted(name: str) -> bool:
    chosen = os.environ.get("GPUSTATS_GPU_CHECK_SECTIONS", "").replace(" ", "")
    return not chosen or name in chosen.split(",")


def dry_run() -> bool:
    return os.environ.get("GPUSTATS_GPU_CHECK_DRY_RUN", "") not in ("", "0")


# ----------------------------------------------------------------------------- one section (child)


class SectionContext:
    """What a section sees: its deadline, a place to save partial results, the skip list."""

    def __init__(self, part: Path, deadline: float, go: Path | None):
        self.part, self.deadline, self.go = part, deadline, go
        self.dry = dry_run()
        self.skipped: list[dict] = []
        self._result: dict = {}

    def left(self) -> float:
        return self.deadline - time.time()

    def skip(self, what: str, reason: str) -> None:
        self.skipped.append({"what": what, "reason": reason})
        self.save(self._result)

    def save(self, result: dict) -> None:
        self._result = result
        tmp = self.part.with_suffix(".tmp")
        tmp.write_text(json.dumps({"result": result, "skipped": self.skipped}, default=_jsonable))
        tmp.replace(self.part)

    def wait_for_go(self) -> None:
        """Block until the orchestrator says the tests are over; the go file holds the new deadline."""
        if self.go is None:
            return
        while not self.go.exists():
            time.sleep(0.2)
        self.deadline = float(self.go.read_text().strip() or self.deadline)


def _jsonable(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def run_section(name: str, part: Path, deadline: float, go: Path | None) -> int:
    """Run section ``name`` (or several, ``a,b,c``, one after the other: the dry run's shared process;
    each saves to its own ``<name>.json`` beside ``part`` and all share ``deadline``)."""
    if dry_run():
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
        sys.path.insert(0, str(ROOT / "tests"))
        from _simulator import fast_device_calls, make_shared_arrays_thread_safe, pace_block_manager

        make_shared_arrays_thread_safe()
        pace_block_manager()
        fast_device_calls()
        sys.setswitchinterval(1e-4)
    import gpu_check_sections

    status = 0
    for one in name.split(","):
        ctx = SectionContext(part.with_name(f"{one}.json") if "," in name else part, deadline, go)
        try:
            gpu_check_sections.SECTIONS[one](ctx)
        except Exception as exc:
            result = dict(ctx._result)
            result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            result["traceback"] = traceback.format_exc()[-4000:]
            ctx.save(result)
            print(result["traceback"], file=sys.stderr)
            status = 1
    return status


# ----------------------------------------------------------------------------- orchestrator


class Orchestrator:
    def __init__(self, out: Path):
        self.out = out
        self.budget = float(os.environ.get("GPUSTATS_GPU_CHECK_BUDGET_S", str(DEFAULT_BUDGET_S)))
        self.t0 = time.time()
        self.end = self.t0 + self.budget
        self.python = sys.executable
        self.parts = out / ".parts"
        self.parts.mkdir(parents=True, exist_ok=True)
        self.skipped: list[dict] = []
        self.doc: dict = {"schema": SCHEMA, "dry_run": dry_run(), "budget_s": self.budget,
                          "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        self.log = open(out / "sections.log", "a", encoding="utf-8")

    def left(self) -> float:
        return self.end - time.time()

    def say(self, msg: str) -> None:
        line = f"[gpu_check {time.time() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def env(self) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
        if dry_run():
            env["NUMBA_ENABLE_CUDASIM"] = "1"
        return env

    def start_section(self, name: str, deadline: float, go: Path | None = None, log=None) -> subprocess.Popen:
        cmd = [self.python, str(HERE / "gpu_check.py"), "--section", name, "--part", str(self.parts / f"{name}.json"),
               "--deadline", str(deadline)]
        if go is not None:
            cmd += ["--go", str(go)]
        return subprocess.Popen(cmd, cwd=ROOT, env=self.env(), stdout=log or self.log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def finish(self, name, proc: subprocess.Popen, hard_stop: float) -> None:
        """Wait for a section (or a list of sections sharing the process) until ``hard_stop``; kill it
        there. Merge what each saved."""
        code = _wait(proc, hard_stop)
        for one in ([name] if isinstance(name, str) else name):
            part = self.parts / f"{one}.json"
            saved = json.loads(part.read_text()) if part.exists() else {"result": {}, "skipped": []}
            result = saved.get("result", {})
            if code is None:  # (sharing a process: every section of it is marked, finished or not)
                self.skipped.append({"section": one, "what": f"{one}: the rest of the section",
                                     "reason": "stopped at its time cap (hard timeout)"})
                result["stopped_at_time_cap"] = True
            elif code != 0 and "error" not in result and (isinstance(name, str) or not part.exists()):
                result["error"] = f"the section's process exited with status {code} (see sections.log)"
            for item in saved.get("skipped", []):
                self.skipped.append({"section": one, **item})
            self.doc[one] = result
            self.say(f"{one}: done (exit {code}){' ERROR ' + result['error'][:200] if result.get('error') else ''}")

    def cap(self, name: str, remaining_names) -> float:
        """Seconds for ``name``: its share plus what earlier sections left, minus the later ones' shares."""
        later = sum(SHARES[n] for n in remaining_names) * self.budget
        return max(5.0, self.left() - later)

    def run(self) -> int:
        mode = "DRY RUN (numba simulator, tiny sizes)" if dry_run() else "GPU"
        self.say(f"{mode}: budget {self.budget:.0f} s, output in {self.out}")
        machine = self.start_section("machine", time.time() + 90)
        self.finish("machine", machine, time.time() + 100)
        m = self.doc.get("machine", {})
        self.say(f"machine: {m.get('gpu_name', 'no GPU')} driver {m.get('driver')} torch {m.get('torch')} "
                 f"numba {m.get('numba')} numba-cuda {m.get('numba_cuda')} probe ok={m.get('probe_sum_ok')}")

        # tests and the sweep's compile phase side by side
        go = self.parts / "sweep.go"
        go.unlink(missing_ok=True)
        sweep = None
        if wanted("sweep"):
            sweep_log = open(self.out / "sweep.log", "a", encoding="utf-8")
            sweep = self.start_section("sweep", self.end, go=go, log=sweep_log)
        self.run_tests(self.cap("tests", ["sweep", *ORDER]))

        if sweep is not None:
            sweep_cap = self.cap("sweep", ORDER)
            go.write_text(str(time.time() + sweep_cap))
            self.say(f"sweep: measuring, {sweep_cap:.0f} s")
            self.finish("sweep", sweep, time.time() + sweep_cap + 30)
            sweep_log.close()
        else:
            self.skipped.append({"section": "sweep", "what": "sweep", "reason": "not requested (GPUSTATS_GPU_CHECK_SECTIONS)"})
        sweep_doc = self.doc.pop("sweep", {})
        for key in ("baselines", "roofline"):
            self.doc[key] = {"rows": sweep_doc.pop(key, [])}
        self.doc["sweep"] = sweep_doc

        if dry_run():  # one process for the measuring sections: the dry run checks code, not isolation
            names = [n for n in ORDER if wanted(n)]
            for name in ORDER:
                if name not in names:
                    self.skipped.append({"section": name, "what": name,
                                         "reason": "not requested (GPUSTATS_GPU_CHECK_SECTIONS)"})
                    self.doc[name] = {}
            if names:
                cap = self.left()
                self.say(f"{','.join(names)}: {cap:.0f} s, one process (dry run)")
                proc = self.start_section(",".join(names), time.time() + cap)
                self.finish(names, proc, time.time() + cap + 20)
            return self.write()
        for i, name in enumerate(ORDER):
            if not wanted(name):
                self.skipped.append({"section": name, "what": name,
                                     "reason": "not requested (GPUSTATS_GPU_CHECK_SECTIONS)"})
                self.doc[name] = {}
                continue
            cap = self.cap(name, ORDER[i + 1:])
            if cap <= 5.0 and self.left() < 5:
                self.skipped.append({"section": name, "what": name, "reason": "no time left in the budget"})
                self.doc[name] = {}
                continue
            self.say(f"{name}: {cap:.0f} s")
            proc = self.start_section(name, time.time() + cap)
            self.finish(name, proc, time.time() + cap + 20)
        return self.write()

    def run_tests(self, cap: float) -> None:
        report = self.out / "tests.jsonl"
        report.unlink(missing_ok=True)
        env = self.env()
        env["GPUSTATS_GPU_CHECK_REPORT"] = str(report)
        cmd = [self.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "gpu_check_plugin",
               "-o", "addopts=", "-rfE", "--timeout", "180"]
        if os.environ.get("GPUSTATS_GPU_CHECK_TESTS"):
            import shlex

            cmd += shlex.split(os.environ["GPUSTATS_GPU_CHECK_TESTS"])
            if not dry_run() and _has_xdist(self.python):
                cmd += ["-n", str(max(2, min(12, (os.cpu_count() or 4) - 4)))]
        elif dry_run():
            cmd += DRY_TESTS
        else:
            # the dry run of this script is CI's check of it, not a GPU test: leave its minute here
            cmd += ["tests", "--ignore", "tests/test_gpu_check.py"]
            if _has_xdist(self.python):
                cmd += ["-n", str(max(2, min(12, (os.cpu_count() or 4) - 4)))]
        self.say(f"tests: {' '.join(cmd[3:])} (cap {cap:.0f} s)")
        started = time.time()
        with open(self.out / "tests.log", "w", encoding="utf-8") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            code = _wait(proc, time.time() + cap)
        summary = summarize_tests(report)
        summary.update(command=" ".join(cmd[1:]), elapsed_s=round(time.time() - started, 1), exit_code=code)
        if code is None:
            summary["stopped_at_time_cap"] = True
            self.skipped.append({"section": "tests", "what": f"tests not reached ({summary['not_run']})",
                                 "reason": f"the tests' time cap ({cap:.0f} s) ran out"})
        self.doc["tests"] = summary
        self.say(f"tests: {summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped, "
                 f"{summary['not_run']} not run in {summary['elapsed_s']} s")

    def write(self) -> int:
        self.doc["skipped"] = self.skipped
        self.doc["elapsed_s"] = round(time.time() - self.t0, 1)
        from gpu_check_report import markdown, summary

        self.doc["summary"] = summary(self.doc)
        (self.out / "gpu_check.json").write_text(json.dumps(self.doc, indent=1, default=_jsonable) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.doc))
        self.say(f"wrote {self.out / 'gpu_check.json'} and gpu_check.md in {self.doc['elapsed_s']} s")
        for child in self.parts.iterdir():
            child.unlink()
        self.parts.rmdir()
        return 0


def summarize_tests(report: Path) -> dict:
    records = []
    if report.exists():
        records = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    collected = max((r["collected"] for r in records if "collected" in r), default=None)
    outcomes = [r for r in records if "nodeid" in r]
    failed = [r for r in outcomes if r["outcome"] == "failed"]
    skipped = [r for r in outcomes if r["outcome"] == "skipped"]
    passed = [r for r in outcomes if r["outcome"] == "passed" and r["when"] == "call"]
    reasons: dict = {}
    for r in skipped:
        reasons[r.get("reason", "?")] = reasons.get(r.get("reason", "?"), 0) + 1
    done = {r["nodeid"] for r in outcomes}
    return {"collected": collected, "passed": len(passed), "failed": len({r["nodeid"] for r in failed}),
            "skipped": len(skipped), "not_run": (collected - len(done)) if collected else 0,
            "failures": [{"nodeid": r["nodeid"], "when": r["when"], "message": r.get("message", "")} for r in failed],
            "skip_reasons": reasons,
            "slowest": sorted(({"nodeid": r["nodeid"], "s": r["duration"]} for r in outcomes),
                              key=lambda r: -r["s"])[:10]}


def _has_xdist(python: str) -> bool:
    return subprocess.run([python, "-c", "import xdist"], capture_output=True).returncode == 0


def _wait(proc: subprocess.Popen, hard_stop: float):
    """The exit code, or None after killing the process group at ``hard_stop``."""
    try:
        return proc.wait(timeout=max(0.1, hard_stop - time.time()))
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="output folder (orchestrator mode)")
    parser.add_argument("--section", help=argparse.SUPPRESS)
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section:
        return run_section(args.section, Path(args.part), args.deadline, Path(args.go) if args.go else None)
    if not args.out:
        parser.error("give the output folder: bash bench/gpu_check.sh OUTDIR")
    sys.path.insert(0, str(HERE))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return Orchestrator(out).run()


if __name__ == "__main__":
    sys.exit(main())
