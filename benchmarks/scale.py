"""Seconds and peak memory of the in-memory and the streaming GPUA fit as N grows.

N = 50k, 200k, 1M images, K = 1000 classes, VFM width 1280 -> VLM width 512 (``--n`` picks).
The rows are the planted 50k set (``make_planted``, latent width 128) repeated N / 50k times,
stored as float16 shards: every N holds the same rows, so time per sample isolates the scaling
of the implementation. (The confident-centre initialisation may pick copies of a row, which
can change the number of UCM rounds: the table also gives UCM time per sample and round.)

Each fit runs in its own process, so that its peak resident memory (sampled every 5 ms, and
``ru_maxrss``) is its own: the in-memory fit reads the shards into float32 arrays first (counted),
the streaming fit reads chunks within ``--max-memory``. Both fit ``GPUA(query="vfm")`` (the
1280 -> 512 map; every other parameter at the library default; ``--query fused`` for [Z, X]).

Usage::

    python benchmarks/scale.py                          # 50k: both fits, and the ratio
    python benchmarks/scale.py --n 200000 --n 1000000 --mode stream   # time per sample at 1M / at 200k
    python benchmarks/scale.py --n 1000000 --mode stream --timeout 7200 --json out.json

The shard sets are kept under ``--root`` for re-runs, named by every argument that makes them
(``planted-n{N}-k{K}-{d_vfm}x{d_vlm}-l{d_latent}-{dtype}``); a set is reused only when the
planted settings stored in its index match the run's, and rebuilt otherwise. The exit status is 1
when no fit gave figures (each failed or was stopped by ``--timeout``): nothing is written then.

Memory sampling, the machine record and the JSON file come from ``benchmarks/_harness.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _harness import OutputPath

BASE = 50_000
GB = 1e9


def planted_settings(n: int, k: int, d_vfm: int, d_vlm: int, d_latent: int) -> dict:
    """What a shard set of :func:`make_shards` is made from, as stored in its index (``meta["planted"]``)."""
    return {"base": BASE, "latent": d_latent, "repeats": n / BASE, "k": k, "d_vfm": d_vfm, "d_vlm": d_vlm, "random_state": 0}


def reusable(path: Path, n: int, dtype: str, planted: dict) -> str | None:
    """Why the shard set at ``path`` cannot stand for ``planted`` (None: it can be reused as it is)."""
    from gpua import GPUAError
    from gpua.stream import ShardedFeatures

    if not (path / "index.json").is_file():
        return "none there"
    try:
        shards = ShardedFeatures(path)
    except GPUAError as exc:
        return f"unreadable ({exc})"
    stored = shards.meta.get("planted")
    if stored != planted:  # a set made with another --d-latent was reused: the name did not hold it
        return f"made with {stored}, not {planted}"
    if shards.n_samples != n or shards.dtype != dtype:
        return f"{shards.n_samples} rows of {shards.dtype}, not {n} of {dtype}"
    return None


def make_shards(root: Path, n: int, k: int, d_vfm: int, d_vlm: int, d_latent: int, dtype: str) -> Path:
    """Write (once) the shard set of ``n`` rows: the planted base set repeated; an existing set is
    reused only when its stored planted settings are these (:func:`reusable`), else rebuilt."""
    from gpua.synthetic import make_planted
    from gpua.stream import ShardedFeatures, ShardWriter

    path = root / f"planted-n{n}-k{k}-{d_vfm}x{d_vlm}-l{d_latent}-{dtype}"
    planted = planted_settings(n, k, d_vfm, d_vlm, d_latent)
    why = reusable(path, n, dtype, planted)
    if why is None:
        return path
    if why != "none there":
        print(f"  rebuilding {path}: {why}", flush=True)
    d = make_planted(BASE, k, d_vfm, d_vlm, d_latent, random_state=planted["random_state"])
    with ShardWriter(path, dtype=dtype, rows_per_shard=65536, text_prototypes=d.text_prototypes, classnames=d.classnames,
                     overwrite=True, meta={"planted": planted}) as w:
        done = 0
        while done < n:
            m = min(BASE, n - done)
            w.append(d.vfm_features[:m], d.vlm_features[:m], d.labels[:m])
            done += m
    ShardedFeatures(path)
    return path


def run_one(args) -> dict:
    """One fit in this process; returns its figures."""
    import numpy as np
    import torch

    from _harness import PeakRSS, peak_rss_bytes, rss_bytes

    from gpua import GPUA
    from gpua.stream import ShardedFeatures, fit_streaming

    if args.threads:
        torch.set_num_threads(args.threads)
    shards = ShardedFeatures(args.shards)
    Y = shards.text_prototypes()
    base_rss = rss_bytes()
    with PeakRSS() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        if args.one == "memory":
            Z = shards.read("vfm_features", 0, shards.n_samples).numpy()
            X = shards.read("vlm_features", 0, shards.n_samples).numpy()
            t_read = time.perf_counter() - t0
            model = GPUA(query=args.query).fit(Z, X, Y)
        else:
            t_read = 0.0
            model = fit_streaming(GPUA(query=args.query), shards, max_memory=args.max_memory, cluster=args.cluster, progress=args.progress)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = mem.window(t0, time.perf_counter())
    labels = shards.labels()
    h = model.history_
    return {
        "mode": args.one, "query": args.query, "n": shards.n_samples, "seconds": seconds, "cpu_seconds": cpu, "read_seconds": t_read,
        "us_per_sample": 1e6 * seconds / shards.n_samples, "peak_rss_gb": peak / GB, "ru_maxrss_gb": peak_rss_bytes() / GB,
        "start_rss_gb": base_rss / GB, "timings": h["timings"], "ucm_rounds": len(h["ucm"]),
        "sinkhorn_iters": [r["sinkhorn_iter"] for r in h["ucm"]], "refine_evals": len(h["refine"]),
        "pseudo_label_acc": float(np.mean(model.pseudo_labels_ == labels)), "streaming": h.get("streaming"),
        "max_memory": args.max_memory if args.one == "stream" else None, "planted": shards.meta.get("planted"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, action="append", help="rows (repeatable; default 50000)")
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--d-vfm", type=int, default=1280)
    ap.add_argument("--d-vlm", type=int, default=512)
    ap.add_argument("--d-latent", type=int, default=128)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--query", choices=["vfm", "fused"], default="vfm")
    ap.add_argument("--mode", choices=["both", "stream", "memory"], default="both")
    ap.add_argument("--max-memory", default="4GB")
    ap.add_argument("--cluster", default=None)
    ap.add_argument("--root", default="/tmp/gpua-scale", action=OutputPath, kind="folder",
                    help="where the shard sets are written (kept for re-runs)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per fit before it is stopped")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--json", action=OutputPath)
    ap.add_argument("--one", choices=["stream", "memory"], help=argparse.SUPPRESS)
    ap.add_argument("--shards", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:  # child process: one fit, its figures to --result
        Path(args.result).write_text(json.dumps(run_one(args)), encoding="utf-8")
        return 0

    from _harness import check_output_path, machine_line, write_json

    check_output_path(ap, args.root, "--root", "folder")  # the default too: no argument checked it
    print(machine_line(), flush=True)
    results = []
    for n in args.n or [BASE]:
        t = time.perf_counter()
        path = make_shards(Path(args.root), n, args.k, args.d_vfm, args.d_vlm, args.d_latent, args.dtype)
        print(f"N={n}: shards at {path} ({time.perf_counter() - t:.0f} s)", flush=True)
        for mode in (["memory", "stream"] if args.mode == "both" else [args.mode]):
            result = Path(args.root) / f"result-{mode}-n{n}-{os.getpid()}.json"
            cmd = [sys.executable, __file__, "--one", mode, "--shards", str(path), "--max-memory", args.max_memory, "--query", args.query,
                   "--result", str(result)]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            cmd += ["--cluster", args.cluster] if args.cluster else []
            cmd += ["--progress"] if args.progress else []
            log = result.with_suffix(".log")  # the child's own output survives whatever happens here
            try:
                with open(log, "w", encoding="utf-8") as fh:
                    proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"  {mode:<7} stopped after {args.timeout:.0f} s (log {log})", flush=True)
                results.append({"mode": mode, "n": n, "timeout": args.timeout})
                continue
            if proc.returncode != 0 or not result.is_file():
                tail = log.read_text(encoding="utf-8").strip().splitlines()[-3:]
                print(f"  {mode:<7} failed (exit {proc.returncode}): {' | '.join(tail)} (log {log})", flush=True)
                results.append({"mode": mode, "n": n, "failed": proc.returncode, "error": tail})
                continue
            r = json.loads(result.read_text(encoding="utf-8"))
            results.append(r)
            s = r["streaming"] or {}
            extra = f", {s['n_chunks']} chunks of {s['chunk_rows']}, cache {s['cache']}, {s['passes']} passes" if s else f", read {r['read_seconds']:.0f} s"
            ucm_us = 1e6 * r["timings"]["ucm_s"] / r["n"] / max(1, r["ucm_rounds"])
            print(f"  {mode:<7} {r['seconds']:8.1f} s  {r['us_per_sample']:7.1f} us/sample ({ucm_us:.0f} us/sample/UCM round)  peak {r['peak_rss_gb']:.2f} GB "
                  f"(ru_maxrss {r['ru_maxrss_gb']:.2f})  UCM {r['ucm_rounds']} rounds {r['sinkhorn_iters']}  stages "
                  + " ".join(f"{k[:-2]} {v:.0f}" for k, v in r["timings"].items()) + extra, flush=True)
    by = {(r["mode"], r["n"]): r for r in results if "seconds" in r}
    for n in args.n or [BASE]:
        if ("memory", n) in by and ("stream", n) in by:
            print(f"N={n}: streaming / in-memory time ratio {by['stream', n]['seconds'] / by['memory', n]['seconds']:.2f}")
    for mode in ("memory", "stream"):  # the scaling within one mode: time per sample against the smallest N of this run
        ns = sorted(n for m, n in by if m == mode)
        for n in ns[1:]:
            print(f"{mode}: time per sample at N={n} / at N={ns[0]}: {by[mode, n]['us_per_sample'] / by[mode, ns[0]]['us_per_sample']:.2f} "
                  "(1.00: linear in N)")
    if not by:  # every fit failed or was stopped: no figure, and no file to replace a good one with
        print(f"error: no fit gave figures ({len(results)} failed or stopped; their logs are under {args.root})"
              + (f"; {args.json} not written" if args.json else ""), file=sys.stderr, flush=True)
        return 1
    if args.json:
        settings = {"k": args.k, "d_vfm": args.d_vfm, "d_vlm": args.d_vlm, "d_latent": args.d_latent, "dtype": args.dtype,
                    "query": args.query, "base": BASE}
        write_json(args.json, {"planted": settings, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
