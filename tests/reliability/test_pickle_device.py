"""Pickled models are device-independent: a model fitted on CUDA unpickles on a machine without a GPU.

A pickle of CUDA tensors names their device and torch refuses to unpickle it without one
("Attempting to deserialize object on a CUDA device"). The learned tensors are pickled on the
CPU with their device recorded, and put back there when it exists. There is no GPU here, so the
CUDA case is the state a CUDA model pickles (tensors on the CPU, device "cuda:0" recorded)
unpickled where ``torch.cuda.is_available()`` is False: the real case.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import numpy as np
import pytest
import torch

from gpua import GPUA
from gpua._base import AlignmentEstimator
from gpua.baselines import VLMZeroShot

_KEY = "_pickled_tensor_devices"


@pytest.fixture
def fitted(small):
    train, test = small
    model = GPUA(refine=False).fit(train.vfm_features, train.vlm_features, train.text_prototypes, classnames=train.classnames)
    return model, test


def _same_predictions(a, b, test):
    np.testing.assert_array_equal(a.decision_function(test.vfm_features, test.vlm_features),
                                  b.decision_function(test.vfm_features, test.vlm_features))
    np.testing.assert_array_equal(a.predict(test.vfm_features, test.vlm_features), b.predict(test.vfm_features, test.vlm_features))


def _round_trips():
    trips = {"pickle": lambda m: pickle.loads(pickle.dumps(m)), "deepcopy": copy.deepcopy}
    try:
        import joblib
    except ImportError:  # pragma: no cover - joblib comes with scikit-learn
        return trips

    def through_joblib(m):
        buf = io.BytesIO()
        joblib.dump(m, buf)
        buf.seek(0)
        return joblib.load(buf)

    trips["joblib"] = through_joblib
    return trips


@pytest.mark.parametrize("how", sorted(_round_trips()))
def test_a_cpu_model_round_trips_bit_identically(fitted, how):
    model, test = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = _round_trips()[how](model)
    assert again.device == model.device and _KEY not in again.__dict__
    assert set(again.__dict__) == set(model.__dict__)
    for name, value in model.__dict__.items():
        if isinstance(value, torch.Tensor):
            assert again.__dict__[name].device == value.device
            assert torch.equal(again.__dict__[name], value), name
    _same_predictions(model, again, test)


def test_sklearn_clone_still_gives_an_unfitted_copy(fitted):
    sklearn_base = pytest.importorskip("sklearn.base")
    model, _ = fitted
    c = sklearn_base.clone(model)
    assert c.get_params() == model.get_params() and not hasattr(c, "W_")


def _as_pickled_on_cuda(model) -> bytes:
    """The bytes ``pickle.dumps`` gives for ``model`` fitted with device="cuda" on a GPU machine."""
    state = AlignmentEstimator.__getstate__(model)
    assert _KEY not in state  # a CPU model records nothing
    state["device"] = "cuda"
    state[_KEY] = {k: "cuda:0" for k, v in state.items() if isinstance(v, torch.Tensor)}
    assert state[_KEY], "the fitted model holds no tensors"
    return _dump_with_state(model, state)


def _dump_with_state(model, state) -> bytes:
    """``model`` pickled with ``state`` as its ``__getstate__`` (what a pickle made on another machine holds)."""
    class _Pickler(pickle.Pickler):
        def reducer_override(self, obj):
            if obj is model:
                return (object.__new__, (type(model),), state)
            return NotImplemented

    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(model)
    return buf.getvalue()


def test_a_model_pickled_on_cuda_unpickles_on_the_cpu_with_one_warning(fitted, monkeypatch):
    model, test = fitted
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = _as_pickled_on_cuda(model)
    with pytest.warns(UserWarning) as rec:
        again = pickle.loads(data)
    said = [str(w.message) for w in rec if "pickled with its learned tensors" in str(w.message)]
    assert len(said) == 1, said
    assert "'cuda:0'" in said[0] and "device parameter is now 'cpu'" in said[0] and "load_model(path, device=" in said[0]
    assert again.device == "cpu" and _KEY not in again.__dict__
    assert all(v.device.type == "cpu" for v in again.__dict__.values() if isinstance(v, torch.Tensor))
    _same_predictions(model, again, test)
    # and the unpickled model pickles again, now as the CPU model it is
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _same_predictions(model, pickle.loads(pickle.dumps(again)), test)


def test_device_auto_stays_auto_when_the_gpu_is_missing(fitted, monkeypatch):
    model, test = fitted
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model.set_params(device="auto")
    state = AlignmentEstimator.__getstate__(model)
    state[_KEY] = {k: "cuda:0" for k, v in state.items() if isinstance(v, torch.Tensor)}
    with pytest.warns(UserWarning, match=r"on 'cuda:0'.*loaded on the CPU\. To move it"):
        again = pickle.loads(_dump_with_state(model, state))
    assert again.device == "auto"  # auto means the CPU here: nothing to change
    _same_predictions(model, again, test)


def test_baselines_share_it(small, monkeypatch):
    train, test = small
    model = VLMZeroShot().fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    state = AlignmentEstimator.__getstate__(model)
    state["device"] = "cuda"
    state[_KEY] = {k: "cuda:0" for k, v in state.items() if isinstance(v, torch.Tensor)}
    with pytest.warns(UserWarning, match="this VLMZeroShot was pickled"):
        again = pickle.loads(_dump_with_state(model, state))
    assert again.device == "cpu"
    _same_predictions(model, again, test)
