"""Inputs and outputs of the ``semid`` command: embedding files, key files, tables, JSON.

Reading only: what the files hold is validated by the library (:mod:`semid_index._inputs`),
once. A file that cannot be read as what it claims to be raises
:class:`~semid_index.errors.InputFileError` naming it.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Collection
from pathlib import Path

import numpy as np

from ._inputs import load_npy
from .errors import ConfigError, InputFileError

BOM = "\ufeff"


def read_keys(path) -> list[str]:
    """Item keys from a UTF-8 text file, one per line.

    Lines end at ``\\n`` (or ``\\r\\n``) only: other characters Unicode calls line breaks
    (U+0085, U+2028, form feeds...) are part of a key. A leading byte-order mark is dropped,
    a trailing newline is fine, and a blank line is an error (it is not a key)."""
    p = str(path)
    try:
        data = Path(p).read_bytes()
    except FileNotFoundError:
        raise InputFileError(f"no such file: {p!r}", path=p) from None
    except OSError as e:
        raise InputFileError(f"cannot read {p!r}: {e.strerror or e}", path=p) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputFileError(f"{p}: line {line} is not valid UTF-8 (byte {data[e.start]:#04x} "
                             f"at offset {e.start}); key files are UTF-8 text", path=p) from None
    if text.startswith(BOM):
        text = text[1:]
    keys = text.split("\n")
    if keys and keys[-1] == "":
        keys.pop()  # the final newline
    keys = [k[:-1] if k.endswith("\r") else k for k in keys]
    if "" in keys:
        raise InputFileError(f"{p}: line {keys.index('') + 1} is empty; a key file holds one "
                             "key per line", path=p)
    return keys


def read_embeddings(path, *, keys_file=None, key_column: str | None = None,
                    column: str | None = None, row_numbers: bool = False
                    ) -> tuple[list[str], np.ndarray]:
    """(keys, embeddings) from a ``.npy`` (memory-mapped), ``.npz`` or ``.parquet`` file.

    Keys come from ``keys_file`` (one per line), a Parquet column (``key_column``, default
    ``key`` when present), a ``keys`` array in an ``.npz``, or row numbers 0..N-1 when
    ``row_numbers`` is set. Embeddings: the ``.npy`` array; the ``.npz`` array named ``column``
    (default ``embeddings``, or its only array); the Parquet list column ``column`` (default
    ``embedding``). Nothing is unpickled. Shapes, counts and values are checked by the library.
    """
    p = str(path)
    kind = Path(p).suffix.lower()
    if kind == ".npy":
        keys, x = None, load_npy(p)
    elif kind == ".npz":
        keys, x = _read_npz(p, column, use_keys=keys_file is None and not row_numbers)
    elif kind == ".parquet":
        keys, x = _read_parquet(p, column, key_column,
                                use_keys=keys_file is None and not row_numbers)
    elif not Path(p).exists():
        raise InputFileError(f"no such file: {p!r}", path=p)
    else:
        raise InputFileError(f"cannot read embeddings from {p!r}: use .npy, .npz or .parquet",
                             path=p)
    if keys_file is not None:
        keys = read_keys(keys_file)
    elif row_numbers:
        keys = [str(i) for i in range(x.shape[0] if x.ndim else 0)]
    if keys is None:
        raise ConfigError(f"no item keys for {p}: pass --keys FILE (one key per line), "
                          "--key-column for Parquet, or --row-numbers to use 0..N-1")
    return keys, x


def _read_npz(p: str, column: str | None, use_keys: bool) -> tuple[list[str] | None, np.ndarray]:
    try:
        with np.load(p, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise InputFileError(f"{p!r} is a .npy array named .npz", path=p)
            names = list(z.files)
            name = column or ("embeddings" if "embeddings" in names else None)
            if name is None:
                rest = [n for n in names if n != "keys"]
                if len(rest) != 1:
                    raise ConfigError(f"{p} holds arrays {names}: name the embeddings with "
                                      "--column")
                name = rest[0]
            if name not in names:
                raise ConfigError(f"{p} has no array {name!r} (it holds {names})")
            x = z[name]
            keys = _key_strings(z["keys"].tolist(), p, "array 'keys'") \
                if use_keys and "keys" in names else None
    except (ConfigError, InputFileError):
        raise
    except FileNotFoundError:
        raise InputFileError(f"no such file: {p!r}", path=p) from None
    except Exception as e:  # noqa: BLE001 - zip, npy and pickle errors of a bad file
        raise InputFileError(f"{p!r} is not a readable NumPy .npz archive of arrays: "
                             f"{type(e).__name__}: {e}", path=p) from None
    return keys, x


def _read_parquet(p: str, column: str | None, key_column: str | None,
                  use_keys: bool) -> tuple[list[str] | None, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("reading Parquet needs pyarrow: pip install 'semid-index[parquet]'"
                          ) from None
    try:
        table = pq.read_table(p)
    except FileNotFoundError:
        raise InputFileError(f"no such file: {p!r}", path=p) from None
    except Exception as e:  # noqa: BLE001 - pyarrow's errors of a file that is not Parquet
        raise InputFileError(f"{p!r} is not a readable Parquet file: {e}", path=p) from None
    name = column or "embedding"
    if name not in table.column_names:
        raise ConfigError(f"{p} has no column {name!r} (columns: {table.column_names}); "
                          "name the embedding column with --column")
    values = table.column(name).to_pylist()
    try:
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: refused later
            x = np.asarray(values, dtype=np.float32) if values else np.zeros((0, 0), np.float32)
    except (TypeError, ValueError):
        raise InputFileError(f"{p}: the rows of column {name!r} have different lengths, or "
                             "hold nulls or non-numbers", path=p) from None
    kc = key_column or ("key" if "key" in table.column_names else None)
    if kc is None or not use_keys:
        return None, x
    if kc not in table.column_names:
        raise ConfigError(f"{p} has no column {kc!r} (columns: {table.column_names})")
    return _key_strings(table.column(kc).to_pylist(), p, f"key column {kc!r}"), x


def _key_strings(values: list, p: str, where: str) -> list[str]:
    """Keys read from a file as text: strings as they are, integers in decimal, bytes decoded
    as UTF-8; nulls and anything else (floats, lists) are refused, never turned into a repr."""
    out = []
    for i, v in enumerate(values):
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, int) and not isinstance(v, bool):
            out.append(str(v))
        elif isinstance(v, bytes):
            try:
                out.append(v.decode("utf-8"))
            except UnicodeDecodeError:
                raise InputFileError(f"{p}: {where} row {i} is not UTF-8 text: {v[:40]!r}",
                                     path=p) from None
        else:
            what = "a null" if v is None else f"a {type(v).__name__} ({str(v)[:40]})"
            raise InputFileError(f"{p}: {where} has {what} in row {i}; keys are text or "
                                 "integers", path=p)
    return out


# ---------------------------------------------------------------------------- output
def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def table(headers: list[str], rows: list[list], *, right: Collection[int] = frozenset()) -> str:
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
