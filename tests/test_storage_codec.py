"""The array codec: exact round trips, and every kind of corruption is caught by name."""

import pickle
import subprocess
import sys

import numpy as np
import pytest

from semid_index.errors import ConfigError
from semid_index.storage import CorruptBlobError, decode_array, encode_array


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.random.default_rng(0).standard_normal((256, 50)).astype(np.float32),
    np.array([1.5, -2.25], dtype=">f8"),          # big-endian input is stored little-endian
    np.arange(5, dtype=np.int64),
    np.zeros((0, 7), dtype=np.float32),
    np.array(3.0, dtype=np.float32),              # 0-d
])
def test_round_trip_is_exact(array):
    out = decode_array(encode_array(array))
    assert out.shape == array.shape and out.dtype == array.dtype.newbyteorder("<")
    assert np.array_equal(out, array)
    out[...] = 0  # writable, independent of the blob


def test_every_corruption_is_named():
    blob = bytearray(encode_array(np.ones((4, 3), dtype=np.float32)))
    flipped = bytearray(blob)
    flipped[-1] ^= 0xFF
    with pytest.raises(CorruptBlobError, match="checksum"):
        decode_array(flipped)
    with pytest.raises(CorruptBlobError, match="ends inside the payload"):
        decode_array(blob[:-4])
    with pytest.raises(CorruptBlobError, match="after its payload"):
        decode_array(blob + b"x")
    with pytest.raises(CorruptBlobError, match="magic"):
        decode_array(b"NOTMAGIC" + blob[8:])
    bad_version = bytearray(blob)
    bad_version[8] = 9
    with pytest.raises(CorruptBlobError, match="version 9"):
        decode_array(bad_version)
    with pytest.raises(CorruptBlobError, match="ends inside"):
        decode_array(blob[:5])


def test_pickles_and_objects_are_refused():
    with pytest.raises(CorruptBlobError, match="magic"):
        decode_array(pickle.dumps(np.ones(3)))
    with pytest.raises(ConfigError, match="cannot be stored"):
        encode_array(np.array(["a", "b"], dtype=object))


def test_storage_never_imports_torch():
    code = "import sys, semid_index.storage; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("width,levels", [(2, 1), (2, 3), (2, 4), (2, 5), (4, 2), (4, 3)])
def test_group_suffixes_count_equal_codes_in_input_order(width, levels):
    """Against a plain counter, for codes that fit one mixed-radix int64 and codes that need
    the lexicographic path."""
    from semid_index.storage._codes import group_suffixes

    rng = np.random.default_rng(width * 10 + levels)
    codes = rng.integers(0, 3, (2000, levels))  # few distinct codes: large groups
    codes[::7] = rng.integers(0, (1 << (8 * width)) - 1, (len(codes[::7]), levels))
    seen = {}
    expected = []
    for k in map(tuple, codes.tolist()):
        expected.append(seen.get(k, 0))
        seen[k] = expected[-1] + 1
    assert group_suffixes(codes).tolist() == expected
    assert group_suffixes(np.zeros((0, levels), dtype=np.int64)).tolist() == []
