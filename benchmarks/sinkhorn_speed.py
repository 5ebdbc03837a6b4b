"""Our stabilised Sinkhorn kernel vs POT's log-domain Sinkhorn, same scores, same stopping rule.

Why gpua ships its own kernel: POT's ``sinkhorn_log`` evaluates a log-sum-exp over the whole
(N, K) matrix twice per iteration; ours absorbs the log-domain potentials into an exp-domain
kernel and iterates with two matrix-vector products, re-absorbing only when the scalings
drift. Both stop at the same relative class-marginal error.

    python benchmarks/sinkhorn_speed.py            # N = 20000, K = 200
    python benchmarks/sinkhorn_speed.py --n 50000 --k 1000 --skip-pot
    python benchmarks/sinkhorn_speed.py --warmup 1 --repeats 5 --json sinkhorn.json

Each solver is timed by ``benchmarks/_harness.py`` (warm-up calls, then the median of the repeats).
"""

from __future__ import annotations

import argparse

import torch
from _harness import add_arguments, measure, setup, write_json

from gpua.ot import marginal_error, sinkhorn


def structured_scores(n: int, k: int, d: int = 64, spread: float = 0.15, seed: int = 0) -> torch.Tensor:
    """Cosine scores of noisy samples to K random class directions (UCM-like structure)."""
    g = torch.Generator().manual_seed(seed)
    C = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    lab = torch.randint(0, k, (n,), generator=g)
    X = torch.nn.functional.normalize(C[lab] + spread * torch.randn(n, d, generator=g), dim=1)
    return X @ C.T


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--skip-pot", action="store_true")
    add_arguments(ap)
    args = ap.parse_args(argv)
    setup(args)
    S = structured_scores(args.n, args.k)
    b = torch.full((args.k,), 1.0 / args.k, dtype=torch.float64)
    print(f"N = {args.n}, K = {args.k}, eps = {args.eps}, tol = {args.tol} (relative class-marginal error)")
    out = {"n": args.n, "k": args.k, "eps": args.eps, "tol": args.tol, "solvers": {}}
    for solver in ("torch", "pot"):
        if solver == "pot" and args.skip_pot:
            continue
        res, m = measure(lambda: sinkhorn(S, args.eps, tol=args.tol, max_iter=5000, solver=solver), warmup=args.warmup, repeats=args.repeats)
        err = marginal_error(res.plan.double(), b)
        out["solvers"][solver] = {**m.as_dict(), "iterations": res.n_iter, "marginal_error": err}
        print(f"  {solver:<6} {m.seconds:8.2f} s (median of {m.repeats})  {res.n_iter:5d} iterations  marginal error {err:.2e}")
    times = {k: v["seconds"] for k, v in out["solvers"].items()}
    if "pot" in times:
        print(f"  POT / gpua time ratio: {times['pot'] / times['torch']:.1f}x")
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
