"""Memory and seconds of the cache check of ``gpua extract`` on an up-to-date feature file.

Every re-run of an extraction whose output holds the same features (every cached ``gpua
classify`` run) checks that output's checksum before it answers "up to date". The check now
reads the file a block of 8 MiB at a time (``gpua.extract._damage`` through
``gpua._integrity.streamed_digest``); the baseline, measured in the same run on the same file,
is what the release before did: ``load_features``, every array in memory at once. Prints each
one's peak RSS above the RSS before it and its seconds, and the ratio of the two peaks.

    python benchmarks/cache_check_memory.py                        # 200,000 rows of 384 + 512 float32
    python benchmarks/cache_check_memory.py --rows 2000            # quick
    python benchmarks/cache_check_memory.py --format safetensors --json results/cache_check_memory.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _harness import OutputPath, machine_line, rss_bytes, timer, write_json

MB = 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000, help="images in the feature file (default 200,000)")
    ap.add_argument("--widths", type=int, nargs=2, default=(384, 512), metavar=("D_VFM", "D_VLM"))
    ap.add_argument("--format", choices=("npz", "safetensors"), default="npz")
    ap.add_argument("--json", action=OutputPath, default=None, help="write the figures here (atomically, with the machine record)")
    args = ap.parse_args(argv)
    if args.rows < 1 or min(args.widths) < 1:
        ap.error("--rows and --widths must be positive")

    from gpua.extract import _damage
    from gpua.features import load_features, save_features

    print(machine_line(), flush=True)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"features.{args.format}"
        Z = rng.standard_normal((args.rows, args.widths[0]), dtype=np.float32)
        X = rng.standard_normal((args.rows, args.widths[1]), dtype=np.float32)
        save_features(path, vfm_features=Z, vlm_features=X, text_prototypes=rng.standard_normal((10, args.widths[1])),
                      labels=rng.integers(0, 10, args.rows), classnames=[f"c{k}" for k in range(10)],
                      image_ids=[f"img/{i:08d}.jpg" for i in range(args.rows)])
        del Z, X
        size = path.stat().st_size / MB
        before = rss_bytes() / MB
        with timer() as streamed:
            damage = _damage(path)
        if damage is not None:
            raise SystemExit(f"the check called a whole file damaged: {damage}")
        streamed_extra = max(streamed.peak_rss / MB - before, 0.0)
        before_whole = rss_bytes() / MB
        with timer() as whole:
            fs = load_features(path, validate=False)
        whole_extra = max(whole.peak_rss / MB - before_whole, 0.0)
        del fs
    ratio = streamed_extra / max(whole_extra, 1e-9)
    print(f"feature file: {args.rows} rows of {args.widths[0]} + {args.widths[1]} float32, {args.format}, {size:.0f} MB")
    print(f"cache check, a block at a time: {streamed_extra:.0f} MB above the RSS before it, {streamed.seconds:.2f} s")
    print(f"the release before's check (load_features, baseline of the same run): {whole_extra:.0f} MB above it, "
          f"{whole.seconds:.2f} s")
    print(f"memory of the check against the baseline: {ratio:.3f}x")
    if args.json:
        write_json(args.json, {"args": vars(args), "file_mb": size, "streamed_extra_mb": streamed_extra,
                               "streamed_seconds": streamed.seconds, "whole_extra_mb": whole_extra,
                               "whole_seconds": whole.seconds, "ratio": ratio})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
