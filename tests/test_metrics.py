"""Quality metrics of code assignments, checked by hand."""

import math

import numpy as np
import pytest

from semid_index.quantize import code_statistics


def test_code_statistics_hand_checked():
    codes = np.array([[0, 1], [0, 1], [0, 2], [1, 0], [3, 0]])  # K = 4 then 3
    st = code_statistics(codes, [4, 3])
    l1, l2 = st["levels"]
    # level 1 uses codes 0, 1, 3 with counts 3, 1, 1; code 2 is dead
    assert (l1.used, l1.dead, l1.utilisation) == (3, 1, 0.75)
    p = np.array([3, 1, 1]) / 5
    assert l1.entropy_bits == pytest.approx(-(p * np.log2(p)).sum())
    assert l1.perplexity == pytest.approx(2 ** l1.entropy_bits)
    assert l1.largest_share == pytest.approx(0.6)
    assert (l2.used, l2.dead) == (3, 0)
    # prefixes: depth 1 -> {0, 1, 3}; depth 2 -> {(0,1), (0,2), (1,0), (3,0)}
    assert st["unique_share"] == [3 / 5, 4 / 5]
    assert st["n_distinct_codes"] == 4
    assert st["n_collided"] == 2 and st["largest_group"] == 2
    assert st["collided_share"] == pytest.approx(0.4)


def test_uniform_codes_have_full_entropy():
    codes = np.arange(256).reshape(-1, 1)
    (lv,) = code_statistics(codes, [256])["levels"]
    assert lv.entropy_bits == pytest.approx(8.0) and lv.perplexity == pytest.approx(256.0)
    assert math.isclose(lv.utilisation, 1.0)


def test_huge_codebooks_fall_back_to_row_unique():
    # the mixed-radix key would overflow int64: the row-wise path must give the same answer
    codes = np.array([[5, 7, 9], [5, 7, 9], [5, 8, 9]])
    st = code_statistics(codes, [2 ** 30, 2 ** 30, 2 ** 30])
    assert st["n_distinct_codes"] == 2 and st["largest_group"] == 2


@pytest.mark.parametrize("codes, sizes", [
    (np.zeros((5, 0), dtype=np.int64), []), (np.zeros((5, 2), dtype=np.int64), [4]),
    (np.array([[0, 4]]), [4, 4]), (np.array([[-1, 0]]), [4, 4]), (np.array([[0.5, 1]]), [4, 4]),
    (np.zeros((0, 2), dtype=np.int64), [4, 4]),
])
def test_bad_codes_are_typed_errors(codes, sizes):
    from semid_index.errors import SemanticIdError

    with pytest.raises(SemanticIdError):
        code_statistics(codes, sizes)
