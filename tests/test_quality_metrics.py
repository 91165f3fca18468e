"""Balance, neighbour preservation, churn and drift metrics, checked against hand-computed cases.

Every expected number below is worked out by hand in the comments, not taken from a run.
"""

import math
import subprocess
import sys

import numpy as np
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from semid_index._code_stats import SortedCodeStatistics, code_statistics
from semid_index._quality import churn, code_size_shift, code_size_shift_from, neighbour_preservation
from semid_index.errors import (ConfigError, DimensionMismatchError, EmptyInputError,
                                InvalidCodesError, NonFiniteError)


def _level(sizes, k=None):
    """LevelStats of one level whose code c holds sizes[c] items (codebook size k or len)."""
    codes = np.repeat(np.arange(len(sizes)), sizes).reshape(-1, 1)
    return code_statistics(codes, [k or len(sizes)])["levels"][0]


# ---------------------------------------------------------------------------- balance
def test_everything_in_one_code():
    # sizes [8, 0, 0, 0], K = 4, mean 2.
    # Gini = sum_i sum_j |s_i - s_j| / (2 K^2 mean): the pairs (8, 0) and (0, 8) for each of the
    # 3 zeros give 6 * 8 = 48; 48 / (2 * 16 * 2) = 0.75 = (K - 1) / K.
    # deviations from the mean: 6, -2, -2, -2 -> variance (36 + 3 * 4) / 4 = 12, std sqrt(12),
    # cv = sqrt(12) / 2 = sqrt(3).
    lv = _level([8, 0, 0, 0])
    assert lv.gini == pytest.approx(0.75)
    assert (lv.size_min, lv.size_max) == (0, 8)
    assert lv.size_cv == pytest.approx(math.sqrt(3))


def test_uniform_sizes():
    # every one of the 5 codes holds 3 items: no pair differs, Gini 0, std 0, cv 0
    lv = _level([3, 3, 3, 3, 3])
    assert lv.gini == pytest.approx(0.0, abs=1e-12)
    assert (lv.size_min, lv.size_max) == (3, 3)
    assert lv.size_cv == pytest.approx(0.0, abs=1e-12)


def test_asymmetric_sizes():
    # sizes [1, 2, 3, 4], K = 4, n = 10, mean 2.5.
    # |differences| of the 6 unordered pairs: 1, 2, 3, 1, 2, 1 -> 10; ordered pairs 20.
    # Gini = 20 / (2 * 16 * 2.5) = 20 / 80 = 0.25.
    # deviations -1.5, -0.5, 0.5, 1.5 -> squares 2.25 + 0.25 + 0.25 + 2.25 = 5, variance 5 / 4,
    # std sqrt(1.25), cv = sqrt(1.25) / 2.5 = sqrt(0.2).
    lv = _level([1, 2, 3, 4])
    assert lv.gini == pytest.approx(0.25)
    assert (lv.size_min, lv.size_max) == (1, 4)
    assert lv.size_cv == pytest.approx(math.sqrt(0.2))


def test_dead_codes_count_as_zero_sizes():
    # sizes [2, 2] in a codebook of K = 4 -> the four sizes are [2, 2, 0, 0], mean 1.
    # ordered pairs that differ: each 2 against each 0, 2 * 2 * 2 = 8 pairs of |2 - 0| = 16;
    # Gini = 16 / (2 * 16 * 1) = 0.5. deviations 1, 1, -1, -1 -> variance 1, cv 1.
    lv = _level([2, 2], k=4)
    assert lv.gini == pytest.approx(0.5)
    assert (lv.size_min, lv.size_max) == (0, 2)
    assert lv.size_cv == pytest.approx(1.0)


@pytest.mark.parametrize("k", [1000, 100_000])  # 4 * n + 1024 = 1064: bincount, then unique
def test_one_code_in_a_big_codebook(k):
    # n = 10 items all in code 7: sizes [10, 0 * (K - 1)], mean 10 / K.
    # Gini: 2 (K - 1) ordered pairs of |10 - 0| / (2 K^2 * 10 / K) = (K - 1) / K.
    # variance = ((10 - m)^2 + (K - 1) m^2) / K with m = 10 / K -> 100 (K - 1) / K^2,
    # std = 10 sqrt(K - 1) / K, cv = std / m = sqrt(K - 1).
    lv = code_statistics(np.full((10, 1), 7), [k])["levels"][0]
    assert lv.gini == pytest.approx((k - 1) / k)
    assert (lv.size_min, lv.size_max) == (0, 10)
    assert lv.size_cv == pytest.approx(math.sqrt(k - 1))


def test_huge_codebook_path_matches_the_dense_one():
    # sizes [1, 2, 3, 4] over codes 0..3 of K = 1080: with n = 10, K > 4 * 10 + 1024 = 1064
    # (counts of the occurring codes only); the doubled set, n = 20, has K <= 1104 (bincount)
    codes = np.repeat(np.arange(4), [1, 2, 3, 4]).reshape(-1, 1)
    huge = code_statistics(codes, [1080])["levels"][0]
    dense = code_statistics(np.vstack([codes, codes]), [1080])["levels"][0]
    # doubling every size leaves Gini and cv unchanged (both are scale free)
    assert huge.gini == pytest.approx(dense.gini) and huge.size_cv == pytest.approx(dense.size_cv)
    assert (huge.size_min, huge.size_max, dense.size_max) == (0, 4, 8)


def test_balance_fields_are_plain_python_numbers():
    lv = _level([1, 2, 3, 4])
    assert type(lv.gini) is float and type(lv.size_cv) is float
    assert type(lv.size_min) is int and type(lv.size_max) is int


# ---------------------------------------------------------------------------- neighbours
def _two_groups():
    # unit vectors at angles (degrees) 0, 10, 25 (group A) and 90, 100, 120 (group B); within a
    # group angles differ by at most 25 degrees, across groups by at least 65 degrees.
    # Norms differ on purpose: cosine ignores them.
    deg = np.radians([0, 10, 25, 90, 100, 120])
    x = np.stack([np.cos(deg), np.sin(deg)], axis=1) * np.array([[1], [3], [0.5], [100], [1], [2]])
    codes = np.array([[0, 0], [0, 0], [0, 1],   # A
                      [1, 0], [1, 1], [1, 1]])  # B
    return x, codes


def test_neighbour_preservation_one_neighbour():
    # nearest by angle: 0 -> 1 (10 vs 25), 1 -> 0 (10 vs 15), 2 -> 1 (15), 3 -> 4 (10),
    # 4 -> 3 (10 vs 20), 5 -> 4 (20). Level 1: every pair is in one group -> 1.
    # Level 2: 0-1 (0,0)=(0,0) yes, 1-0 yes, 2-1 (0,1)/(0,0) no, 3-4 (1,0)/(1,1) no,
    # 4-3 no, 5-4 (1,1)=(1,1) yes -> 3 / 6.
    x, codes = _two_groups()
    assert neighbour_preservation(x, codes, n_neighbours=1) == pytest.approx([1.0, 0.5])


def test_neighbour_preservation_two_neighbours():
    # with 2 neighbours each item's neighbours are the other two of its group.
    # Level 2 matches: 0: {1 yes, 2 no} 1; 1: {0 yes, 2 no} 1; 2: {0 no, 1 no} 0;
    # 3: {4 no, 5 no} 0; 4: {3 no, 5 yes} 1; 5: {3 no, 4 yes} 1 -> 4 / 12.
    x, codes = _two_groups()
    got = neighbour_preservation(x, codes, n_neighbours=2, block=1)
    assert got == pytest.approx([1.0, 1 / 3])
    assert neighbour_preservation(x, codes, n_neighbours=2, block=4) == got


def test_neighbour_preservation_ties_go_to_the_lower_index():
    # four identical directions: every other item ties at cosine 1; the lowest index wins.
    # 0 -> 1 (code 1 vs 0: no), 1 -> 0 (no), 2 -> 0 (yes), 3 -> 0 (yes) -> 2 / 4
    x = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [0.5, 0.0]])
    codes = np.array([[0], [1], [0], [0]])
    assert neighbour_preservation(x, codes, n_neighbours=1) == [0.5]


def test_neighbour_preservation_zero_rows_and_clipping():
    # row 0 is zero: cosine 0 to everything (no NaN). (1,0) and (0,1) are orthogonal: 0 too.
    # Every similarity ties at 0, so the nearest is the lowest other index:
    # 0 -> 1 (code 0 = 0 yes), 1 -> 0 (yes), 2 -> 0 (code 1 vs 0 no) -> 2 / 3.
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    codes = np.array([[0], [0], [1]])
    assert neighbour_preservation(x, codes, n_neighbours=1) == pytest.approx([2 / 3])
    # 10 neighbours are clipped to N - 1 = 2: each item's neighbours are the two others;
    # matches: 0 {1 yes, 2 no}, 1 {0 yes, 2 no}, 2 {0 no, 1 no} -> 2 / 6
    assert neighbour_preservation(x, codes, n_neighbours=10) == pytest.approx([1 / 3])


def test_neighbour_preservation_sampling_is_seeded():
    x, codes = _two_groups()
    a = neighbour_preservation(x, codes, n_neighbours=1, sample=3, seed=5)
    assert a == neighbour_preservation(x, codes, n_neighbours=1, sample=3, seed=5)
    # any 3 queries: level 1 always matches; level 2 is a multiple of 1/3
    assert a[0] == 1.0 and a[1] * 3 == pytest.approx(round(a[1] * 3))


def test_neighbour_preservation_errors():
    x, codes = _two_groups()
    with pytest.raises(DimensionMismatchError, match=r"6 rows.*5 rows"):
        neighbour_preservation(x, codes[:5])
    with pytest.raises(EmptyInputError, match="at least 2 items"):
        neighbour_preservation(x[:1], codes[:1])
    with pytest.raises(EmptyInputError):
        neighbour_preservation(x[:0], codes[:0])
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(NonFiniteError):
        neighbour_preservation(bad, codes)
    with pytest.raises(DimensionMismatchError):
        neighbour_preservation(x[:, 0], codes)
    with pytest.raises(InvalidCodesError):
        neighbour_preservation(x, codes.astype(float))
    for kwargs in ({"n_neighbours": 0}, {"sample": -1}, {"block": 0}, {"n_neighbours": 1.5},
                   {"sample": True}, {"seed": -1}):
        with pytest.raises(ConfigError):
            neighbour_preservation(x, codes, **kwargs)


# ---------------------------------------------------------------------------- churn
def test_churn_identical_is_zero():
    codes = np.array([[0, 1, 2], [3, 4, 5]])
    assert churn(codes, codes.copy()) == [0.0, 0.0, 0.0]


def test_churn_one_item_changed_at_level_2():
    # N = 4; item 1 keeps its level-1 code, so only prefixes of depth 2 and 3 differ: 1 / 4 each
    old = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]])
    new = old.copy()
    new[1, 1] = 7
    assert churn(old, new) == [0.0, 0.25, 0.25]
    # item 2 changed at level 1 and item 3 at level 3 as well:
    # depth 1 {2}, depth 2 {1, 2}, depth 3 {1, 2, 3}
    new[2, 0] = 0
    new[3, 2] = 0
    assert churn(old, new) == [0.25, 0.5, 0.75]


def test_churn_errors():
    a = np.zeros((3, 2), dtype=int)
    with pytest.raises(InvalidCodesError, match=r"\(3, 2\) and \(3, 3\)"):
        churn(a, np.zeros((3, 3), dtype=int))
    with pytest.raises(InvalidCodesError):
        churn(a, np.zeros((2, 2), dtype=int))
    with pytest.raises(EmptyInputError):
        churn(a[:0], a[:0])
    with pytest.raises(InvalidCodesError):
        churn(a.astype(float), a)


# ---------------------------------------------------------------------------- drift
def test_code_size_shift_identical_distribution_is_zero():
    # same shares (1/2, 1/2) at level 1 and (1/2, 0, 1/2) at level 2, different N and order
    before = np.array([[0, 0], [1, 2]])
    after = np.array([[1, 2], [0, 0], [0, 2], [1, 0]])
    assert code_size_shift(before, after, [2, 3]) == pytest.approx([0.0, 0.0])


def test_code_size_shift_disjoint_is_one():
    before = np.array([[0], [0], [1]])
    after = np.array([[2], [3]])
    assert code_size_shift(before, after, [4]) == [1.0]


def test_code_size_shift_partial_and_huge_codebook():
    # p = (1/2, 1/2, 0), q = (1/4, 1/4, 1/2): 0.5 * (1/4 + 1/4 + 1/2) = 1/2
    before = np.array([[0], [0], [1], [1]])
    after = np.array([[0], [1], [2], [2]])
    assert code_size_shift(before, after, [3]) == pytest.approx([0.5])
    # the same codes in a codebook of 2**31 (only the occurring codes are counted)
    big = 2**31 - 1
    assert code_size_shift(before * 1000, np.where(after == 2, big, after * 1000),
                           [2**31]) == pytest.approx([0.5])


def test_code_size_shift_errors():
    a = np.zeros((2, 2), dtype=int)
    with pytest.raises(InvalidCodesError):
        code_size_shift(a, np.zeros((2, 3), dtype=int), [4, 4])
    with pytest.raises(InvalidCodesError):
        code_size_shift(a, a + 4, [4, 4])  # code 4 outside 0..3
    with pytest.raises(EmptyInputError):
        code_size_shift(a, a[:0], [4, 4])


# ---------------------------------------------------------------------------- no torch
def test_modules_do_not_import_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import semid_index._quality, semid_index._code_stats\n"
            "assert sys.modules['torch'] is None\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(1, 6), min_size=1, max_size=3), n=st.integers(1, 90),
       seed=st.integers(0, 10_000), n_cuts=st.integers(0, 6), huge=st.booleans())
def test_streamed_statistics_equal_the_whole_array_ones(sizes, n, seed, n_cuts, huge):
    """code_report streams an index's IDs in pages: the same numbers as on the whole array, for
    any page boundaries (groups and prefixes cut in the middle), with dense and sparse counts."""
    r = np.random.default_rng(seed)
    codes = np.stack([r.integers(0, k, n) for k in sizes], 1)
    codes = codes[np.lexsort(codes.T[::-1])]
    if huge:  # the sparse path of codebooks too large for dense counts
        SortedCodeStatistics.DENSE_CODES, old = 2, SortedCodeStatistics.DENSE_CODES
    try:
        acc = SortedCodeStatistics(sizes)
        for page in np.split(codes, np.sort(r.integers(0, n + 1, n_cuts))):
            acc.add(page)
        assert acc.result() == code_statistics(codes, sizes)
        other = np.stack([r.integers(0, k, 7) for k in sizes], 1)
        assert code_size_shift_from(acc.level_counts(), other, sizes) == \
            pytest.approx(code_size_shift(codes, other, sizes), abs=1e-12)
    finally:
        if huge:
            SortedCodeStatistics.DENSE_CODES = old


def test_streamed_statistics_refuse_unsorted_pages_and_no_codes():
    acc = SortedCodeStatistics([4, 4])
    acc.add(np.array([[1, 2], [1, 3]]))
    with pytest.raises(InvalidCodesError, match="not sorted"):
        acc.add(np.array([[1, 1]]))
    with pytest.raises(EmptyInputError):
        SortedCodeStatistics([4]).result()
