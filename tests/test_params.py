"""Parameters are declared once (gpua.fitting.PARAMETERS and each baseline's table) and checked
from there: in every fit driver, in set_params, on the command line; docstrings show the same defaults."""

from __future__ import annotations

import ast
import inspect
import re

import numpy as np
import pytest

from gpua import GPUA, GPUAError, LFAAlternation, ReferenceGPUA, VLMZeroShot
from gpua.cli import main
from gpua.fitting import PARAMETERS
from gpua.params import AnyOf, Boolean, DeviceName, Interval, OptionalOf, Options, Weights, parameter_table

ESTIMATORS = [GPUA, LFAAlternation, VLMZeroShot, ReferenceGPUA]

# One value outside each GPUA parameter's range or type.
BAD = {
    "query": "both", "lam": 1.5, "eps": 0.0, "similarity": "dot", "temperature": -1.0, "class_prior": [1.0, -1.0],
    "rho": 0.0, "plan_ridge": 0.0, "n_init_per_class": 0, "max_outer": 0, "tol": -1e-3, "sinkhorn_tol": 0.0, "sinkhorn_max_iter": 0,
    "solver": "numpy", "assignment": "fuzzy", "procrustes_completion": "qr", "center": "yes", "center_vlm": "no", "whiten": 0, "whiten_shrink": -1.0, "refine": 1, "n_steps": -1, "batch_size": 0,
    "lr": float("nan"), "weight_decay": -0.1, "k": 0, "margin_scale": 0.0, "hubness_weight": -1.0,
    "orthogonality": "strict", "ortho_weight": -1.0, "noise_std": -0.1, "dropout": 1.0, "val_fraction": 0.5,
    "eval_every": 0, "patience": 0, "refine_tol": 1.0, "pool_augment": -1, "self_learning": -1,
    "self_learning_tol": 1.0, "retrieval": "knn", "csls_k": 0, "logit_scale": 0.0, "proba_scale": "calibrated", "device": "gpu0",
    "random_state": -1, "verbose": "loud",
}


def test_every_parameter_has_a_constraint_and_a_bad_value():
    for cls in ESTIMATORS:
        table = parameter_table(cls)  # raises if the signature and the table disagree
        assert [r["name"] for r in table] == [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    assert set(BAD) == set(PARAMETERS)


@pytest.fixture(scope="module")
def small():
    from gpua.synthetic import make_planted

    d = make_planted(n_samples=120, n_classes=4, d_vfm=12, d_vlm=8, d_latent=4, random_state=0)
    return d.vfm_features, d.vlm_features, d.text_prototypes


def _run(driver: str, model, data):
    from gpua.stream import fit_federated, fit_streaming

    Z, X, Y = data
    if driver == "memory":
        return model.fit(Z, X, Y)
    if driver == "streamed":
        return fit_streaming(model, (Z, X), Y, progress=False)
    return fit_federated(model, [(Z[:60], X[:60]), (Z[60:], X[60:])], Y)


@pytest.mark.parametrize("driver", ["memory", "streamed", "federated"])
@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_value_is_refused_by_every_driver(small, name, driver):
    with pytest.raises(GPUAError, match=rf"^{name}=.* must be "):
        _run(driver, GPUA(**{name: BAD[name]}), small)


def test_messages_say_the_range():
    with pytest.raises(GPUAError, match=r"n_steps=-1 must be an int >= 0\."):
        GPUA(n_steps=-1).fit(np.ones((4, 2)), np.ones((4, 2)), np.eye(2))
    with pytest.raises(GPUAError, match=r"dropout=1\.0 must be a float in \[0, 1\)\."):
        GPUA(dropout=1.0).fit(np.ones((4, 2)), np.ones((4, 2)), np.eye(2))
    with pytest.raises(GPUAError, match=r"lam=True must be a float in \[0, 1\]"):
        GPUA(lam=True).fit(np.ones((4, 2)), np.ones((4, 2)), np.eye(2))


@pytest.mark.parametrize(
    "cls, params",
    [(LFAAlternation, {"n_rounds": 0}), (LFAAlternation, {"query": "z"}), (LFAAlternation, {"logit_scale": -1.0}),
     (LFAAlternation, {"device": 3}), (VLMZeroShot, {"logit_scale": 0}), (VLMZeroShot, {"device": "tpu!"})],
)
def test_baselines_check_their_table(small, cls, params):
    name = next(iter(params))
    with pytest.raises(GPUAError, match=rf"^{name}="):
        cls(**params).fit(*small)


def test_set_params_suggests_the_closest_name():
    with pytest.raises(GPUAError, match=r"'lamda' is not a parameter of GPUA \(did you mean 'lam'\?\)"):
        GPUA().set_params(lamda=0.5)


# --- docstrings show the table's defaults and ranges ------------------------------------------
def _documented(cls) -> dict[str, tuple[str, str]]:
    """{name: (type text, default text)} from the numpydoc Parameters section."""
    doc = inspect.getdoc(cls)
    section = doc.split("Parameters\n----------\n", 1)[1].split("\n\n", 1)[0]
    out = {}
    for line in section.splitlines():
        m = re.match(r"^(\w+) : (.*), default=(.*)$", line)
        if m:
            out[m.group(1)] = (m.group(2), m.group(3))
    return out


def _strip(text: str) -> str:
    return re.sub(r"^(an?|None or an?) ", "", text)


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_docstring_defaults_and_ranges_match_the_table(cls):
    doc = _documented(cls)
    table = cls._parameter_constraints
    assert set(doc) == set(table), set(doc) ^ set(table)
    for row in parameter_table(cls):
        name = row["name"]
        kind, default = doc[name]
        assert ast.literal_eval(default) == row["default"], name
        c = table[name]
        inner = c.inner if isinstance(c, OptionalOf) else c
        if isinstance(c, OptionalOf):
            assert "None" in kind, name
        if isinstance(inner, Options):
            assert set(ast.literal_eval(kind.replace("{", "[").replace("}", "]"))) == set(inner.values), name
        elif isinstance(inner, Interval):
            assert _strip(inner.describe()) in kind, (name, kind)
        elif isinstance(inner, Boolean):
            assert kind == "bool", name
        elif isinstance(inner, DeviceName):
            assert kind == "str or torch.device", name
        elif isinstance(inner, AnyOf):  # e.g. whiten : "auto", int >= 1 or None
            for option in inner.options:
                words = ([f'"{v}"' for v in option.values] if isinstance(option, Options)
                         else ["array"] if isinstance(option, Weights) else [_strip(option.describe())])
                assert all(w in kind for w in words), (name, kind)
        else:
            assert isinstance(inner, Weights) and kind.startswith("array"), name


# --- the command line ---------------------------------------------------------------------------
def _wrong_type_text(c) -> str:
    inner = c.inner if isinstance(c, OptionalOf) else c
    if isinstance(inner, Interval):
        return "1.5" if inner.kind is int else "abc"
    if isinstance(inner, Boolean):
        return "maybe"
    return "1" if isinstance(inner, (Options, DeviceName)) else "abc"


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_cli_wrong_typed_value_is_one_clear_line(name, tmp_path, capsys):
    text = _wrong_type_text(PARAMETERS[name])
    assert main(["fit", "--train", str(tmp_path / "t.npz"), "--out", str(tmp_path / "m.gpua"), "--param", f"{name}={text}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gpua fit: error: --param {name}={text}: {name}=") and err.count("\n") == 1, err


@pytest.mark.parametrize("command", ["fit", "compare", "demo"])
def test_cli_unknown_parameter_is_refused_with_a_suggestion(command, planted, tmp_path, capsys):
    from gpua.features import save_features

    train, test = planted
    paths = [save_features(tmp_path / f"{n}.npz", vfm_features=p.vfm_features, vlm_features=p.vlm_features,
                           text_prototypes=p.text_prototypes, labels=p.labels) for n, p in (("train", train), ("test", test))]
    argv = {
        "fit": ["fit", "--train", str(paths[0]), "--out", str(tmp_path / "m.gpua")],
        "compare": ["compare", "--train", str(paths[0]), "--test", str(paths[1]), "--methods", "zero_shot"],
        "demo": ["demo", "--out", str(tmp_path / "demo")],
    }[command]
    assert main(argv + ["--param", "bogus=1"]) == 2
    assert "--param bogus: not a parameter of GPUA (did you mean" in capsys.readouterr().err
    assert main(argv + ["--param", "lamda=0.5"]) == 2
    assert "(did you mean 'lam'?)" in capsys.readouterr().err


def test_cli_good_values_are_parsed():
    from gpua.params import parse_params

    pairs = ["lam=0.8", "refine=false", "class_prior=[1,2]", "query=vfm", "random_state=none", "verbose=1", "device=cpu"]
    got = parse_params(pairs, PARAMETERS)
    assert got == {"lam": 0.8, "refine": False, "class_prior": [1, 2], "query": "vfm", "random_state": None, "verbose": True, "device": "cpu"}


@pytest.mark.parametrize("command", ["fit", "compare", "demo"])
def test_cli_lists_the_parameters(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--list-params"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for row in parameter_table(GPUA):
        assert re.search(rf"^  {row['name']} +default={re.escape(repr(row['default']))} +{re.escape(row['constraint'])}$", out, re.M), row


@pytest.mark.parametrize(("pair", "expected"), [
    ("=3", "--param '=3' has no name before '='; it must look like NAME=VALUE"),  # was: "not a parameter ... 'whiten_shrink'"
    ("seed=3", "--param seed: not a parameter of GPUA ('random_state' is; its flag is --seed)"),  # was: "did you mean 'noise_std'?"
])
def test_cli_param_without_a_name_or_by_its_flag_name(pair, expected, tmp_path, capsys):
    assert main(["fit", "--train", str(tmp_path / "t.npz"), "--out", str(tmp_path / "m.gpua"), "--param", pair]) == 2
    assert expected in capsys.readouterr().err


def test_an_option_named_none_is_that_option_on_the_command_line():
    """Was: `--param orthogonality=none` was read as None and refused ("must be one of 'penalty', 'project', 'none'")."""
    from gpua.params import parse_params

    assert parse_params(["orthogonality=none"], PARAMETERS) == {"orthogonality": "none"}
    assert parse_params(["orthogonality=project"], PARAMETERS) == {"orthogonality": "project"}
    assert parse_params(["whiten=none"], PARAMETERS) == {"whiten": None}  # an optional setting's none is still None


@pytest.mark.parametrize(("params", "expected"), [
    (["temperature=0.5"], "temperature=0.5 changes nothing: similarity='cosine' (the default) takes no temperature"),
    (["whiten=none", "whiten_shrink=3"], "whiten_shrink=3 changes nothing: whiten=None whitens nothing"),
    (["csls_k=3"], "csls_k=3 changes nothing: retrieval='cosine' (the default) ranks by plain cosine"),
    (["self_learning=0", "self_learning_tol=0.5"], "self_learning_tol=0.5 changes nothing: self_learning=0 runs no"),
])
def test_cli_settings_that_change_nothing_are_refused(params, expected, tmp_path, capsys):
    """Was: accepted, fitted without effect, and recorded in the model's parameters as if applied."""
    argv = ["fit", "--train", str(tmp_path / "t.npz"), "--out", str(tmp_path / "m.gpua")]
    assert main(argv + [a for p in params for a in ("--param", p)]) == 2
    assert expected in capsys.readouterr().err


def test_cli_settings_that_apply_are_taken(tmp_path, capsys):
    from gpua.cli import build_parser
    from gpua.cli._common import estimator_overrides

    args = build_parser().parse_args(["fit", "--train", "t.npz", "--out", "m.gpua", "--param", "similarity=neg_euclidean",
                                      "--param", "temperature=0.5", "--param", "retrieval=csls", "--param", "csls_k=3"])
    assert estimator_overrides(args) == {"similarity": "neg_euclidean", "temperature": 0.5, "retrieval": "csls", "csls_k": 3}
