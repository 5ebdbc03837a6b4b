def fit_federated(*a, **k): raise NotImplementedError
