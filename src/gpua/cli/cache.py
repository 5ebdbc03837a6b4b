"""``gpua cache [list] | clean``: what the cache folder holds, and removing what no run needs.

Examples::

    gpua cache                          # what is there: derived models, feature caches, downloads
    gpua cache clean --dry-run          # what `clean` would remove
    gpua cache clean                    # stale derived model files, orphan records, dead temp files
    gpua cache clean --unrecorded       # and an earlier release's model files, unused since
    gpua cache clean --features --older-than 30   # and feature caches unused for 30 days

See :mod:`gpua.cache`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_subcommands"]


def _days(text: str) -> float:
    """An argparse ``type``: a finite number of days, 0 or more (``--older-than``)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} must be a number of days, 0 or more, e.g. 30")
    return value


def _cache_dir(args) -> str | None:
    """``--cache-dir``, given before the action (``gpua cache --cache-dir D clean``) or after it.
    An empty one is refused: ``--cache-dir "$CACHE"`` with ``CACHE`` unset would have cleaned the
    default cache."""
    from .._errors import GPUAError

    given = [v for v in (getattr(args, "cache_dir", None), args.cache_dir_before) if v is not None]
    if any(not v.strip() for v in given):
        raise GPUAError("--cache-dir is empty; pass the cache folder (or leave --cache-dir out for $GPUA_CACHE_DIR, else the "
                        "user cache).")
    return given[0] if given else None


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _where(args) -> tuple[Path, bool]:
    """The cache folder ``--cache-dir`` names, and whether it is the default one (:func:`gpua.cache._root`)."""
    from ..cache import _root

    return _root(_cache_dir(args))


def _list(args) -> int:
    from ..cache import _is_ours, cache_entries

    root, default = _where(args)
    entries = cache_entries(_cache_dir(args))
    tagged = "" if not root.is_dir() or _is_ours(root, default) else " (not tagged as gpua's cache: `clean` leaves it alone)"
    print(f"gpua cache: {root}{tagged}")
    if not entries:
        print("empty" if root.is_dir() else "not made yet (the first run that needs it makes it)")
        return 0
    for e in entries:
        print(f"  {e.kind:9s} {e.state:10s} {_size(e.bytes):>9s}  {e.path.relative_to(root)}  ({e.why})")
    def total(kind: str) -> str:
        return _size(sum(e.bytes for e in entries if e.kind == kind))

    unrecorded = sum(e.bytes for e in entries if (e.kind, e.state) == ("derived", "unrecorded"))
    print(f"total {_size(sum(e.bytes for e in entries))}: derived model files {total('derived')}; stale or left over "
          f"{_size(sum(e.bytes for e in entries if e.removable))} (`gpua cache clean` removes those: a run that needs one "
          f"makes it anew)" + (f"; an earlier release's, unused since {_size(unrecorded)} (`--unrecorded`)" if unrecorded else "")
          + f"; feature caches {total('features')} (`gpua cache clean --features`: re-extracted on their next use); "
          f"downloads {total('download')} (kept)")
    return 0


def _clean(args) -> int:
    from ..cache import clean_cache

    from .._errors import GPUAError

    if args.older_than is not None and not args.features:
        raise GPUAError("--older-than selects feature caches by age; add --features (derived model files go by their "
                        "sources, not their age).")
    root = _where(args)[0]
    removed, skipped, failed = clean_cache(_cache_dir(args), features=args.features, unrecorded=args.unrecorded,
                                           older_than_days=args.older_than, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for e in removed:
        print(f"{verb} {e.path.relative_to(root)} ({_size(e.bytes)}: {e.kind}, {e.state})")
    for e in skipped:
        print(f"kept {e.path.relative_to(root)}: a running gpua is writing it (or wrote it just now)")
    for e, why in failed:
        print(f"gpua cache clean: could not remove {e.path.relative_to(root)}: {why}", file=sys.stderr)
    print(f"gpua cache clean: {verb} {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}, {_size(sum(e.bytes for e in removed))}, "
          f"from {root}" + ("" if args.features else "; feature caches kept (--features removes them)"))
    return 2 if failed else 0


def add_subcommands(subparsers) -> None:
    """Add ``gpua cache`` to the ``gpua`` parser."""
    p = subparsers.add_parser(
        "cache",
        help="show the cache folder's models and features, and remove what no run needs",
        description="List what gpua's cache folder holds (derived model files, feature caches, downloads), or clean it. "
        "Downloads from a hub are never removed.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", metavar="DIR", help="the cache folder (default: $GPUA_CACHE_DIR or the user cache)")
    p.add_argument("--cache-dir", dest="cache_dir_before", metavar="DIR", help="the cache folder (default: $GPUA_CACHE_DIR or the user cache)")
    sub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    p.set_defaults(func=_list)
    ls = sub.add_parser("list", parents=[common], help="what the cache holds, with sizes (the default)")
    ls.set_defaults(func=_list)
    cl = sub.add_parser("clean", parents=[common], help="remove stale derived model files (and unrecorded ones and feature caches, when asked)",
                        description="Remove the derived model files no run reads again (their source changed or is gone), "
                        "records without their file and temp files killed runs left; with --unrecorded, also an earlier "
                        "release's model files no run has used since; with --features, also the feature caches, which the "
                        "next run re-extracts. Downloads are never removed.")
    cl.add_argument("--features", action="store_true", help="also remove feature caches (skipping any a running extraction holds)")
    cl.add_argument("--unrecorded", action="store_true",
                    help="also remove derived model files an earlier release wrote and no run has used since (made anew "
                         "when needed; an older gpua sharing the cache never records its files)")
    cl.add_argument("--older-than", type=_days, metavar="DAYS",
                    help="with --features: only feature caches no command has written or reused for DAYS days")
    cl.add_argument("--dry-run", action="store_true", help="remove nothing; print what would go")
    cl.set_defaults(func=_clean)
