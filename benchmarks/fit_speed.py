"""Seconds and peak memory per stage of ``GPUA().fit`` in memory, against the published method.

Data: planted (``gpua.synthetic.make_planted``), N = 50k images, K = 1000 classes, VFM width
1280, VLM width 512, latent width 128 (``--n``, ``--k``, ``--d-vfm``... for smaller runs). The
model is ``GPUA(query="vfm")`` (a 1280 -> 512 map; every other parameter at the library
default; ``--query fused`` maps [Z, X], 1792 -> 512, GPUA's default; ``--params`` sets any GPUA
parameter as JSON, e.g. ``'{"self_learning": 2}'``). Stages: UCM, Procrustes, THS refinement,
self-learning rounds (when on), predict (on the pool). Peak memory is the process's resident set
size sampled every 5 ms inside each stage (absolute: it includes Python, torch and the data,
whose size is printed as the baseline).

REFERENCE, run in the same process on the same data, is :class:`gpua.ReferenceGPUA`, the
published code's method (query [Z, X]; SwAV-style Sinkhorn with an absolute tolerance, 3 UCM
rounds; hard Procrustes; 400 refinement steps on batches of 75% of N with a full sort of the K
distances). Its UCM and Procrustes run whole; its refinement runs ``--reference-timed-steps``
steps and is extrapolated (labelled) to ``--reference-steps`` (400, its own count). The last
line gives issue 12's target: GPUA's whole fit (rounds included) under 1/10 of the reference's.

Usage::

    python benchmarks/fit_speed.py                         # the 50k x 1000 benchmark
    python benchmarks/fit_speed.py --n 5000 --k 100        # a quick run
    python benchmarks/fit_speed.py --query fused --params '{"self_learning": 2}' --json out.json

Timing, memory sampling, the machine record and the JSON file come from ``benchmarks/_harness.py``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _harness import GB, PeakRSS, add_arguments, gpua_params, measure, rss_bytes, setup, write_json

from gpua import GPUA, ReferenceGPUA
from gpua.synthetic import make_planted


def stage_records(mem: PeakRSS, timings: dict, stages: list[str], t0: float) -> dict:
    """``{stage: {"seconds", "peak_rss"}}`` for stages that ran back to back from ``t0`` (a fit's ``history_["timings"]``)."""
    bounds = np.cumsum([0.0] + [timings[f"{name}_s"] for name in stages]) + t0
    return {name: {"seconds": timings[f"{name}_s"], "peak_rss": mem.window(bounds[i], bounds[i + 1])} for i, name in enumerate(stages)}


def synchronize(device: str) -> None:
    """Wait for ``device``'s queued kernels, so a GPU fit's clock stops when its work does."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def cuda_peak(device: str) -> float | None:
    """Peak bytes torch allocated on ``device`` since the last reset (None off CUDA; RSS misses GPU memory)."""
    return torch.cuda.max_memory_allocated(device) if str(device).startswith("cuda") else None


def time_reference(Z, X, Y, timed_steps: int, total_steps: int, device: str = "cpu") -> tuple[dict, dict]:
    """Stage seconds and peaks of ``ReferenceGPUA`` (refinement timed over ``timed_steps``, extrapolated to ``total_steps``).

    It runs on GPUA's ``device``, so a GPU run compares like with like.
    """
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    model = ReferenceGPUA(n_steps=min(timed_steps, total_steps), device=device)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        model.fit(Z, X, Y)
        synchronize(device)
        t_fit = time.perf_counter() - t0
        with mem.stage("predict"):
            model.predict(Z, X)
    tm = model.history_["timings"]
    ref = stage_records(mem, tm, ["ucm", "procrustes", "refine"], t0)
    steps_run = model.n_steps
    per_step = tm["refine_s"] / max(1, steps_run)
    ref["refine"]["seconds_per_step"] = per_step
    ref["refine"]["seconds"] = per_step * total_steps  # extrapolated when fewer steps ran
    ref["predict"] = {k: mem.stages["predict"][k] for k in ("seconds", "peak_rss")}
    ref["fit"] = {"seconds": tm["ucm_s"] + tm["procrustes_s"] + ref["refine"]["seconds"], "measured_seconds": t_fit,
                  "peak_rss": mem.window(t0, t0 + t_fit)}
    info = {"sinkhorn_iters": [h["sinkhorn_iter"] for h in model.history_["ucm"]], "marginal_error": model.history_["ucm"][-1]["marginal_error"],
            "refine_steps_timed": steps_run, "refine_steps_extrapolated_to": total_steps, "pseudo_labels": model.pseudo_labels_,
            "cuda_peak_bytes": cuda_peak(device)}
    return ref, info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--d-vfm", type=int, default=1280)
    ap.add_argument("--d-vlm", type=int, default=512)
    ap.add_argument("--d-latent", type=int, default=128)
    ap.add_argument("--query", choices=["vfm", "fused"], default="vfm", help="GPUA's query (vfm: the 1280 -> 512 map)")
    ap.add_argument("--params", type=gpua_params, default={}, metavar="JSON", help="further GPUA parameters, e.g. '{\"self_learning\": 2}'")
    ap.add_argument("--reference-timed-steps", type=int, default=3, help="reference refinement steps actually run (then extrapolated)")
    ap.add_argument("--reference-steps", type=int, default=400, help="the reference's refinement steps (400, the published count)")
    ap.add_argument("--no-reference", action="store_true")
    add_arguments(ap, json_out=True)
    args = ap.parse_args(argv)
    if args.reference_timed_steps < 1 or args.reference_steps < 0:
        ap.error("--reference-timed-steps must be at least 1 and --reference-steps at least 0")
    setup(args)

    t = time.perf_counter()
    d = make_planted(args.n, args.k, args.d_vfm, args.d_vlm, args.d_latent, random_state=0)
    print(f"data: N={args.n} K={args.k} {args.d_vfm}->{args.d_vlm} (latent {args.d_latent}) made in {time.perf_counter() - t:.1f} s; "
          f"RSS with data {rss_bytes() / GB:.2f} GB")
    Z, X, Y, labels = d.vfm_features, d.vlm_features, d.text_prototypes, d.labels
    params = {"query": args.query, **args.params}
    out: dict = {"n": args.n, "k": args.k, "query": params["query"], "params": params, "threads": torch.get_num_threads(),
                 "baseline_rss_gb": rss_bytes() / GB}

    # --- GPUA ----------------------------------------------------------------------------------
    for _ in range(args.warmup):  # untimed fits (a cold first fit pays for allocator and kernel set-up)
        GPUA(**params).fit(Z, X, Y)
    model = GPUA(**params)
    device = params.get("device", "cpu")
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRSS() as mem:
        c0, t0 = time.process_time(), time.perf_counter()
        model.fit(Z, X, Y)
        synchronize(device)
        t_fit, c_fit = time.perf_counter() - t0, time.process_time() - c0
        with mem.stage("predict"):
            pred = model.predict(Z, X)
    tm = model.history_["timings"]
    stages = ["ucm", "procrustes", "refine"] + [name for name in ("self_learning", "proba_scale") if f"{name}_s" in tm]
    # The whitening runs first (and its folding last, a few seconds counted in it too): the
    # other stages' peak-memory windows start after it.
    gpua = stage_records(mem, tm, stages, t0 + tm.get("whiten_s", 0.0))
    if "whiten_s" in tm:
        gpua["whiten"] = {"seconds": tm["whiten_s"], "peak_rss": mem.window(t0, t0 + tm["whiten_s"])}
    gpua["predict"] = {k: mem.stages["predict"][k] for k in ("seconds", "peak_rss")}
    gpua["fit"] = {"seconds": t_fit, "cpu_seconds": c_fit, "peak_rss": mem.window(t0, t0 + t_fit)}
    if args.repeats > 1:  # more whole fits: the median of all of them beside the staged one
        _, again = measure(lambda: GPUA(**params).fit(Z, X, Y), repeats=args.repeats - 1)
        gpua["fit"]["seconds_all"] = [t_fit] + again.times
        gpua["fit"]["seconds_median"] = float(np.median(gpua["fit"]["seconds_all"]))
    ucm_rounds = len(model.history_["ucm"])
    steps_run = model.history_["refine"][-1]["step"] if model.history_["refine"] else 0
    out["gpua"] = gpua
    out["gpua_info"] = {
        "ucm_rounds": ucm_rounds, "sinkhorn_iters": [h["sinkhorn_iter"] for h in model.history_["ucm"]],
        "marginal_error": model.history_["ucm"][-1]["marginal_error"], "refine_steps": steps_run,
        "self_learning": model.history_["self_learning"],
        "pseudo_label_acc": float(np.mean(model.pseudo_labels_ == labels)), "acc": float(np.mean(pred == labels)),
        "cuda_peak_bytes": cuda_peak(device),
    }

    # --- REFERENCE -----------------------------------------------------------------------------
    if not args.no_reference:
        ref, info = time_reference(Z, X, Y, args.reference_timed_steps, args.reference_steps, device)
        info["pseudo_label_acc"] = float(np.mean(info.pop("pseudo_labels") == labels))
        out["reference"], out["reference_info"] = ref, info

    # --- table ---------------------------------------------------------------------------------
    print(f"\nGPUA ({', '.join(f'{k}={v!r}' for k, v in params.items())}): {ucm_rounds} UCM rounds, Sinkhorn iterations "
          f"{out['gpua_info']['sinkhorn_iters']}, final relative marginal error {out['gpua_info']['marginal_error']:.1e}; {steps_run} "
          f"refinement steps; self-learning rounds {max(0, len(model.history_['self_learning']) - 1)}; pseudo-label acc "
          f"{out['gpua_info']['pseudo_label_acc']:.3f}, pool acc {out['gpua_info']['acc']:.3f}; fit CPU time {c_fit:.1f} s")
    if "reference" in out:
        ri = out["reference_info"]
        print(f"REFERENCE: Sinkhorn iterations {ri['sinkhorn_iters']}, relative marginal error {ri['marginal_error']:.2f}, pseudo-label acc "
              f"{ri['pseudo_label_acc']:.3f}; refinement {ri['refine_steps_timed']} steps timed "
              f"({out['reference']['refine']['seconds_per_step']:.2f} s/step), extrapolated to {ri['refine_steps_extrapolated_to']}")
    print(f"\n{'stage':<14}{'GPUA s':>9}{'peak GB':>9}{'reference s':>13}{'peak GB':>9}{'ref/GPUA':>10}")
    for stage in [*(["whiten"] if "whiten" in gpua else []), *stages, "predict", "fit"]:
        g = out["gpua"][stage]
        row = f"{stage:<14}{g['seconds']:>9.1f}{g['peak_rss'] / GB:>9.2f}"
        r = out.get("reference", {}).get(stage)
        if r is not None:
            row += f"{r['seconds']:>13.1f}{r['peak_rss'] / GB:>9.2f}{r['seconds'] / max(g['seconds'], 1e-9):>10.2f}"
        print(row)
    for name in ("gpua_info", "reference_info"):
        if out.get(name, {}).get("cuda_peak_bytes") is not None:
            print(f"{name.split('_')[0].upper()} peak GPU memory (torch allocations): {out[name]['cuda_peak_bytes'] / GB:.2f} GB")
    target = "met" if gpua["fit"]["seconds"] < 60 and gpua["fit"]["peak_rss"] < 3e9 else "missed"
    if "seconds_median" in gpua["fit"]:
        print(f"whole fit over {args.repeats} runs: median {gpua['fit']['seconds_median']:.1f} s "
              f"({', '.join(f'{t:.1f}' for t in gpua['fit']['seconds_all'])})")
    print(f"\ntarget (whole fit < 60 s and < 3 GB peak): {target} ({gpua['fit']['seconds']:.1f} s, {gpua['fit']['peak_rss'] / GB:.2f} GB)")
    if "reference" in out:
        ratio = out["reference"]["fit"]["seconds"] / max(gpua["fit"]["seconds"], 1e-9)
        out["reference_over_gpua"] = ratio
        print(f"issue 12 target (GPUA's whole fit under 1/10 of the reference's {args.reference_steps}-step fit): "
              f"{'met' if ratio > 10 else 'missed'}; GPUA / reference = 1/{ratio:.1f} "
              f"({gpua['fit']['seconds']:.1f} s against {out['reference']['fit']['seconds']:.1f} s)")
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
