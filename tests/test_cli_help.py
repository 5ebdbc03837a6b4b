"""Every option of every command has help text, and shows its default."""

import argparse

import pytest

from gpua.cli import build_parser
from gpua.cli import iter_parsers as walk_parsers


def _options():
    for parser in walk_parsers(build_parser()):
        for action in parser._actions:
            if action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                yield parser, action


def test_every_option_has_help():
    missing = [f"{p.prog} {a.option_strings[0]}" for p, a in _options() if not (a.help or "").strip()]
    assert not missing, missing


def test_every_default_is_shown():
    hidden = []
    for p, a in _options():
        if a.default in (None, False, argparse.SUPPRESS) or a.nargs == 0:  # switches say what they do, not "(default: True)"
            continue
        text = p.formatter_class(p.prog)._get_help_string(a) % {"default": a.default, "prog": p.prog}
        if "default" not in text.lower():
            hidden.append(f"{p.prog} {a.option_strings[0]}")
    assert not hidden, hidden
    helped = build_parser()._subparsers._group_actions[0].choices["extract"].format_help()
    assert "(default: 64)" in helped  # --batch-size
    assert "auto" in helped and "80" in helped  # the templates default is named
    assert "recompute everything\n" in helped and "(default: True)" not in helped  # --no-resume: not "default: True"


def test_every_command_is_walked():
    names = {p.prog.split()[-1] for p in walk_parsers(build_parser())}
    assert {"extract", "fit", "evaluate", "predict", "compare", "classify", "benchmark", "fit-seg", "segment", "evaluate-seg",
            "longtail", "federated", "demo"} <= names


def test_an_unknown_flag_is_said_by_its_command(capsys):
    """Was: gpua's top-level usage and "gpua: error: unrecognized arguments", naming no command."""
    from gpua.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["fit", "--train", "x.npz", "--out", "y.gpua", "--bogus"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "usage: gpua fit" in err and "gpua fit: error: unrecognized arguments: --bogus" in err
    with pytest.raises(SystemExit):
        main(["calibrate", "longtail", "--features", "x.npz", "--nope"])
    assert "gpua calibrate longtail: error: unrecognized arguments: --nope" in capsys.readouterr().err
