"""The ``gpua`` command line.

Every sub-command lives in this package, one module per family (``_SUBCOMMAND_MODULES``); each
module exposes ``add_subcommands(subparsers)``, which adds its parsers with
``set_defaults(func=handler)``; a handler takes the parsed arguments and returns an exit code.
Handlers import the library (torch, encoders...) inside their bodies, so building the parser
stays cheap.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import warnings

from .. import __version__
from .._errors import GPUAError

_SUBCOMMAND_MODULES = (
    "gpua.cli.extract",  # extract
    "gpua.cli.features",  # fit, evaluate, predict, compare
    "gpua.cli.demo",  # demo
    "gpua.cli.segment",  # fit-seg, segment, evaluate-seg
    "gpua.cli.calibrate",  # calibrate longtail | federated
    "gpua.cli.classify",  # classify
    "gpua.cli.benchmark",  # benchmark
    "gpua.cli.cache",  # cache list | clean
)


#: Pillow's DecompressionBombWarning: it names no file, and gpua reads such a photo whole (one over
#: twice the limit is refused per file, named): a 108-megapixel photo is no attack to warn about.
_PILLOW_SIZE_WARNING = re.compile(r"Image size \(\d+ pixels\) exceeds limit of \d+ pixels, could be decompression bomb")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the text already names one.

    Options whose default is None, and switches (``--no-resume``, whatever their stored default),
    get nothing appended: there the help says what happens without them. A default of 0 is shown
    (``--seed``: ``0 == False``, and it was hidden). A list default is shown as it is typed: values
    of an option that takes several (``nargs="+"``) separated by spaces, others by commas.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        # Identity, not ==: 0 and 0.0 equal False, and a seed's default 0 was left unsaid.
        if "%(default)" in text or "default" in text.lower() or default is None or default is False or default is argparse.SUPPRESS:
            return text
        if action.nargs == 0:  # a switch (store_true/false/const): its help says what it does; "(default: True)" misleads
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text
        if isinstance(default, (list, tuple)):
            shown = (" " if action.nargs in ("+", "*") else ",").join(map(str, default)).replace("%", "%%")
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})"


def iter_parsers(parser: argparse.ArgumentParser):
    """``parser`` and every sub-command parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from iter_parsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpua",
        description="Geometry-Preserving Unsupervised Alignment: map vision foundation model "
        "features into a vision-language model's text space, without labels.",
    )
    parser.add_argument("--version", action="version", version=f"gpua {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).add_subcommands(sub)
    for p in iter_parsers(parser):
        p.formatter_class = HelpFormatter
        # A flag's prefix is not the flag: `classify --model m.gpua` (predict's input flag) was read as
        # classify's --model-out and wrote a new model over the user's (an output may replace a model).
        p.allow_abbrev = False
    return parser


#: The exit status when stdout's reader has gone (``gpua ... | head -1``): 128 + SIGPIPE, what a shell
#: reports for a program that the closed pipe stopped (``cat``, ``yes``), and not gpua's error status 2.
EXIT_BROKEN_PIPE = 141


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush has nowhere to fail.

    The recipe of the Python docs ("Note on SIGPIPE", :mod:`signal`); a replaced stdout without a
    file descriptor (a test's capture) is left alone.
    """
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a reader that left shows here (and is handled), not at interpreter exit
    except BrokenPipeError:  # the reader of stdout stopped early (| head): the Unix way is to stop quietly
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub-)command parser that ``args`` came through: ``gpua calibrate longtail``'s for its arguments."""
    while True:
        action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, action.dest, None) if action is not None else None
        if name is None or name not in action.choices:
            return parser
        parser = action.choices[name]


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Said by the command that was given them, under its usage (was: gpua's top-level usage and
        # "gpua: error: unrecognized arguments", which named no command).
        hint = ""
        if getattr(args, "command", None) == "classify" and "--model" in unknown:
            hint = ("; classify fits its own model (--model-out FILE keeps it): to classify with a fitted model, encode the "
                    "photos with `gpua extract`, then run `gpua predict --model FILE --features ...`")
        _chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            # A library warning (classes matched by index, encoders that differ...) is one line, and
            # said once: a folder read twice in one command (as the photos and as the pool) would
            # repeat what it holds.
            shown: set[str] = set()

            def show(message, *_args, **_kwargs) -> None:
                if _PILLOW_SIZE_WARNING.match(str(message)):
                    return
                if str(message) not in shown:
                    shown.add(str(message))
                    print(f"gpua {args.command}: warning: {message}", file=sys.stderr)

            warnings.showwarning = show
            return int(args.func(args) or 0)
    except GPUAError as exc:
        print(f"gpua {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise  # not a file-system error: main() ends quietly
    except OSError as exc:  # the system refused a read or write (disk full, permissions): one line too
        print(f"gpua {args.command}: error: {exc.strerror or exc} ({exc.filename or 'no file named'}); "
              "free space or fix the permissions and run again.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = getattr(args, "on_interrupt", None)
        if callable(hint):  # a hint that depends on what the command had done (fit's checkpoint)
            hint = hint(args)
        print(f"gpua {args.command}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
