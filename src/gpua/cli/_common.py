"""What several ``gpua`` commands share: GPUA parameters, output-path checks, Dask cluster addresses, fit progress.

``--param NAME=VALUE`` is checked against :data:`gpua.fitting.PARAMETERS` (the table every fit
checks), and ``--list-params`` prints that table with the defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from .._errors import GPUAError

__all__ = [
    "DEFAULT_VFM",
    "DEFAULT_VLM",
    "parse_params",
    "add_param_arguments",
    "parameter_listing",
    "add_estimator_arguments",
    "add_extraction_arguments",
    "estimator_overrides",
    "refuse_idle_settings",
    "parse_cluster",
    "check_paths",
    "check_cache_dir",
    "check_device_flag",
    "check_seed_flag",
    "with_flags",
    "connect_timeout_of",
    "add_quiet_argument",
    "add_json_argument",
    "JsonOutput",
    "CsvOutput",
    "positive_int",
    "positive_seconds",
    "FitProgress",
    "self_learning_line",
    "fit_rounds_note",
    "refinement_note",
    "proba_scale_note",
]

#: The encoders a command uses when not told (``classify``, ``fit-seg``): the offline stand-ins,
#: which need no download. As :data:`gpua.classify.DEFAULT_VFM` / ``DEFAULT_VLM``, not imported
#: from there: building the parser stays cheap (a test holds them equal).
DEFAULT_VFM = "offline:dinov2-s"
DEFAULT_VLM = "offline:semantic-lite0"


def _flag(attr: str) -> str:
    return "--" + attr.replace("_", "-")


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1.

    >>> counted(1, "image"), counted(3, "shard"), counted(10, "class")
    ('1 image', '3 shards', '10 classes')
    """
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def check_paths(
    args: argparse.Namespace,
    *,
    inputs: Sequence[str] = (),
    outputs: Sequence[tuple[str, str]] = (),
    extra_inputs: Sequence[tuple[str, str | None]] = (),
    extra_outputs: Sequence[tuple[str, str | None, str]] = (),
    served: Sequence[str] = (),
) -> None:
    """Refuse, before any work, outputs that would destroy an input or cannot be written.

    Every handler calls it first: an output equal to an input (also through links), a file
    output that would replace a file inside an input folder, a folder output that holds an
    input, two outputs on one path, an output that is a folder where a file is written (or the
    reverse), that lies under a file or in a folder that cannot be written, all stop the command
    with one line naming both arguments (:func:`gpua._atomic.check_output`).

    Parameters
    ----------
    args : argparse.Namespace
    inputs : sequence of str
        Attributes of ``args`` holding paths the command reads (unset ones are skipped).
    outputs : sequence of (attribute, kind)
        Attributes holding paths the command writes; kind ``"file"`` (one file), ``"table"`` (a
        CSV or JSON report: as ``"file"``, and a name ending like an image's is refused, since text
        there is a slip that could replace a photo, as is an existing file that is not a report gpua
        wrote), ``"plot"`` (as ``"file"``, and an existing file that is not a plot gpua wrote is
        refused: :func:`gpua._atomic.check_plot_target`), ``"model"`` or
        ``"features"`` (a file holding that: see ``holds`` of :func:`gpua._atomic.check_output`),
        ``"folder"`` (files are written into it) or ``"tree"`` (replaced as a whole).
    extra_inputs : sequence of (name, path)
        Paths read that no argument names directly (a model's sidecar file).
    extra_outputs : sequence of (name, path, kind)
        Paths written that no argument names directly.
    served : sequence of str
        Attributes of outputs that an up-to-date copy may serve as they are (``extract --out``, a
        finished ``fit --checkpoint``): on read-only storage they are not refused here; the
        library refuses them only when it must write there.
    """
    from .._atomic import _has_image_ending, check_output, check_plot_target, check_report_target

    ins = [(_flag(a), getattr(args, a, None)) for a in inputs] + list(extra_inputs)
    outs = [(_flag(a), getattr(args, a, None), kind) for a, kind in outputs] + list(extra_outputs)
    for name, path, _ in outs:  # an empty name would be resolved to the working folder, late and unnamed
        if path is not None and str(path) == "":
            raise GPUAError(f"{name} '': an empty name; give a file or folder name.")
    for name, path in ins:  # was: `--images ''` (an unset shell variable) read the working folder
        if path is not None and str(path) == "":
            raise GPUAError(f"{name} '': an empty name (an unset shell variable?); give a file or folder name, or "
                            f"./ for the working folder.")
    # --json - is stdout, not a file named "-"
    outs = [(n, p, k) for n, p, k in outs if p is not None and not (n == "--json" and str(p) == STDOUT)]
    for name, path, kind in outs:  # commands that take "-" for stdout leave that output out of ``outputs``
        if str(path) == STDOUT:
            what = "a file" if kind in ("file", "model", "features", "table", "plot") else "a folder"
            raise GPUAError(f"{name} - : this command writes {what} there, not to stdout; give a name (./- if a {what[2:]} "
                            f"named '-' is meant).")
    served_flags = {_flag(a) for a in served}
    for i, (name, path, kind) in enumerate(outs):
        holds = kind if kind in ("model", "features") else "report"
        check_output(path, name, kind="file" if kind in ("model", "features", "table", "plot") else kind, inputs=ins,
                     distinct_from=[(n, p) for n, p, _ in outs[:i]], holds=holds,
                     writable=not (name in served_flags and os.path.lexists(path)))
        if kind == "table" and _has_image_ending(Path(path)):  # after: an input it would replace is named first
            raise GPUAError(f"{name} {str(path)!r} ends like an image, but this command writes text (CSV or JSON) there; "
                            "give a name ending in .csv or .json.")
        if kind == "table":
            check_report_target(Path(path), path, name)
        if kind == "plot":
            check_plot_target(Path(path).expanduser(), path, name)


def parse_params(pairs: list[str] | None) -> dict:
    """``["lam=0.8", "refine=false"]`` -> ``{"lam": 0.8, "refine": False}``, each name and value checked.

    Values are read as JSON (or the bare word: ``query=vfm``, ``random_state=none``) and checked
    against the parameter's constraint; an unknown name gets the closest valid one suggested.
    """
    from ..fitting import PARAMETERS
    from ..params import parse_params as parse_checked

    return parse_checked(pairs, PARAMETERS, "GPUA")


def parameter_listing(defaults: dict | None = None) -> str:
    """Every GPUA parameter with its default and admissible values (``--list-params``);
    ``defaults``: the values a command sets differently (``fit-seg``'s ``query="vfm"``)."""
    from ..estimator import GPUA
    from ..params import format_parameter_table

    return format_parameter_table(GPUA, defaults)


class _ListParams(argparse.Action):
    """``--list-params``: print :func:`parameter_listing` and exit, whatever else is missing."""

    def __init__(self, option_strings, dest, defaults=None, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=kwargs.get("help"))
        self.defaults = defaults

    def __call__(self, parser, namespace, values, option_string=None):
        print(parameter_listing(self.defaults))
        sys.stdout.flush()  # a closed pipe (| head) raises here, for gpua.cli.main to end quietly, not at exit
        parser.exit(0)


def add_param_arguments(p, defaults: dict | None = None) -> None:
    """``--param NAME=VALUE`` (repeatable) and ``--list-params`` on a parser or argument group
    (``defaults``: parameters the command sets differently from the library, listed as its)."""
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="any GPUA parameter (repeatable); see --list-params")
    p.add_argument("--list-params", action=_ListParams, defaults=defaults,
                   help="list the GPUA parameters with their defaults and ranges, and exit")


def add_estimator_arguments(p: argparse.ArgumentParser) -> None:
    from ..estimator import GPUA
    from ..params import parameter_table

    default = {row["name"]: row["default"] for row in parameter_table(GPUA)}
    g = p.add_argument_group("GPUA parameters (defaults are the library's)")
    g.add_argument("--query", choices=["vfm", "fused"], help=f"map VFM features alone, or [VFM, VLM] (default {default['query']})")
    g.add_argument("--lam", type=float, help=f"weight of the VLM term in UCM (default {default['lam']})")
    g.add_argument("--eps", type=float, help=f"entropic regularisation of the OT step (default {default['eps']})")
    g.add_argument("--n-steps", type=int, help=f"refinement steps at most (default {default['n_steps']})")
    g.add_argument("--no-refine", action="store_true", help="Procrustes only, no THS refinement")
    g.add_argument("--device", help=f"torch device of the fit: cpu, cuda, cuda:N or auto (default {default['device']})")
    g.add_argument("--seed", type=int, help=f"seed of the fit's random draws, 0 or more (GPUA's random_state; default {default['random_state']})")
    add_param_arguments(g)


def add_extraction_arguments(p: argparse.ArgumentParser, benchmark: str = "a known benchmark's own") -> None:
    """The options of commands that extract features on the way (classify, benchmark); ``benchmark``:
    which benchmark's templates ``auto`` takes (``classify`` goes by ``--classnames``, not the folder)."""
    p.add_argument("--templates", default="auto", metavar="NAME|FILE",
                   help=f"prompt templates ('auto': {benchmark}, else CLIP's 80 ImageNet templates)")
    p.add_argument("--cache-dir", help="feature cache (default: $GPUA_CACHE_DIR or the user cache)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    add_workers_argument(p)
    add_quiet_argument(p)


def add_workers_argument(p) -> None:
    """``--workers``: threads that decode and prepare images ahead of the encoders."""
    from ..extract import MAX_WORKERS

    p.add_argument("--workers", type=int_at_least(1, MAX_WORKERS), default=None, metavar="N",
                   help="threads that decode and prepare images while the encoders run (default: the CPU count, at most 8; "
                        "1: none); the features are the same whatever N")


def add_quiet_argument(p, dest: str = "quiet") -> None:
    """``--quiet`` and ``--no-progress``, one switch under two names: ``extract``, ``classify`` and
    ``benchmark`` said ``--quiet``, ``fit`` and ``fit-seg`` ``--no-progress``, and each refused the other."""
    p.add_argument("--quiet", "--no-progress", dest=dest, action="store_true", help="no progress bars")


def check_cache_dir(args, folders: Sequence[tuple[str, str]] = (), replaced: Sequence[tuple[str, str]] = ()) -> None:
    """``--cache-dir`` (else ``$GPUA_CACHE_DIR``) must be a folder (or not exist yet): a file there is
    named now, by the setting that gave it, not as a deep output path later. Nor may it lie in
    ``--images``, ``--pool``, ``--data`` or one of ``folders`` (``(flag, folder)``), whose
    sub-folders the next run would read as classes, nor in one of ``replaced`` (``(what,
    folder)``, existing or not): a folder the command writes and replaces whole (a shard set, an
    extraction's parts), which then refuses the cache's files in it after all the work."""
    import os

    where, name = getattr(args, "cache_dir", None), "--cache-dir"
    if where is None:
        where, name = os.environ.get("GPUA_CACHE_DIR") or None, "$GPUA_CACHE_DIR"
        if where is None:
            return
    if Path(where).expanduser().exists() and not Path(where).expanduser().is_dir():
        fix = "pass a folder" if name == "--cache-dir" else "set it to a folder, or pass --cache-dir"
        raise GPUAError(f"{name} {where!r} is a file; {fix} for the cache (it is created if missing).")
    cache = Path(where).expanduser().resolve()
    for what, folder in replaced:
        top = Path(folder).expanduser().resolve()
        if cache == top or top in cache.parents:
            raise GPUAError(f"{name} {where!r} lies in {what} {folder!r}, a folder this command writes and replaces whole; "
                            "pass a cache folder outside it.")
    named = [(f"--{flag}", getattr(args, flag, None)) for flag in ("images", "pool", "data")]
    for flag, folder in [*named, *folders]:
        if not isinstance(folder, str) or not Path(folder).expanduser().is_dir():
            continue
        top = Path(folder).expanduser().resolve()
        if cache == top or (top in cache.parents and not any(p.startswith(".") for p in cache.relative_to(top).parts)):
            # the cache's folders there would be read as classes (or its files as images) by the next run
            raise GPUAError(f"{name} {where!r} lies in {flag} {folder!r}, whose sub-folders the next run would read "
                            f"as classes; pass a cache folder outside it, or a hidden one inside ({str(Path(folder) / '.gpua-cache')!r}).")


def int_at_least(minimum: int, maximum: int | None = None):
    """An argparse ``type``: an integer of ``minimum`` or more (and ``maximum`` or less, when given),
    refused while parsing, not after the work."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be {minimum} or more")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} must be from {minimum} to {maximum}")
        return value

    return parse


#: ``--top-k 0`` and the like, refused while parsing.
positive_int = int_at_least(1)


def positive_seconds(text: str) -> float:
    """An argparse ``type``: a finite number of seconds above 0 (``--connect-timeout``), refused while parsing."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds above 0, e.g. 10")
    return value


#: ``--json -``: the JSON is printed on stdout instead of written to a file.
STDOUT = "-"


def add_json_argument(p, help: str) -> None:
    """``--json FILE``, ``--json -`` or ``--json`` alone (stdout), as ``evaluate-seg`` takes it."""
    p.add_argument("--json", nargs="?", const=STDOUT, metavar="FILE",
                   help=f"{help} ('-' or no value: print the JSON on stdout, and the rest of the output on stderr)")


class _StdoutOrFile:
    """An output flag that names a file, or ``-`` for stdout alone: inside the ``with`` block,
    with ``-``, everything the command prints goes to stderr instead, so stdout holds the output
    alone. Subclasses write the output itself."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.to_stdout = path == STDOUT
        self._stdout = sys.stdout  # the real one, before the redirection
        self._redirect = None

    def __enter__(self):
        if self.to_stdout:
            import contextlib

            self._redirect = contextlib.redirect_stdout(sys.stderr)
            self._redirect.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._redirect is not None:
            self._redirect.__exit__(*exc)
            self._redirect = None


class JsonOutput(_StdoutOrFile):
    """Where a command's ``--json`` goes: a file (written atomically), or stdout alone.

    With ``--json -`` everything the command prints inside the ``with`` block (tables, notes,
    ``wrote ...``) goes to stderr, so that stdout holds the JSON alone (``gpua evaluate ... --json
    - | jq .metrics``)::

        with JsonOutput(args.json) as out:
            ...  # prints
            out.write(result)
    """

    def write(self, obj) -> None:
        """Strict JSON of ``obj`` (non-finite numbers as null) to the file or to stdout; nothing without ``--json``."""
        from ..report import json_text, mark_report, write_json

        if self.path is None:
            return
        if self.to_stdout:
            self._stdout.write(json_text(mark_report(obj)) + "\n")
            self._stdout.flush()
        else:
            write_json(self.path, obj)
            print(f"wrote {self.path}")


class CsvOutput(_StdoutOrFile):
    """Where a command's ``--out FILE.csv`` goes: the file (written atomically), or stdout alone (``--out -``).

    As :class:`JsonOutput`'s: with ``--out -`` everything the command prints inside the ``with``
    block goes to stderr, so that stdout holds the CSV alone (``gpua predict ... --out - | head``);
    no file named ``-`` is ever written::

        with CsvOutput(args.out) as out:
            n = out.write_with(lambda path: write_predictions(path, ...))
            print(f"wrote {n} predictions to {out.name}")
    """

    @property
    def name(self) -> str:
        """How messages name the output: the file, or ``stdout``."""
        return "stdout" if self.to_stdout else str(self.path)

    def write_with(self, writer):
        """``writer(path)`` (an atomic file writer) on the file, or on a temporary file then copied to stdout; its result."""
        if not self.to_stdout:
            return writer(self.path)
        import os
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory(prefix="gpua-stdout-") as tmp:
            path = os.path.join(tmp, "out.csv")
            result = writer(path)  # the whole file first: a failure leaves stdout empty, not a partial CSV
            self._stdout.flush()
            raw = getattr(self._stdout, "buffer", None)
            with open(path, "rb") as fh:
                if raw is not None:  # the bytes a file gets (UTF-8, the CSV's own line ends)
                    shutil.copyfileobj(fh, raw)
                    raw.flush()
                else:
                    self._stdout.write(fh.read().decode("utf-8"))
                    self._stdout.flush()
        return result


def with_flags(message: str, flags: dict[str, str], *, bare_names: bool = False) -> str:
    """``message`` with the library's argument names written as the command's flags: ``crop_size=8``
    -> ``--crop 8`` (``flags`` maps names to flags). Whole names only, so a flag already written is
    kept (not ``----crop``). ``bare_names`` also rewrites a name without ``=`` (``crop_size must
    be...``): only for names that cannot be a word of the message's prose, unlike ``out``."""
    import re

    for name, flag in flags.items():
        message = re.sub(rf"(?<![\w-]){name}= ?", f"{flag} ", message)  # "split= one of" -> "--split one of"
        if bare_names:
            message = re.sub(rf"(?<![\w-]){name}(?!\w)", flag, message)
    return message


def check_seed_flag(value: int, flag: str = "--seed") -> None:
    """A seed flag's value: an integer, 0 or more (the parameter table's wording, "None or an int in
    [0, 2**63-1]", names a None no flag can give)."""
    from ..params import SEED, check_param

    if isinstance(value, int) and value < 0:
        raise GPUAError(f"{flag}={value} must be an integer, 0 or more (a seed such as 0).")
    check_param(flag, value, SEED)


def check_device_flag(value: str | None, flag: str = "--device") -> None:
    """A ``--device`` given on the command line (cpu, cuda, cuda:N, auto), checked before any work:
    a typo such as ``tpu`` is said even where no tensor would reach the device."""
    from .._backend import resolve_device
    from ..fitting import PARAMETERS
    from ..params import check_param

    if value is not None:
        check_param(flag, value, PARAMETERS["device"])
        try:  # and there: `--device cuda` on a machine without a GPU is said now, naming the flag
            resolve_device(value, allow_mps=True)
        except GPUAError as exc:
            raise GPUAError(with_flags(str(exc), {"device": flag})) from None


def estimator_overrides(args) -> dict:
    """The GPUA parameters given by ``--param`` and the named flags, each checked now (naming the
    flag), before any image is encoded or file read.

    A flag and a ``--param`` that set one parameter to different values (``--seed 1 --param
    random_state=2``) are refused: neither would say which one the fit used.
    """
    from ..fitting import PARAMETERS
    from ..params import check_param

    kw = parse_params(args.param)
    flags = [(name, _flag(attr), getattr(args, attr, None))
             for name, attr in (("query", "query"), ("lam", "lam"), ("eps", "eps"), ("n_steps", "n_steps"), ("device", "device"), ("random_state", "seed"))]
    if getattr(args, "no_refine", False):
        flags.append(("refine", "--no-refine", False))
    for name, flag, v in flags:
        if v is None:
            continue
        if name == "random_state":
            check_seed_flag(v, flag)
        if name != "refine":
            check_param(flag, v, PARAMETERS[name])
        if name in kw and kw[name] != v:
            raise GPUAError(f"{flag if name == 'refine' else f'{flag} {v}'} and --param {name}={kw[name]!r} both set {name}, "
                            "to different values; give one of them.")
        kw[name] = v
    if "device" in kw:  # given by --device or --param device=...: is it there?
        check_device_flag(kw["device"], "--device" if getattr(args, "device", None) is not None else "--param device")
    refuse_idle_settings(kw)
    return kw


def refuse_idle_settings(kw: dict) -> None:
    """Refuse settings that would change nothing: was, `fit --no-refine --param lr=0.1` or
    `--param temperature=0.5` (cosine similarity, the default, takes none) ran without them, and
    the model file recorded them as if they had."""
    from ..baselines import REFINEMENT_ONLY
    from ..estimator import GPUA
    from ..fitting import IDLE_UNDER

    if kw.get("refine", True) is False:
        idle = [k for k in kw if k in REFINEMENT_ONLY]
        if idle:
            raise GPUAError(f"{', '.join(f'{k}={kw[k]!r}' for k in idle)}: {'settings' if len(idle) > 1 else 'a setting'} of the "
                            "THS refinement, which --no-refine turns off; drop it, or refine.")
    defaults = GPUA().get_params()
    for name in kw:
        if name in IDLE_UNDER:
            other, values, why = IDLE_UNDER[name]
            value = kw.get(other, defaults[other])
            if value in values:
                given = "" if other in kw else " (the default)"
                raise GPUAError(f"{name}={kw[name]!r} changes nothing: {other}={value!r}{given} {why}; drop it, or set "
                                f"{other} to another value.")


def parse_cluster(value: str | None):
    """``None`` | ``"local"`` | ``"4"`` (workers) | an address -> the ``cluster=`` argument."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value)
    if value == "local" or "://" in value or ":" in value:
        return value
    raise GPUAError(f"--cluster {value!r} is not understood; use 'local', a worker count, or tcp://HOST:8786.")


#: Seconds to wait for ``--cluster`` when ``--connect-timeout`` is not given (the library's default).
DEFAULT_CONNECT_TIMEOUT = 10.0


def connect_timeout_of(args) -> float:
    """``--connect-timeout``, or its default; given without ``--cluster`` (where nothing connects)
    it is warned about rather than ignored without a word."""
    import warnings

    if args.connect_timeout is None:
        return DEFAULT_CONNECT_TIMEOUT
    if getattr(args, "cluster", None) is None:
        warnings.warn(f"--connect-timeout {args.connect_timeout:g} is used only with --cluster (the seconds to wait for it); "
                      "without --cluster nothing connects, so it changes nothing: leave it out, or add --cluster.", stacklevel=2)
    return float(args.connect_timeout)


def self_learning_line(entry: dict) -> str:
    """The line a self-learning round's record (``history_["self_learning"]`` entry, round >= 1) prints."""
    what = ("kept" if entry.get("kept") else "rolled back") if entry.get("refit") else "settled, not refitted"
    return f"self-learning round {entry['round']}: {100 * float(entry['label_change']):.1f}% of the pseudo-labels changed; {what}"


def fit_rounds_note(history: dict) -> str:
    """``UCM 4 rounds`` for a fit's summary line, with its self-learning rounds when it ran any.

    ``history["ucm"]`` holds the last mining's rounds: after self-learning, the summary says so.
    """
    rounds = [r for r in history.get("self_learning") or [] if r.get("round")]
    note = f"UCM {len(history['ucm'])} rounds"
    if rounds:
        kept = sum(bool(r.get("kept") and r.get("refit")) for r in rounds)
        note += f" in the last of {len(rounds) + 1} minings; self-learning kept {kept} of {len(rounds)} round(s)"
    return note


def refinement_note(history: dict) -> str:
    """``6 refinement checkpoints`` for a fit's summary line, saying when the map kept is the Procrustes start.

    Refinement keeps the checkpoint of least held-out THS loss; when that is step 0, no step
    improved on the Procrustes map, and a GPUA row equal to ``procrustes_only``'s is that, not
    a bug (was: said nowhere).
    """
    curve = [c for c in history.get("refine") or [] if c.get("val_loss") is not None]
    note = f"{len(history.get('refine') or [])} refinement checkpoints"
    if len(curve) > 1 and min(curve, key=lambda c: c["val_loss"])["step"] == 0:
        note += ", the Procrustes map kept: no step lowered the held-out THS loss"
    return note


def proba_scale_note(model) -> str:
    """``; probabilities at softmax scale 41.3 ...`` for a fit's summary line, or "" when the fit chose no scale.

    The scale ``proba_scale="auto"`` chose on the pool (:mod:`gpua.probability`): the figure the
    probability column of ``predict`` and ``classify`` is read at, which a user would otherwise
    find only in the model file.
    """
    scale = getattr(model, "proba_scale_", None)
    return "" if scale is None else (f"; probabilities at softmax scale {scale:.3g}, chosen on the pool without labels "
                                     "(proba_scale=auto: as confident as the VLM's zero-shot there)")


class FitProgress:
    """Progress bars for an in-memory fit, fed by ``GPUA.fit(..., callback=...)``.

    One bar counts UCM rounds (with the plan change), the next refinement steps (with the
    held-out THS loss), as the streamed fit shows them; each self-learning round gets its own
    pair of bars (``self-learning 1: UCM`` ...) and a line saying how many pseudo-labels it
    changed and whether it was kept. ``enabled=False`` shows nothing.
    Use as ``with FitProgress(model, enabled) as cb: model.fit(..., callback=cb)``.
    """

    def __init__(self, model=None, enabled: bool = True):
        # Without the model (built later by a library call), GPUA's defaults size the bars.
        self.enabled = bool(enabled)
        self.max_rounds = int(getattr(model, "max_outer", 20))
        self.n_steps = int(getattr(model, "n_steps", 300)) if getattr(model, "refine", True) else 0
        self._ucm = self._refine = None
        self._pass = 0  # 0: the plain fit; r: self-learning round r
        self._stage = None  # the last entry's kind: "ucm", "refine" or "record"

    def _bar(self, desc: str, total: int, unit: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def _prefix(self) -> str:
        return f"self-learning {self._pass}: " if self._pass else ""

    def _close(self) -> None:
        for bar in (self._ucm, self._refine):
            if bar is not None:
                bar.close()
        self._ucm = self._refine = None

    def __call__(self, entry: dict) -> None:
        if not self.enabled:
            return
        if "label_change" in entry:  # a self-learning round's record (after its UCM and refinement)
            from tqdm.auto import tqdm

            self._close()
            self._stage = "record"
            if entry.get("round"):
                tqdm.write(self_learning_line(entry))
        elif "round" in entry:
            if self._stage in ("refine", "record"):  # a UCM after a refinement: the next self-learning round mines
                self._close()
                self._pass += 1
            self._stage = "ucm"
            if self._ucm is None:
                self._ucm = self._bar(self._prefix() + "UCM rounds", self.max_rounds, "round")
            self._ucm.update(1)
            self._ucm.set_postfix(plan_change=f"{entry.get('plan_change', float('nan')):.2g}", refresh=False)
        elif "step" in entry:
            if self._ucm is not None:
                self._ucm.close()
                self._ucm = None
            self._stage = "refine"
            if self._refine is None:
                self._refine = self._bar(self._prefix() + "refinement", max(self.n_steps, 1), "step")
            self._refine.update(max(int(entry["step"]) - self._refine.n, 0))
            self._refine.set_postfix(val_loss=f"{entry.get('val_loss', float('nan')):.4f}", refresh=False)

    def __enter__(self) -> "FitProgress":
        return self

    def __exit__(self, *exc) -> None:
        self._close()
