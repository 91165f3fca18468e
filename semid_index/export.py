"""Exports of an index for training and serving a generative model (numpy only, no torch).

- item IDs: JSONL, CSV, Parquet or NumPy, with token strings such as ``<a_12><b_201><c_7><d_0>``;
- the valid-next-code table for constrained decoding: for every prefix that occurs (depth 0..L,
  the empty prefix included), the codes that may follow it; after all L levels, the suffixes;
- GRID's layout: one (L + 1, N) int64 array, column j = the L codes and the suffix of item j.

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
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .errors import ConfigError, OutputFileError
from .ids import id_string, token_string

__all__ = ["FORMATS", "format_of", "next_code_table", "replaced", "token_strings", "write_grid",
           "write_ids", "write_next_codes"]

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
    are written page by page (memory stays flat), npz at the end. Returns the number of items.
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
        parts = list(pages)
        keys = [k for ks, _ in parts for k in ks]
        ids = np.concatenate([i for _, i in parts]) if parts else np.zeros((0, 0), np.int64)
        with open(path, "wb") as f:  # a file object: np.savez adds no extension
            np.savez(f, keys=np.asarray(keys, dtype=str), ids=ids)
        n = len(keys)
    return n


def write_next_codes(path, fmt: str, ids: np.ndarray) -> int:
    """The constrained-decoding table; returns its number of prefixes.

    jsonl: ``{"depth": d, "prefix": [...], "next": [...]}`` per line; parquet: the same three
    columns; npz: per depth d, ``prefixes_d`` (M, d), ``offsets_d`` (M + 1,) and ``next_d``
    (the next codes of prefix m are ``next_d[offsets_d[m]:offsets_d[m + 1]]``). The file
    appears only complete (see :func:`replaced`).
    """
    if fmt not in ("jsonl", "parquet", "npz"):
        raise ConfigError(f"the next-code table exports as jsonl, parquet or npz, not {fmt!r}")
    with replaced(path) as tmp:
        return _write_next_codes(tmp, fmt, ids)


def _write_next_codes(path: str, fmt: str, ids: np.ndarray) -> int:
    table = list(next_code_table(ids))
    if fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for prefix, nxt in table:
                f.write(json.dumps({"depth": len(prefix), "prefix": list(prefix),
                                    "next": nxt.tolist()}) + "\n")
    elif fmt == "parquet":
        pa, pq = _pyarrow()
        pq.write_table(pa.table({
            "depth": pa.array([len(p) for p, _ in table], pa.int32()),
            "prefix": pa.array([list(p) for p, _ in table], pa.list_(pa.int64())),
            "next": pa.array([n.tolist() for _, n in table], pa.list_(pa.int64()))}), path)
    else:  # npz
        arrays: dict[str, np.ndarray] = {}
        for depth in range(ids.shape[1]):
            rows = [(p, n) for p, n in table if len(p) == depth]
            arrays[f"prefixes_{depth}"] = np.array([p for p, _ in rows], dtype=np.int64) \
                .reshape(len(rows), depth)
            arrays[f"offsets_{depth}"] = np.cumsum([0] + [len(n) for _, n in rows])
            arrays[f"next_{depth}"] = np.concatenate([n for _, n in rows]) if rows else \
                np.zeros(0, np.int64)
        with open(path, "wb") as f:
            # the keys are prefixes_/offsets_/next_<depth>, never savez's allow_pickle; mypy
            # matches **dict[str, ndarray] against that bool keyword too
            np.savez(f, **arrays)  # type: ignore[arg-type]
    return len(table)


def write_grid(path, pages: Iterable[tuple[Sequence[str], np.ndarray]], n: int,
               n_levels: int) -> Path:
    """GRID's layout: ``path`` (.npy) holds the (L + 1, N) int64 array, column j the codes and
    suffix of item j; the item keys go, one per line in column order, to ``<path>.keys.txt``.
    Written page by page into a memory-mapped file (``n`` items, as counted beforehand); both
    files appear only complete (see :func:`replaced`). Returns the keys file's path."""
    keys_path = Path(path).with_name(Path(path).name + ".keys.txt")
    with replaced(path) as tmp, replaced(keys_path) as keys_tmp:
        _write_grid(tmp, keys_tmp, pages, n, n_levels)
    return keys_path


def _write_grid(path: str, keys_path: str, pages: Iterable[tuple[Sequence[str], np.ndarray]],
                n: int, n_levels: int) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=(n_levels + 1, n))
    j = 0
    with open(keys_path, "w", encoding="utf-8") as f:
        for keys, ids in pages:
            bad = next((k for k in keys if "\n" in k or "\r" in k), None)
            if bad is not None:
                raise ConfigError(f"item key {bad!r} has a line break and cannot go into a "
                                  "keys file: export ids as .npz instead")
            if j + len(keys) > n:
                raise ConfigError("the index grew while it was exported; export again")
            out[:, j:j + len(keys)] = ids.T
            f.write("".join(k + "\n" for k in keys))
            j += len(keys)
    out.flush()
    del out
    if j != n:
        raise ConfigError(f"the index changed while it was exported ({j} items, not {n})")
