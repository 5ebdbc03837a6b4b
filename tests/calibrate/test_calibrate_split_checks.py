"""dirichlet_split refuses a split no draw can make before drawing; one alpha check for every caller."""

import math

import numpy as np
import pytest

from gpua import GPUAError
from gpua._validation import check_number
from gpua.calibrate._federated_calibration import MIN_CLIENT_SAMPLES, check_alpha, dirichlet_split, max_clients


class CountingGenerator(np.random.Generator):
    draws = 0

    def dirichlet(self, alpha, size=None):
        CountingGenerator.draws += 1
        return super().dirichlet(alpha, size)


def test_impossible_split_is_refused_before_any_draw():
    """It drew max_tries (1000) splits before saying no, and named no number of clients that works."""
    rng = CountingGenerator(np.random.PCG64(0))
    y = np.repeat(np.arange(3), 3)  # 9 samples: at most 4 clients of 2
    with pytest.raises(GPUAError, match=r"the 9 samples cannot give each of its 5 clients min_size=2 samples; pass n_clients=4 or fewer"):
        dirichlet_split(y, 5, 1.0, random_state=rng)
    assert CountingGenerator.draws == 0
    dirichlet_split(y, 4, 1.0, random_state=rng)
    assert CountingGenerator.draws > 0  # the counter counts
    assert len(dirichlet_split(y, 4, 1.0, random_state=0)) == 4  # the number it names works


def test_impossible_split_names_the_domain():
    y = np.zeros(9, np.int64)
    dom = np.array([0] * 7 + [1] * 2)  # domain 1 feeds clients 1 and 3 with 2 samples
    with pytest.raises(GPUAError, match=r"the 2 samples of domain 1 cannot give each of its 2 clients min_size=2 .*domain 1 can feed 1"):
        dirichlet_split(y, 4, 1.0, domains=dom)
    assert len(dirichlet_split(y, 2, 1.0, domains=dom, random_state=0)) == 2


def test_fewer_rows_than_min_size_suggests_no_client_count():
    with pytest.raises(GPUAError, match=r"the 1 samples cannot give each of its 1 clients min_size=2 samples; or a smaller min_size"):
        dirichlet_split(np.zeros(1, np.int64), 1, 1.0)


def test_a_possible_but_unlucky_split_still_stops_after_max_tries():
    y = np.repeat(np.arange(2), 12)  # 24 samples, 10 clients of 2: possible, but alpha 0.001 leaves most empty
    with pytest.raises(GPUAError, match=r"in 1 draws at alpha=0.001"):
        dirichlet_split(y, 10, 0.001, max_tries=1, random_state=0)


def test_max_clients():
    assert max_clients(9) == 9 // MIN_CLIENT_SAMPLES
    assert max_clients(9, 3) == 3 and max_clients(9, 0) == 9 and max_clients(1, 2) == 0


@pytest.mark.parametrize("alpha", [0.1, 5, np.float32(0.5), math.inf, np.inf, np.float64(np.inf)])
def test_check_alpha_accepts_positive_numbers_and_inf(alpha):
    assert check_alpha(alpha) == float(alpha)


@pytest.mark.parametrize("alpha", [0, -1, math.nan, -math.inf, "0.5", True, None, 10**400])
def test_dirichlet_split_refuses_bad_alpha_through_the_same_check(alpha):
    with pytest.raises(GPUAError, match=r"^alpha=.* must be a number in \(0, inf\]; a Dirichlet concentration"):
        dirichlet_split(np.repeat(np.arange(2), 4), 2, alpha)


def test_check_number_allow_inf_only_tops_an_open_range():
    assert check_number(math.inf, "x", low=0, allow_inf=True) == math.inf
    with pytest.raises(GPUAError, match=r"x=inf must be a finite number in \[0, 3\]"):
        check_number(math.inf, "x", low=0, high=3, allow_inf=True)  # a bounded range has no inf in it
    with pytest.raises(GPUAError, match=r"x=inf must be an integer in \[0, inf\)"):
        check_number(math.inf, "x", low=0, integer=True, allow_inf=True)
    with pytest.raises(GPUAError, match=r"x=inf must be a finite number in \[0, inf\)"):
        check_number(math.inf, "x", low=0)  # unchanged without it
    with pytest.raises(GPUAError, match=r"x=-inf must be a number in \[0, inf\]"):
        check_number(-math.inf, "x", low=0, allow_inf=True)
