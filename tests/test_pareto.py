import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nas.pareto import (constrained_sort, crowding_distance, dominance_matrix, hypervolume, non_dominated_mask,
                        non_dominated_sort)


def brute_nd(F):
    n = len(F)
    return np.array([not any(np.all(F[j] <= F[i]) and np.any(F[j] < F[i]) for j in range(n) if j != i)
                     for i in range(n)])


def brute_ranks(F):
    ranks = np.full(len(F), -1)
    remaining = list(range(len(F)))
    r = 0
    while remaining:
        sub = F[remaining]
        nd = brute_nd(sub)
        for k, i in enumerate(remaining):
            if nd[k]:
                ranks[i] = r
        remaining = [i for k, i in enumerate(remaining) if not nd[k]]
        r += 1
    return ranks


def grid_hv(F, ref, lo):
    """Brute force: count the cells of a fine grid dominated by some point (integer coordinates)."""
    axes = [np.arange(lo, ref[j]) + 0.5 for j in range(F.shape[1])]
    cells = np.array(list(itertools.product(*axes)))
    dom = (F[None, :, :] <= cells[:, None, :]).all(axis=2).any(axis=1)
    return float(dom.sum())


points = st.integers(2, 4).flatmap(
    lambda m: arrays(np.int64, st.tuples(st.integers(1, 25), st.just(m)), elements=st.integers(0, 7)))


@settings(max_examples=80, deadline=None)
@given(F=points)
def test_non_dominated_mask_and_sort_match_brute_force(F):
    F = F.astype(float)
    np.testing.assert_array_equal(non_dominated_mask(F), brute_nd(F))
    np.testing.assert_array_equal(non_dominated_sort(F), brute_ranks(F))
    np.testing.assert_array_equal(non_dominated_mask(F, chunk=3), brute_nd(F))


@settings(max_examples=60, deadline=None)
@given(F=st.integers(2, 3).flatmap(
    lambda m: arrays(np.int64, st.tuples(st.integers(1, 12), st.just(m)), elements=st.integers(0, 5))))
def test_hypervolume_exact_against_grid_count(F):
    ref = np.full(F.shape[1], 6.0)
    assert hypervolume(F.astype(float), ref) == grid_hv(F.astype(float), ref, 0)


def test_hypervolume_four_objectives_against_grid():
    rng = np.random.default_rng(0)
    F = rng.integers(0, 4, size=(6, 4)).astype(float)
    assert hypervolume(F, np.full(4, 4.0)) == grid_hv(F, np.full(4, 4.0), 0)


def test_large_non_dominated_mask_matches_sort():
    rng = np.random.default_rng(1)
    F = rng.random((3000, 3))
    mask = non_dominated_mask(F)
    np.testing.assert_array_equal(mask, non_dominated_sort(F) == 0)


def test_crowding_and_constrained_sort():
    F = np.array([[0.0, 3.0], [1.0, 2.0], [2.0, 1.0], [3.0, 0.0]])
    cd = crowding_distance(F)
    assert np.isinf(cd[0]) and np.isinf(cd[3]) and np.isfinite(cd[1:3]).all()
    viol = np.array([0.0, 0.5, 0.0, 0.1])
    ranks = constrained_sort(F, viol)
    assert ranks[0] == 0 and ranks[2] == 0 and ranks[3] < ranks[1]
    assert dominance_matrix(F).sum() == 0
