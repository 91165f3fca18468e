"""Validation of what callers hand to :class:`SemanticIdIndex` (numpy only, no torch)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import (ConfigError, DimensionMismatchError, DuplicateKeyError, EmptyInputError,
                     InvalidCodesError, NonFiniteError)
from .ids import SemanticId

MAX_KEY_LENGTH = 1024


def item_keys(keys, *, allow_duplicates: bool = False) -> list[str]:
    """Item keys as a list of non-empty str. ints (and numpy ints) become their decimal str."""
    if isinstance(keys, (str, bytes)):
        raise ConfigError(f"item keys must be a sequence of keys, got a single {type(keys).__name__}"
                          f" {keys!r}: wrap it in a list")
    if isinstance(keys, np.ndarray):
        keys = keys.tolist()
    keys = list(keys)
    if keys and all(type(k) is str for k in keys) and 0 < min(map(len, keys)) and \
            max(map(len, keys)) <= MAX_KEY_LENGTH and not any("\x00" in k for k in keys):
        return _unique(keys, allow_duplicates)  # the common case, checked in C loops
    out = []
    for i, k in enumerate(keys):
        if isinstance(k, str):
            s = k
        elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            s = str(int(k))
        else:
            raise ConfigError(f"item keys must be str or int; key #{i} is {type(k).__name__} {k!r}")
        if not s or len(s) > MAX_KEY_LENGTH or "\x00" in s:
            raise ConfigError(f"item key #{i} {s[:40]!r} must have 1..{MAX_KEY_LENGTH} characters "
                              f"and no NUL, has {len(s)}")
        out.append(s)
    return _unique(out, allow_duplicates)


def _unique(keys: list[str], allow_duplicates: bool) -> list[str]:
    if not allow_duplicates and len(set(keys)) != len(keys):
        dup = [k for k, n in Counter(keys).items() if n > 1]
        raise DuplicateKeyError(f"{len(dup)} item key(s) appear more than once: "
                                f"{', '.join(map(repr, dup[:10]))}{' ...' if len(dup) > 10 else ''}")
    return keys


def embedding_matrix(embeddings, n_keys: int | None, dim: int | None = None) -> np.ndarray:
    """A 2-d float array (N, D) viewed in place where possible: numpy array or memmap, torch
    tensor (CPU), nested lists, or the path of a ``.npy`` file (memory-mapped)."""
    if isinstance(embeddings, (str, Path)):
        embeddings = np.load(embeddings, mmap_mode="r", allow_pickle=False)
    elif hasattr(embeddings, "detach") and hasattr(embeddings, "cpu"):  # torch.Tensor
        embeddings = embeddings.detach().cpu().numpy()
    x = np.asarray(embeddings)
    if x.dtype.kind not in "fiu":
        raise ConfigError(f"embeddings must be numbers, got dtype {x.dtype}")
    if x.ndim != 2:
        raise DimensionMismatchError(f"embeddings must be 2-d (N, D), got shape {x.shape}")
    if n_keys is not None and x.shape[0] != n_keys:
        raise DimensionMismatchError(
            f"got {n_keys} item keys but {x.shape[0]} embedding rows")
    if x.shape[0] == 0:
        raise EmptyInputError("no items: keys and embeddings are empty")
    check_dim(x, dim)
    return x


def check_dim(x: np.ndarray, dim: int | None) -> None:
    """Raise DimensionMismatchError unless ``x`` (N, D) has D == ``dim`` (None: any)."""
    if dim is not None and x.shape[1] != dim:
        raise DimensionMismatchError(
            f"embeddings have dim={x.shape[1]} but the index was trained with dim={dim}")


def check_finite(block: np.ndarray, offset: int, keys: Sequence[str] | None = None) -> None:
    """Raise NonFiniteError naming the first row (and its item key, when ``keys`` are given)
    whose embedding has NaN/inf; ``block`` holds rows ``offset, offset + 1, ...``."""
    if np.isfinite(block.sum(dtype=np.float64)):
        return
    bad = ~np.isfinite(block)
    rows = np.flatnonzero(bad.any(axis=1))
    if rows.size:
        r = offset + int(rows[0])
        col = int(np.flatnonzero(bad[rows[0]])[0])
        what = f"item {keys[r]!r} (row {r})" if keys is not None else f"row {r}"
        raise NonFiniteError(
            f"embedding of {what} has a non-finite value (NaN/inf) in column {col}; {rows.size} "
            "row(s) of this block are affected", row=r, column=col)


def prefix_tuple(prefix, sizes: Sequence[int], *, min_depth: int) -> tuple[int, ...]:
    """A prefix as a tuple of level codes: tuple/list of ints, a SemanticId (its levels), or a
    string like ``"12-201"``. Checks depth ``min_depth..L`` and each code against its codebook."""
    if isinstance(prefix, SemanticId):
        prefix = prefix.levels
    elif isinstance(prefix, str):
        parts = prefix.strip().split("-") if prefix.strip() else []
        if not all(p.isdigit() for p in parts):
            raise InvalidCodesError(f"malformed prefix {prefix!r}: expected codes joined by '-', "
                                    "e.g. '12-201'")
        prefix = [int(p) for p in parts]
    try:
        out = tuple(int(c) for c in prefix)
    except (TypeError, ValueError):
        raise InvalidCodesError(f"a prefix is a sequence of level codes, got {prefix!r}") from None
    if not min_depth <= len(out) <= len(sizes):
        raise InvalidCodesError(
            f"prefix {out} has depth {len(out)}; this index has {len(sizes)} levels, so the "
            f"depth must be in {min_depth}..{len(sizes)}")
    for lv, (c, k) in enumerate(zip(out, sizes)):
        if not 0 <= c < k:
            raise InvalidCodesError(f"prefix {out}: level-{lv + 1} code {c} is outside 0..{k - 1}")
    return out
