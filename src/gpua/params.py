r"""Parameter constraints: each estimator parameter's type and range, declared once.

In the spirit of scikit-learn's ``_parameter_constraints``: an estimator class holds a dict
``{name: constraint}`` (:attr:`AlignmentEstimator._parameter_constraints`), and every fit,
``set_params``, the command line's ``--param NAME=VALUE`` and ``gpua fit --list-params`` read it.
Defaults are not repeated here: they are the ``__init__`` signature's (:func:`parameter_table`
joins the two), and a test checks that each class docstring shows the same ``default=``.

>>> check_param("lam", 0.5, Interval(float, 0, 1))
>>> check_param("lam", 1.5, Interval(float, 0, 1))
Traceback (most recent call last):
...
gpua._errors.GPUAError: lam=1.5 must be a float in [0, 1].
>>> Interval(int, 0, None).parse("n_steps", "300")
300
"""

from __future__ import annotations

import difflib
import inspect
import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ._errors import GPUAError
from ._validation import INT64_MAX, in_range, is_int

__all__ = [
    "Constraint",
    "Interval",
    "Options",
    "Boolean",
    "OptionalOf",
    "AnyOf",
    "Weights",
    "DeviceName",
    "POSITIVE",
    "NON_NEGATIVE",
    "COUNT",
    "check_param",
    "check_params",
    "parameter_table",
    "format_parameter_table",
    "parse_param",
    "parse_params",
    "suggest_name",
]


class Constraint:
    """A parameter's admissible values; :meth:`describe` names them for messages and listings."""

    def accepts(self, value: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def parse(self, name: str, text: str) -> Any:
        """The value a command-line string stands for (JSON, or the bare word), then checked."""
        value = _from_text(text)
        check_param(name, value, self)
        return value


def _from_text(text: str) -> Any:
    """A command-line value: JSON, else a number as Python writes it (``.5``, ``1.``, ``+2``, ``010``,
    ``1_000``, which JSON refuses), else a bare word (``true``, ``none``...) or the text itself.

    >>> [_from_text(t) for t in ("0.5", ".5", "2.", "010", "[1, 2]", "None", "vfm")]
    [0.5, 0.5, 2.0, 10, [1, 2], None, 'vfm']
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            continue
    return {"true": True, "false": False, "none": None, "null": None}.get(text.strip().lower(), text)


@dataclass(frozen=True)
class Interval(Constraint):
    """An int (``kind=int``; bools refused) or a finite real (``kind=float``; ints accepted) in a range.

    ``low`` / ``high`` of None are unbounded; ``closed`` says which ends are included.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"  # "both", "left", "right", "neither"

    def accepts(self, value: Any) -> bool:
        return in_range(value, integer=self.kind is int, low=self.low, high=self.high,
                        low_open=self.closed in ("right", "neither"), high_open=self.closed in ("left", "neither"))

    def describe(self) -> str:
        what = "an int" if self.kind is int else "a float"
        if self.low is None and self.high is None:
            return what
        if self.high is None:
            return f"{what} {'>=' if self.closed in ('both', 'left') else '>'} {_num(self.low)}"
        if self.low is None:
            return f"{what} {'<=' if self.closed in ('both', 'right') else '<'} {_num(self.high)}"
        lb = "[" if self.closed in ("both", "left") else "("
        rb = "]" if self.closed in ("both", "right") else ")"
        return f"{what} in {lb}{_num(self.low)}, {_num(self.high)}{rb}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


@dataclass(frozen=True)
class Options(Constraint):
    """One of a few strings."""

    values: tuple

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.values

    def describe(self) -> str:
        if len(self.values) == 1:
            return repr(self.values[0])
        return "one of " + ", ".join(repr(v) for v in self.values)

    def parse(self, name: str, text: str) -> Any:
        # An option's own word is that option: orthogonality=none is 'none', not the bare word None.
        return text.strip() if text.strip() in self.values else super().parse(name, text)


@dataclass(frozen=True)
class Boolean(Constraint):
    """True or False (numpy bools too); on the command line also 1/0, yes/no, on/off."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (bool, np.bool_))

    def describe(self) -> str:
        return "a bool"

    def parse(self, name: str, text: str) -> Any:
        word = {"1": "true", "0": "false", "yes": "true", "no": "false", "on": "true", "off": "false"}.get(text.strip().lower(), text)
        return super().parse(name, word)


@dataclass(frozen=True)
class OptionalOf(Constraint):
    """None, or a value the inner constraint accepts."""

    inner: Constraint

    def accepts(self, value: Any) -> bool:
        return value is None or self.inner.accepts(value)

    def describe(self) -> str:
        return f"None or {self.inner.describe()}"


@dataclass(frozen=True)
class AnyOf(Constraint):
    """A value that one of several constraints accepts (e.g. a count or the word ``"auto"``)."""

    options: tuple

    def accepts(self, value: Any) -> bool:
        return any(c.accepts(value) for c in self.options)

    def describe(self) -> str:
        return " or ".join(c.describe() for c in self.options)


@dataclass(frozen=True)
class Weights(Constraint):
    """A 1-D sequence of positive finite numbers (its length is checked against the data at fit)."""

    def accepts(self, value: Any) -> bool:
        if isinstance(value, (str, bytes, dict)):
            return False
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        try:
            a = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            return False
        return a.ndim == 1 and a.size >= 1 and bool(np.all(np.isfinite(a))) and bool(np.all(a > 0))

    def describe(self) -> str:
        return "a list of positive weights, one per class"


@dataclass(frozen=True)
class DeviceName(Constraint):
    """A torch device: a string (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``...) or a
    :class:`torch.device` (availability is checked at fit; a model file stores its string)."""

    def accepts(self, value: Any) -> bool:
        if value == "auto":
            return True
        import torch

        if isinstance(value, torch.device):
            return True
        if not isinstance(value, str):
            return False
        try:
            torch.device(value)
        except (RuntimeError, TypeError):
            return False
        return True

    def describe(self) -> str:
        return "a device string ('cpu', 'cuda', 'cuda:N' or 'auto') or a torch.device"


#: The ranges most parameters share: a real > 0, a real >= 0, an integer >= 1.
POSITIVE = Interval(float, 0, None, closed="neither")
NON_NEGATIVE = Interval(float, 0, None)
COUNT = Interval(int, 1, None)
#: A training weight or step (learning rate, loss weights, noise): far past any useful value
#: (1e6) the optimiser's arithmetic overflows (``lr=1e300``: Adam's update is inf) deep inside torch.
TRAINING_POSITIVE = Interval(float, 0, 1e6, closed="right")
TRAINING_NON_NEGATIVE = Interval(float, 0, 1e6)
#: A random seed: torch's generators take a signed 64-bit integer.
SEED = Interval(int, 0, 2**63 - 1)
#: A softmax temperature's inverse on cosine-like scores: CLIP's is 100; beyond 1e4 every row is
#: one-hot already, and far beyond it ``scale * score`` overflows float32 into NaN probabilities.
LOGIT_SCALE = Interval(float, 0, 1e4, closed="right")


def check_param(name: str, value: Any, constraint: Constraint) -> None:
    """Raise a :class:`~gpua.GPUAError` naming ``name`` unless ``constraint`` accepts ``value``."""
    if not constraint.accepts(value):
        big = is_int(value) and abs(int(value)) > INT64_MAX
        raise GPUAError(f"{name}={value!r} must be {constraint.describe()}{' (it is beyond a 64-bit integer)' if big else ''}.")


def suggest_name(name: str, valid: Sequence[str]) -> str:
    """`` (did you mean 'lam'?)``: the closest valid name by :mod:`difflib`'s ratio (empty if none).

    >>> suggest_name("lamda", ["lam", "eps", "tol"])
    " (did you mean 'lam'?)"
    """
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.0)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_params(constraints: dict[str, Constraint], values: dict[str, Any], owner: str = "the estimator") -> None:
    """Check every value against its constraint; unknown names are refused with a suggestion.

    >>> check_params({"k": Interval(int, 1)}, {"k": 3})
    >>> check_params({"k": Interval(int, 1)}, {"kk": 3}, "GPUA")
    Traceback (most recent call last):
    ...
    gpua._errors.GPUAError: 'kk' is not a parameter of GPUA (did you mean 'k'?); list them with `gpua fit --list-params`.
    """
    for name, value in values.items():
        if name not in constraints:
            raise GPUAError(
                f"{name!r} is not a parameter of {owner}{suggest_name(name, constraints)}; list them with `gpua fit --list-params`."
            )
        check_param(name, value, constraints[name])


class ParamsMixin:
    """The scikit-learn parameter contract of gpua's estimators (aligners and calibrators alike).

    ``__init__`` stores each parameter as an attribute of the same name; ``get_params`` /
    ``set_params`` / ``repr`` read them from the signature (so :func:`sklearn.base.clone` works
    without scikit-learn being a dependency), and :meth:`_validate_params` checks them all
    against the class's ``_parameter_constraints`` at fit.
    """

    #: ``{parameter: gpua.params.Constraint}``: each parameter's admissible values, declared once.
    _parameter_constraints: dict = {}

    @classmethod
    def _get_param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params) -> "ParamsMixin":
        valid = self._get_param_names()
        for key, value in params.items():
            if key not in valid:
                raise GPUAError(f"{key!r} is not a parameter of {type(self).__name__}{suggest_name(key, valid)}; valid parameters: {valid}.")
            setattr(self, key, value)
        return self

    def __sklearn_tags__(self):
        """scikit-learn's estimator tags (scikit-learn >= 1.6 reads them in ``check_is_fitted``, ``is_classifier``...).

        Without them those functions raise an AttributeError on every gpua estimator, since it
        does not inherit ``sklearn.base.BaseEstimator`` (scikit-learn is not a dependency: it is
        imported here only when scikit-learn itself asks). The tags are BaseEstimator's defaults:
        no estimator type, 2-D numeric input.
        """
        from sklearn.utils import InputTags, Tags, TargetTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False), input_tags=InputTags())

    def _validate_params(self) -> None:
        """Check every parameter against :attr:`_parameter_constraints` (called at fit)."""
        check_params(self._parameter_constraints, self.get_params(), type(self).__name__)

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = []
        for k, v in self.get_params().items():
            d = defaults.get(k, inspect.Parameter.empty)
            same = v is d or (not isinstance(v, np.ndarray) and not isinstance(d, np.ndarray) and v == d)
            if not same:
                changed.append(f"{k}={v!r}")
        return f"{type(self).__name__}({', '.join(changed)})"


def parameter_table(cls) -> list[dict[str, Any]]:
    """``[{"name", "default", "constraint"}]`` for an estimator class, in signature order.

    The defaults come from the ``__init__`` signature, the constraints from
    ``cls._parameter_constraints``; a parameter missing from either is an error (caught by the
    test suite for every estimator).
    """
    sig = inspect.signature(cls.__init__)
    params = [p for p in sig.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD]
    table = cls._parameter_constraints
    names = [p.name for p in params]
    if set(names) != set(table):
        raise GPUAError(
            f"{cls.__name__}: the signature and _parameter_constraints disagree on {sorted(set(names) ^ set(table))}."
        )
    return [{"name": p.name, "default": p.default, "constraint": table[p.name].describe()} for p in params]


def format_parameter_table(cls, defaults: dict[str, Any] | None = None) -> str:
    """The :func:`parameter_table` as aligned text lines (``gpua fit --list-params``).

    ``defaults`` replaces the listed default of the parameters a command sets otherwise
    (``gpua fit-seg``'s ``query="vfm"``); those rows say "(this command's)".
    """
    defaults = defaults or {}
    rows = [{**r, "default": defaults.get(r["name"], r["default"])} for r in parameter_table(cls)]
    w = max(len(r["name"]) for r in rows)
    d = max(len(repr(r["default"])) for r in rows)
    head = f"{cls.__name__} parameters (--param NAME=VALUE):"
    return "\n".join([head] + [f"  {r['name']:<{w}}  default={r['default']!r:<{d}}  {r['constraint']}"
                                + ("  (this command's)" if r["name"] in defaults else "") for r in rows])


def parse_params(pairs: Sequence[str] | None, constraints: dict[str, Constraint], owner: str = "GPUA") -> dict[str, Any]:
    """``["lam=0.8", "refine=false"]`` -> ``{"lam": 0.8, "refine": False}``, each checked (:func:`parse_param`).

    A parameter given twice with different values is refused, as a flag and a ``--param`` that
    disagree are: the last one winning without a word would hide a typo in a long command line.
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        name, value = parse_param(constraints, pair, owner)
        if name in out and out[name] != value:
            raise GPUAError(f"--param {name}={out[name]!r} and --param {name}={value!r} both set {name}, to different values; "
                            "give one of them.")
        out[name] = value
    return out


#: Names a user may reach for from a flag: ``--param seed=3`` is ``--seed 3``, which sets ``random_state``.
_FLAG_ALIASES = {"seed": ("random_state", "--seed")}


def parse_param(constraints: dict[str, Constraint], pair: str, owner: str = "GPUA") -> tuple[str, Any]:
    """``"lam=0.8"`` -> ``("lam", 0.8)``, checked against ``constraints``.

    >>> parse_param({"refine": Boolean()}, "refine=false")
    ('refine', False)
    """
    if "=" not in pair:
        raise GPUAError(f"--param {pair!r} must look like NAME=VALUE, e.g. --param lam=0.8.")
    name, text = (s.strip() for s in pair.split("=", 1))
    if not name:
        raise GPUAError(f"--param {pair!r} has no name before '='; it must look like NAME=VALUE, e.g. --param lam=0.8.")
    if name not in constraints:
        alias = _FLAG_ALIASES.get(name)
        hint = (f" ({alias[0]!r} is; its flag is {alias[1]})" if alias and alias[0] in constraints
                else suggest_name(name, constraints))
        raise GPUAError(f"--param {name}: not a parameter of {owner}{hint}; list them with --list-params.")
    try:
        return name, constraints[name].parse(name, text)
    except GPUAError as exc:
        raise GPUAError(f"--param {pair}: {exc}") from None
