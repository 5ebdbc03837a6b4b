"""One concept, one flag, one behaviour across the ``gpua`` commands (a walk through every sub-command).

Each test names what a user met before it was fixed: ``--json -`` wrote a file named ``-``; a
progress switch called ``--quiet`` in one command and ``--no-progress`` in the next, each refused by
the other; ``extract`` counts refused by the library's argument names (or not at all); help that
hid a default of 0 and showed list defaults in a form the option refuses; errors that named no file.
"""

import json

import numpy as np
import pytest

from gpua.cli import build_parser, iter_parsers, main
from gpua.features import load_features, save_features


@pytest.fixture(scope="module")
def feature_files(planted, tmp_path_factory):
    """A labelled train/test pair, a narrower test file (other encoders), and a model fitted on train."""
    train, test = planted
    d = tmp_path_factory.mktemp("walk")
    paths = {}
    for name, part in (("train", train), ("test", test)):
        paths[name] = save_features(d / f"{name}.npz", vfm_features=part.vfm_features, vlm_features=part.vlm_features,
                                    text_prototypes=part.text_prototypes, labels=part.labels, classnames=part.classnames)
    paths["narrow"] = save_features(d / "narrow.npz", vfm_features=test.vfm_features[:, :20], vlm_features=test.vlm_features,
                                    text_prototypes=test.text_prototypes, labels=test.labels, classnames=test.classnames)
    paths["model"] = d / "m.gpua"
    assert main(["fit", "--train", str(paths["train"]), "--out", str(paths["model"]), "--n-steps", "5", "--no-progress"]) == 0
    return {k: str(v) for k, v in paths.items()}


def _parser_of(*names):
    parser = build_parser()
    for p in iter_parsers(parser):
        if p.prog == " ".join(("gpua", *names)):
            return p
    raise AssertionError(names)


def _help_of(parser, flag):
    action = next(a for a in parser._actions if flag in a.option_strings)
    return parser.formatter_class(parser.prog)._get_help_string(action) % {"default": action.default, "prog": parser.prog}


# -- --json -: the JSON on stdout, alone ------------------------------------------------------------------

def _argv(command, f, json_arg):
    return {
        "evaluate": ["evaluate", "--model", f["model"], "--test", f["test"]],
        "compare": ["compare", "--train", f["train"], "--test", f["test"], "--methods", "zero_shot,procrustes_only"],
        "calibrate": ["calibrate", "longtail", "--features", f["train"], "--test", f["test"], "--imbalance", "10",
                      "--methods", "plain"],
    }[command] + json_arg


@pytest.mark.parametrize("command", ["evaluate", "compare", "calibrate"])
@pytest.mark.parametrize("json_arg", [["--json", "-"], ["--json"]])
def test_json_dash_prints_the_json_alone_on_stdout(feature_files, command, json_arg, tmp_path, monkeypatch, capsys):
    """Was: a file named '-' in the working folder, and the table on stdout (`| jq .` failed); a bare --json was
    refused. evaluate-seg already took both."""
    monkeypatch.chdir(tmp_path)
    assert main(_argv(command, feature_files, json_arg)) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # stdout is one JSON document, nothing else
    assert isinstance(result, dict) and result
    assert not (tmp_path / "-").exists() and list(tmp_path.iterdir()) == []
    assert "acc1" in captured.err or "plain" in captured.err  # the table is still shown, on stderr
    assert "wrote" not in captured.out


@pytest.mark.parametrize("command", ["evaluate", "compare", "calibrate"])
def test_json_file_is_still_written(feature_files, command, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(_argv(command, feature_files, ["--json", str(out)])) == 0
    captured = capsys.readouterr()
    assert json.loads(out.read_text()) and f"wrote {out}" in captured.out


# -- the progress switch: one switch, both names, everywhere ---------------------------------------------

@pytest.mark.parametrize("argv, dest", [
    (["fit", "--train", "t.npz", "--out", "m.gpua"], "no_progress"),
    (["extract", "--vfm", "a:b", "--vlm", "a:b", "--data", "d", "--out", "f.npz"], "quiet"),
    (["classify", "--images", "d", "--classnames", "c.txt", "--out", "p.csv"], "quiet"),
    (["benchmark", "--datasets", "x", "--vfm", "a:b", "--vlm", "a:b", "--out", "o"], "quiet"),
    (["compare", "--train", "t.npz", "--test", "t.npz"], "quiet"),
    (["demo"], "quiet"),
])
@pytest.mark.parametrize("switch", ["--quiet", "--no-progress"])
def test_the_progress_switch_has_both_names(argv, dest, switch):
    """Was: extract/classify/benchmark took only --quiet, fit only --no-progress; compare and demo neither."""
    parser = build_parser()
    assert getattr(parser.parse_args(argv), dest) is False
    assert getattr(parser.parse_args([*argv, switch]), dest) is True


def test_compare_quiet_leaves_out_the_per_method_lines(feature_files, capsys):
    argv = ["compare", "--train", feature_files["train"], "--test", feature_files["test"], "--methods", "zero_shot"]
    assert main(argv) == 0
    assert "  zero_shot        acc1" in capsys.readouterr().out
    assert main([*argv, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "  zero_shot        acc1" not in out and "zero_shot" in out  # the table stays


# -- help -------------------------------------------------------------------------------------------

def test_help_shows_a_default_of_zero():
    """Was: 0 == False, so the formatter took a seed's default 0 for 'no default' and said nothing."""
    assert "(default: 0)" in _help_of(_parser_of("calibrate", "longtail"), "--seed")
    assert "(default: 0)" in _help_of(_parser_of("benchmark"), "--pool-seed")


def test_list_defaults_are_shown_as_they_are_typed_and_commas_work_too():
    """Was: '--imbalance ... (default: 10,50,100)', and `--imbalance 10,50,100` refused ('invalid float value')."""
    lt = _parser_of("calibrate", "longtail")
    assert "(default: 10 50 100)" in _help_of(lt, "--imbalance")
    parser = build_parser()
    for given in (["10,50,100"], ["10", "50", "100"], ["10,", "50", "100"]):
        args = parser.parse_args(["calibrate", "longtail", "--features", "f.npz", "--imbalance", *given])
        assert args.imbalance == [10.0, 50.0, 100.0]
    args = parser.parse_args(["calibrate", "federated", "--features", "f.npz", "--methods", "fedavg,centralised",
                              "--alpha", "0.1,0.5"])
    assert args.methods == ["fedavg", "centralised"] and args.alpha == [0.1, 0.5]
    assert parser.parse_args(["calibrate", "longtail", "--train", "f.npz"]).features == "f.npz"  # compare's name for it


def test_a_value_given_twice_runs_once():
    """Was: `--imbalance 10,10` ran the 10x experiment twice, and its table printed two identical rows."""
    parser = build_parser()
    args = parser.parse_args(["calibrate", "longtail", "--features", "f.npz", "--imbalance", "10,10", "50", "10.0"])
    assert args.imbalance == [10.0, 50.0]
    args = parser.parse_args(["calibrate", "federated", "--features", "f.npz", "--methods", "fedavg", "fedavg,centralised"])
    assert args.methods == ["fedavg", "centralised"]


@pytest.mark.parametrize("argv, message", [
    (["--methods", "plain,bogus"], "argument --methods: invalid choice: 'bogus'"),
    (["--imbalance", "10,x"], "argument --imbalance: 'x' is not a number"),
    (["--methods", ","], "argument --methods: expected at least one value"),
])
def test_calibrate_lists_refuse_bad_values_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["calibrate", "longtail", "--features", "f.npz", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_the_fit_flags_say_their_defaults():
    """--device said 'cpu or cuda' (no default, no cuda:N or auto), --seed said 'random_state'."""
    for command in ("fit", "compare", "classify", "benchmark"):
        p = _parser_of(command)
        assert "(default cpu)" in _help_of(p, "--device") and "auto" in _help_of(p, "--device")
        assert "default 0" in _help_of(p, "--seed")


# -- extract: counts, device, cache, output named by their flags --------------------------------------

@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--batch-size", "-5"), ("--shard-size", "0"),
                                         ("--rows-per-shard", "0"), ("--connect-timeout", "-1"), ("--connect-timeout", "nan")])
def test_extract_counts_are_refused_naming_the_flag(flag, value, tmp_path, capsys):
    """Was: 'batch_size must be a positive integer' after the dataset was read; --connect-timeout -1 accepted."""
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["extract", "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--data", str(tmp_path),
                                   "--out", str(tmp_path / "f.npz"), flag, value])
    assert exc.value.code == 2 and f"argument {flag}: {value}" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--device", "tpu"], "--device='tpu'"),
    (["--cache-dir", "CLASSES"], "--cache-dir"),
    (["--out", "CLASSES"], "--out "),
    (["--format", "shards"], "--format shards writes a folder"),
])
def test_extract_checks_its_flags_before_any_work(photos, extra, message, capsys):
    """Was: --device tpu and a --cache-dir that is a file ran through (planted encoders ignore both; real ones failed
    later or deep inside the cache), and the output errors said out='...' and format='shards'."""
    extra = [str(photos / "classes.txt") if e == "CLASSES" else e for e in extra]
    out = photos / "f.npz"
    argv = ["extract", "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--data", str(photos / "photos" / "train"),
            "--classnames", str(photos / "classes.txt"), "--out", str(out), "--quiet", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "out=" not in err and len(err.strip().splitlines()) == 1
    assert "format='" not in err or "format='shards' (--format shards)" in err  # the library names the flag there too
    assert not out.exists()


# -- fit: the streamed fit's flags named -------------------------------------------------------------------

def test_fit_max_memory_is_named_by_its_flag(planted, tmp_path, capsys):
    from gpua.features import write_shards

    train, _ = planted
    shards = tmp_path / "s"
    write_shards(shards, train.vfm_features, train.vlm_features, text_prototypes=train.text_prototypes, rows_per_shard=600,
                 dtype="float32")
    assert main(["fit", "--shards", str(shards), "--out", str(tmp_path / "m.gpua"), "--max-memory", "abc"]) == 2
    err = capsys.readouterr().err
    assert "--max-memory 'abc' is not a size" in err and "max_memory=" not in err


def test_fit_connect_timeout_must_be_positive(capsys):
    """Was: accepted (and ignored) by every fit."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fit", "--train", "t.npz", "--out", "m.gpua", "--connect-timeout", "-1"])
    assert "argument --connect-timeout: -1 must be a number of seconds above 0" in capsys.readouterr().err


# -- features of other encoders: the error names the file and the model ------------------------------------

@pytest.mark.parametrize("command", ["evaluate", "predict", "compare"])
def test_features_of_other_widths_name_the_file(feature_files, command, tmp_path, capsys):
    """Was: 'vfm_features has width 20 but 64 was expected', naming neither the file nor the model."""
    f = feature_files
    argv = {"evaluate": ["evaluate", "--model", f["model"], "--test", f["narrow"]],
            "predict": ["predict", "--model", f["model"], "--features", f["narrow"], "--out", str(tmp_path / "p.csv")],
            "compare": ["compare", "--train", f["train"], "--test", f["narrow"], "--methods", "zero_shot"]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    flag = {"evaluate": "--test", "predict": "--features", "compare": "--test"}[command]
    assert f"{flag} {f['narrow']!r} vfm_features has width 20 but " in err
    assert (f"--train {f['train']!r} has" if command == "compare" else f"the model {f['model']!r} has") in err
    assert not (tmp_path / "p.csv").exists()


def test_predict_of_a_shard_set_of_other_widths_names_it(planted, feature_files, tmp_path, capsys):
    from gpua.features import write_shards

    _, test = planted
    shards = tmp_path / "s"
    write_shards(shards, test.vfm_features[:, :20], test.vlm_features, text_prototypes=test.text_prototypes, rows_per_shard=600,
                 dtype="float32")
    assert main(["predict", "--model", feature_files["model"], "--features", str(shards), "--out", str(tmp_path / "p.csv")]) == 2
    assert f"--features {str(shards)!r} vfm_features has width 20" in capsys.readouterr().err


# -- demo ---------------------------------------------------------------------------------------------

@pytest.fixture
def demo_calls(monkeypatch):
    from gpua import demo as demo_mod

    seen = []
    monkeypatch.setattr(demo_mod, "run_demo", lambda out, **kw: seen.append(kw))
    return seen


def test_demo_vfm_takes_commas_as_benchmark_does(demo_calls):
    """Was: 'offline:dinov2-s,offline:efficientnet-lite2' taken as one encoder's name, refused after the table header."""
    assert main(["demo", "--no-plot", "--quiet", "--vfm", "offline:dinov2-s,offline:efficientnet-lite2", "--methods", "zero_shot"]) == 0
    assert list(demo_calls[0]["vfms"]) == ["offline:dinov2-s", "offline:efficientnet-lite2"]
    assert demo_calls[0]["progress"] is False


@pytest.mark.parametrize("extra, message", [
    (["--methods", "bogus"], "--methods: ['bogus'] is unknown"),
    (["--vfm", "offline:dinov2-s,bogus:x"], "--vfm 'bogus:x' is not a known encoder"),
    (["--vfm", "nocolon"], "--vfm: encoder spec 'nocolon' has no back end"),
    (["--cache-dir", "FILE"], "--cache-dir"),
])
def test_demo_refuses_bad_flags_before_any_work(demo_calls, extra, message, tmp_path, capsys):
    """Was: the library's 'methods: ...'; an unknown second --vfm refused only after the first one's encoding."""
    (tmp_path / "f").write_text("x")
    extra = [str(tmp_path / "f") if e == "FILE" else e for e in extra]
    assert main(["demo", "--no-plot", "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert demo_calls == []


# -- every command: one line and status 2 for a wrong type ---------------------------------------------

def _required(parser):
    """Values for a parser's required options, so that one wrong flag is the only error."""
    argv = []
    for action in parser._actions:
        if action.required and action.option_strings:
            argv += [action.option_strings[0], "x"]
    for group in parser._mutually_exclusive_groups:
        if group.required:
            argv.append(group._group_actions[0].option_strings[0])
            if group._group_actions[0].nargs != 0:
                argv.append("x")
    return argv


def test_every_integer_flag_refuses_a_word_in_one_line(capsys):
    """`--seed abc`, `--top-k abc`...: argparse's one line naming the flag, exit status 2, on every command."""
    checked = 0
    for p in iter_parsers(build_parser()):
        for action in p._actions:
            kind = getattr(action.type, "__name__", "")
            if not action.option_strings or kind not in ("int", "parse", "float", "positive_seconds"):
                continue
            command = p.prog.split()[1:]
            with pytest.raises(SystemExit) as exc:
                build_parser().parse_args([*command, *_required(p), action.option_strings[0], "abc"])
            err = capsys.readouterr().err
            assert exc.value.code == 2, (p.prog, action.option_strings)
            assert f"argument {action.option_strings[0]}" in err.strip().splitlines()[-1], (p.prog, err)
            checked += 1
    assert checked > 30


def test_saved_features_are_read_back(feature_files):
    """The fixture's narrow file is what the tests above take it for."""
    assert load_features(feature_files["narrow"]).vfm_features.shape[1] == 20
    assert np.isfinite(load_features(feature_files["test"]).vfm_features).all()


@pytest.mark.parametrize("extra, message", [
    (["--classnames", "FOLDER"], "--classnames '"),
    (["--vlm", "planted:vfm"], "--vlm 'planted:vfm' is vision-only"),
])
def test_extract_library_errors_are_said_with_the_flags(photos, extra, message, capsys):
    """Was: classnames='...' and vlm='planted:vfm', the library's argument names, which the command line does not have."""
    extra = [str(photos / "photos") if e == "FOLDER" else e for e in extra]
    argv = ["extract", "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--data", str(photos / "photos" / "train"),
            "--classnames", str(photos / "classes.txt"), "--out", str(photos / "f.npz"), "--quiet", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "classnames=" not in err and "vlm=" not in err


@pytest.mark.parametrize("command", [["fit", "--train", "t.npz", "--out", "m.gpua"], ["compare", "--train", "t.npz", "--test", "t.npz"]])
def test_a_negative_seed_is_refused_as_calibrate_refuses_it(command, tmp_path, capsys):
    """Was: '--seed=-1 must be None or an int in [0, 9223372036854775807]': --seed cannot be None."""
    assert main([*command, "--seed", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--seed=-1 must be an integer, 0 or more" in err and "None" not in err


def test_class_name_errors_name_the_flag_and_a_folder(tmp_path, capsys):
    """`classify --classnames x` said ``classnames='x'`` (no such argument on the command line); a
    folder given as a class-name file was said not to exist."""
    (tmp_path / "imgs").mkdir()
    assert main(["classify", "--images", str(tmp_path / "imgs"), "--classnames", "x", "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "--classnames 'x' is neither a file" in err and "classnames=" not in err
    assert main(["evaluate-seg", "--pred", str(tmp_path), "--gt", str(tmp_path), "--classnames", str(tmp_path / "imgs")]) == 2
    assert "is a folder; pass the path of a text or JSON file" in capsys.readouterr().err


def test_connect_timeout_without_cluster_is_said(photos, planted, tmp_path, capsys):
    """--connect-timeout without --cluster was ignored without a word (its default was 10, so a
    given value could not be told from none): extract and a streamed fit warn, an in-memory fit
    refuses it with the other streamed-fit flags."""
    argv = ["extract", "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--data", str(photos / "photos" / "train"),
            "--classnames", str(photos / "classes.txt"), "--out", str(tmp_path / "f.npz"), "--quiet"]
    assert main([*argv, "--connect-timeout", "5"]) == 0
    assert "--connect-timeout 5 is used only with --cluster" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "g.npz")]) == 0  # the last --out is the one read
    assert "--connect-timeout" not in capsys.readouterr().err  # not given: nothing said
    train, _ = planted
    feats = save_features(tmp_path / "t.npz", vfm_features=train.vfm_features, vlm_features=train.vlm_features,
                          text_prototypes=train.text_prototypes)
    assert main(["fit", "--train", str(feats), "--out", str(tmp_path / "m.gpua"), "--connect-timeout", "5"]) == 2
    assert "--connect-timeout applies to a streamed fit" in capsys.readouterr().err
