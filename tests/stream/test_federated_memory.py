"""What the server of a federated fit holds at once (the memory plan counts one aggregate)."""

from __future__ import annotations

import numpy as np

from gpua import GPUA
from gpua.stream import _kernels as K_
from gpua.stream import fit_federated
from gpua.synthetic import make_planted


def test_the_server_folds_client_aggregates_one_at_a_time(monkeypatch):
    data = make_planted(240, 6, 12, 8, 5, random_state=0)
    Z, X = data.vfm_features, data.vlm_features
    clients = [(Z[i::6], X[i::6]) for i in range(6)]
    reference = fit_federated(GPUA(n_steps=5, random_state=0), clients, data.text_prototypes).W_
    held = []
    original = K_.sum_tensors

    def counting(results):
        if results[0].ndim == 2 and results[0].shape[0] == results[0].shape[1]:  # second moments
            held.append(len(results))
        return original(results)

    monkeypatch.setattr(K_, "sum_tensors", counting)
    W = fit_federated(GPUA(n_steps=5, random_state=0), clients, data.text_prototypes).W_
    # was: the six clients' d_q x d_q second moments gathered in a list, then summed
    assert held and max(held) <= 2
    np.testing.assert_array_equal(np.asarray(W), np.asarray(reference))  # same sums, same order: same fit
