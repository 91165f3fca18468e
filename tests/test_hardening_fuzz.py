"""Fuzzing the public API and the ``semid`` command with hostile input, on SQLite and PostgreSQL.

The contract under test: every error the library raises on bad input is a
:class:`~semid_index.errors.SemanticIdError` (never a bare ValueError, TypeError, KeyError,
OverflowError, struct.error, UnicodeEncodeError or a driver's error) with a non-empty message, and
a call that fails leaves the database exactly as it was. The command prints one line
``semid: error: ...`` on stderr and exits with status 1 (2 for a usage error), never a traceback,
and changes nothing.

A call may also succeed: the fuzz mixes valid and invalid values. A write that succeeds changes the
shared index (the tests never depend on its exact contents); one that fails is compared with the
database as it was before (``dump_tables``, cached until a write succeeds).

Non-library exceptions are left to propagate on purpose: hypothesis then reports each distinct
kind of failure (exception type and the place it was raised) as a bug of its own.
"""

import itertools
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.extra import numpy as hnp

from semid_index import SemanticId, SemanticIdError, SemanticIdIndex

from conftest import BACKENDS, dump_tables, gaussian_mixture

ROOT = Path(__file__).resolve().parent.parent
# the old spellings of missing= are fuzzed too; their DeprecationWarning is expected
pytestmark = pytest.mark.filterwarnings("ignore:missing=.*is now spelled:DeprecationWarning")
N, DIM, SIZES = 600, 8, [4, 4, 4]
KEYS = [f"k{i}" for i in range(N)]
SMALL_N, SMALL_DIM = 16, 4  # the little index "fitme" that fit() is fuzzed on

FUZZ = {"deadline": None, "database": None,
        "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                  HealthCheck.filter_too_much, HealthCheck.data_too_large]}


# ============================================================================ fixture and helpers
class Fuzzed:
    """One fitted index ("fz": 600 items, dim 8, 4/4/4 codes) and a little one ("fitme"), in one
    database; the database's state is cached between failing writes."""

    def __init__(self, url: str, tmp: Path):
        self.url = url
        self.tmp = tmp
        self.x, _ = gaussian_mixture(N, DIM, 10, seed=0)
        self.idx = SemanticIdIndex.create(url, "fz", n_levels=3, codebook_size=SIZES, seed=0)
        self.idx.fit(KEYS, self.x, progress=False)
        self.small_x = np.random.default_rng(1).standard_normal((SMALL_N, SMALL_DIM)) \
            .astype(np.float32)
        self.small = SemanticIdIndex.create(url, "fitme", n_levels=2, codebook_size=2, seed=0)
        self.small.fit([str(i) for i in range(SMALL_N)], self.small_x, progress=False)
        self.cursor = self.idx.items_with_prefix((0,), limit=2).cursor  # a real one
        self._dump = None

    def dump(self) -> dict:
        if self._dump is None:
            self._dump = dump_tables(self.url)
        return self._dump

    def write(self, label: str, call):
        """Run a write: it succeeds (the cached state is dropped) or raises a SemanticIdError
        with a message and leaves the database exactly as before."""
        before = self.dump()
        _note(f"write: {label}")
        try:
            out = call()
        except SemanticIdError as e:
            assert str(e).strip(), f"{label}: {type(e).__name__} with an empty message"
            after = dump_tables(self.url)
            assert after == before, f"{label} failed with {e!r} but changed the database"
            return e
        self._dump = None
        return out

    @staticmethod
    def read(label: str, call):
        """Run a read: it succeeds, or raises a SemanticIdError with a message."""
        _note(f"read: {label}")
        try:
            out = call()
            if hasattr(out, "__next__"):  # generators (id_map, iter_items, id_pages): a few
                items = list(itertools.islice(out, 3))
                out.close()
                return items
            return out
        except SemanticIdError as e:
            assert str(e).strip(), f"{label}: {type(e).__name__} with an empty message"
            return e


def _note(text: str) -> None:
    """hypothesis.note() inside a hypothesis test (shown with a failing example), else nothing."""
    try:
        note(text)
    except InvalidArgument:
        pass


@pytest.fixture(scope="module", params=BACKENDS)
def fz(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"fuzz_{request.param}")
    if request.param == "sqlite":
        url, dbs = f"sqlite:///{tmp / 'fuzz.db'}", None
    else:
        dbs = request.getfixturevalue("pg_databases")
        url = dbs.create()
    try:
        f = Fuzzed(url, tmp)
        yield f
        f.idx.close()
        f.small.close()
    finally:
        if dbs is not None:
            dbs.drop(url)


def junk_files(tmp: Path) -> dict[str, str]:
    """Files that are not what their names say (created once per directory)."""
    d = tmp / "junk"
    if d.exists():
        return {p.name: str(p) for p in sorted(d.iterdir())}
    d.mkdir()
    (tmp / "generated").mkdir()
    rng = np.random.default_rng(5)
    good = rng.standard_normal((3, DIM)).astype(np.float32)
    (d / "random.npy").write_bytes(rng.bytes(300))
    (d / "text.npy").write_text("just some text\n")
    (d / "empty.npy").write_bytes(b"")
    np.save(d / "good.npy", good)
    (d / "truncated.npy").write_bytes((d / "good.npy").read_bytes()[:100])
    (d / "headeronly.npy").write_bytes((d / "good.npy").read_bytes()[:128])
    np.save(d / "pickled.npy", np.array([[{"a": 1}] * DIM] * 3, dtype=object), allow_pickle=True)
    np.save(d / "strings.npy", np.full((3, DIM), "x"))
    np.save(d / "structured.npy", np.zeros(3, dtype=[("a", "f4", (DIM,))]))
    np.save(d / "datetimes.npy", np.zeros((3, DIM), dtype="M8[s]"))
    np.save(d / "scalar.npy", np.array(1.5))
    (d / "vectors.txt").write_text("1 2 3\n")
    (d / "random.parquet").write_bytes(rng.bytes(400))
    (d / "corrupt.npz").write_bytes(b"PK\x03\x04" + rng.bytes(200))
    np.savez(d / "good.npz", embeddings=good)
    (d / "truncated.npz").write_bytes((d / "good.npz").read_bytes()[:150])
    (d / "npz_named.npy").write_bytes((d / "good.npz").read_bytes())
    (d / "zip_magic.npy").write_bytes(b"PK\x03\x04" + rng.bytes(100))
    with zipfile.ZipFile(d / "pickled.npz", "w") as z:  # an .npz whose array is pickled
        np.save(d / "obj.tmp.npy", np.array([[object()] * 2], dtype=object), allow_pickle=True)
        z.write(d / "obj.tmp.npy", "embeddings.npy")
    (d / "obj.tmp.npy").unlink()
    (d / "a_directory.npy").mkdir()
    return {p.name: str(p) for p in sorted(d.iterdir())}


# ============================================================================ strategies
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=12)  # surrogates too
HOSTILE_STRINGS = ["", " ", "\x00", "a\x00b", "\udcff", "\ud800", "k1\udc80", "x" * 1025,
                   "y" * 1024, "k1\n", "\u2028", "\ufeff", "é", "\U0001f600", "k1 ", "\t",
                   "'; DROP TABLE semid_items; --", "%s", "%(x)s", "?", "\\", "k1\r"]
HUGE_INTS = st.one_of(st.integers(min_value=2**31 - 2, max_value=2**31 + 2),
                      st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
                      st.integers(min_value=2**64, max_value=2**200),
                      st.integers(max_value=-2**63 + 2, min_value=-2**200))
NUMPY_SCALARS = st.sampled_from([np.int64(3), np.uint64(2**64 - 1), np.int8(-1), np.float32(1.0),
                                 np.float64("nan"), np.bool_(True), np.str_("k1"),
                                 np.bytes_(b"k1")])
NUMPY_ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.int64, np.uint8, np.float32, np.float16, np.bool_, np.complex64,
                           np.dtype("U3"), np.dtype("S3")]),
    shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3))

#: one item key: valid ones (known and unknown) and hostile ones
KEY = st.one_of(
    st.sampled_from(["k1", "k2", "k3", "k599", "unknown-key"]),
    st.sampled_from(HOSTILE_STRINGS),
    ANY_TEXT,
    st.integers(1000, 1100).map(lambda n: "z" * n),
    st.binary(max_size=6), st.integers(-5, 700), HUGE_INTS, st.floats(), st.none(),
    st.booleans(), NUMPY_SCALARS, NUMPY_ARRAYS,
    st.lists(st.sampled_from(["k1", 1, None]), max_size=2),
    st.tuples(st.just("k1")), st.just(object()), st.just({"k1": 1}),
)
#: the ``keys`` argument: a list (duplicates and all), or something that is not one
KEY_LIST = st.one_of(
    st.lists(KEY, max_size=4),
    st.lists(st.sampled_from(["k1", "k2", "k1"]), min_size=1, max_size=4),
    KEY,
    st.lists(KEY, max_size=3).map(tuple),
    st.lists(st.sampled_from(["k1", "k5", "unknown-key"]), max_size=3).map(np.array),
    st.builds(lambda: iter(["k1", "k2"])), st.just({"k1", "k2"}), st.just({"k1": 0}),
)
MISSING = st.one_of(st.sampled_from(["raise", "skip", "none", "ignore", "RAISE", "", " skip",
                                     None, 1, True, b"skip", ["skip"], "\udcff", "skip\x00"]),
                    ANY_TEXT)
ON_CONFLICT = st.one_of(st.sampled_from(["error", "keep", "reassign", "KEEP", "keep ", "",
                                         None, 0, b"keep", ["keep"], "\udcff"]),
                        ANY_TEXT)
VERSION = st.one_of(st.sampled_from([None, None, 1, 2, 0, -1, 99, "1", 1.0, True, False,
                                     2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, 2**100,
                                     np.int64(1), np.uint64(2**64 - 1), float("nan"),
                                     float("inf"), [1], b"1"]),
                    st.integers(), HUGE_INTS)
LIMIT = st.one_of(st.sampled_from([1, 2, 5, 100, 0, -1, 1.5, True, False, None, "5",
                                   float("inf"), float("nan"), np.int64(5),
                                   np.uint64(2**64 - 1), 10**9, 2**31, 2**63 - 1, 2**63,
                                   2**64, 2**100]),
                  st.integers(-3, 10**6), HUGE_INTS, st.floats())

CODE = st.one_of(st.integers(-2, 5), HUGE_INTS, st.integers(), st.floats(), st.booleans(),
                 st.none(), st.binary(max_size=2), st.text(max_size=2), NUMPY_SCALARS,
                 st.tuples(st.integers(0, 3)), st.just(1.7))
PREFIX = st.one_of(
    st.lists(st.integers(0, 3), max_size=4).map(tuple),  # valid up to depth 3
    st.lists(st.integers(0, 3), max_size=4),
    st.lists(st.integers(0, 3), max_size=4).map(lambda t: "-".join(map(str, t))),
    st.lists(CODE, max_size=4).map(tuple),
    st.sampled_from(["1-2", "²", "1--2", " ", "-1", "1" * 40, "9" * 10, "0" * 11, "١", "1-",
                     "-", "", "1 - 2", "+1", "0x1", "1e0", "1.0", "1_0", "\udcff", "1\x00",
                     "1-2-3-0", " 1-2 ", "1\n", "00001", "4", "3-3-3", "3-3-4"]),
    st.text(alphabet="0123456789- ²٣\x00\n", max_size=14),
    ANY_TEXT, st.binary(max_size=3), st.just(b"\x01\x02"), st.floats(), st.none(),
    st.booleans(), st.integers(), NUMPY_ARRAYS,
    st.builds(SemanticId, st.lists(st.integers(0, 10**12), min_size=1, max_size=5).map(tuple),
              st.integers(0, 2**70)),
    st.tuples(st.tuples(st.integers(0, 3))), st.just(((1, 2), 3)), st.just(range(2)),
    st.just({1: 2}), st.just({1}),
)
_ID_PART = st.one_of(st.integers(0, 4), st.integers(0, 2**70).map(str).map(int),
                     st.sampled_from([2**31 - 1, 2**31, 2**63, 2**64, 10**10 - 1, 10**10]))
CURSOR = st.one_of(
    st.none(),
    st.builds(lambda parts, v: "-".join(map(str, parts)) + ("" if v is None else f"@v{v}"),
              st.lists(_ID_PART, min_size=1, max_size=6),
              st.one_of(st.none(), st.integers(-1, 3), st.integers(0, 2**70))),
    st.sampled_from(["garbage", "1-2", "1-2-3", "0-0-0-0", f"0-0-0-{2**63}", f"0-0-0-{2**31}",
                     "0-0-0-99999999999", "1-2-3-0@v99", "0-0-0-0@v0", "0-0-0-0@v1",
                     "1-0-0-0@v1", "0-0-0-0@v", "0-0-0-0@v1@v1", "", " ", "@v1", "0-0-0--0",
                     "0-0-0-0@V1", "0-0-0-0\x00", "0-0-9-0", "0-0-0-١", "0-0-0-0@v١",
                     "0-0-0-" + "9" * 5000, "0-0-0-0@v" + "9" * 5000, "\udcff"]),
    ANY_TEXT, st.integers(), st.binary(max_size=4), st.just(SemanticId((0, 0, 0), 0)),
    st.just("REAL"),  # replaced by a real cursor of prefix (0,)
)


@st.composite
def embeddings(draw, n: int, d: int, files: dict[str, str] | None = None):
    """Embeddings for ``n`` items of dim ``d``: mostly arrays of some dtype, container and
    shape (often the right one), sometimes poisoned with NaN, inf or values that overflow
    float32; sometimes not embeddings at all."""
    if draw(st.integers(0, 9)) == 0:
        odd = [None, "hello", 5, 1.5, b"\x00" * 32, {"a": 1}, [], [[]], {1.0},
               [[1.0] * d, [1.0] * (d - 1)] + [[1.0] * d] * max(n - 2, 0),
               [["a"] * d] * n, [[None] * d] * n, [[2**70] * d] * n,
               [[1.0] * (d - 1) + ["a"]] * n, [[[1.0] * d]] * n,
               "/no/such/dir/x.npy", "missing.npy", "x\x00y.npy", "\udcff.npy", "a" * 5000]
        if files:
            odd += list(files.values()) + [Path(files["good.npy"])]
        return draw(st.sampled_from(odd))
    rows = draw(st.sampled_from([n] * 6 + [0, n + 1, max(n - 1, 0)]))
    cols = draw(st.sampled_from([d] * 6 + [0, 1, d + 1]))
    a = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal((rows, cols)) * 3
    poison = draw(st.sampled_from([None] * 5 + [np.nan, np.inf, -np.inf, 1e300, -3.5e38,
                                                 7e4, 1e-320]))
    if poison is not None and a.size:
        a[draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))] = poison
    dtype = draw(st.sampled_from(["float32"] * 3 + ["float64"] * 2 + [
        "float16", "int64", "int8", "uint64", "bool", "complex64", "object", "str"]))
    with np.errstate(all="ignore"):
        a = a.astype(dtype) if dtype != "str" else a.astype(str)
    shape = draw(st.sampled_from(["2d"] * 6 + ["1d", "3d", "0d", "fortran", "strided", "T"]))
    if shape == "1d":
        a = a.ravel()
    elif shape == "3d":
        a = a[None]
    elif shape == "0d":
        a = a.ravel()[0] if a.size else np.array(1.0)
    elif shape == "fortran":
        a = np.asfortranarray(a)
    elif shape == "strided":
        a = np.repeat(a, 2, axis=1)[:, ::2]
    elif shape == "T":
        a = a.T
    container = draw(st.sampled_from(["numpy"] * 4 + ["list", "torch", "bf16", "npy",
                                                       "memmap"]))
    if container == "list":
        return a.tolist() if isinstance(a, np.ndarray) else a
    if container in ("torch", "bf16"):
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiubc":
            return a
        t = torch.from_numpy(np.ascontiguousarray(a))
        if container == "bf16" and t.dtype.is_floating_point:
            t = t.to(torch.bfloat16)
        return t.requires_grad_() if t.dtype.is_floating_point and t.numel() and \
            draw(st.booleans()) else t
    if container in ("npy", "memmap") and files is not None:
        path = Path(files["good.npy"]).parent.parent / "generated" / f"{uuid.uuid4().hex}.npy"
        np.save(path, a, allow_pickle=True)
        if container == "memmap" and isinstance(a, np.ndarray) and a.dtype.kind in "fiu":
            return np.load(path, mmap_mode="r")
        return str(path) if draw(st.booleans()) else path
    return a


# ============================================================================ reads by key
@settings(max_examples=70, **FUZZ)
@given(keys=KEY_LIST, key=KEY, missing=MISSING, version=VERSION, limit=LIMIT,
       min_shared=st.one_of(st.integers(-1, 4), LIMIT))
def test_fuzz_key_reads(fz, keys, key, missing, version, limit, min_shared):
    idx = fz.idx
    fz.read(f"lookup({key!r:.60})", lambda: idx.lookup(key))
    fz.read(f"lookup({key!r:.60}, version={version!r})", lambda: idx.lookup(key, version=version))
    fz.read(f"lookup_many({keys!r:.80})", lambda: idx.lookup_many(keys))
    fz.read(f"lookup_many({keys!r:.80}, missing={missing!r}, version={version!r})",
            lambda: idx.lookup_many(keys, missing=missing, version=version))
    fz.read(f"similar({key!r:.60})", lambda: idx.similar(key))
    fz.read(f"similar('k1', limit={limit!r}, min_shared={min_shared!r}, version={version!r})",
            lambda: idx.similar("k1", limit=limit, min_shared=min_shared, version=version))


# ============================================================================ reads by prefix
@settings(max_examples=90, **FUZZ)
@given(prefix=PREFIX, limit=LIMIT, cursor=CURSOR, version=VERSION)
def test_fuzz_prefix_reads(fz, prefix, limit, cursor, version):
    idx = fz.idx
    if cursor == "REAL":
        prefix, cursor = (0,), fz.cursor
    fz.read(f"items_with_prefix({prefix!r:.60})", lambda: idx.items_with_prefix(prefix))
    fz.read(f"items_with_prefix({prefix!r:.60}, limit={limit!r}, cursor={cursor!r:.60}, "
            f"version={version!r})",
            lambda: idx.items_with_prefix(prefix, limit=limit, cursor=cursor, version=version))
    fz.read(f"items_with_prefix((0,), cursor={cursor!r:.60})",
            lambda: idx.items_with_prefix((0,), cursor=cursor))
    fz.read(f"count({prefix!r:.60}, version={version!r})",
            lambda: idx.count(prefix, version=version))
    fz.read(f"child_counts({prefix!r:.60}, version={version!r})",
            lambda: idx.child_counts(prefix, version=version))


# ============================================================================ version= everywhere
@settings(max_examples=40, **FUZZ)
@given(version=VERSION, batch=LIMIT)
def test_fuzz_version_arguments(fz, version, batch):
    idx, x = fz.idx, fz.x
    calls = {
        "lookup": lambda: idx.lookup("k1", version=version),
        "items_with_prefix": lambda: idx.items_with_prefix((1,), version=version),
        "count": lambda: idx.count(version=version),
        "child_counts": lambda: idx.child_counts((1,), version=version),
        "similar": lambda: idx.similar("k1", version=version),
        "stats": lambda: idx.stats(version=version),
        "encode": lambda: idx.encode(x[:3], version=version),
        "code_report": lambda: idx.code_report(x[:50], version=version),
        "id_map(old)": lambda: idx.id_map(version),
        "id_map(new)": lambda: idx.id_map(1, version),
        "id_arrays": lambda: idx.id_arrays(version=version),
        "iter_items(batch)": lambda: idx.iter_items(version=version, batch=batch),
        "id_pages(batch)": lambda: idx.id_pages(version=version, batch=batch),
    }
    for name, call in calls.items():
        fz.read(f"{name} version={version!r} batch={batch!r}", call)
    fz.write(f"activate({version!r})", lambda: idx.activate(version))
    fz.write("activate(1)", lambda: idx.activate(1))  # back to the only version


# ============================================================================ writes
@settings(max_examples=60, **FUZZ)
@given(data=st.data(), keys=KEY_LIST, on_conflict=ON_CONFLICT)
def test_fuzz_add(fz, data, keys, on_conflict):
    files = junk_files(fz.tmp)
    try:
        n = len(keys)
    except TypeError:
        n = 1
    x = data.draw(embeddings(n, DIM, files), label="embeddings")
    fz.write(f"add({keys!r:.80}, <{type(x).__name__} {getattr(x, 'shape', '')}>, "
             f"on_conflict={on_conflict!r})",
             lambda: fz.idx.add(keys, x, on_conflict=on_conflict, progress=False))
    ids = fz.write("add(..) of one good new item", lambda: fz.idx.add(
        [f"new-{uuid.uuid4().hex}"], fz.x[:1], progress=False))
    assert not isinstance(ids, SemanticIdError), ids


@settings(max_examples=45, **FUZZ)
@given(keys=KEY_LIST, missing=MISSING)
def test_fuzz_remove(fz, keys, missing):
    keys = _spared(keys)
    fz.write(f"remove({keys!r:.80}, missing={missing!r})",
             lambda: fz.idx.remove(keys, missing=missing))


@settings(max_examples=60, **FUZZ)
@given(data=st.data(), version=st.one_of(st.none(), VERSION))
def test_fuzz_encode(fz, data, version):
    files = junk_files(fz.tmp)
    x = data.draw(embeddings(3, DIM, files), label="embeddings")
    out = fz.read(f"encode(<{type(x).__name__} {getattr(x, 'shape', '')}>, version={version!r})",
                  lambda: fz.idx.encode(x, version=version))
    if isinstance(out, np.ndarray):  # an encoding: valid codes
        assert out.ndim == 2 and out.shape[1] == 3
        assert ((out >= 0) & (out < 4)).all()


@settings(max_examples=45, **FUZZ)
@given(data=st.data(), hostile_keys=st.booleans())
def test_fuzz_fit(fz, data, hostile_keys):
    files = junk_files(fz.tmp)
    keys = [str(i) for i in range(SMALL_N)]
    if hostile_keys:
        keys = data.draw(KEY_LIST, label="keys")
    x = data.draw(embeddings(SMALL_N, SMALL_DIM, files), label="embeddings")
    fz.write(f"fit({keys!r:.60}, <{type(x).__name__} {getattr(x, 'shape', '')}>)",
             lambda: fz.small.fit(keys, x, progress=False))


# ============================================================================ pinned values
# Values the fuzz above draws too, pinned here so that each one is checked on every run.
PINNED_READS = {
    "items_with_prefix(limit=2**63-1)": lambda i: i.items_with_prefix((0,), limit=2**63 - 1),
    "items_with_prefix(limit=2**63)": lambda i: i.items_with_prefix((0,), limit=2**63),
    "items_with_prefix(limit=2**100)": lambda i: i.items_with_prefix("1-2", limit=2**100),
    "similar(limit=2**63-1)": lambda i: i.similar("k1", limit=2**63 - 1),
    "similar(limit=2**70)": lambda i: i.similar("k1", limit=2**70),
    "id_pages(batch=2**63)": lambda i: list(i.id_pages(batch=2**63)),
    "iter_items(batch=2**64)": lambda i: list(i.iter_items(batch=2**64)),
    "lookup(version=2**63)": lambda i: i.lookup("k1", version=2**63),
    "lookup_many(version=2**64)": lambda i: i.lookup_many(["k1"], version=2**64),
    "items_with_prefix(version=2**63)": lambda i: i.items_with_prefix((0,), version=2**63),
    "count(version=2**100)": lambda i: i.count(version=2**100),
    "child_counts(version=uint64 max)":
        lambda i: i.child_counts(version=np.uint64(2**64 - 1)),
    "stats(version=2**63)": lambda i: i.stats(version=2**63),
    "encode(version=2**63)": lambda i: i.encode(np.zeros((1, DIM), np.float32), version=2**63),
    "id_map(2**63)": lambda i: list(i.id_map(2**63)),
    "code_report(version=2**64)": lambda i: i.code_report(version=2**64),
    "items_with_prefix(cursor=suffix 2**63)":
        lambda i: i.items_with_prefix((0,), cursor=f"0-0-0-{2**63}"),
    "items_with_prefix(cursor=@v 2**33)":
        lambda i: i.items_with_prefix((0,), cursor=f"0-0-0-0@v{2**33}"),
    "items_with_prefix(cursor=other prefix)":
        lambda i: i.items_with_prefix((1,), cursor="0-0-0-0@v1"),
    "items_with_prefix(cursor=@v99)": lambda i: i.items_with_prefix((1,), cursor="1-2-3-0@v99"),
    "items_with_prefix(1.7)": lambda i: i.items_with_prefix((1.7,)),
    "items_with_prefix(b'\\x01\\x02')": lambda i: i.items_with_prefix(b"\x01\x02"),
    "count('\u00b2')": lambda i: i.count("\u00b2"),
    "count('1--2')": lambda i: i.count("1--2"),
    "child_counts(SemanticId)": lambda i: i.child_counts(SemanticId((1, 2, 3), 0)),
    "lookup('\\udcff')": lambda i: i.lookup("\udcff"),
    "lookup('a\\x00b')": lambda i: i.lookup("a\x00b"),
    "lookup_many(2**70)": lambda i: i.lookup_many([2**70]),
}


@pytest.mark.parametrize("call", list(PINNED_READS.values()), ids=list(PINNED_READS))
def test_pinned_reads(fz, call):
    Fuzzed.read("pinned", lambda: call(fz.idx))


@pytest.mark.parametrize("version", [2**63 - 1, 2**63, 2**64, 0, "1", 1.0, True])
def test_pinned_activate(fz, version):
    fz.write(f"activate({version!r})", lambda: fz.idx.activate(version))


@pytest.mark.parametrize("device", ["cuda", "mps", "xpu", "meta"])
def test_create_with_a_device_this_machine_lacks(fz, device):
    """The device is checked at create() or at fit(): either way a SemanticIdError, and a
    failed fit leaves the database as it was."""
    name = f"dev-{device}"
    created = fz.write(f"create(device={device!r})", lambda: SemanticIdIndex.create(
        fz.url, name, n_levels=2, codebook_size=2, device=device))
    if isinstance(created, SemanticIdIndex):
        try:
            with created:
                fz.write(f"fit on device={device!r}", lambda: created.fit(
                    [str(i) for i in range(SMALL_N)], fz.small_x, progress=False))
        finally:
            fz.write(f"drop({name!r})", lambda: SemanticIdIndex.drop(fz.url, name))


@pytest.mark.parametrize("name", ["corrupt.npz", "good.npz", "truncated.npz", "npz_named.npy",
                                  "zip_magic.npy", "pickled.npy", "random.npy", "a_directory.npy"])
def test_embedding_paths_to_files_that_are_not_npy(fz, name):
    """A path given as embeddings is read as a .npy file: anything else (an .npz archive, a
    file that starts like a zip, a broken one) is an InputFileError, not a zipfile.BadZipFile
    or an AttributeError on the NpzFile that np.load returned."""
    path = junk_files(fz.tmp)[name]
    Fuzzed.read(f"encode({name!r})", lambda: fz.idx.encode(path))
    fz.write(f"add(.., {name!r})", lambda: fz.idx.add(["p1", "p2", "p3"], path, progress=False))
    fz.write(f"fit(.., {name!r})", lambda: fz.small.fit(["p1", "p2", "p3"], path, progress=False))


def test_a_single_key_in_a_0d_array_is_refused(fz):
    """``keys="ab"`` is refused (a single str, not a list of keys); ``np.array("ab")`` is the same
    mistake and must not be taken as the keys "a" and "b"."""
    before = fz.dump()
    with pytest.raises(SemanticIdError):
        fz.idx.lookup_many(np.array("k1"), missing="skip")
    with pytest.raises(SemanticIdError):
        fz.idx.add(np.array("ab"), fz.x[:2], progress=False)
    assert dump_tables(fz.url) == before


def test_values_beyond_float32_are_refused(fz):
    """float64 values that overflow float32 (1e300) become inf where the library casts: they
    must be refused like NaN/inf (a SemanticIdError: NonFiniteError is the natural one), not
    stored as garbage IDs or crash inside torch."""
    before = fz.dump()
    big = np.full((1, DIM), 1e300)
    with pytest.raises(SemanticIdError):
        fz.idx.encode(big)
    with pytest.raises(SemanticIdError):
        fz.idx.add(["beyond-float32"], big, progress=False)
    x = fz.small_x.astype(np.float64)
    x[3, 1] = 1e300
    with pytest.raises(SemanticIdError):
        fz.small.fit([str(i) for i in range(SMALL_N)], x, progress=False)
    assert dump_tables(fz.url) == before


@pytest.mark.parametrize("value, dtype", [(1e20, np.float32), (3e38, np.float32),
                                          (2**64 - 1, np.uint64)])
def test_fit_on_finite_values_whose_squares_overflow(fz, value, dtype):
    """Finite values whose squared distances overflow float32 (|v| >= ~1.9e19) make the
    k-means++ seeding's probabilities inf/NaN: fit must refuse them with a SemanticIdError (or
    cope), not die in torch.multinomial."""
    x = fz.small_x.astype(dtype) if dtype != np.uint64 else \
        np.abs(fz.small_x * 3).astype(np.uint64)
    x[3, 1] = value
    fz.write(f"fit(<{dtype.__name__} with {value!r}>)",
             lambda: fz.small.fit([str(i) for i in range(SMALL_N)], x, progress=False))


# ============================================================================ names and options
NAME = st.one_of(st.sampled_from(["fz", "fitme", "a\x00b", "a\x01", "\t", "", " ", "x" * 201,
                                  "x" * 200, "\udcff", "é", "a\nb", "a\u2028b", "a\x7f",
                                  "\x85", "'; DROP TABLE semid_indexes; --", "%s", "new"]),
                 ANY_TEXT, st.none(), st.integers(), st.binary(max_size=3),
                 st.lists(st.just("fz"), max_size=1))
SIZE = st.one_of(st.integers(-1, 5), st.sampled_from([1.5, True, 2**32, 2**32 + 1, 2**64,
                                                      None, "4", np.float64(4), np.int64(3)]))
CODEBOOK_SIZE = st.one_of(SIZE, st.lists(SIZE, max_size=4), st.just([4, 4]),
                          st.just(np.array([2, 2])), st.just(np.array([[2, 2]])))
OPTION = st.one_of(
    st.tuples(st.just("seed"), st.sampled_from(["abc", 1.5, 2**64, 2**64 - 1, -2**63 - 1, None,
                                                True, 7])),
    st.tuples(st.just("batch_size"), st.sampled_from([0, -1, 1.5, 2**70, 64, True])),
    st.tuples(st.just("device"), st.sampled_from(["cuda", "cuda:0", "banana", "mps", "xpu",
                                                  "cpu:0", "meta", "", None, 1, "cpu"])),
    st.tuples(st.just("max_epochs"), st.sampled_from([0, float("inf"), float("nan"), -1, 2])),
    st.tuples(st.just("tol"), st.sampled_from([-1, float("inf"), float("nan"), 0])),
    st.tuples(st.just("mode"), st.sampled_from(["grid", "default", None, "fast"])),
    st.tuples(st.just("train_size"), st.sampled_from([0, 1, 2**70, None, 1.5])),
    st.tuples(st.sampled_from(["bogus", "n_clusters", "", "verbose"]), st.just(1)),
)


@settings(max_examples=70, **FUZZ)
@given(name=NAME, n_levels=st.one_of(st.integers(-1, 4), st.sampled_from([65, 1.0, True, None,
                                                                          "2", 2**70])),
       codebook_size=CODEBOOK_SIZE, options=st.lists(OPTION, max_size=2).map(dict),
       busy_timeout=st.sampled_from([None, None, 5, 0, -1, float("nan"), float("inf"), True,
                                     "5", 1e300]),
       exist_ok=st.sampled_from([False, True, "yes", None]))
def test_fuzz_create_open_drop(fz, name, n_levels, codebook_size, options, busy_timeout,
                               exist_ok):
    url = fz.url
    fz.read(f"open({name!r:.60})", lambda: _closed(SemanticIdIndex.open(url, name)))
    if name in ("fz", "fitme"):  # the fixture's indexes are not dropped
        fz.write(f"create({name!r}, exist_ok={exist_ok!r})", lambda: _closed(
            SemanticIdIndex.create(url, name, n_levels=3, codebook_size=SIZES,
                                   exist_ok=exist_ok)))
        return
    label = (f"create({name!r:.60}, n_levels={n_levels!r}, codebook_size={codebook_size!r:.60},"
             f" busy_timeout={busy_timeout!r}, exist_ok={exist_ok!r}, **{options!r})")
    created = fz.write(label, lambda: SemanticIdIndex.create(
        url, name, n_levels=n_levels, codebook_size=codebook_size, exist_ok=exist_ok,
        busy_timeout=busy_timeout, **options))
    try:
        if isinstance(created, SemanticIdIndex):
            with created:
                if created.n_levels <= 4 and max(created.codebook_sizes) <= SMALL_N:
                    # the options were accepted: fitting with them works or fails cleanly
                    fz.write(f"fit after {label}", lambda: created.fit(
                        [str(i) for i in range(SMALL_N)], fz.small_x, progress=False))
    finally:  # drop what was created (and a hostile name: refused, or not found)
        fz.write(f"drop({name!r:.60})", lambda: SemanticIdIndex.drop(url, name))


def _spared(keys):
    """``keys`` with the items the read tests look up (k1, k2, k3) swapped for others, so that
    removals leave those in place."""
    def swap(k):
        return {"k1": "k401", "k2": "k402", "k3": "k403"}.get(k, k) if isinstance(k, str) else k

    if isinstance(keys, str):
        return swap(keys)
    if isinstance(keys, np.ndarray) and keys.dtype.kind == "U":
        out = keys.astype(object)
        for i in np.ndindex(out.shape):
            out[i] = swap(out[i])
        return out.astype(str)
    if isinstance(keys, dict):
        return {swap(k): v for k, v in keys.items()}
    if isinstance(keys, (set, frozenset)):
        return {swap(k) for k in keys}
    if isinstance(keys, tuple):
        return tuple(swap(k) for k in keys)
    if isinstance(keys, list) or hasattr(keys, "__next__"):
        return [swap(k) for k in keys]
    return keys


def _closed(index):
    index.close()
    return index


# ============================================================================ database URLs
@pytest.fixture(scope="module")
def url_files(tmp_path_factory):
    import sqlite3

    d = tmp_path_factory.mktemp("urls")
    (d / "text.db").write_text("hello, not a database\n" * 100)
    (d / "empty.db").write_bytes(b"")
    (d / "random.db").write_bytes(np.random.default_rng(3).bytes(8192))
    (d / "a_directory.db").mkdir()
    c = sqlite3.connect(d / "other_app.db")
    c.execute("CREATE TABLE t (x)")
    c.commit()
    c.close()
    c = sqlite3.connect(d / "fake_schema.db")
    c.execute("CREATE TABLE semid_alembic_version (version_num TEXT)")
    c.execute("INSERT INTO semid_alembic_version VALUES ('not-a-revision')")
    c.commit()
    c.close()
    return d


_PG = "postgresql+psycopg://semid:semid@127.0.0.1"
URL = st.one_of(
    st.sampled_from([
        "garbage", "", " ", "://", "sqlite:/", "mysql://u@h/db", "oracle://s@h/x", "bogus+x://a",
        "postgresql+psycopg2://semid:semid@127.0.0.1:5432/semid_test",  # driver not installed
        "postgresql+asyncpg://semid:semid@127.0.0.1:5432/semid_test",
        f"{_PG}:1/semid_test",  # nothing listens there: refused at once
        f"{_PG}:abc/semid_test", f"{_PG}:99999/semid_test", "postgresql+psycopg://u@[::1:5432/x",
        "sqlite:////no/such/dir/x.db", "sqlite://", "sqlite:///:memory:",
        "{d}/text.db", "sqlite:///{d}/text.db", "sqlite:///{d}/empty.db",
        "sqlite:///{d}/random.db", "sqlite:///{d}/a_directory.db", "sqlite:///{d}/other_app.db",
        "sqlite:///{d}/fake_schema.db", "sqlite:///{d}/missing.db",
        "sqlite:///{d}/missing_dir/x.db", "sqlite:///{d}/x\x00y.db", "sqlite:///{d}/\udcff.db",
        "sqlite:///{d}/" + "a" * 5000 + ".db", "sqlite:///{d}/q.db?timeout=abc",
        "sqlite:///{d}/q.db?mode=ro", "sqlite:///{d}/empty.db?timeout=abc",
    ]),
    st.text(alphabet=st.characters(exclude_characters=":", exclude_categories=()), max_size=20),
    st.builds("sqlite:///{{d}}/{}.db".format,
              st.text(alphabet=st.characters(exclude_characters="/\x00", exclude_categories=()),
                      min_size=1, max_size=8)),
    st.none(), st.integers(), st.binary(max_size=8), st.just(["sqlite:///x.db"]),
)


@settings(max_examples=50, **FUZZ)
@given(url=URL, name=st.sampled_from(["default", "fz", "\udcff", ""]))
def test_fuzz_database_urls(url_files, url, name):
    d = url_files
    if isinstance(url, str):
        url = url.replace("{d}", str(d))
    before = sorted(os.listdir(d))
    for label, call in [("open", lambda: _closed(SemanticIdIndex.open(url, name))),
                        ("list_indexes", lambda: SemanticIdIndex.list_indexes(url)),
                        ("drop", lambda: SemanticIdIndex.drop(url, name))]:
        Fuzzed.read(f"{label}({url!r:.80})", call)
    # opening, listing and dropping never create a file (a mistyped path stays missing)
    assert sorted(os.listdir(d)) == before


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://semid:semid@127.0.0.1:abc/semid_test",  # a port that is no number
    "postgresql+psycopg://semid:semid@[::1:5432/semid_test",  # an unclosed IPv6 bracket
    "sqlite:///{d}/empty.db?timeout=abc",  # a query argument of the wrong type
    "postgresql+psycopg2://semid:semid@127.0.0.1:5432/semid_test",  # driver not installed
    "sqlite:///{d}/missing_dir/x.db", "sqlite:///{d}/a_directory.db", "sqlite:///{d}/text.db",
    "sqlite:///{d}/empty.db", "sqlite:///{d}/random.db", "sqlite:///{d}/fake_schema.db",
])
def test_pinned_database_urls(url_files, url):
    url = url.replace("{d}", str(url_files))
    before = sorted(os.listdir(url_files))
    Fuzzed.read(f"open({url!r})", lambda: _closed(SemanticIdIndex.open(url, "default")))
    Fuzzed.read(f"list_indexes({url!r})", lambda: SemanticIdIndex.list_indexes(url))
    Fuzzed.read(f"drop({url!r})", lambda: SemanticIdIndex.drop(url, "default"))
    assert sorted(os.listdir(url_files)) == before


def test_reads_on_a_mistyped_sqlite_path_create_nothing(tmp_path):
    from semid_index import ConfigError

    path = tmp_path / "typo.db"
    url = f"sqlite:///{path}"
    assert SemanticIdIndex.list_indexes(url) == []
    with pytest.raises(ConfigError):
        SemanticIdIndex.open(url, "default")
    with pytest.raises(SemanticIdError):
        SemanticIdIndex.drop(url, "default")
    for args in (["lookup", "k1"], ["list"], ["stats"], ["prefix", "1"]):
        code, _, err = semid(*args, "--db", url)
        assert code in (0, 1) and "Traceback" not in err, err
    assert os.listdir(tmp_path) == []


# ============================================================================ the command
def semid(*args, env=None):
    """``python -m semid_index ARGS`` (args may hold lone surrogates: they go out as the bytes
    they stand for); (status, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200", **(env or {}))
    argv = [sys.executable, "-m", "semid_index"] + [os.fsencode(str(a)) for a in args]
    p = subprocess.run(argv, env=env, capture_output=True, timeout=120, check=False)
    return (p.returncode, p.stdout.decode("utf-8", "replace"),
            p.stderr.decode("utf-8", "replace"))


def assert_cli_error(code, out, err, args):
    shown = " ".join(map(repr, args))
    assert "Traceback" not in err, f"semid {shown} printed a traceback:\n{err}"
    assert code in (1, 2), f"semid {shown} exited {code}:\n{out}\n{err}"
    if code == 1:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("semid: error: ") and \
            len(lines[0]) > len("semid: error: "), \
            f"semid {shown}: stderr is not one 'semid: error: ' line:\n{err}"


def _cli_files(tmp: Path) -> Path:
    d = tmp / "cli"
    if d.exists():
        return d
    d.mkdir()
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, DIM)).astype(np.float32)
    np.save(d / "good.npy", x)
    (d / "keys.txt").write_text("c1\nc2\nc3\n")
    (d / "undecodable.txt").write_bytes(b"c1\n\xff\xfe\x80\nc3\n")
    (d / "random.npy").write_bytes(rng.bytes(300))
    (d / "truncated.npy").write_bytes((d / "good.npy").read_bytes()[:100])
    np.save(d / "pickled.npy", np.array([[{"a": 1}] * DIM] * 3, dtype=object), allow_pickle=True)
    (d / "corrupt.npz").write_bytes(b"PK\x03\x04" + rng.bytes(100))
    (d / "zip_magic.npy").write_bytes(b"PK\x03\x04" + rng.bytes(100))
    np.savez(d / "npz_named.npy.npz", embeddings=x)
    (d / "npz_named.npy.npz").rename(d / "npz_named.npy")
    (d / "random.parquet").write_bytes(rng.bytes(500))
    np.save(d / "beyond_float32.npy", np.full((3, DIM), 1e300))
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"key": ["c1", "c2", "c3"], "embedding": [[1e300] * DIM] * 3}),
                       d / "beyond_float32.parquet")
    except ImportError:
        pass
    return d


CLI_CASES = [
    ["lookup", "\udcff"],
    ["lookup", "a\u2028b\u0085", "\ufeffk1"],
    ["prefix", "²"],
    ["prefix", "1", "--cursor", f"1-0-0-{2**63}"],
    ["prefix", "1", "--limit", str(2**63 - 1)],
    ["similar", "k1", "--limit", str(2**70)],
    ["stats", "--version", str(2**70)],
    ["export", "{d}/out.jsonl", "--version", "99"],
    ["export", "{d}/out.jsonl", "--version", str(2**63)],
    ["activate", str(2**63)],
    ["remove", "--keys", "{d}/undecodable.txt"],
    ["add", "{d}/random.npy", "--row-numbers"],
    ["add", "{d}/pickled.npy", "--row-numbers"],
    ["add", "{d}/corrupt.npz", "--row-numbers"],
    ["add", "{d}/random.parquet", "--row-numbers"],
    ["add", "{d}/zip_magic.npy", "--row-numbers"],
    ["add", "{d}/npz_named.npy", "--row-numbers"],
    ["add", "{d}/good.npy", "--keys", "{d}/undecodable.txt"],
    ["add", "{d}/beyond_float32.npy", "--keys", "{d}/keys.txt"],
    ["add", "{d}/beyond_float32.parquet", "--keys", "{d}/keys.txt"],
]


@pytest.mark.parametrize("args", CLI_CASES, ids=lambda a: "-".join(
    s.encode("ascii", "backslashreplace").decode()[:24] for s in a))
def test_cli_hostile_arguments(fz, args):
    d = _cli_files(fz.tmp)
    args = [a.replace("{d}", str(d)) for a in args]
    if "parquet" in " ".join(args):
        pytest.importorskip("pyarrow")
    before = fz.dump()
    code, out, err = semid(*args, env={"SEMID_DB": fz.url, "SEMID_INDEX": "fz"})
    assert_cli_error(code, out, err, args)
    assert dump_tables(fz.url) == before, f"semid {args} failed but changed the database"


@pytest.mark.parametrize("command, url", [
    (["lookup", "k1"], "postgresql+psycopg://semid:semid@127.0.0.1:abc/semid_test"),
    (["list"], "postgresql+psycopg://semid:semid@127.0.0.1:abc/semid_test"),
    (["lookup", "k1"], "sqlite:///{tmp}/random.db?timeout=abc"),
    (["list"], "postgresql+psycopg2://semid:semid@127.0.0.1:5432/semid_test"),
    (["lookup", "k1"], "sqlite:///{tmp}"),
    (["list"], "sqlite:///{tmp}/random.db"),
])
def test_cli_bad_database_urls(tmp_path, command, url):
    (tmp_path / "random.db").write_bytes(np.random.default_rng(4).bytes(4096))
    url = url.replace("{tmp}", str(tmp_path))
    code, out, err = semid(*command, "--db", url)
    assert_cli_error(code, out, err, [*command, "--db", url])
    assert code == 1
    assert sorted(os.listdir(tmp_path)) == ["random.db"]
