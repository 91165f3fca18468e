"""Exports of an index for training and serving a generative model (numpy only, no torch).

- item IDs: JSONL, CSV, Parquet or NumPy, with token strings such as ``<a_12><b_201><c_7><d_0>``;
- the valid-next-code table for constrained decoding: for every prefix that occurs (depth 0..L,
  the empty prefix included), the codes that may follow it; after all L levels, the suffixes;
- GRID's layout: one (L + 1, N) int64 array, column j = the L codes and the suffix of item j;
- serving formats for constrained decoding: the sorted (N, L + 1) code array (``.npy``), the
  packed-SID -> items JSON map of the OneRec serving examples, and prefix-n-gram token ids.

>>> import numpy as np
>>> ids = np.array([[1, 2, 0], [1, 3, 0], [1, 3, 1], [4, 0, 0]])  # sorted (L=2, suffix last)
>>> [(p, n.tolist()) for p, n in next_code_table(ids)]
[((), [1, 4]), ((1,), [2, 3]), ((4,), [0]), ((1, 2), [0]), ((1, 3), [0, 1]), ((4, 0), [0])]
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .errors import ConfigError, OutputFileError
from .ids import id_string, token_string

__all__ = ["FORMATS", "format_of", "next_code_table", "packed_sids", "prefix_ngram_ids", "replaced",
           "token_strings", "write_grid", "write_ids", "write_next_codes", "write_prefix_ngrams",
           "write_sid2items"]

FORMATS = ("jsonl", "csv", "parquet", "npz")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
             ".npz": "npz", ".npy": "npy"}


@contextlib.contextmanager
def replaced(path) -> Iterator[str]:
    """Write to a new temporary file beside ``path`` (the block gets its name); it takes
    ``path``'s place only when the block succeeds, so a failed export leaves an existing file
    as it was and no partial file behind. OS errors become :class:`OutputFileError`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # umask applies
    except OSError as e:
        raise OutputFileError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    try:
        yield str(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputFileError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def format_of(path, fmt: str | None, allowed: Sequence[str]) -> str:
    """The export format: ``fmt`` if given, else from the file's extension."""
    fmt = fmt or _SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None or fmt not in allowed:
        raise ConfigError(f"cannot tell the format of {str(path)!r}: use one of the extensions "
                          f"{', '.join('.' + f for f in allowed)} or pass the format "
                          f"({', '.join(allowed)})")
    return fmt


def next_code_table(ids: np.ndarray) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """(prefix, sorted next codes) for every prefix of depth 0..L that occurs in ``ids``.

    ids : (N, L + 1) int64 sorted lexicographically (as ``SemanticIdIndex.id_arrays`` returns
    them): the L codes, then the suffix. Depth by depth, prefixes in ID order; the entries of
    depth L list the suffixes in use. Exact: every listed step leads to at least one item, and
    every item's full ID is a path through the table.
    """
    ids = np.asarray(ids)
    n, width = ids.shape
    if n == 0:
        return
    for depth in range(width):
        head = ids[:, :depth + 1]
        # rows where the (depth + 1)-prefix changes: its distinct values, in order
        new = np.ones(n, dtype=bool)
        new[1:] = (head[1:] != head[:-1]).any(axis=1)
        distinct = head[new]
        if depth == 0:
            yield (), distinct[:, 0]
            continue
        starts = np.ones(len(distinct), dtype=bool)
        starts[1:] = (distinct[1:, :depth] != distinct[:-1, :depth]).any(axis=1)
        bounds = np.flatnonzero(np.r_[starts, True])
        for a, b in zip(bounds[:-1], bounds[1:]):
            yield tuple(distinct[a, :depth].tolist()), distinct[a:b, depth]


def token_strings(ids: np.ndarray) -> list[str]:
    """``<a_12><b_201><c_7><d_0>`` for each row of (N, L + 1) ids."""
    return [token_string(row) for row in ids.tolist()]


def _id_strings(ids: np.ndarray) -> list[str]:
    return [id_string(row) for row in ids.tolist()]


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("Parquet needs pyarrow: pip install 'semid-index[parquet]'") from None
    return pa, pq


def write_ids(path, fmt: str, pages: Iterable[tuple[Sequence[str], np.ndarray]], *,
              tokens: bool = True) -> int:
    """One record per item: key, ID string, level codes, suffix (and token string). ``pages``
    yields (keys, ids (B, L + 1)) as ``SemanticIdIndex.id_pages`` does; JSONL, CSV and Parquet
    are written page by page, npz through temporary files beside the output (memory stays flat
    either way). Returns the number of items.
    The file appears only complete (see :func:`replaced`)."""
    if fmt not in FORMATS:
        raise ConfigError(f"item IDs export as {', '.join(FORMATS)}, not {fmt!r}")
    with replaced(path) as tmp:
        return _write_ids(tmp, fmt, pages, tokens)


def _write_ids(path: str, fmt: str, pages: Iterable[tuple[Sequence[str], np.ndarray]],
               tokens: bool) -> int:
    n = 0
    if fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for keys, ids in pages:
                sid, tok = _id_strings(ids), token_strings(ids) if tokens else None
                for i, row in enumerate(ids.tolist()):
                    rec = {"key": keys[i], "id": sid[i], "codes": row[:-1], "suffix": row[-1]}
                    if tok is not None:
                        rec["tokens"] = tok[i]
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += len(keys)
    elif fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            for keys, ids in pages:
                if n == 0:
                    w.writerow(["key", "id", *(f"level_{i + 1}" for i in range(ids.shape[1] - 1)),
                                "suffix"] + (["tokens"] if tokens else []))
                sid, tok = _id_strings(ids), token_strings(ids) if tokens else None
                for i, row in enumerate(ids.tolist()):
                    w.writerow([keys[i], sid[i], *row]
                               + ([tok[i]] if tok is not None else []))
                n += len(keys)
    elif fmt == "parquet":
        pa, pq = _pyarrow()
        writer = None
        try:
            for keys, ids in pages:
                cols = {"key": pa.array(list(keys), pa.string()),
                        "id": pa.array(_id_strings(ids), pa.string())}
                for i in range(ids.shape[1] - 1):
                    cols[f"level_{i + 1}"] = pa.array(ids[:, i])
                cols["suffix"] = pa.array(ids[:, -1])
                if tokens:
                    cols["tokens"] = pa.array(token_strings(ids), pa.string())
                table = pa.table(cols)
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
                n += len(keys)
            if writer is None:  # no items: an empty table
                pq.write_table(pa.table({"key": pa.array([], pa.string()),
                                         "id": pa.array([], pa.string())}), path)
        finally:
            if writer is not None:
                writer.close()
    else:  # npz
        n = _write_npz_pages(path, pages)
    return n


def _write_npz_pages(path: str, pages: Iterable[tuple[Sequence[str], np.ndarray]],
                     ngram_sizes: Sequence[int] | None = None) -> int:
    """An ``.npz`` of ``keys`` (N,) str, ``ids`` (N, L + 1) int64 (and with ``ngram_sizes``
    ``ngrams`` (N, L) and ``vocab_size``) written from pages without holding them: one pass
    spills them to temporary files beside ``path``, then each array goes into the archive in
    chunks. Returns N."""
    with tempfile.TemporaryDirectory(dir=str(Path(path).resolve().parent),
                                     prefix=".semid-npz-") as folder:
        n, width, longest = 0, 0, 1
        vocab = 0
        with open(os.path.join(folder, "keys"), "wb") as fk, \
                open(os.path.join(folder, "ids"), "wb") as fi, \
                open(os.path.join(folder, "ngrams"), "wb") as fg:
            for keys, ids in pages:
                ids = np.ascontiguousarray(ids, dtype=np.int64)
                width = ids.shape[1]
                for k in keys:  # length-prefixed: a key may hold any character
                    raw = k.encode("utf-8")
                    fk.write(len(raw).to_bytes(4, "little") + raw)
                    longest = max(longest, len(k))
                fi.write(ids.tobytes())
                if ngram_sizes is not None:
                    grams, vocab = prefix_ngram_ids(ids, ngram_sizes)
                    fg.write(grams.tobytes())
                n += len(keys)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            _npz_member(z, "keys", np.dtype(f"<U{longest}"), (n,),
                        _key_chunks(os.path.join(folder, "keys"), longest))
            _npz_member(z, "ids", np.dtype(np.int64), (n, width),
                        _raw_chunks(os.path.join(folder, "ids")))
            if ngram_sizes is not None:
                _npz_member(z, "ngrams", np.dtype(np.int64), (n, len(ngram_sizes)),
                            _raw_chunks(os.path.join(folder, "ngrams")))
                if n == 0:
                    vocab = prefix_ngram_ids(np.zeros((0, len(ngram_sizes) + 1), np.int64),
                                             ngram_sizes)[1]
                _npz_member(z, "vocab_size", np.dtype(np.int64), (),
                            iter([np.int64(vocab).tobytes()]))
        return n


def _npz_member(z: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple,
                chunks: Iterable[bytes]) -> None:
    """One ``.npy`` member of an archive: its header, then the raw data chunk by chunk."""
    with z.open(name + ".npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_2_0(
            f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                "shape": shape})
        for chunk in chunks:
            f.write(chunk)


def _raw_chunks(name: str, size: int = 1 << 24) -> Iterator[bytes]:
    with open(name, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def _key_chunks(name: str, width: int, count: int = 65_536) -> Iterator[bytes]:
    """The length-prefixed keys of a spill file as fixed-width ``<U{width}`` bytes."""
    with open(name, "rb") as f:
        while True:
            keys: list[str] = []
            while len(keys) < count and (head := f.read(4)):
                keys.append(f.read(int.from_bytes(head, "little")).decode("utf-8"))
            if not keys:
                return
            yield np.asarray(keys, dtype=f"<U{width}").tobytes()


def write_next_codes(path, fmt: str, pages) -> int:
    """The constrained-decoding table; returns its number of prefixes.

    pages : (keys, ids (B, L + 1)) pages in ID order as ``SemanticIdIndex.id_pages`` yields them
    (or one (N, L + 1) sorted array). One pass; what is held in memory is one page and the open
    prefix of each depth, the rest goes to temporary files beside ``path``.

    jsonl: ``{"depth": d, "prefix": [...], "next": [...]}`` per line; parquet: the same three
    columns; npz: per depth d, ``prefixes_d`` (M, d), ``offsets_d`` (M + 1,) and ``next_d``
    (the next codes of prefix m are ``next_d[offsets_d[m]:offsets_d[m + 1]]``). Depth by depth,
    prefixes in ID order. The file appears only complete (see :func:`replaced`).
    """
    if fmt not in ("jsonl", "parquet", "npz"):
        raise ConfigError(f"the next-code table exports as jsonl, parquet or npz, not {fmt!r}")
    if isinstance(pages, np.ndarray):
        pages = [(None, pages)]
    with replaced(path) as tmp, tempfile.TemporaryDirectory(
            dir=str(Path(path).resolve().parent), prefix=".semid-next-") as spill_dir:
        table = _NextCodeSpill(spill_dir)
        for _, ids in pages:
            table.add(np.asarray(ids, dtype=np.int64))
        table.close()
        return table.write(tmp, fmt)


class _NextCodeSpill:
    """The next-code table of IDs that arrive sorted, page by page, spilled per depth to three
    append-only files: prefixes (int64, d per entry), entry lengths (int64) and next codes
    (int64)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.width: int | None = None
        self._last: np.ndarray | None = None
        self._open: list[tuple[np.ndarray, list[np.ndarray]]] = []  # per depth: prefix, codes
        self._files: list[tuple] = []
        self.counts: list[int] = []

    def _start(self, width: int) -> None:
        self.width = width
        for d in range(width):
            self._files.append(tuple(open(os.path.join(self.folder, f"{d}.{part}"), "wb")
                                     for part in ("prefix", "len", "next")))
            self.counts.append(0)

    def add(self, ids: np.ndarray) -> None:
        if ids.ndim != 2 or len(ids) == 0:
            return
        if self.width is None:
            self._start(ids.shape[1])
        rows = ids if self._last is None else np.concatenate([self._last[None], ids])
        diff = rows[1:] != rows[:-1]
        new = np.logical_or.accumulate(diff, axis=1)  # row i + 1 starts a new (d+1)-prefix
        if self._last is None:
            new = np.concatenate([np.ones((1, ids.shape[1]), dtype=bool), new])
            body = rows
        else:
            body = rows[1:]
        for d in range(ids.shape[1]):
            starts = np.flatnonzero(new[:, d])  # rows of this page that start a (d+1)-prefix
            if not len(starts):
                continue
            codes = body[starts, d]
            group = new[starts, d - 1] if d else np.zeros(len(starts), dtype=bool)
            if self._last is None:  # the first row of all starts every prefix
                group[0] = True
            cut = np.flatnonzero(group)  # entries that start a new d-prefix
            if not len(cut) or cut[0] > 0:  # the first entries continue the open prefix
                self._open[d][1].append(codes[:cut[0] if len(cut) else len(codes)])
            if len(cut):
                if d < len(self._open):
                    self._emit(d, *self._open[d])
                bounds = np.r_[cut, len(codes)]
                if len(cut) > 1:  # complete entries inside the page
                    self._write(d, body[starts[cut[:-1]], :d], np.diff(bounds[:-1]),
                                codes[cut[0]:cut[-1]])
                entry = (body[starts[cut[-1]], :d].copy(), [codes[cut[-1]:]])
                if d < len(self._open):
                    self._open[d] = entry
                else:
                    self._open.append(entry)
        self._last = ids[-1].copy()

    def _emit(self, d: int, prefix: np.ndarray, parts: list[np.ndarray]) -> None:
        codes = np.concatenate(parts)
        self._write(d, prefix[None], np.array([len(codes)]), codes)

    def _write(self, d: int, prefixes: np.ndarray, lengths: np.ndarray,
               codes: np.ndarray) -> None:
        fp, fl, fn = self._files[d]
        fp.write(np.ascontiguousarray(prefixes, dtype=np.int64).tobytes())
        fl.write(np.ascontiguousarray(lengths, dtype=np.int64).tobytes())
        fn.write(np.ascontiguousarray(codes, dtype=np.int64).tobytes())
        self.counts[d] += len(lengths)

    def close(self) -> None:
        for d, entry in enumerate(self._open):
            self._emit(d, *entry)
        for files in self._files:
            for f in files:
                f.close()

    def _arrays(self, d: int):
        """Memory-mapped (prefixes (M, d), lengths (M,), next codes) of depth d."""
        def load(part: str, shape) -> np.ndarray:
            name = os.path.join(self.folder, f"{d}.{part}")
            if os.path.getsize(name) == 0:
                return np.zeros(shape, dtype=np.int64)
            return np.memmap(name, dtype=np.int64, mode="r").reshape(shape)
        m = self.counts[d]
        return load("prefix", (m, d)), load("len", (m,)), load("next", (-1,))

    def write(self, path: str, fmt: str) -> int:
        width = self.width or 0
        if fmt == "jsonl":
            with open(path, "w", encoding="utf-8") as f:
                for d in range(width):
                    prefixes, lengths, codes = self._arrays(d)
                    at = 0
                    for a in range(0, len(lengths), NEXT_CHUNK):
                        pre = prefixes[a:a + NEXT_CHUNK].tolist()
                        lens = lengths[a:a + NEXT_CHUNK].tolist()
                        end = at + sum(lens)
                        flat = codes[at:end].tolist()
                        at, pos, out = end, 0, []
                        for p, n in zip(pre, lens):
                            out.append(json.dumps({"depth": d, "prefix": p,
                                                   "next": flat[pos:pos + n]}) + "\n")
                            pos += n
                        f.write("".join(out))
        elif fmt == "parquet":
            pa, pq = _pyarrow()
            schema = pa.schema([("depth", pa.int32()), ("prefix", pa.list_(pa.int64())),
                                ("next", pa.list_(pa.int64()))])
            with pq.ParquetWriter(path, schema) as writer:
                for d in range(width):
                    prefixes, lengths, codes = self._arrays(d)
                    at = 0
                    for a in range(0, len(lengths), NEXT_CHUNK):
                        lens = np.asarray(lengths[a:a + NEXT_CHUNK])
                        end = at + int(lens.sum())
                        m = len(lens)
                        pre = pa.ListArray.from_arrays(
                            pa.array(np.arange(m + 1, dtype=np.int32) * d),
                            pa.array(np.asarray(prefixes[a:a + m]).reshape(-1)))
                        nxt = pa.ListArray.from_arrays(
                            pa.array(np.r_[0, np.cumsum(lens)].astype(np.int32)),
                            pa.array(np.asarray(codes[at:end])))
                        writer.write_table(pa.Table.from_arrays(
                            [pa.array(np.full(m, d, dtype=np.int32)), pre, nxt],
                            schema=schema))
                        at = end
        else:  # npz: every array written to the archive from its spill file
            with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
                for d in range(width):
                    prefixes, lengths, codes = self._arrays(d)
                    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
                    for name, arr in ((f"prefixes_{d}", prefixes), (f"offsets_{d}", offsets),
                                      (f"next_{d}", codes)):
                        with z.open(name + ".npy", "w", force_zip64=True) as f:
                            np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)
        return sum(self.counts)


#: Entries per chunk when a spilled next-code table is written out.
NEXT_CHUNK = 65_536


def write_grid(path, pages: Iterable[tuple[Sequence[str], np.ndarray]], n: int,
               n_levels: int, *, rows: bool = False) -> Path:
    """GRID's layout: ``path`` (.npy) holds the (L + 1, N) int64 array, column j the codes and
    suffix of item j; with ``rows``, the (N, L + 1) array sorted by ID (row j = item j: the input
    of dense + CSR constrained-decoding builders). The item keys go, one per line in item order,
    to ``<path>.keys.txt``. Written page by page into a memory-mapped file (``n`` items, as
    counted beforehand); both files appear only complete (see :func:`replaced`). Returns the
    keys file's path."""
    keys_path = Path(path).with_name(Path(path).name + ".keys.txt")
    with replaced(path) as tmp, replaced(keys_path) as keys_tmp:
        _write_grid(tmp, keys_tmp, pages, n, n_levels, rows)
    return keys_path


def _write_grid(path: str, keys_path: str, pages: Iterable[tuple[Sequence[str], np.ndarray]],
                n: int, n_levels: int, rows: bool = False) -> None:
    shape = (n, n_levels + 1) if rows else (n_levels + 1, n)
    mem = np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=shape)
    out = mem if rows else mem.T
    j = 0
    with open(keys_path, "w", encoding="utf-8") as f:
        for keys, ids in pages:
            bad = next((k for k in keys if "\n" in k or "\r" in k), None)
            if bad is not None:
                raise ConfigError(f"item key {bad!r} has a line break and cannot go into a "
                                  "keys file: export ids as .npz instead")
            if j + len(keys) > n:
                raise ConfigError("the index grew while it was exported; export again")
            out[j:j + len(keys)] = ids
            f.write("".join(k + "\n" for k in keys))
            j += len(keys)
    mem.flush()
    del mem, out
    if j != n:
        raise ConfigError(f"the index changed while it was exported ({j} items, not {n})")


def _radix(sizes: Sequence[int], base: int | None) -> np.ndarray:
    """Weights of the packed SID: mixed radix over the codebook sizes, or a fixed base."""
    radix = [int(base)] * len(sizes) if base is not None else [int(k) for k in sizes]
    if base is not None and (isinstance(base, bool) or not isinstance(base, int) or
                             base < max(sizes)):
        raise ConfigError(f"base must be an int >= the largest codebook ({max(sizes)}), got "
                          f"{base!r}")
    if np.prod([float(r) for r in radix]) >= 2.0 ** 63:
        raise ConfigError(f"{' x '.join(map(str, radix))} codes do not fit a 64-bit packed SID")
    weights = np.ones(len(radix), dtype=np.int64)
    for i in range(len(radix) - 2, -1, -1):
        weights[i] = weights[i + 1] * radix[i + 1]
    return weights


def packed_sids(codes: np.ndarray, sizes: Sequence[int], base: int | None = None) -> np.ndarray:
    """(N,) int64 packed SIDs of (N, L) level codes: ``a * K^2 + b * K + c`` for 3 levels of K
    codes; mixed radix (``a * K_2 * K_3 + b * K_3 + c``) for levels of different sizes, or the
    fixed ``base`` a reader expects (e.g. 8192)."""
    codes = np.asarray(codes, dtype=np.int64)
    if base is not None and codes.size and int(codes.max()) >= base:
        raise ConfigError(f"code {int(codes.max())} does not fit base {base}")
    return codes @ _radix(sizes, base)


def write_sid2items(path, pages: Iterable[tuple[Sequence[str], np.ndarray]],
                    sizes: Sequence[int], *, base: int | None = None) -> int:
    """The packed-SID -> items map that the open OneRec serving and benchmark code reads
    (``sid2pid.json`` / ``sid2iid.json``, "multiply" encoding): one JSON object whose keys are the
    packed SIDs of the L level codes as decimal strings (:func:`packed_sids`) and whose values
    list the items with those codes, in suffix order, as ``{"pid": key, "suffix": s}``. Items
    that share all L codes share one entry, as there. Streamed page by page (IDs arrive sorted,
    so each entry's items are adjacent); the file appears only complete. Returns the number of
    entries."""
    weights = _radix(sizes, base)
    with replaced(path) as tmp:
        return _write_sid2items(tmp, pages, weights, base)


def _write_sid2items(path: str, pages: Iterable[tuple[Sequence[str], np.ndarray]],
                     weights: np.ndarray, base: int | None) -> int:
    n_entries = 0
    last: int | None = None
    with open(path, "w", encoding="utf-8") as f:
        f.write("{")
        for keys, ids in pages:
            if base is not None and len(ids) and int(ids[:, :-1].max()) >= base:
                raise ConfigError(f"code {int(ids[:, :-1].max())} does not fit base {base}")
            packed = (ids[:, :-1] @ weights).tolist()
            suffix = ids[:, -1].tolist()
            parts = []
            for key, p, s in zip(keys, packed, suffix):
                item = '{"pid": %s, "suffix": %d}' % (json.dumps(key, ensure_ascii=False), s)
                if p == last:
                    parts.append(", " + item)
                else:
                    parts.append(("]" if last is not None else "") +
                                 (",\n" if last is not None else "\n") + f'"{p}": [' + item)
                    last = p
                    n_entries += 1
            f.write("".join(parts))
        f.write("]\n}\n" if last is not None else "}\n")
    return n_entries


def prefix_ngram_ids(ids: np.ndarray, sizes: Sequence[int]) -> tuple[np.ndarray, int]:
    """Prefix-n-gram token ids: (N, L) int64, column k-1 the id of the item's first k codes, and
    the vocabulary size. Every prefix length has its own id range, and the ids are stable (the
    same prefix keeps its id whatever the catalog): the prefix (c_1..c_k) gets
    ``offset_k + packed(c_1..c_k)``, with packed the mixed-radix number of the k codes and
    ``offset_k = K_1 + K_1 K_2 + ... + K_1..K_{k-1}``. ids : (N, L + 1) codes then suffix."""
    ids = np.asarray(ids, dtype=np.int64)
    sizes = [int(k) for k in sizes]
    n_levels = len(sizes)
    out = np.zeros((len(ids), n_levels), dtype=np.int64)
    packed = np.zeros(len(ids), dtype=np.int64)
    offset = 0
    span = 1
    for k in range(n_levels):
        if span * sizes[k] + offset >= 2 ** 63:
            raise ConfigError(f"prefix n-grams of {' x '.join(map(str, sizes))} codes do not "
                              "fit 64-bit ids")
        packed = packed * sizes[k] + ids[:, k]
        out[:, k] = offset + packed
        span *= sizes[k]
        offset += span
    return out, offset


def write_prefix_ngrams(path, pages: Iterable[tuple[Sequence[str], np.ndarray]],
                        sizes: Sequence[int]) -> int:
    """``.npz`` with ``keys`` (N,), ``ids`` (N, L + 1), ``ngrams`` (N, L) (see
    :func:`prefix_ngram_ids`) and ``vocab_size``, from (keys, ids) pages as
    ``SemanticIdIndex.id_pages`` yields them (memory stays that of a page); the file appears only
    complete. Returns N."""
    prefix_ngram_ids(np.zeros((0, len(sizes) + 1), np.int64), sizes)  # sizes fit 64-bit ids
    with replaced(path) as tmp:
        return _write_npz_pages(tmp, pages, sizes)
