"""Headline figures and the Markdown report of bench/gpu_check.py (pure functions of its JSON)."""

from __future__ import annotations

#: project targets (issue "Run the GPU check", issue 24), each compared with what the run measured
TARGETS = {
    "moments_roofline_frac": 0.85,  # fused moments, every dtype, >= 256 MiB (issue 24 item 5)
    "vs_torch_float32": 2.0,  # x torch.var_mean + aminmax
    "vs_torch_uint8": 4.0,
    "histogram_roofline_frac": 0.5,
    "pinned_fraction_of_copy": 0.9,
    "all_options_vs_moments": 1.5,  # at most
    "uint8_syncs_per_update": 0.0,  # at most
    "float32_syncs_per_update": 0.0,  # at most, default nan_policy (issue 24 item 2)
}

#: issue 24, per update at training-batch sizes (the calls section): host time, speed vs torch on the same
#: tensor (torch per update / ours), options vs moments (ours / moments; at most)
CALL_HOST_US = 25.0
CALL_VS_TORCH = {"uint8 128x3x32x32": 1.0, "uint8 256x3x224x224": 3.0, "float32 64x3x224x224": 1.5,
                 "float32 256x3x224x224": 2.0}
CALL_VS_MOMENTS = {"uint8 256x3x224x224 histogram+covariance": 1.3, "uint8 256x3x224x224 per_image": 2.0,
                   "uint8 256x3x224x224 all three": 2.0}
#: "NHWC with nan_policy='omit' as fast as with 'raise'": within 5% (run-to-run noise)
CALL_OMIT_VS_RAISE = 1.05
#: issue 24 item 6: the folder job vs its decoders alone (same run)
ENGINE_VS_DECODE_ONLY = {"cpu": 0.9, "nvjpeg": 0.8}
BIG = 256 << 20


def _big_rows(doc: dict):
    return [r for r in doc.get("sweep", {}).get("rows", []) if r["bytes"] >= BIG * 0.99]


def fastest(doc: dict) -> dict:
    """Per dtype/layout: the strategy with the highest mean GB/s over the sizes >= 256 MiB."""
    by_key: dict = {}
    for r in _big_rows(doc):
        by_key.setdefault((r["dtype"], r["layout"]), {}).setdefault(r["strategy"], []).append(r["gbps"])
    # ranked by what a call costs (launch included): that is what a user of strategy="auto" pays
    out = {}
    for (dtype, layout), strategies in sorted(by_key.items()):
        means = {name: sum(v) / len(v) for name, v in strategies.items()}
        best = max(means, key=means.get)
        out[f"{dtype}-{layout}"] = {"strategy": best, "gbps": means[best],
                                    "ranking": sorted(means, key=means.get, reverse=True)}
    return out


def summary(doc: dict) -> dict:
    """The targets, each with the measured value and whether it is met (None: not measured)."""
    rows = _big_rows(doc)
    out: dict = {"fastest": fastest(doc), "targets": []}

    def target(name, measured, goal, at_most=False, where=""):
        met = None if measured is None else (measured <= goal if at_most else measured >= goal)
        if doc.get("dry_run"):
            met = None  # simulator timings say nothing about a GPU
        out["targets"].append({"target": name, "goal": goal, "measured": measured, "met": met, "where": where,
                               "at_most": at_most})

    for dtype in ("uint8", "float16", "bfloat16", "float32"):
        moments = [r for r in rows if r["dtype"] == dtype and not r["histogram"]]
        for key, what in (("kernel_roofline_frac", "kernel time"), ("roofline_frac", "per call, launch included")):
            worst = None
            for layout in ("NCHW", "NHWC"):
                per = [r for r in moments if r["layout"] == layout and r.get(key) is not None]
                for size in sorted({r["bytes"] for r in per}):
                    best = max((r for r in per if r["bytes"] == size), key=lambda r: r[key])
                    if worst is None or best[key] < worst[key]:
                        worst = best
            target(f"fused moments, {dtype}: fraction of roofline, {what} (worst layout/size >= 256 MiB, best "
                   "strategy)", None if worst is None else worst[key], TARGETS["moments_roofline_frac"],
                   where="" if worst is None else f"{worst['strategy']} {worst['layout']} {worst['size']}")
        speed = [r for r in moments if r.get("vs_torch_var_mean_aminmax")]
        worst_speed = None
        for layout in ("NCHW", "NHWC"):
            for size in sorted({r["bytes"] for r in speed if r["layout"] == layout}):
                best = max((r for r in speed if r["layout"] == layout and r["bytes"] == size),
                           key=lambda r: r["vs_torch_var_mean_aminmax"])
                if worst_speed is None or best["vs_torch_var_mean_aminmax"] < worst_speed["vs_torch_var_mean_aminmax"]:
                    worst_speed = best
        if f"vs_torch_{dtype}" not in TARGETS:
            continue
        target(f"speed-up vs torch.var_mean+aminmax, {dtype} (worst layout/size, best strategy)",
               None if worst_speed is None else worst_speed["vs_torch_var_mean_aminmax"], TARGETS[f"vs_torch_{dtype}"],
               where="" if worst_speed is None else f"{worst_speed['strategy']} {worst_speed['layout']} "
                                                    f"{worst_speed['size']}")
    hist = [r for r in rows if r["histogram"]]
    target("histogram kernel (hist8): fraction of roofline, kernel time (worst layout/size >= 256 MiB)",
           min((r["kernel_roofline_frac"] for r in hist if r.get("kernel_roofline_frac")), default=None),
           TARGETS["histogram_roofline_frac"])
    pinned = [r for r in doc.get("pipeline", {}).get("host", []) if r["memory"] == "pinned"]
    target("pinned host uint8 -> Accumulator(cuda): fraction of host-to-device copy",
           pinned[0]["fraction_of_copy"] if pinned else None, TARGETS["pinned_fraction_of_copy"])
    extras = [r for r in doc.get("pipeline", {}).get("extras", []) if r["options"] == "all"]
    target("histogram+covariance+per_image time / moments only", extras[0].get("ratio_vs_moments") if extras else None,
           TARGETS["all_options_vs_moments"], at_most=True)
    cases = [c for c in doc.get("sync", {}).get("cases", []) if c["case"] == "uint8"]
    target("device synchronizations per uint8 Accumulator.update", cases[0]["syncs_per_update"] if cases else None,
           TARGETS["uint8_syncs_per_update"], at_most=True)
    cases = [c for c in doc.get("sync", {}).get("cases", []) if c["case"] == "float32, nan_policy=raise"]
    target("device synchronizations per float32 Accumulator.update, default nan_policy (raise)",
           cases[0]["syncs_per_update"] if cases else None, TARGETS["float32_syncs_per_update"], at_most=True)
    calls = {r["case"]: r for r in doc.get("calls", {}).get("rows", []) if r.get("per_update_us")}
    for case in CALL_VS_TORCH:
        r = calls.get(case)
        target(f"host time per update, {case} (us)", r and r["host_us"], CALL_HOST_US, at_most=True)
    for case, goal in CALL_VS_TORCH.items():
        r = calls.get(case)
        target(f"per update vs torch var_mean+amin+amax (same tensor), {case}", r and r.get("vs_torch"), goal)
    for case, goal in CALL_VS_MOMENTS.items():
        r = calls.get(case)
        target(f"per update / moments only, {case.replace('uint8 256x3x224x224 ', '')} (uint8 256x3x224x224)",
               r and r.get("vs_moments"), goal, at_most=True)
    r = calls.get("uint8 NHWC 256x224x224x3 nan_policy=omit")
    target("uint8 NHWC 256x224x224x3: per update with nan_policy='omit' / with 'raise'", r and r.get("vs_raise"),
           CALL_OMIT_VS_RAISE, at_most=True)
    for decoder, goal in ENGINE_VS_DECODE_ONLY.items():
        for cache in ("cold", "warm"):
            r = next((x for x in doc.get("engine", {}).get("rows", [])
                      if x["decoder"] == decoder and x["cache"] == cache), None)
            target(f"gpustats stats, {decoder} decoding, {cache} compile cache: images/s / its decoder alone",
                   r and r.get("vs_decode_only"), goal,
                   where="" if r is None else f"{r.get('workers')} workers, {r.get('images')} images")
    return out


def _fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines + [""]


def markdown(doc: dict) -> str:
    m = doc.get("machine", {})
    kind = "DRY RUN under the numba simulator (no GPU figure here)" if doc.get("dry_run") else "GPU run"
    lines = [f"# gpustats GPU check: {m.get('gpu_name') or 'no GPU'}", "",
             f"{kind}; {doc.get('created')}; {doc.get('elapsed_s')} s of a {doc.get('budget_s'):.0f} s budget.", "",
             f"GPU {m.get('gpu_name')} ({m.get('gpu_sm_count')} SMs, {m.get('gpu_memory_gib')} GiB, compute capability "
             f"{m.get('compute_capability')}), driver {m.get('driver')}, CUDA (torch) {m.get('torch_cuda')}; torch "
             f"{m.get('torch')}, numba {m.get('numba')}, numba-cuda {m.get('numba_cuda')}, torchvision "
             f"{m.get('torchvision')}; Python {m.get('python')}; commit {(m.get('commit') or '?')[:12]}; "
             f"probe kernel ok={m.get('probe_sum_ok')} in {m.get('probe_compile_s')} s.", ""]
    if m.get("error"):
        lines += [f"**machine section error:** {m['error']}", ""]
    t = doc.get("tests", {})
    lines += ["## Tests", "", f"{t.get('passed')} passed, {t.get('failed')} failed, {t.get('skipped')} skipped, "
              f"{t.get('not_run')} not run, in {t.get('elapsed_s')} s (`{t.get('command')}`).", ""]
    for f in t.get("failures", []):
        last = [x for x in f["message"].strip().splitlines() if x.strip()][-3:]
        lines.append(f"- FAILED `{f['nodeid']}` ({f['when']}): " + " / ".join(s.strip() for s in last)[:400])
    if t.get("failures"):
        lines.append("")
    if t.get("skip_reasons"):
        lines += _table(["skip reason", "tests"], sorted(t["skip_reasons"].items(), key=lambda kv: -kv[1]))
    s = doc.get("summary", {})
    lines += ["## Targets", ""]
    lines += _table(["target", "goal", "measured", "met", "where"],
                    [(x["target"], ("<= " if x["at_most"] else ">= ") + _fmt(x["goal"]), x["measured"],
                      {True: "yes", False: "**no**", None: "dry run" if doc.get("dry_run") else "not measured"}[x["met"]],
                      x["where"])
                     for x in s.get("targets", [])])
    if s.get("fastest"):
        lines += ["## Fastest strategy per dtype and layout (mean GB/s over sizes >= 256 MiB)", ""]
        lines += _table(["dtype-layout", "fastest", "GB/s", "ranking"],
                        [(k, v["strategy"], v["gbps"], " > ".join(v["ranking"])) for k, v in s["fastest"].items()])
    sweep = doc.get("sweep", {})
    roof = {(r["dtype"], r["layout"], r["bytes"]): r for r in doc.get("roofline", {}).get("rows", [])}
    if sweep.get("rows"):
        lines += ["## Strategy sweep", "", f"Timer: {sweep.get('timer')}, {sweep.get('repeats')} timed calls after "
                  "warm-up; GB/s = input bytes / median time; roofline = max(D2D copy read+write, torch.sum) on the "
                  "same tensor in the same run.", ""]
        checks = {c["id"]: c for c in sweep.get("checks", [])}
        body = []
        for r in sweep["rows"]:
            rf = roof.get((r["dtype"], r["layout"], r["bytes"]), {})
            c = checks.get(f"{r['strategy']}-{r['dtype']}-{r['layout']}-{r['size']}", {})
            ok = c.get("exact_sum", c.get("mean_ok"))
            body.append((r["strategy"], r["dtype"], r["layout"], r["size"], r.get("kernel_gbps"),
                         r.get("kernel_roofline_frac"), r["gbps"], r["roofline_frac"], r.get("gbps_loop"),
                         rf.get("roofline_gbps"), r.get("kernel_vs_torch_var_mean_aminmax"),
                         r["vs_torch_var_mean_aminmax"], r["iqr_s"] / r["median_s"],
                         {True: "ok", False: "**WRONG**", None: "-"}[ok]))
        lines += ["Kernel = device time of the kernels from the CUDA profiler; call = one call between two "
                  "events (host launch work included, GPU idle meanwhile); loop = 10 calls back to back.", ""]
        lines += _table(["strategy", "dtype", "layout", "size", "kernel GB/s", "kernel of roofline", "call GB/s",
                         "call of roofline", "loop GB/s", "roofline GB/s", "kernel x torch", "call x torch",
                         "IQR/median", "result"], body)
    if doc.get("baselines", {}).get("rows"):
        lines += ["## Baselines (same tensors)", ""]
        lines += _table(["baseline", "dtype", "layout", "bytes", "call GB/s", "of roofline", "kernel GB/s"],
                        [(r["baseline"], r["dtype"], r["layout"], r["bytes"], r["gbps"], r["roofline_frac"],
                          r.get("kernel_gbps")) for r in doc["baselines"]["rows"]])
    p = doc.get("pipeline", {})
    if p.get("host") or p.get("extras"):
        lines += ["## Pipeline", ""]
        lines += _table(["host memory", "bytes", "H2D copy GB/s", "Accumulator GB/s", "fraction of copy", "strategy"],
                        [(r["memory"], r["bytes"], r["copy_gbps"], r["accumulator_gbps"], r["fraction_of_copy"],
                          r["strategy"]) for r in p.get("host", [])])
        lines += _table(["options (device uint8)", "GB/s", "time / moments only", "strategy"],
                        [(r["options"], r["gbps"], r.get("ratio_vs_moments"), r["strategy"]) for r in p.get("extras", [])])
    d = doc.get("decode", {})
    if d.get("cpu_workers") or d.get("nvjpeg"):
        lines += ["## Decode", "", f"{d.get('files')} JPEGs {d.get('size')} q{d.get('quality')}.", ""]
        rows = [(f"CPU, {r['workers']} workers", r["images_per_s"]) for r in d.get("cpu_workers", [])]
        if d.get("nvjpeg"):
            rows.append((f"nvJPEG, batches of {d['nvjpeg']['batch']}", d["nvjpeg"]["images_per_s"]))
        lines += _table(["decoder", "images/s"], rows)
    c = doc.get("calls", {})
    if c.get("rows"):
        lines += ["## Calls: Accumulator.update per call (issue 24)", "",
                  f"{c.get('updates')} back-to-back updates of the same device tensor after warm-up; host = time to "
                  "return, per update = with the GPU work; torch = var_mean + amin + amax on the same tensor "
                  "(uint8 converted to float32 first); fast = updates that took the fixed-cost path.", ""]
        lines += _table(["case", "dtype", "shape", "options", "host_us", "per_update_us", "torch_per_update_us",
                         "x torch", "/ moments", "strategy", "fast", "first update s", "error"],
                        [(r["case"], r["dtype"], "x".join(map(str, r["shape"])), r["options"], r.get("host_us"),
                          r.get("per_update_us"), r.get("torch_per_update_us"), r.get("vs_torch"),
                          r.get("vs_moments", r.get("vs_raise")), r.get("strategy"),
                          f"{r.get('fast_updates')}/{r.get('kernel_launches')}", r.get("first_update_s"),
                          (r.get("error") or r.get("launcher_error") or "")[:120]) for r in c["rows"]])
        comp = c.get("compile") or {}
        body = []
        for run in ("cold", "warm"):
            got = comp.get(run) or {}
            for k in got.get("kernels", []):
                body.append((run, k["dtype"], k["first_update_s"], k["launcher"], k["compiled"], got.get("process_s")))
            if got.get("error"):
                body.append((run, "-", None, None, got["error"][:200], None))
        if body:
            lines += ["First update in a fresh process, empty (cold) then filled (warm) cubin cache:", ""]
            lines += _table(["cache", "dtype", "first update s", "launcher", "compiled", "process s"], body)
    e = doc.get("engine", {})
    if e.get("rows") or e.get("baselines"):
        base = e.get("baselines", {})
        lines += ["## Engine: gpustats stats on a JPEG folder (issue 24)", "",
                  f"{e.get('files')} generated JPEGs {e.get('size')} q{e.get('quality')}, {e.get('cores')} cores; "
                  f"plain Pillow processes {_fmt((base.get('pillow_processes') or {}).get('images_per_s'))} images/s, "
                  f"nvJPEG alone {_fmt((base.get('nvjpeg_only') or {}).get('images_per_s'))} images/s (same run).", ""]
        lines += _table(["decoder", "workers", "images", "cache", "images_per_s", "decode_only_images_per_s",
                         "/ decode only", "images/s whole process", "error"],
                        [(r["decoder"], r["workers"], r["images"], r["cache"], r.get("images_per_s"),
                          r.get("decode_only_images_per_s"), r.get("vs_decode_only"), r.get("images_per_s_process"),
                          (r.get("error") or "")[:160]) for r in e.get("rows", [])])
    y = doc.get("sync", {})
    if y.get("cases"):
        lines += ["## Synchronizations per Accumulator.update", ""]
        lines += _table(["case", "updates", "syncs/update", "profiler", "python calls", "torch sync debug"],
                        [(c["case"], c["updates"], c["syncs_per_update"], c["syncs_per_update_by"]["profiler"],
                          c["syncs_per_update_by"]["python_calls"], c["syncs_per_update_by"]["torch_sync_debug"])
                         for c in y["cases"]])
    errors = [(name, doc[name]["error"]) for name in ("machine", "sweep", "calls", "engine", "pipeline", "decode", "sync")
              if isinstance(doc.get(name), dict) and doc[name].get("error")]
    if errors:
        lines += ["## Section errors", ""] + [f"- {name}: {err[:500]}" for name, err in errors] + [""]
    lines += ["## Skipped", ""]
    lines += [f"- {x.get('section', '?')}: {x['what']}: {x['reason']}" for x in doc.get("skipped", [])] or ["- nothing"]
    return "\n".join(lines) + "\n"
