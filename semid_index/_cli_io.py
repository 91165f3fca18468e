"""Inputs and outputs of the ``semid`` command: embedding files, key files, tables, JSON."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from .errors import ConfigError, DimensionMismatchError


def read_keys(path) -> list[str]:
    """Item keys from a text file, one per line (a trailing newline is fine; blank lines are
    not keys)."""
    with open(path, encoding="utf-8") as f:
        keys = f.read().splitlines()
    while keys and keys[-1] == "":
        keys.pop()
    if any(k == "" for k in keys):
        line = keys.index("") + 1
        raise ConfigError(f"{path}: line {line} is empty; a key file holds one key per line")
    return keys


def read_embeddings(path, *, keys_file=None, key_column: str | None = None,
                    column: str | None = None, row_numbers: bool = False
                    ) -> tuple[list[str], np.ndarray]:
    """(keys, embeddings (N, D)) from a ``.npy`` (memory-mapped), ``.npz`` or ``.parquet`` file.

    Keys come from ``keys_file`` (one per line), a Parquet column (``key_column``, default
    ``key`` when present), a ``keys`` array in an ``.npz``, or row numbers 0..N-1 when
    ``row_numbers`` is set. Embeddings: the ``.npy`` array; the ``.npz`` array named ``column``
    (default ``embeddings``, or its only array); the Parquet list column ``column`` (default
    ``embedding``).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no such file: {str(path)!r}")
    kind = path.suffix.lower()
    keys = None
    if kind == ".npy":
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    elif kind == ".npz":
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            name = column or ("embeddings" if "embeddings" in names else None)
            if name is None:
                rest = [n for n in names if n != "keys"]
                if len(rest) != 1:
                    raise ConfigError(f"{path} holds arrays {names}: name the embeddings with "
                                      "--column")
                name = rest[0]
            if name not in names:
                raise ConfigError(f"{path} has no array {name!r} (it holds {names})")
            x = z[name]
            if "keys" in names and keys_file is None and not row_numbers:
                keys = [str(k) for k in z["keys"].tolist()]
    elif kind == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError("reading Parquet needs pyarrow: pip install 'semid-index[parquet]'"
                              ) from None
        table = pq.read_table(path)
        name = column or "embedding"
        if name not in table.column_names:
            raise ConfigError(f"{path} has no column {name!r} (columns: {table.column_names}); "
                              "name the embedding column with --column")
        values = table.column(name).to_pylist()
        if not values:
            x = np.zeros((0, 0), dtype=np.float32)
        else:
            try:
                x = np.asarray(values, dtype=np.float32)
            except ValueError:
                raise DimensionMismatchError(f"{path}: the rows of column {name!r} have "
                                             "different lengths") from None
        kc = key_column or ("key" if "key" in table.column_names else None)
        if kc is not None and keys_file is None and not row_numbers:
            if kc not in table.column_names:
                raise ConfigError(f"{path} has no column {kc!r} (columns: {table.column_names})")
            keys = [str(k) for k in table.column(kc).to_pylist()]
    else:
        raise ConfigError(f"cannot read embeddings from {str(path)!r}: use .npy, .npz or .parquet")
    if x.ndim != 2:
        raise DimensionMismatchError(f"{path}: embeddings must be 2-d (N, D), got shape {x.shape}")
    if keys_file is not None:
        keys = read_keys(keys_file)
    elif row_numbers:
        keys = [str(i) for i in range(x.shape[0])]
    if keys is None:
        raise ConfigError(f"no item keys for {path}: pass --keys FILE (one key per line), "
                          "--key-column for Parquet, or --row-numbers to use 0..N-1")
    if len(keys) != x.shape[0]:
        raise DimensionMismatchError(f"{len(keys)} item keys but {x.shape[0]} embedding rows "
                                     f"in {path}")
    return keys, x


# ---------------------------------------------------------------------------- output
def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def table(headers: list[str], rows: list[list], *, right: set[int] = frozenset()) -> str:
    """Plain aligned columns, clipped to the terminal's width."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    limit = shutil.get_terminal_size((120, 24)).columns
    lines = []
    for r in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        line = "  ".join(parts).rstrip()
        lines.append(line if len(line) <= limit else line[:limit - 1] + "…")
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
